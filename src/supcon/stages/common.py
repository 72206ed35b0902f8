"""What every stage shares: its context (device, precision, run directory, checkpoints, tracker), its result, the
data a config names, and the classification step of the probe and the CE baseline."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from supcon import data as datasets
from supcon.augment import Inputs
from supcon.config import Config
from supcon.device import amp_dtype, as_model_input, autocast, resolve_device
from supcon.engine import distributed
from supcon.engine.callbacks import Callback
from supcon.engine.checkpoint import Checkpoints
from supcon.engine.loop import FitOptions, FitResult
from supcon.engine.optim import build_optimizer, build_schedule
from supcon.engine.tracking import Tracker
from supcon.evaluate.inference import accuracy, correct, hits_text, predicted_class
from supcon.models import Encoder
from supcon.runs import RunDir


@dataclass
class StageResult:
    """What a stage returns: its summary (for ``results.json``), how its loop went, and the trained modules."""

    summary: dict[str, Any]
    fit: FitResult
    encoder: Encoder
    model: nn.Module
    inputs: Inputs


@dataclass
class StageContext:
    """Where a stage runs: its options, device and autocast dtype, run directory (None on the other processes of
    a distributed run, and for a run kept in memory), checkpoints, tracker, and the caller's callbacks, which
    every stage's loop runs after the stage's own."""

    cfg: Config
    device: torch.device
    dtype: torch.dtype | None
    run: RunDir | None
    tracker: Tracker
    checkpoints: Checkpoints | None = None
    callbacks: Sequence[Callback] = ()
    # the run directory as the other processes of a distributed run see it: they read it (its checkpoints, its
    # finished stages) to go where rank 0 goes; rank 0 alone writes, through ``run``
    shared: RunDir | None = None

    @property
    def reads(self) -> RunDir | None:
        """The run directory to read, on every process: ``run`` on rank 0, ``shared`` on the others."""
        return self.run if self.run is not None else self.shared

    def for_stage(self, stage: str) -> StageContext:
        """This context with ``stage``'s checkpoints, and the global generator seeded for the stage.

        No checkpoints without a run directory or with ``keep_checkpoints`` 0. A run that does not resume deletes
        the stage's old ones first: they belong to an earlier run in this directory, and a later ``--resume``
        must not mistake them for this run's. Each process seeds its own augmentations (DDP copies rank 0's
        initial weights to all)."""
        torch.manual_seed(self.cfg.seed + distributed.rank())
        cfg, checkpoints = self.cfg, None
        if self.reads is not None:
            checkpoints = self.reads.checkpoints(stage, max(1, cfg.keep_checkpoints), cfg.ckpt_every, cfg.to_dict())
            if cfg.resume is None and self.run is not None:
                checkpoints.clear()
            checkpoints = checkpoints if cfg.keep_checkpoints > 0 else None
        return dataclasses.replace(self, checkpoints=checkpoints)

    def fit_options(self, stage: str, epochs: int, monitor: str | None = None) -> FitOptions:
        """How the loop trains ``stage`` here: the config's options (the one stopping policy, ``cfg.patience``, on
        ``monitor``, by default ``cfg.monitor``), this run's metrics file and checkpoints."""
        cfg = self.cfg
        return FitOptions(epochs=epochs, stage=stage, patience=cfg.patience, monitor=monitor or cfg.monitor,
                          grad_clip=cfg.grad_clip, metrics_path=self.run.metrics_path if self.run else None,
                          progress=not cfg.quiet, on_epoch=self.tracker.log_metrics, checkpoints=self.checkpoints,
                          resume=cfg.resume is not None, detect_anomaly=cfg.detect_anomaly,
                          callbacks=self.callbacks)


def stage_context(cfg: Config, out: str | Path | None = None, tracker: Tracker | None = None,
                  callbacks: Sequence[Callback] = ()) -> StageContext:
    """The context of a run's stages: under torchrun this joins the process group, and only rank 0 gets the run
    directory (the others write nothing). Without ``out`` the stages run in memory (their metrics and
    checkpoints are not written); without ``tracker`` nothing is tracked.

    >>> stage2 = linear_probe(stage_context(cfg), data, encoder)      # a probe on any encoder, in memory
    """
    tracker = tracker if tracker is not None else Tracker()
    device = distributed.init(resolve_device(cfg.device))
    run = RunDir(out) if out is not None and distributed.is_main() else None
    shared = RunDir(out) if out is not None and not distributed.is_main() else None
    return StageContext(cfg, device, amp_dtype(cfg.amp, device), run, tracker, callbacks=tuple(callbacks),
                        shared=shared)


def load_data(cfg: Config) -> datasets.DataSplits:
    """The data a config names (:func:`supcon.data.load_data`); in a distributed run one process per machine
    downloads and extracts it, the others then read its cache."""
    with distributed.main_first():
        return datasets.load_data(cfg, progress=not cfg.quiet and distributed.is_main())


def optimizer_and_schedule(cfg: Config, params, steps_per_epoch: int, epochs: int, name: str, lr: float,
                           weight_decay: float):
    optimizer = build_optimizer(name, params, lr, weight_decay, cfg.momentum, cfg.nesterov)
    scheduler = build_schedule(optimizer, cfg.schedule, epochs * steps_per_epoch, steps_per_epoch,
                               cfg.warmup_epochs, cfg.step_epochs, cfg.step_gamma)
    return optimizer, scheduler


def policy_options(cfg: Config) -> dict[str, Any]:
    """The augmentation options of :func:`supcon.augment.view_transform` that a config sets."""
    return {"crop_scale": cfg.crop_scale, "hflip": cfg.hflip, "blur": cfg.blur, "batched": cfg.batch_augment}


def compiled(model: nn.Module, cfg: Config):
    """``model``'s forward, through ``torch.compile`` with ``cfg.compile``. The module itself stays as it is, so
    its state dict, train/eval switches and saved weights are untouched; only the training step calls this."""
    return torch.compile(model) if cfg.compile else model


def scaler_for(dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling; bf16 and fp32 do not."""
    return torch.amp.GradScaler("cuda") if dtype == torch.float16 else None


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; for a binary head (one logit) sigmoid + binary cross-entropy, as the study did."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype))
    return F.cross_entropy(logits, labels)


def test_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """The test split's numbers in a run summary: ``test_acc``, and ``test_correct``, which images were classified
    right ("0"/"1" per image, in the split's order), from which the comparisons' paired intervals are computed.
    A stage computes them once, after training and after every choice was made on the validation split."""
    hits = correct(logits, labels)
    return {"test_acc": hits.float().mean().item(), "test_correct": hits_text(hits)}


def validation_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``val_acc`` and ``val_loss`` of validation logits: what a classifier's ``evaluate`` hook returns."""
    return {"val_acc": accuracy(logits, labels), "val_loss": classification_loss(logits, labels).item()}


def classification_step(forward, device: torch.device, dtype: torch.dtype | None):
    """The training step of a classifier: the batch's loss (the global batch's mean in a distributed run) and
    the number it classifies right."""
    def step(batch):
        x, y = batch
        with autocast(device, dtype):
            logits = forward(as_model_input(x, device))
        logits = logits.float()
        loss = distributed.global_mean(classification_loss(logits, y), len(y))
        return loss, int((predicted_class(logits) == y).sum())
    return step
