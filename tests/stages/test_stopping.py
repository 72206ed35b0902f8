"""The one stopping policy (``--patience``): every stage stops after that many epochs without a better validation
score and restores its best epoch (stage 1 watches its kNN accuracy, the others validation accuracy); with 0
every stage trains its whole budget and keeps its last epoch. Each run states the optimizer steps it took."""

import math

import pytest
import torch
from conftest import QUICK

from supcon.config import Config
from supcon.evaluate.curves import read_metrics
from supcon.methods import METHODS
from supcon.stages import train_run
from supcon.stages.knn_monitor import encoder_knn

WATCHED = {"pretrain": "knn_acc", "ce": "val_acc", "linear": "val_acc", "finetune": "val_acc"}
STEPS = {"pretrain": "pretrain_steps", "ce": "steps", "linear": "linear_steps", "finetune": "linear_steps"}


def _history(records, stage):
    return [r for r in records if r.get("stage") == stage]


@pytest.mark.parametrize("method", ["ce", "supcon", "supcon-finetune"])
def test_every_stage_restores_its_best_validation_epoch(method, digits, tmp_path):
    # a high stage-1 rate and 8 epochs at patience 2: curves that peak and stop before their budget
    cfg = Config(**{**QUICK, "epochs": 8, "linear_epochs": 8, "patience": 2, "lr": 0.5, "finetune_lr": 0.05})
    result = train_run(method, cfg, digits, tmp_path)
    summary, records = result.summary, read_metrics(tmp_path)
    stages = METHODS[method].stages_for(cfg.replace(stage2="finetune" if method == "supcon-finetune" else "linear"))
    for stage in stages:
        history = _history(records, stage)
        scores = [r[WATCHED[stage]] for r in history]
        assert all(s is not None for s in scores), f"{stage} was not validated every epoch"
        best = scores.index(max(scores)) + 1  # the first of equal bests, as the loop keeps it
        budget = cfg.epochs if stage in ("pretrain", "ce") else cfg.linear_epochs
        assert len(history) == min(budget, best + cfg.patience), f"{stage}: stopped at {len(history)}, best {best}"
        kept = summary["pretrain_best_epoch"] if stage == "pretrain" else summary["best_epoch"]
        assert kept == best, stage
        if stage == "pretrain":
            assert summary["knn_acc"] == pytest.approx(scores[best - 1])
            if method == "supcon":  # the probe leaves the encoder as stage 1 kept it: its weights are the best epoch's
                assert encoder_knn(result.encoder, digits, result.inputs, torch.device("cpu"), cfg) == \
                    pytest.approx(scores[best - 1])
            assert summary["stage1_loss"] == pytest.approx(history[best - 1]["loss"])
        else:
            assert summary["val_acc"] == pytest.approx(scores[best - 1], abs=1e-6)
        steps_per_epoch = math.ceil(len(digits.train) / cfg.batch_size)
        assert summary[STEPS[stage]] in range((len(history) - 1) * steps_per_epoch + 1,
                                              len(history) * steps_per_epoch + 1), stage


def test_patience_zero_trains_every_stage_to_its_budget_and_keeps_the_last_epoch(digits, tmp_path):
    cfg = Config(**{**QUICK, "epochs": 3, "linear_epochs": 3, "patience": 0, "lr": 0.5})
    result = train_run("supcon", cfg, digits, tmp_path)
    records = read_metrics(tmp_path)
    assert [len(_history(records, s)) for s in ("pretrain", "linear")] == [3, 3]
    assert result.summary["pretrain_best_epoch"] == 3 and not result.summary["pretrain_stopped_early"]
    assert result.summary["knn_acc"] == pytest.approx(_history(records, "pretrain")[-1]["knn_acc"])
