import json
import math

import pytest
import torch
from torch import nn

from supcon.config import Config
from supcon.data import load_dataset
from supcon.device import resolve_device
from supcon.engine.batches import shuffled_batches
from supcon.engine.loop import FitOptions, Trainable, fit
from supcon.engine.optim import build_optimizer, build_schedule
from supcon.evaluate.inference import predicted_class
from supcon.io import read_json
from supcon.runs.load import load_encoder
from supcon.stages import train_run
from supcon.stages.common import classification_loss, stage_context
from supcon.stages.pretrain import loss_floor
from supcon.stages.probe import linear_probe

QUICK = dict(dataset="digits", max_train=300, max_val=150, epochs=2, linear_epochs=4, batch_size=64,
             quiet=True, tsne=False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", max_train=300, max_val=150)


@pytest.fixture(scope="module")
def pretrained(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    return out, train_run("pretrain", Config(**QUICK), digits, out)


# ------------------------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_build_optimizer(name):
    opt = build_optimizer(name, nn.Linear(3, 2).parameters(), lr=0.1, weight_decay=1e-4)
    assert opt.param_groups[0]["lr"] == 0.1


def test_build_optimizer_rejects_unknown():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer("lbfgs", nn.Linear(3, 2).parameters(), lr=0.1)


def _lrs(schedule, steps=20, per_epoch=2, **kw):
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    sched = build_schedule(opt, schedule, steps, per_epoch, **kw)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_schedules():
    assert _lrs("fixed") == [1.0] * 20
    cosine = _lrs("cosine")
    assert cosine[0] == 1.0 and cosine[-1] < 0.01 and all(a >= b for a, b in zip(cosine, cosine[1:], strict=False))
    assert _lrs("step", step_epochs=5, step_gamma=0.5)[::10] == [1.0, 0.5]
    warm = _lrs("cosine", warmup_epochs=2)  # 4 warm-up steps
    assert warm[:4] == [0.25, 0.5, 0.75, 1.0] and warm[4] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="schedule must be"):
        _lrs("linear")


def test_shuffled_batches_drop_a_trailing_single_image():
    g = torch.Generator().manual_seed(0)
    batches = shuffled_batches(9, 4, g)
    assert [len(b) for b in batches] == [4, 4]
    assert sorted(torch.cat(shuffled_batches(10, 4, g)).tolist()) == list(range(10))


def test_early_stopping_restores_the_best_epoch(digits):
    """A scripted validation curve: best at epoch 2, then no gain for `patience` epochs."""
    x = digits.train.images.flatten(1).float() / 255
    y = digits.train.labels
    model = nn.Linear(x.shape[1], 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    curve = iter([0.5, 0.7, 0.6, 0.65, 0.7, 0.9])
    weights = []

    def step(batch):
        logits = model(batch[0])
        return nn.functional.cross_entropy(logits, batch[1]), None

    def evaluate():
        weights.append(model.weight.detach().clone())
        return {"val_acc": next(curve)}

    result = fit(Trainable(model, step, lambda epoch: iter([[x, y]]), 1, opt, evaluate=evaluate),
                 FitOptions(epochs=6, patience=3, progress=False))
    assert result.stopped_early and len(result.history) == 5
    assert result.best_epoch == 2 and result.best_val_acc == 0.7
    assert torch.equal(model.weight, weights[1])
    assert not torch.equal(model.weight, weights[-1])


def test_non_finite_loss_stops_with_a_clear_message():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(batch):
        return (model(batch[0]).sum() * 0 + math.inf), None

    with pytest.raises(FloatingPointError, match="loss became inf at epoch 1"):
        fit(Trainable(model, step, lambda e: iter([[torch.ones(2, 2), torch.zeros(2)]]), 1, opt),
            FitOptions(epochs=1, progress=False))


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
    assert run["method"] == "supcon" and run["stage1_loss"] == pytest.approx(lines[-1]["loss"])


def test_pretrain_is_deterministic_on_cpu(digits, pretrained):
    _, first = pretrained
    again = train_run("pretrain", Config(**QUICK), digits)
    assert [r["loss"] for r in again.fit.history] == [r["loss"] for r in first.fit.history]


def test_linear_probe_keeps_the_encoder_frozen(digits, pretrained):
    _, stage1 = pretrained
    before = {k: v.clone() for k, v in stage1.encoder.state_dict().items()}
    for augment in ("none", "crop"):
        probe = linear_probe(stage_context(Config(**QUICK, linear_augment=augment)), digits, stage1.encoder)
        assert 0.0 <= probe.summary["val_acc"] <= 1.0
        after = stage1.encoder.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), f"encoder changed with {augment}"


def test_linear_probe_run_completes_a_pretrain_directory(pretrained, digits):
    out, _ = pretrained
    result = train_run("linear", Config(**QUICK, run=str(out)), digits)
    run = read_json(out / "results.json")["runs"][0]
    assert run["val_acc"] == result.summary["val_acc"] and run["train_acc"] is not None
    assert run["stage1_loss"] is not None and run["epochs"] == 2
    assert (out / "linear.safetensors").is_file()
    train_run("linear", Config(**QUICK, run=str(out)), digits)  # a second probe replaces the first one's lines
    stages = [json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert stages.count("pretrain") == 2 and stages.count("linear") == result.summary["linear_epochs"]
    encoder, cfg, inputs = load_encoder(out)
    assert (inputs.channels, inputs.image_size) == (1, 8) and cfg.epochs == 2


def test_linear_probe_run_rejects_a_ce_run(digits, tmp_path):
    train_run("ce", Config(**{**QUICK, "epochs": 1}), digits, tmp_path)
    with pytest.raises(ValueError, match="is a cross-entropy run"):
        train_run("linear", Config(**QUICK, run=str(tmp_path)), digits)


def test_load_encoder_rejects_a_plain_directory(tmp_path):
    with pytest.raises(ValueError, match="is not a run directory"):
        load_encoder(tmp_path)


def test_simclr_and_supcon_in_and_one_view_mode_train(digits):
    for changes in ({"loss": "simclr"}, {"loss": "supcon_in", "contrast_mode": "one"}, {"views": 3}):
        result = train_run("pretrain", Config(**{**QUICK, "epochs": 1, **changes}), digits)
        assert math.isfinite(result.summary["stage1_loss"])
    simclr = train_run("pretrain", Config(**{**QUICK, "epochs": 1, "loss": "simclr"}), digits)
    assert simclr.summary["method"] == "simclr"


def test_normalize_records_the_training_statistics(digits, tmp_path):
    train_run("ce", Config(**{**QUICK, "epochs": 1, "normalize": True}), digits, tmp_path)
    inputs = read_json(tmp_path / "results.json")["input"]
    x = digits.train.images.float() / 255
    assert inputs["mean"] == pytest.approx([x.mean().item()], rel=1e-5)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


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
    assert ce.model.fc.out_features == 1 and 0 <= ce.summary["val_acc"] <= 1
    probe = linear_probe(stage_context(cfg), data, ce.encoder)
    assert probe.model.fc.out_features == 1
    assert "val_loss" in probe.fit.history[0]
    with pytest.raises(ValueError, match="needs a two-class data set; this one has 10 classes"):
        train_run("ce", cfg, load_dataset("digits", max_train=100, max_val=50))


def test_early_stopping_on_val_loss_keeps_the_lowest_loss_epoch():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    curve = iter([(0.5, 1.0), (0.6, 0.4), (0.7, 0.5), (0.8, 0.6)])  # accuracy rises while the loss does not

    def evaluate():
        acc, loss = next(curve)
        return {"val_acc": acc, "val_loss": loss}

    batch = [torch.ones(2, 2), torch.tensor([0, 1])]
    result = fit(Trainable(model, lambda b: (nn.functional.cross_entropy(model(b[0]), b[1]), None),
                           lambda e: iter([batch]), 1, opt, evaluate=evaluate),
                 FitOptions(epochs=4, patience=2, monitor="val_loss", progress=False))
    assert result.best_epoch == 2 and result.best_val_acc == 0.6 and result.stopped_early


def test_loss_floor_and_stage1_progress(digits):
    assert loss_floor(torch.tensor([0, 0, 1, 1]), 2) == pytest.approx(math.log(3))
    assert loss_floor(torch.tensor([0, 1, 2]), 2) == 0.0  # only its other view: log 1
    assert loss_floor(None, 3) == pytest.approx(math.log(2))
    summary = train_run("pretrain", Config(**{**QUICK, "epochs": 1}), digits).summary
    assert summary["stage1_loss_floor"] < summary["stage1_loss"] <= summary["stage1_loss_start"] + 0.5
    assert summary["stage1_progress"] < 1


def test_ce_that_never_trained_is_called_out(tmp_path, capsys):
    """A CE baseline at chance (the study's, at 0.25 on five classes) gets a note; a trained one does not."""
    from supcon.cli import main
    from supcon.reporting.notes import ce_note

    # digits, SGD at 1e-9: the network never moves, so it scores what one guessed class scores
    assert main(["ce", "--epochs", "1", "--optimizer", "sgd", "--lr", "1e-9", "--max-train", "200", "--quiet",
                 "--out", str(tmp_path / "ce")]) == 0
    summary = read_json(tmp_path / "ce" / "results.json")["runs"][0]
    assert summary["val_chance"] == pytest.approx(0.104, abs=0.001)  # the largest of the 10 digit classes
    out = capsys.readouterr().out
    assert f"Cross-entropy never trained: its validation accuracy ({summary['val_acc']:.3f}) stayed at chance" in out
    trained = {"method": "ce", "val_acc": 0.75, "val_chance": 0.2}
    assert ce_note(trained) is None and ce_note({**trained, "val_acc": 0.248}).startswith("Cross-entropy never")
    assert ce_note({"method": "supcon", "val_acc": 0.2, "val_chance": 0.2}) is None
    assert ce_note({"method": "ce", "val_acc": 0.2}) is None  # results written before val_chance existed


def test_convergence_note_speaks_only_when_stage1_stalled():
    from supcon.reporting.notes import convergence_note

    run = {"method": "supcon", "stage1_loss_start": 5.5, "stage1_loss": 5.2, "stage1_loss_floor": 3.9,
           "stage1_progress": 0.3 / 1.6}
    note = convergence_note(run)
    assert note.startswith("Stage 1 did not converge: its loss went from 5.500 to 5.200, only 19% of the way")
    assert "give it more --epochs" in note
    assert convergence_note({**run, "stage1_progress": 0.8}) is None
    assert convergence_note({"method": "ce", "stage1_progress": None}) is None
    # the kNN monitor saw the features stop improving half-way: then more epochs is not the advice
    stalled = {**run, "knn_curve": [[0, 0.3], [1, 0.6], [2, 0.61], [3, 0.61], [4, 0.61], [5, 0.61], [6, 0.61]]}
    note = convergence_note(stalled)
    assert "stopped improving early" in note and "give it more --epochs" not in note
