"""The forms of SupCon beyond the linear probe: fine-tuning, the joint SupCon + CE objective, the memory queue."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import QUICK, default_sigint, run_cli
from torch import nn

from supcon.config import Config
from supcon.engine.queue import MemoryQueue
from supcon.losses import SupConLoss
from supcon.models import ProjectionHead, SupConModel, build_encoder
from supcon.stages import pretrain, stage_context, train_run
from supcon.stages.pretrain import joint_loss
from supcon.stages.probe import finetune


def _supcon_reference(features: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, tau: float) -> float:
    """SupCon L_out in float64, written out: every view of the given anchor images against every other vector."""
    b, v, _ = features.shape
    z = torch.cat(features.double().unbind(1))  # view-major, as the loss flattens
    y = labels.repeat(v)
    rows = torch.cat([anchors + k * b for k in range(v)])
    losses = []
    for i in rows.tolist():
        others = [a for a in range(len(z)) if a != i]
        s = z[i] @ z[others].T / tau
        log_prob = s - torch.logsumexp(s, 0)
        positive = torch.tensor([y[a] == y[i] for a in others])
        losses.append(-log_prob[positive].mean())
    return torch.stack(losses).mean().item()


def test_the_queue_loss_is_supcon_on_the_batch_and_the_queue_together():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4))
    queue = MemoryQueue(model, size=12, views=2, dim=4, momentum=0.9, device=torch.device("cpu"))
    criterion = SupConLoss(temperature=0.5)
    for step in range(3):  # the queue holds 6 images of 2 views: after 3 batches of 4 it has wrapped around
        x, y = torch.randn(8, 6), torch.randint(0, 3, (4,))
        keys = queue.keys(x, 4)
        z = F.normalize(model(x), dim=-1).view(4, 2, -1)
        features, labels, anchors = queue.contrast(z, y)
        if step == 0:
            assert anchors is None and features.shape == (4, 2, 4)  # empty: the batch alone
        else:
            expected = _supcon_reference(features.detach(), labels, anchors, tau=0.5)
            assert queue.loss(criterion, z, y).item() == pytest.approx(expected, abs=1e-5)
            assert features.shape[0] == 4 + queue.filled
        queue.push(keys, y)
    assert queue.filled == 6 and queue.position == (3 * 4) % 6
    assert torch.equal(queue.labels[[2, 3, 4, 5]], y)  # the newest batch replaced the oldest entries


def test_the_momentum_copy_follows_the_model():
    model = nn.Linear(3, 2)
    queue = MemoryQueue(model, size=4, views=2, dim=2, momentum=0.75, device=torch.device("cpu"))
    before = queue.copy.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    queue.keys(torch.randn(4, 3), 2)
    assert torch.allclose(queue.copy.weight, 0.75 * before + 0.25 * model.weight)
    assert not any(p.requires_grad for p in queue.copy.parameters())


def test_the_joint_loss_is_the_weighted_sum_of_its_parts():
    torch.manual_seed(0)
    contrastive = torch.tensor(2.5)
    logits, labels = torch.randn(10, 4), torch.randint(0, 4, (10,))
    for w in (0.0, 0.1, 1.0):
        expected = (1 - w) * 2.5 + w * F.cross_entropy(logits, labels).item()
        assert joint_loss(contrastive, logits, labels, w).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("stop_grad", [True, False])
def test_stop_gradient_keeps_the_classifiers_loss_out_of_the_encoder(stop_grad):
    torch.manual_seed(0)
    encoder = build_encoder("smallcnn", 1, 8)
    model = SupConModel(encoder, ProjectionHead(encoder.out_dim, 16, 8), nn.Linear(encoder.out_dim, 3), stop_grad)
    z, logits = model(torch.rand(6, 1, 8, 8))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1, 2])).backward()  # the CE part alone
    encoder_grads = [p.grad for p in encoder.parameters()]
    if stop_grad:
        assert all(g is None or not g.any() for g in encoder_grads)
    else:
        assert any(g is not None and g.abs().sum() > 0 for g in encoder_grads)
    assert model.classifier.weight.grad.abs().sum() > 0  # the classifier learns either way


def test_fine_tuning_changes_the_encoder_and_restores_the_best_val_epoch(digits):
    cfg = Config(**{**QUICK, "epochs": 1, "linear_epochs": 6, "patience": 2, "stage2": "finetune"})
    stage1 = pretrain(stage_context(cfg), digits)
    before = {k: v.clone() for k, v in stage1.encoder.state_dict().items()}
    result = finetune(stage_context(cfg), digits, stage1.encoder, stage1.inputs)
    after = result.model.encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    history = result.fit.history
    best = max(range(len(history)), key=lambda i: history[i]["val_acc"])
    assert result.fit.best_epoch == best + 1
    assert result.summary["val_acc"] == pytest.approx(history[best]["val_acc"])  # the best epoch's weights are back
    assert result.summary["stage2"] == "finetune" and "test_acc" in result.summary


def test_a_supcon_run_fine_tunes_when_told_to_and_saves_the_tuned_encoder(digits, tmp_path):
    cfg = Config(**{**QUICK, "epochs": 1, "linear_epochs": 2, "stage2": "finetune"})
    result = train_run("supcon", cfg, digits, tmp_path)
    from supcon.runs.load import load_classifier

    loaded = load_classifier(tmp_path)
    images = digits.test.images[:16].float() / 255
    with torch.no_grad():
        assert torch.allclose(loaded.model(images), result.model.eval()(images), atol=1e-5)
    assert not (tmp_path / "checkpoints").exists()  # stage 1's encoder waited there, and is gone


def test_the_joint_objective_is_one_stage_with_its_own_classifier(digits, tmp_path):
    cfg = Config(**{**QUICK, "epochs": 6, "ce_weight": 0.5})
    result = train_run("supcon+ce", cfg, digits, tmp_path)
    summary = result.summary
    assert summary["method"] == summary["loss"] == "supcon+ce"
    # its classifier trained: chance is 0.11 (the largest class); at 5 steps an epoch it is still there after 2
    # epochs, and measured 0.53 (val) and 0.49 (test) after 6
    assert summary["val_acc"] > 3 * summary["knn_chance"] and summary["test_acc"] > 3 * summary["knn_chance"]
    assert "linear_epochs" not in summary  # no stage 2
    assert (tmp_path / "linear.safetensors").is_file() and (tmp_path / "projection.safetensors").is_file()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in lines} == {"pretrain"} and all("val_acc" in r and "train_acc" in r for r in lines)


def test_a_run_with_a_queue_resumes_to_the_same_result(tmp_path):
    """Ctrl-C mid-epoch: the checkpoint holds the queue and the momentum copy, and the resumed run ends as the
    uninterrupted one, bit for bit (one thread)."""
    import os
    import subprocess

    from conftest import supcon_argv

    args = ["pretrain", "--max-train", "200", "--max-val", "100", "--epochs", "2", "--batch-size", "32",
            "--queue", "96", "--momentum-encoder", "0.9", "--knn-every", "1", "--no-tsne", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def supcon(*more, signal_at=None):
        done = subprocess.run(supcon_argv(*more, signal_at=signal_at), preexec_fn=default_sigint, env=env,
                              capture_output=True, text=True, timeout=600)
        return done

    assert supcon(*args, "--out", str(tmp_path / "ref")).returncode == 0
    stopped = supcon(*args, "--out", str(tmp_path / "run"), signal_at="SIGINT:9")  # epoch 2, step 3
    assert stopped.returncode == 130, stopped.stderr
    assert supcon("pretrain", "--resume", str(tmp_path / "run")).returncode == 0

    def outcome(d):
        lines = [{k: v for k, v in json.loads(x).items() if "seconds" not in k}
                 for x in (d / "metrics.jsonl").read_text().splitlines()]
        return lines, json.loads((d / "results.json").read_text())["runs"][0]["stage1_loss"]

    assert outcome(tmp_path / "run") == outcome(tmp_path / "ref")


@pytest.mark.parametrize("options, message", [
    ({"ce_weight": 1.5}, "ce_weight must be in [0, 1]"),
    ({"queue": -1}, "queue must not be negative"),
    ({"momentum_encoder": 1.0}, "momentum_encoder must be in [0, 1)"),
    ({"queue": 64, "loss": "maxmargin"}, "--queue needs a supervised supcon loss"),
    ({"methods": "ce,supcon,dino"}, "methods must be distinct names among supcon, supcon-finetune, supcon+ce, ce"),
    ({"methods": "ce,ce"}, "methods must be distinct names"),
    ({"stage2": "partial"}, "stage2 must be one of linear, finetune"),
    ({"finetune_lr": 0}, "finetune_lr must be positive"),
])
def test_bad_values_are_one_line_errors(options, message, capsys):
    with pytest.raises(ValueError, match=re.escape(message)):
        Config(**options)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    command = "compare" if "methods" in options else "pretrain" if "stage2" not in options and "finetune_lr" not in \
        options else "linear"
    if command == "linear":
        return  # linear needs a run; the Config check above is the same one
    code, _, err = run_cli(capsys, command, *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message.split(" [")[0].split(" (")[0] in err


def test_compare_trains_every_form_side_by_side(tmp_path, capsys):
    options = {**QUICK, "epochs": 1, "linear_epochs": 2}
    code, out, _ = run_cli(capsys, "compare", *[f"--{k.replace('_', '-')}={v}" for k, v in options.items()
                                                 if k not in ("quiet", "tsne")], "--quiet", "--no-tsne",
                           "--methods", "ce,supcon,supcon-finetune,supcon+ce", "--out", tmp_path)
    assert code == 0
    for name in ("SupCon + linear", "SupCon + fine-tuning", "SupCon + CE, joint", "cross-entropy"):
        assert f"| {name} |" in out
    assert out.count("one seed, so no verdict on the methods") == 3  # one line for each form against CE
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["methods"]) == ["supcon", "supcon-finetune", "supcon+ce", "ce"]
    assert set(results["differences"]) == {"supcon", "supcon-finetune", "supcon+ce"}
    assert results["difference"] == results["differences"]["supcon"]
    assert [r["method"] for r in results["runs"]] == ["supcon", "supcon-finetune", "supcon+ce", "ce"]
    # the fine-tuned SupCon starts from the linear one's stage 1, and counts its time
    tuned = json.loads((tmp_path / "supcon-finetune" / "results.json").read_text())["runs"][0]
    assert tuned["encoder_from"] == str(tmp_path / "supcon") and tuned["stage2"] == "finetune"
    linear = results["runs"][0]
    assert tuned["seconds"] > linear["pretrain_seconds"]
    _a_comparison_written_before_the_registry_reads_the_same(tmp_path, capsys)


def _as_written_before_the_registry(summary: dict) -> dict:
    """A summary as the versions before the method registry wrote it: ``method`` the stage-1 method (supcon,
    simclr, ce), the joint objective and fine-tuning known by their ``loss`` and ``stage2``, no ``encoder_method``."""
    old = {k: v for k, v in summary.items() if k != "encoder_method"}
    old["method"] = summary.get("encoder_method") or ("ce" if summary["method"] == "ce" else "supcon")
    return old


def _a_comparison_written_before_the_registry_reads_the_same(run_dir, capsys):
    import shutil

    from supcon.runs import RunDir

    old = run_dir.parent / f"{run_dir.name}-old"
    shutil.copytree(run_dir, old)
    for path in old.rglob("results.json"):
        results = json.loads(path.read_text())
        # the comparison's own results.json tagged each run with its --methods name, its "form"
        tag = path.parent == old
        results["runs"] = [{**_as_written_before_the_registry(r), **({"form": r["method"]} if tag else {})}
                           for r in results["runs"]]
        path.write_text(json.dumps(results))
    assert json.loads((old / "supcon-finetune" / "results.json").read_text())["runs"][0]["method"] == "supcon"
    for name in ("supcon", "supcon-finetune", "supcon+ce", "ce"):
        assert RunDir(old / name).method() == name == RunDir(run_dir / name).method()
    assert [r["method"] for r in RunDir(old).results()["runs"]] == ["supcon", "supcon-finetune", "supcon+ce", "ce"]
    for place in (run_dir, old):
        code, _, err = run_cli(capsys, "report", str(place), "--out", str(place / "r.md"))
        assert code == 0, err
    table = lambda d: [line for line in (d / "r.md").read_text().splitlines() if line.startswith("| ")]  # noqa: E731
    assert table(old) == table(run_dir)
    code, _, err = run_cli(capsys, "knn", str(old / "supcon-finetune"))
    assert code == 0, err
    code, out, err = run_cli(capsys, "compare", "--resume", str(old), "--quiet")  # all four finished: kept
    assert code == 0, err
    assert "| SupCon + fine-tuning |" in out and "| SupCon + CE, joint |" in out


def test_a_finished_comparison_resumed_with_more_methods_trains_only_the_new_ones(tmp_path, capsys, monkeypatch):
    import supcon.stages.run

    options = [f"--{k.replace('_', '-')}={v}" for k, v in {**QUICK, "epochs": 1, "linear_epochs": 2}.items()
               if k not in ("quiet", "tsne")]
    code, _, err = run_cli(capsys, "compare", *options, "--quiet", "--no-tsne", "--out", tmp_path)
    assert code == 0, err
    before = json.loads((tmp_path / "results.json").read_text())

    def retrained(*a, **kw):
        raise AssertionError("a finished method was trained again")

    monkeypatch.setattr(supcon.stages.run, "pretrain", retrained)
    monkeypatch.setattr(supcon.stages.run, "train_ce", retrained)
    code, out, err = run_cli(capsys, "compare", "--resume", tmp_path, "--methods", "ce,supcon,supcon-finetune",
                             "--quiet")
    assert code == 0, err
    after = json.loads((tmp_path / "results.json").read_text())
    assert list(after["methods"]) == ["supcon", "supcon-finetune", "ce"]
    assert all(after["methods"][m] == before["methods"][m] for m in ("supcon", "ce"))
    assert "| SupCon + fine-tuning |" in out
    # dropping a method is not resuming the same comparison
    code, _, err = run_cli(capsys, "compare", "--resume", tmp_path, "--methods", "supcon,supcon-finetune")
    assert code == 2 and "--methods supcon,supcon-finetune differs" in err
