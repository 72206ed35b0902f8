"""The one training loop: optimizers, schedules, batches, early stopping and its messages."""

import math

import pytest
import torch
from torch import nn

from supcon.engine.batches import shuffled_batches
from supcon.engine.loop import FitOptions, Trainable, fit
from supcon.engine.optim import build_optimizer, build_schedule


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_build_optimizer(name):
    opt = build_optimizer(name, nn.Linear(3, 2).parameters(), lr=0.1, weight_decay=1e-4, momentum=0.8)
    expected = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                "rmsprop": torch.optim.RMSprop}[name]
    assert type(opt) is expected
    group = opt.param_groups[0]
    assert group["lr"] == 0.1 and group["weight_decay"] == 1e-4
    if name == "sgd":
        assert group["momentum"] == 0.8 and not group["nesterov"]


def test_build_optimizer_leaves_out_frozen_parameters():
    frozen, trained = nn.Linear(3, 3).requires_grad_(False), nn.Linear(3, 2)
    opt = build_optimizer("sgd", [*frozen.parameters(), *trained.parameters()], lr=0.1)
    assert [p for g in opt.param_groups for p in g["params"]] == list(trained.parameters())


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


def test_stopping_on_knn_accuracy_counts_only_the_epochs_it_was_measured():
    """Stage 1's monitor may skip epochs (``--knn-every 2``): those neither improve nor count against patience,
    and the steps taken are counted."""
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    curve = iter([{"knn_acc": 0.5}, {}, {"knn_acc": 0.8}, {}, {"knn_acc": 0.7}, {}, {"knn_acc": 0.6}, {}])
    weights = []

    def evaluate():
        weights.append(model.weight.detach().clone())
        return next(curve)

    batch = [torch.ones(2, 2), torch.tensor([0, 1])]
    result = fit(Trainable(model, lambda b: (nn.functional.cross_entropy(model(b[0]), b[1]), None),
                           lambda e: iter([batch, batch]), 2, opt, evaluate=evaluate),
                 FitOptions(epochs=8, patience=2, monitor="knn_acc", progress=False))
    assert result.best_epoch == 3 and result.stopped_early and len(result.history) == 7
    assert torch.equal(model.weight, weights[2]) and result.steps == 14
