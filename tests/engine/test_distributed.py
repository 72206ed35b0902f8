"""Tests for supcon.distributed: two gloo processes on the CPU against one process on the concatenated batch,
and a distributed pretrain + linear run through the command line against a single-process one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import SHARED_DATA

from supcon.config import Config
from supcon.engine import distributed
from supcon.engine.checkpoint import Checkpoints
from supcon.losses import SupConLoss
from supcon.models import Classifier, ProjectionHead, SupConModel, build_encoder
from supcon.stages import load_data, train_run

REPO = Path(__file__).resolve().parents[2]
BATCH = 11  # odd: the two shards differ in size (6 and 5), which the gather and the loss scaling must handle
CRITERIA = {  # name: (criterion, whether it takes the labels)
    "supcon": (dict(temperature=0.1), True),
    "supcon_in_one": (dict(temperature=0.2, variant="in", contrast_mode="one"), True),
    "simclr": (dict(temperature=0.5), False),
}


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Real photos: ImageNet-5 images (pooled to 8 px for speed) from ../shared/data, else the digits."""
    path = SHARED_DATA / "imagenet5_64.npz"
    if path.is_file():
        with np.load(path) as arrays:
            picked = np.concatenate([np.flatnonzero(arrays["y_train"] == c)[:3] for c in range(4)])[:BATCH]
            x = torch.from_numpy(arrays["x_train"][picked]).permute(0, 3, 1, 2).float() / 255
            y = torch.from_numpy(arrays["y_train"][picked]).long()
        return F.avg_pool2d(x, 8), y
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images[:BATCH]).float()[:, None] / 16
    return x, torch.from_numpy(digits.target[:BATCH]).long() % 4


def _models(channels: int, size: int) -> tuple[SupConModel, Classifier]:
    torch.manual_seed(0)
    encoder = build_encoder("smallcnn", channels, size)
    # Eval mode: BatchNorm with its running statistics treats every image alone, as it must for the two runs to
    # agree (with batch statistics each process normalises its own shard; --sync-bn exists for that, on CUDA).
    supcon = SupConModel(encoder, ProjectionHead(encoder.out_dim, 64, 32)).eval()
    ce = Classifier(build_encoder("smallcnn", channels, size, normalize=False), 4).eval()
    return supcon, ce


def _views(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([x, x.flip(-1)], 1)  # [B, 2, C, H, W]: two deterministic views


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _step(supcon, ce, x, y, options, use_labels, forward_supcon=None, forward_ce=None):
    """One SupCon and one CE step's loss values and gradients, through the given (DDP) forwards."""
    forward_supcon, forward_ce = forward_supcon or supcon, forward_ce or ce
    criterion = distributed.GatheredLoss(SupConLoss(**options))
    supcon.zero_grad()
    views = _views(x)
    z = forward_supcon(views.flatten(0, 1)).view(len(x), 2, -1)
    loss = criterion(z, y if use_labels else None)
    loss.backward()
    ce.zero_grad()
    ce_loss = distributed.global_mean(F.cross_entropy(forward_ce(x), y), len(y))
    ce_loss.backward()
    return {"loss": loss.item(), "grads": _grads(supcon.encoder), "ce_loss": ce_loss.item(), "ce_grads": _grads(ce)}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = _batch()
        supcon, ce = _models(x.shape[1], x.shape[-1])
        mine = distributed.shard(torch.arange(len(y)))
        cpu = torch.device("cpu")
        forward_supcon, forward_ce = distributed.wrap(supcon, cpu), distributed.wrap(ce, cpu)
        results = {name: _step(supcon, ce, x[mine], y[mine], options, use_labels, forward_supcon, forward_ce)
                   for name, (options, use_labels) in CRITERIA.items()}
        results["shard"] = mine.tolist()
        results["all_sum"] = distributed.all_sum([1.0, len(mine)])
        results["from_main"] = distributed.from_main(lambda: {"rank": distributed.rank()})
        results["gathered"] = distributed.gather(torch.full((len(mine),), rank)).tolist()
        try:
            distributed.wrap(supcon, cpu, sync_bn=True)
        except ValueError as err:
            results["sync_bn_error"] = str(err)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(out / "store"), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", list(CRITERIA))
def test_gathered_loss_and_gradients_equal_one_process(two_processes, name):
    x, y = _batch()
    supcon, ce = _models(x.shape[1], x.shape[-1])
    options, use_labels = CRITERIA[name]
    alone = _step(supcon, ce, x, y, options, use_labels)
    for result in (r[name] for r in two_processes):  # every process holds the global value and gradient
        assert result["loss"] == pytest.approx(alone["loss"], rel=1e-5)
        assert result["ce_loss"] == pytest.approx(alone["ce_loss"], rel=1e-5)
        for key in ("grads", "ce_grads"):
            assert result[key].keys() == alone[key].keys()
            for param, grad in alone[key].items():
                torch.testing.assert_close(result[key][param], grad, rtol=1e-5, atol=1e-5, msg=f"{key} {param}")


def test_shards_collectives_and_messages(two_processes):
    first, second = two_processes
    assert first["shard"] == list(range(6)) and second["shard"] == list(range(6, 11))
    assert first["all_sum"] == second["all_sum"] == [2.0, 11.0]
    assert first["from_main"] == second["from_main"] == {"rank": 0}
    assert first["gathered"] == second["gathered"] == [0] * 6 + [1] * 5
    assert "--sync-bn needs CUDA" in first["sync_bn_error"]


def test_single_process_is_untouched():
    assert not distributed.is_distributed() and distributed.is_main() and distributed.world_size() == 1
    x = torch.arange(6)
    assert distributed.shard(x) is x and distributed.gather(x) is x
    criterion = SupConLoss()
    features = F.normalize(torch.randn(4, 2, 8), dim=-1)
    labels = torch.tensor([0, 1, 0, 1])
    assert distributed.GatheredLoss(criterion)(features, labels) == criterion(features, labels)
    loss = torch.tensor(2.0)
    assert distributed.global_mean(loss, 3) is loss
    assert distributed.all_sum([1.5, 2]) == [1.5, 2] and distributed.from_main(lambda: 7) == 7


@pytest.mark.parametrize("scale,factor", [("none", 1.0), ("linear", 2.0), ("sqrt", 2 ** 0.5)])
def test_lr_scale(scale, factor):
    cfg = Config(batch_size=512, lr=0.1, linear_lr=0.01, lr_scale=scale)
    assert cfg.resolved_lr() == pytest.approx(0.1 * factor)
    assert cfg.resolved_linear_lr() == pytest.approx(0.01 * factor)
    assert Config(batch_size=64, optimizer="sgd", lr_scale="linear").resolved_lr() == pytest.approx(0.1 / 4)


@pytest.mark.parametrize("nproc,device,batch,sync_bn,fragment", [
    (2, "cpu", 3, False, "expected at least 4"),
    (2, "cpu", 64, True, "--sync-bn needs CUDA"),
    (torch.cuda.device_count() + 1, "cuda", 64, False, r"GPUs \(one per process\)"),
])
def test_launch_checks(nproc, device, batch, sync_bn, fragment):
    with pytest.raises(ValueError, match=fragment):
        distributed.check_launch(nproc, torch.device(device), batch, sync_bn)


def test_cli_reports_a_bad_launch_once_without_starting(capsys, monkeypatch):
    from supcon.cli import main

    monkeypatch.setattr(distributed, "launch", lambda *a: pytest.fail("launched"))
    assert main(["--", "pretrain", "--nproc", "2", "--batch-size", "3", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["supcon pretrain: error: --batch-size is the global batch, split over 2 processes: expected at "
                   "least 4 (two images each), got 3"]


def test_sweep_refuses_torchrun(capsys, monkeypatch, tmp_path):
    from supcon.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["sweep", "--out", str(tmp_path / "s")]) == 2
    assert "sweep does not run under torchrun" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def _supcon(*args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):  # a launcher around pytest must not leak into the runs
        env.pop(name, None)
    command = [sys.executable, "-m", "supcon", *args, "--nproc", str(nproc)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_distributed_pretrain_and_linear_match_one_process(tmp_path, shared_data):
    # Real photos from ../shared/data, shrunk to 16 px so that three short runs fit in a test.
    options = dict(dataset=f"npz:{shared_data / 'imagenet5_64.npz'}", image_size=16, encoder="smallcnn",
                   max_train=500, max_val=250, epochs=8, batch_size=64, linear_epochs=30, quiet=True, tsne=False)
    cfg = Config(**options)
    train_run("supcon", cfg, load_data(cfg), tmp_path / "alone", until="pretrain")
    alone = train_run("supcon", cfg.replace(run=str(tmp_path / "alone")))
    out = tmp_path / "two"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items() if k not in ("quiet", "tsne", "linear_epochs")]
    done = _supcon("pretrain", *flags, "--quiet", "--no-tsne", "--out", str(out), nproc=2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("stage 1 finished") == 1  # one process prints
    done = _supcon("linear", "--run", str(out), "--linear-epochs=30", nproc=2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("linear probe finished") == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["pretrain"] * 8 + ["linear"] * (len(records) - 8)  # one writer
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "curves.png", "encoder.safetensors",
                                                     "linear.safetensors", "metrics.jsonl",
                                                     "projection.safetensors", "results.json"]
    two = json.loads((out / "results.json").read_text())["runs"][0]
    # chance is 0.2; the two runs differ in BatchNorm batches and random streams, so they agree within a band
    assert alone.summary["val_acc"] > 0.4 and abs(two["val_acc"] - alone.summary["val_acc"]) < 0.08, (
        alone.summary["val_acc"], two["val_acc"])


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N ARGS`` (a script and its arguments, or ``-m supcon ...``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def _computed(run_dir: Path) -> tuple[list, dict]:
    lines = [{k: v for k, v in json.loads(x).items() if "seconds" not in k}
             for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"event"' not in x]
    summary = {k: v for k, v in json.loads((run_dir / "results.json").read_text())["runs"][0].items()
               if "seconds" not in k}
    return lines, summary


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(tmp_path):
    """Both processes killed mid-epoch (SIGKILL after step 8 of 2 x 5); --resume on two processes again continues
    from the step-6 checkpoint, each process with its own random streams, to the same metrics, bit for bit on
    the CPU. On one process it is a one-line error naming both sizes."""
    flags = ["pretrain", "--max-train", "300", "--max-val", "100", "--epochs", "2", "--batch-size", "64",
             "--knn-every", "1", "--ckpt-every", "3", "--no-tsne", "--quiet"]
    launcher = str(REPO / "tests" / "signal_launcher.py")
    reference = _torchrun("-m", "supcon", *flags, "--out", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "run"
    killed = _torchrun(launcher, "SIGKILL:8", *flags, "--out", str(run))
    assert killed.returncode != 0 and not (run / "results.json").exists()
    newest = Checkpoints(run, "pretrain").paths()[-1]
    assert newest.name == "pretrain-epoch0002-step000001.pt", newest  # step 6 = epoch 2's first
    alone = _supcon("pretrain", "--resume", str(run))
    errors = alone.stderr.strip().splitlines()
    assert alone.returncode == 2 and len(errors) == 1, alone.stderr
    assert "written by 2 process(es) and this run has 1; resume with --nproc 2" in errors[0]
    resumed = _torchrun("-m", "supcon", "pretrain", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert _computed(run) == _computed(tmp_path / "ref")
    # torchrun's elastic agent: one process killed mid-epoch (rank 1 alone), every process restarted, and the
    # restarted ones continue from the newest checkpoint by themselves
    elastic = tmp_path / "elastic"
    restarted = _torchrun("--max-restarts=1", launcher, "SIGKILL:8::1:1", *flags, "--out", str(elastic))
    assert restarted.returncode == 0, restarted.stderr
    assert "restart 1: resuming" in restarted.stderr
    assert _computed(elastic) == _computed(tmp_path / "ref")
    events = [json.loads(x) for x in (elastic / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert [(e["event"], e["restart"]) for e in events] == [("restart", 1)]


def test_an_elastic_restart_of_a_two_process_compare_ends_as_the_uninterrupted_one(tmp_path):
    flags = ["compare", "--max-train", "200", "--max-val", "100", "--epochs", "2", "--linear-epochs", "3",
             "--batch-size", "64", "--knn-every", "1", "--no-tsne", "--quiet"]
    reference = _torchrun("-m", "supcon", *flags, "--out", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr
    # killed in the CE baseline's first epoch, after SupCon had finished: the restart keeps SupCon's runs
    restarted = _torchrun("--max-restarts=1", str(REPO / "tests" / "signal_launcher.py"), "SIGKILL:2:ce:1:1", *flags,
                          "--out", str(tmp_path / "run"))
    assert restarted.returncode == 0, restarted.stderr
    for part in ("supcon", "ce"):
        assert _computed(tmp_path / "run" / part) == _computed(tmp_path / "ref" / part), part
