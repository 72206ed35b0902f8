"""Stage 1: an encoder and projection head trained with a contrastive loss, watched by the kNN monitor.

>>> from supcon.config import Config
>>> from supcon.stages import load_data, train_run
>>> cfg = Config(dataset="digits", epochs=5)
>>> result = train_run("pretrain", cfg, load_data(cfg), "runs/digits")
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from supcon.augment import Inputs, multiview_transform
from supcon.config import Config
from supcon.data import DataSplits
from supcon.device import as_model_input, autocast, place
from supcon.engine import distributed
from supcon.engine.batches import EpochBatches
from supcon.engine.gradcache import GradCache
from supcon.engine.loop import Trainable, fit
from supcon.losses import MaxMarginContrastiveLoss, NPairsLoss, SupConLoss
from supcon.models import ProjectionHead, SupConModel, build_encoder
from supcon.stages.common import (
    StageContext,
    StageResult,
    compiled,
    optimizer_and_schedule,
    policy_options,
    scaler_for,
)
from supcon.stages.knn_monitor import KnnMonitor

PAIRWISE_LOSSES = ("maxmargin", "npairs")  # no anchors= option: they cannot run on a gathered batch


def stage1_criterion(cfg: Config) -> nn.Module:
    """The stage-1 loss ``cfg.loss`` names, with its options."""
    if cfg.loss == "maxmargin":
        return MaxMarginContrastiveLoss(cfg.margin, cfg.margin_distance, block_size=cfg.loss_block_size)
    if cfg.loss == "npairs":
        return NPairsLoss(cfg.temperature, block_size=cfg.loss_block_size)
    return SupConLoss(cfg.temperature, cfg.base_temperature, variant="in" if cfg.loss == "supcon_in" else "out",
                      contrast_mode=cfg.contrast_mode, block_size=cfg.loss_block_size)


def loss_floor(labels: torch.Tensor | None, views: int, loss: str = "supcon") -> float:
    """The smallest stage-1 loss a batch allows, approached when every class collapses to a point and the
    classes sit far apart. Comparing the loss with its start and this floor tells whether stage 1 converged,
    whatever the batch.

    SupCon (L_out, and L_in, which is never below it; SimCLR without labels): the mean over anchors of
    log |P(i)|, with |P(i)| = views x (same-label images) - 1. npairs counts the anchor among its own positives:
    the mean of log(views x same-label images). max-margin: 0 (positives at distance 0, negatives beyond the
    margin, which the unit sphere affords for any handful of classes).
    """
    if loss == "maxmargin":
        return 0.0
    own = 0 if loss == "npairs" else 1
    if labels is None:
        positives = torch.full((1,), views - own, dtype=torch.float64)
    else:
        _, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
        positives = (views * counts[inverse] - own).double()
    positives = positives[positives > 0]
    return positives.log().mean().item() if len(positives) else 0.0


@dataclass
class Stage1:
    """What stage 1 trains, built by :func:`build_stage1`: the model, the loss, the views and the loop's
    :class:`~supcon.engine.loop.Trainable` (``benchmarks/bench_train.py`` times the same objects)."""

    model: SupConModel
    criterion: nn.Module
    views: Any
    trainable: Trainable
    inputs: Inputs

    @property
    def batches(self) -> EpochBatches:
        return self.trainable.batches


def build_stage1(cfg: Config, data: DataSplits, device: torch.device, dtype: torch.dtype | None) -> Stage1:
    """Model, loss, augmentation, batches, optimizer and step of stage 1 (seed the global RNG first)."""
    inputs = Inputs.of_images(data.train.images, cfg.normalize)
    encoder = build_encoder(cfg.encoder, data.channels, data.image_size, cfg.stem, pretrained=cfg.pretrained)
    head = ProjectionHead(encoder.out_dim, cfg.proj_hidden, cfg.proj_dim, cfg.projection)
    model = place(SupConModel(encoder, head), device)
    forward = compiled(distributed.wrap(model, device, cfg.sync_bn), cfg)
    criterion = stage1_criterion(cfg)
    if distributed.is_distributed():
        if cfg.loss in PAIRWISE_LOSSES:
            raise ValueError(f"--loss {cfg.loss} does not run distributed: only the supcon, supcon_in and simclr "
                             "losses can split the global batch's anchors between processes")
        criterion = distributed.GatheredLoss(criterion)
    views = multiview_transform(cfg.augment, data.image_size, cfg.views, first_view=cfg.first_view,
                                mean=inputs.mean, std=inputs.std, **policy_options(cfg))
    batches = EpochBatches(data.train.images, data.train.labels, cfg.batch_size, cfg.seed, views, device)
    optimizer, scheduler = optimizer_and_schedule(cfg, model.parameters(), batches.steps, cfg.epochs,
                                                  cfg.resolved_optimizer("supcon"), cfg.resolved_lr("supcon"),
                                                  cfg.weight_decay)
    use_labels = cfg.loss != "simclr"
    backward = None
    if cfg.chunk_size is not None:
        cache = GradCache(model, criterion, cfg.chunk_size, device, dtype, forward, use_labels)
        step, backward = cache.step, cache.backward
    else:
        def step(batch):
            x, y = batch  # x: [B, V, C, H, W]
            b, v = x.shape[:2]
            with autocast(device, dtype):
                z = forward(as_model_input(x.flatten(0, 1), device)).view(b, v, -1)
            return criterion(z.float(), y if use_labels else None), None

    trainable = Trainable(model, step, batches, batches.steps, optimizer, scheduler, scaler_for(dtype), backward)
    return Stage1(model, criterion, views, trainable, inputs)


def _tracking_progress(step: Callable, reference: dict[str, Any], use_labels: bool, loss: str) -> Callable:
    """``step`` that also records the first batch's loss and each batch's floor (:func:`loss_floor`), which
    tell afterwards how far stage 1 got."""
    def tracked(batch):
        value, _ = step(batch)
        if reference["start"] is None:
            reference["start"] = value.item()
        labels = distributed.gather(batch[1])  # the floor of the global batch, which the loss is taken on
        reference["floor"] += loss_floor(labels if use_labels else None, batch[0].shape[1], loss)
        reference["batches"] += 1
        return value, None
    return tracked


def pretrain(ctx: StageContext, data: DataSplits) -> StageResult:
    """Stage 1: train encoder and projection head with the stage-1 loss ``cfg.loss`` (SupCon by default;
    SimCLR's ignores the labels), with the kNN monitor of ``cfg.knn_every``. Writes nothing but its metrics and
    checkpoints: :func:`supcon.stages.train_run` writes the run's files."""
    cfg, ctx = ctx.cfg, ctx.for_stage("pretrain")
    started = time.perf_counter()
    stage = build_stage1(cfg, data, ctx.device, ctx.dtype)
    use_labels = cfg.loss != "simclr"
    reference: dict[str, Any] = {"start": None, "floor": 0.0, "batches": 0}
    task = stage.trainable
    task.step = _tracking_progress(task.step, reference, use_labels, cfg.loss)
    task.extra_state = reference
    monitor = KnnMonitor(cfg, data, stage.model.encoder, stage.inputs, ctx.device, ctx.dtype, state=reference)
    if monitor.on:
        if not ctx.resuming():  # a resumed run gets its curve back from the checkpoint
            monitor.initial()
        task.batches = monitor.batches(task.batches)
        task.evaluate = monitor.evaluate
    result = fit(task, ctx.fit_options("pretrain", cfg.epochs))
    final = result.history[-1]["loss"]
    floor = reference["floor"] / max(1, reference["batches"])
    start = reference["start"]
    summary = {"method": "simclr" if cfg.loss == "simclr" else "supcon", "loss": cfg.loss, "seed": cfg.seed,
               "stage1_loss": final, "stage1_loss_start": start, "stage1_loss_floor": floor,
               "stage1_progress": (start - final) / (start - floor) if start - floor > 1e-6 else None,
               **monitor.summary(), "val_acc": None, "train_acc": None, "epochs": len(result.history)}
    summary["seconds"] = summary["pretrain_seconds"] = time.perf_counter() - started + result.earlier_seconds
    return StageResult(summary, result, stage.model.encoder, stage.model, stage.inputs)
