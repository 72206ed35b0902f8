import json
import math
import shutil

import pytest
import torch
from conftest import QUICK
from torch import nn

from supcon.config import Config
from supcon.data import load_dataset
from supcon.evaluate.inference import predicted_class
from supcon.io import read_json
from supcon.runs.load import load_encoder
from supcon.stages import train_run
from supcon.stages.common import classification_loss, stage_context
from supcon.stages.pretrain import loss_floor
from supcon.stages.probe import linear_probe


@pytest.fixture(scope="module")
def pretrained(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    return out, train_run("supcon", Config(**QUICK), digits, out, until="pretrain")


# ------------------------------------------------------------------------------------------- stages on digits


def test_pretrain_writes_a_run_directory(pretrained):
    out, result = pretrained
    for name in ("config.yaml", "metrics.jsonl", "results.json", "encoder.safetensors", "projection.safetensors",
                 "curves.png"):
        assert (out / name).is_file(), name
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and all(r["stage"] == "pretrain" for r in lines)
    assert all(math.isfinite(r["loss"]) for r in lines)
    run = read_json(out / "results.json")["runs"][0]
    kept = lines[run["pretrain_best_epoch"] - 1]  # the epoch of the best kNN accuracy, which stage 1 restored
    assert kept["knn_acc"] == max(r["knn_acc"] for r in lines)
    assert run["method"] == "supcon" and run["stage1_loss"] == pytest.approx(kept["loss"])


def test_pretrain_is_deterministic_on_cpu(digits, pretrained):
    _, first = pretrained
    again = train_run("supcon", Config(**QUICK), digits, until="pretrain")
    assert [r["loss"] for r in again.fit.history] == [r["loss"] for r in first.fit.history]


def test_linear_probe_keeps_the_encoder_frozen(digits, pretrained):
    _, stage1 = pretrained
    before = {k: v.clone() for k, v in stage1.encoder.state_dict().items()}
    for augment in ("none", "crop"):
        linear_probe(stage_context(Config(**QUICK, linear_augment=augment)), digits, stage1.encoder)
        after = stage1.encoder.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), f"encoder changed with {augment}"


def test_linear_probe_run_completes_a_pretrain_directory(pretrained, digits, tmp_path):
    # On a copy: the module's other tests read the pretrain directory as stage 1 left it, in any order.
    out = tmp_path / "run"
    shutil.copytree(pretrained[0], out)
    result = train_run("supcon", Config(**QUICK, run=str(out)), digits)
    run = read_json(out / "results.json")["runs"][0]
    assert run["val_acc"] == result.summary["val_acc"] and run["train_acc"] is not None
    assert run["stage1_loss"] is not None and run["epochs"] == 2
    assert (out / "linear.safetensors").is_file()
    train_run("supcon", Config(**QUICK, run=str(out)), digits)  # a second probe replaces the first one's lines
    stages = [json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert stages.count("pretrain") == 2 and stages.count("linear") == result.summary["linear_epochs"]
    encoder, cfg, inputs = load_encoder(out)
    assert (inputs.channels, inputs.image_size) == (1, 8) and cfg.epochs == 2


def test_linear_probe_run_rejects_a_ce_run(digits, tmp_path):
    train_run("ce", Config(**{**QUICK, "epochs": 1}), digits, tmp_path)
    with pytest.raises(ValueError, match="is a cross-entropy run"):
        train_run("supcon", Config(**QUICK, run=str(tmp_path)), digits)


def test_load_encoder_rejects_a_plain_directory(tmp_path):
    with pytest.raises(ValueError, match="is not a run directory"):
        load_encoder(tmp_path)


def test_simclr_and_supcon_in_and_one_view_mode_train(digits):
    for changes in ({"loss": "simclr"}, {"loss": "supcon_in", "contrast_mode": "one"}, {"views": 3}):
        result = train_run("supcon", Config(**{**QUICK, "epochs": 1, **changes}), digits, until="pretrain")
        assert math.isfinite(result.summary["stage1_loss"])
    simclr = train_run("supcon", Config(**{**QUICK, "epochs": 1, "loss": "simclr"}), digits, until="pretrain")
    assert simclr.summary["method"] == "simclr"


def test_normalize_records_the_training_statistics(digits, tmp_path):
    train_run("ce", Config(**{**QUICK, "epochs": 1, "normalize": True}), digits, tmp_path)
    inputs = read_json(tmp_path / "results.json")["input"]
    x = digits.train.images.float() / 255
    assert inputs["mean"] == pytest.approx([x.mean().item()], rel=1e-5)


# ------------------------------------------------------------------------------------------- heads and monitors


def test_binary_head_loss_equals_two_class_softmax():
    """sigmoid(l) is softmax([0, l])[1]: one logit and BCE is the two-class softmax with one logit fixed."""
    torch.manual_seed(0)
    logit = torch.randn(16, 1)
    y = torch.randint(0, 2, (16,))
    two = torch.cat([torch.zeros_like(logit), logit], 1)
    assert classification_loss(logit, y).item() == pytest.approx(
        nn.functional.cross_entropy(two, y).item(), rel=1e-6)
    assert torch.equal(predicted_class(logit), two.argmax(1))


def test_binary_head_trains_on_cats_vs_dogs(shared_data, tmp_path):
    data = load_dataset(f"npz:{shared_data / 'cats_vs_dogs_64.npz'}", image_size=16, max_train=256, max_val=128)
    cfg = Config(**{**QUICK, "dataset": "cats", "epochs": 1, "linear_epochs": 2, "head": "binary",
                    "encoder": "smallcnn"})
    ce = train_run("ce", cfg, data, tmp_path / "ce")
    assert ce.model.fc.out_features == 1  # one logit; one epoch at 16 px is still at chance (0.5), not asserted
    probe = linear_probe(stage_context(cfg), data, ce.encoder)
    assert probe.model.fc.out_features == 1
    assert "val_loss" in probe.fit.history[0]
    with pytest.raises(ValueError, match="needs a two-class data set; this one has 10 classes"):
        train_run("ce", cfg, load_dataset("digits", max_train=100, max_val=50))


def test_loss_floor_and_stage1_progress(digits):
    assert loss_floor(torch.tensor([0, 0, 1, 1]), 2) == pytest.approx(math.log(3))
    assert loss_floor(torch.tensor([0, 1, 2]), 2) == 0.0  # only its other view: log 1
    assert loss_floor(None, 3) == pytest.approx(math.log(2))
    summary = train_run("supcon", Config(**{**QUICK, "epochs": 1}), digits, until="pretrain").summary
    assert summary["stage1_loss_floor"] < summary["stage1_loss"] <= summary["stage1_loss_start"] + 0.5
    assert summary["stage1_progress"] < 1


