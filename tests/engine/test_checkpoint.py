"""Checkpoints: the file format, keep-last-K, falling back from a damaged file, and resuming runs exactly,
in process and as real ``python -m supcon`` processes killed with SIGKILL or stopped with Ctrl-C."""

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import default_sigint, supcon_argv
from torch import nn

import supcon.stages.ce
import supcon.stages.run
from supcon.cli import main
from supcon.config import Config
from supcon.engine.batches import EpochBatches
from supcon.engine.callbacks import Callback
from supcon.engine.checkpoint import Checkpoints, CorruptCheckpoint, load_checkpoint, save_checkpoint
from supcon.engine.loop import FitOptions, Trainable, fit
from supcon.engine.optim import build_schedule
from supcon.runs import RunDir
from supcon.stages import train_run
from supcon.stages.common import validation_metrics

SRC = Path(__file__).resolve().parents[2] / "src"


# ------------------------------------------------------------------------------------------- the files


def test_a_checkpoint_round_trips_and_a_damaged_one_is_detected(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.arange(1000.0), "epoch": 3, "rng": (3, (1, 2), None)})
    state = load_checkpoint(path)
    assert torch.equal(state["w"], torch.arange(1000.0)) and state["epoch"] == 3
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpoint, match="truncated"):
        load_checkpoint(path)
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptCheckpoint, match="checksum"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CorruptCheckpoint, match="not a supcon checkpoint"):
        load_checkpoint(path)


def test_the_last_k_are_kept_in_order_of_position(tmp_path):
    ckpts = Checkpoints(tmp_path, "ce", keep=2)
    (ckpts.directory).mkdir()
    (ckpts.directory / ".ce-epoch0001-step000001.pt.tmp123").write_bytes(b"left by a killed writer")
    for epoch, step in [(1, 3), (1, 10), (2, 4), (9, 2), (10, 1)]:
        ckpts.save({"at": (epoch, step)}, epoch, step)
    assert [p.name for p in ckpts.paths()] == ["ce-epoch0009-step000002.pt", "ce-epoch0010-step000001.pt"]
    assert sorted(p.name for p in ckpts.directory.iterdir()) == [p.name for p in ckpts.paths()]
    other = Checkpoints(tmp_path, "linear", keep=2)
    other.save({}, 1, 1)
    ckpts.clear()
    assert [p.name for p in ckpts.directory.iterdir()] == ["linear-epoch0001-step000001.pt"]
    other.clear()
    assert not ckpts.directory.exists()


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    ckpts = Checkpoints(tmp_path, "pretrain", keep=3)
    for step in (1, 2, 3):
        ckpts.save({"step": step}, 1, step)
    newest = ckpts.path(1, 3)
    newest.write_bytes(newest.read_bytes()[:-7])
    with pytest.warns(UserWarning, match=r"step000003.pt is truncated.*the checkpoint before") as rec:
        state, path = ckpts.latest()
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert state["step"] == 2 and path == ckpts.path(1, 2)
    assert newest.with_name(newest.name + ".corrupt").is_file() and ckpts.paths()[-1] == path
    ckpts.save({"step": 3}, 1, 3)  # the damaged file neither counts towards K nor shadows new saves
    assert ckpts.latest()[0]["step"] == 3 and len(ckpts.paths()) == 3


def test_resuming_under_other_options_is_refused(tmp_path):
    Checkpoints(tmp_path, "ce", config=Config(lr=0.1).to_dict()).save({}, 1, 1)
    with pytest.raises(ValueError, match="saved with lr=0.1, but this run has lr=0.2"):
        Checkpoints(tmp_path, "ce", config=Config(lr=0.2).to_dict()).latest()
    # options that do not change the computation may differ
    assert Checkpoints(tmp_path, "ce", config=Config(lr=0.1, quiet=True, ckpt_every=5).to_dict()).latest()


# ------------------------------------------------------------------------------------------- fit, in process


class Crash(Exception):
    pass


class LossSum(Callback):
    """A stage's own number beside the loop's: the sum of the step losses, which a resumed run must carry on."""

    state_key = "loss_sum"

    def __init__(self):
        self.total = 0.0

    def on_step_end(self, state, batch, loss):
        self.total += loss

    def state_dict(self):
        return {"losses": self.total}

    def load_state_dict(self, state):
        self.total = state["losses"]


def _tiny_fit(run_dir: Path, crash_after: int | None = None, resume: bool = False, patience: int = 0,
              every: int = 1):
    """A small classifier with dropout (random numbers from the global generator in every step), shuffled
    batches, Adam, a cosine schedule and early stopping; ``crash_after`` steps it dies as a process would."""
    torch.manual_seed(0)
    x = torch.randn(42, 5)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    batches = EpochBatches(x, y, 8, seed=0, transform=None, device=torch.device("cpu"))
    sched = build_schedule(opt, "cosine", 6 * batches.steps, batches.steps)
    done = {"steps": 0}
    losses = LossSum()

    def step(batch):
        if crash_after is not None and done["steps"] >= crash_after:
            raise Crash
        done["steps"] += 1
        logits = model(batch[0])
        loss = F.cross_entropy(logits, batch[1])
        return loss, int((logits.argmax(1) == batch[1]).sum())

    def evaluate():
        model.eval()
        with torch.no_grad():
            metrics = validation_metrics(model(x), y)
        model.train()
        return metrics

    ckpts = Checkpoints(run_dir, "ce", keep=2, every=every)
    result = fit(Trainable(model, step, batches, batches.steps, opt, sched, evaluate=evaluate, callbacks=[losses]),
                 FitOptions(epochs=6, stage="ce", patience=patience, metrics_path=run_dir / "metrics.jsonl",
                            progress=False, checkpoints=ckpts, resume=resume))
    return result, model, losses.state_dict()


def _without_time(history):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in history]


@pytest.mark.parametrize("crash_after, every, patience", [(13, 1, 0), (13, 4, 0), (10, 0, 2), (25, 3, 2)])
def test_a_crashed_fit_resumes_to_the_uninterrupted_result(tmp_path, crash_after, every, patience):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reference, ref_model, ref_extra = _tiny_fit(tmp_path / "a", patience=patience, every=every)
    with pytest.raises(Crash):
        _tiny_fit(tmp_path / "b", crash_after=crash_after, patience=patience, every=every)
    result, model, extra = _tiny_fit(tmp_path / "b", resume=True, patience=patience, every=every)
    assert result.resumed_from is not None
    assert _without_time(result.history) == _without_time(reference.history)
    assert (result.best_epoch, result.stopped_early) == (reference.best_epoch, reference.stopped_early)
    assert extra == ref_extra
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    lines = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert _without_time(lines) == _without_time(reference.history)


def test_a_damaged_checkpoint_is_skipped_and_the_run_still_ends_the_same(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reference, _, _ = _tiny_fit(tmp_path / "a", every=2)
    with pytest.raises(Crash):
        _tiny_fit(tmp_path / "b", crash_after=17, every=2)
    newest = Checkpoints(tmp_path / "b", "ce").paths()[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="truncated"):
        result, _, _ = _tiny_fit(tmp_path / "b", resume=True, every=2)
    assert result.resumed_from != newest
    assert _without_time(result.history) == _without_time(reference.history)


# ------------------------------------------------------------------------------------------- the CLI


def _supcon(*args: str, signal_at: str | None = None) -> subprocess.CompletedProcess:
    """``supcon ARGS`` in a process of its own; ``signal_at`` (``SIGNAL:STEP``) makes the run send itself that
    signal after that optimizer step (:class:`~supcon.engine.callbacks.SignalAt`): a known step, not a race."""
    # One thread: runs on the CPU are then bit-for-bit repeatable across processes.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    return subprocess.run(supcon_argv(*args, signal_at=signal_at),
                          preexec_fn=default_sigint, env=env, capture_output=True, text=True,
                          timeout=600)


def _finish(*args: str) -> subprocess.CompletedProcess:
    done = _supcon(*args)
    assert done.returncode == 0, done.stderr
    return done


def _outcome(run_dir: Path) -> tuple[list[dict], dict]:
    """metrics.jsonl and results.json without wall-clock times."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "results.json").read_text())
    results["runs"] = [{k: v for k, v in r.items() if "seconds" not in k} for r in results["runs"]]
    return _without_time(lines), results


# 300 digits in batches of 32: 10 steps an epoch. The kNN monitor's "auto" period is chosen from measured times,
# so two runs may pick different periods; a fixed period keeps the compared logs free of timing.
TINY = ["--dataset", "digits", "--max-train", "300", "--max-val", "150", "--batch-size", "32", "--quiet",
        "--no-tsne", "--knn-every", "1"]


def test_a_pretrain_killed_mid_epoch_resumes_to_the_same_metrics(tmp_path):
    args = ["pretrain", *TINY, "--epochs", "4", "--ckpt-every", "3"]
    _finish(*args, "--out", str(tmp_path / "reference"))
    run = tmp_path / "killed"
    killed = _supcon(*args, "--out", str(run), signal_at="SIGKILL:16")  # epoch 2, step 6
    assert killed.returncode == -signal.SIGKILL and not (run / "results.json").exists()
    state, path = Checkpoints(run, "pretrain").latest()
    assert path.name == "pretrain-epoch0002-step000005.pt"  # the last 3-step mark: the run resumes inside an epoch
    assert (state["loop"]["epoch"], state["loop"]["skip"], state["loop"]["global_step"]) == (2, 5, 15)
    _finish("pretrain", "--resume", str(run))
    assert _outcome(run) == _outcome(tmp_path / "reference")
    assert not (run / "checkpoints").exists()  # a finished stage deletes its checkpoints


def test_ctrl_c_saves_a_checkpoint_and_prints_the_command_to_resume(tmp_path):
    args = ["ce", *TINY, "--epochs", "4", "--patience", "2", "--ckpt-every", "3"]
    _finish(*args, "--out", str(tmp_path / "reference"))
    run = tmp_path / "stopped"
    stopped = _supcon(*args, "--out", str(run), signal_at="SIGINT:13")  # Ctrl-C in epoch 2, after its step 3
    err = stopped.stderr
    assert stopped.returncode == 130, err
    assert f"resume with: supcon ce --resume {run}" in err and "Traceback" not in err
    saved = re.search(r"checkpoint saved \((.+)\)", err)[1]
    assert Path(saved).name == "ce-epoch0002-step000003.pt" and load_checkpoint(saved)["loop"]["skip"] == 3
    # the same command with --resume added is accepted: flags may repeat the run's options
    _finish(*args, "--out", str(run), "--resume", str(run))
    assert _outcome(run) == _outcome(tmp_path / "reference")


def test_resume_refuses_changed_options_and_finished_runs(tmp_path, capsys):
    run = tmp_path / "run"
    Config(dataset="digits", epochs=3, out=str(run)).save(run / "config.yaml")
    for args, message in ((["--epochs", "5"], "--epochs 5 differs from its config.yaml (3)"),
                          (["--out", str(tmp_path / "other")], "does not match --resume"),
                          (["--config", str(run / "config.yaml")], "leave out --config")):
        assert main(["ce", "--resume", str(run), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert main(["ce", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    code = main(["ce", *TINY, "--epochs", "1", "--out", str(run)])
    assert code == 0 and main(["ce", "--resume", str(run)]) == 2
    assert "has finished" in capsys.readouterr().err
    assert main(["pretrain", "--resume", str(run)]) == 2
    assert f"holds a ce run; resume it with: supcon ce --resume {run}" in capsys.readouterr().err


def test_a_diverging_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["pretrain", *TINY, "--epochs", "3", "--optimizer", "sgd", "--lr", "1e6", "--ckpt-every", "1",
                 "--out", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert re.search(r"pretrain: the (loss|weights) became .* at epoch 1, step \d+; likely cause: a learning rate "
                     r"too high.*temperature too small; the last good checkpoint is kept in", err[0]), err
    state, _ = Checkpoints(run, "pretrain").latest()
    assert all(t.isfinite().all() for t in state["model"].values() if t.is_floating_point())


def test_compare_resumed_keeps_finished_stages_and_ends_as_an_uninterrupted_one(tmp_path, capsys, monkeypatch):
    args = ["compare", *TINY, "--max-train", "200", "--epochs", "1", "--linear-epochs", "2"]
    assert main([*args, "--out", str(tmp_path / "reference")]) == 0
    run = tmp_path / "cmp"

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # Ctrl-C as SupCon's stage 2 starts: stage 1 is done, ce (trained last) is not
        m.setattr(supcon.stages.run, "second_stage", interrupted)
        assert main([*args, "--out", str(run)]) == 130
    assert f"resume with: supcon compare --resume {run}" in capsys.readouterr().err

    def redone(*a, **kw):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(supcon.stages.run, "pretrain", redone)
    assert main(["compare", "--resume", str(run)]) == 0
    capsys.readouterr()
    reference = json.loads((tmp_path / "reference" / "results.json").read_text())
    resumed = json.loads((run / "results.json").read_text())
    for runs in (reference["runs"], resumed["runs"]):
        for r in runs:
            for key in [k for k in r if "seconds" in k]:
                del r[key]
    assert resumed == reference
    assert _outcome(run / "supcon")[0] == _outcome(tmp_path / "reference" / "supcon")[0]


def test_a_new_run_in_an_old_run_directory_never_looks_finished_before_it_ends(tmp_path, monkeypatch):
    """config.yaml is written when a run starts; an older results.json beside it would pass for this run's (a
    sweep would then skip the cell, and --resume would call it finished)."""
    from supcon.data import load_dataset
    from supcon.experiments.sweep import cell_finished

    data = load_dataset("digits", max_train=100, max_val=50)
    cfg = Config(dataset="digits", max_train=100, max_val=50, epochs=1, batch_size=32, quiet=True, tsne=False)
    train_run("ce", cfg, data, tmp_path)
    assert RunDir(tmp_path).stage_finished("ce") and cell_finished(RunDir(tmp_path), cfg)
    changed = cfg.replace(lr=0.01)

    def crash(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(supcon.stages.ce, "fit", crash)
    with pytest.raises(Crash):
        train_run("ce", changed, data, tmp_path)
    assert Config.from_yaml(tmp_path / "config.yaml").lr == 0.01
    assert not RunDir(tmp_path).stage_finished("ce") and not cell_finished(RunDir(tmp_path), changed)
