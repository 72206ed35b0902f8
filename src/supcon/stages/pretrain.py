"""Stage 1: an encoder and projection head trained with a contrastive loss, watched by the kNN monitor.

>>> from supcon.config import Config
>>> from supcon.stages import load_data, train_run
>>> cfg = Config(dataset="digits", epochs=5)
>>> result = train_run("supcon", cfg, load_data(cfg), "runs/digits", until="pretrain")
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
from supcon.engine.callbacks import Callback
from supcon.engine.gradcache import GradCache
from supcon.engine.loop import Trainable, fit
from supcon.engine.queue import MemoryQueue
from supcon.evaluate.inference import accuracy, outputs, predicted_class
from supcon.losses import MaxMarginContrastiveLoss, NPairsLoss, SupConLoss
from supcon.models import Classifier, ProjectionHead, SupConModel, build_encoder
from supcon.options import check_distributable
from supcon.runs.load import output_size
from supcon.stages.common import (
    StageContext,
    StageResult,
    classification_loss,
    compiled,
    optimizer_and_schedule,
    policy_options,
    scaler_for,
    test_metrics,
    validation_metrics,
)
from supcon.stages.knn_monitor import KnnMonitor


def stage1_criterion(cfg: Config) -> nn.Module:
    """The stage-1 loss ``cfg.loss`` names, with its options (the contrastive part of ``supcon+ce``)."""
    if cfg.loss == "maxmargin":
        return MaxMarginContrastiveLoss(cfg.margin, cfg.margin_distance, block_size=cfg.loss_block_size)
    if cfg.loss == "npairs":
        return NPairsLoss(cfg.temperature, block_size=cfg.loss_block_size)
    return SupConLoss(cfg.temperature, cfg.base_temperature, variant="in" if cfg.loss == "supcon_in" else "out",
                      contrast_mode=cfg.contrast_mode, block_size=cfg.loss_block_size)


def joint_loss(contrastive: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, ce_weight: float
               ) -> torch.Tensor:
    """``--loss supcon+ce``: ``(1 - w) x`` the contrastive loss ``+ w x`` cross-entropy of the classifier's
    ``logits`` (one row per view) against ``labels`` (one per view)."""
    return (1 - ce_weight) * contrastive + ce_weight * classification_loss(logits, labels)


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
    """What stage 1 trains, built by :func:`build_stage1`: the model, the loss, the views, the loop's
    :class:`~supcon.engine.loop.Trainable` (``benchmarks/bench_train.py`` times the same objects), and the
    callbacks among its own that the summary reads."""

    model: SupConModel
    criterion: nn.Module
    views: Any
    trainable: Trainable
    inputs: Inputs
    progress: Stage1Progress
    monitor: KnnMonitor
    classify: Callable[[torch.Tensor], torch.Tensor] | None  # the joint objective's classifier on images

    @property
    def batches(self) -> EpochBatches:
        return self.trainable.batches


class Stage1Progress(Callback):
    """How far stage 1 got: the first batch's loss and the mean over batches of the floor each allowed
    (:func:`loss_floor`, times ``scale``, the contrastive share of a joint loss)."""

    state_key = "stage1_progress"

    def __init__(self, loss: str, use_labels: bool, scale: float = 1.0):
        self.loss, self.use_labels, self.scale = loss, use_labels, scale
        self.start: float | None = None
        self.floor_sum, self.batches = 0.0, 0

    # The keys are those of the flat dict that checkpoints of earlier versions kept, so that those still resume.
    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "floor": self.floor_sum, "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start, self.floor_sum, self.batches = state["start"], float(state["floor"]), int(state["batches"])

    def on_step_end(self, state, batch: list[torch.Tensor], loss: float) -> None:
        if self.start is None:
            self.start = loss
        labels = distributed.gather(batch[1])  # the floor of the global batch, which the loss is taken on
        self.floor_sum += self.scale * loss_floor(labels if self.use_labels else None, batch[0].shape[1], self.loss)
        self.batches += 1

    def summary(self, final: float) -> dict[str, Any]:
        """The summary's ``stage1_loss*`` entries and ``stage1_progress``, the share of the way from the first
        loss to the floor that the ``final`` epoch's loss covered."""
        floor, start = self.floor_sum / max(1, self.batches), self.start
        return {"stage1_loss": final, "stage1_loss_start": start, "stage1_loss_floor": floor,
                "stage1_progress": (start - final) / (start - floor) if start - floor > 1e-6 else None}


def build_stage1(cfg: Config, data: DataSplits, device: torch.device, dtype: torch.dtype | None) -> Stage1:
    """Model, loss, augmentation, batches, optimizer, step and callbacks (progress, kNN monitor, memory queue)
    of stage 1 (seed the global RNG first)."""
    inputs = Inputs.of_images(data.train.images, cfg.normalize, data.image_size, cfg.val_crop)
    encoder = build_encoder(cfg.encoder, data.channels, data.image_size, cfg.stem, pretrained=cfg.pretrained)
    head = ProjectionHead(encoder.out_dim, cfg.proj_hidden, cfg.proj_dim, cfg.projection)
    classifier = nn.Linear(encoder.out_dim, output_size(cfg.head, data.num_classes)) if _joint(cfg) else None
    model = place(SupConModel(encoder, head, classifier, cfg.ce_stop_grad), device)
    forward = compiled(distributed.wrap(model, device, cfg.sync_bn), cfg)
    criterion = stage1_criterion(cfg)
    if distributed.is_distributed():
        check_distributable(cfg.loss)  # under torchrun, whatever --nproc said
        criterion = distributed.GatheredLoss(criterion)
    views = multiview_transform(cfg.augment, data.image_size, cfg.views, first_view=cfg.first_view,
                                mean=inputs.mean, std=inputs.std, **policy_options(cfg))
    batches = EpochBatches(data.train.images, data.train.labels, cfg.batch_size, cfg.seed, views, device)
    optimizer, scheduler = optimizer_and_schedule(cfg, model.parameters(), batches.steps, cfg.epochs,
                                                  cfg.resolved_optimizer("supcon"), cfg.resolved_lr("supcon"),
                                                  cfg.weight_decay)
    queue = (MemoryQueue(model, cfg.queue, cfg.views, cfg.proj_dim, cfg.momentum_encoder, device)
             if cfg.queue else None)
    backward = None
    if cfg.chunk_size is not None:
        cache = GradCache(model, criterion, cfg.chunk_size, device, dtype, forward, cfg.loss != "simclr")
        step, backward = cache.step, cache.backward
    else:
        step = _step(cfg, forward, criterion, device, dtype, queue)
    progress = Stage1Progress(cfg.loss, cfg.loss != "simclr", 1 - cfg.ce_weight if _joint(cfg) else 1.0)
    monitor = KnnMonitor(cfg, data, model.encoder, inputs, device, dtype, every_epoch=_stops_on_knn(cfg))
    classify = _joint_classifier(model, inputs, cfg, device, dtype) if _joint(cfg) else None
    evaluate = ((lambda: validation_metrics(classify(data.val.images), data.val.labels))
                if classify is not None else None)
    callbacks = [progress] + ([monitor] if monitor.on else []) + ([queue] if queue is not None else [])
    trainable = Trainable(model, step, batches, batches.steps, optimizer, scheduler, scaler_for(dtype), backward,
                          evaluate, callbacks)
    return Stage1(model, criterion, views, trainable, inputs, progress, monitor, classify)


def _joint(cfg: Config) -> bool:
    return cfg.loss == "supcon+ce"


def _stops_on_knn(cfg: Config) -> bool:
    """Whether stage 1 follows the stopping policy (``cfg.patience``) on its kNN accuracy: it does unless the
    joint objective's classifier is there to watch instead."""
    return cfg.patience > 0 and not _joint(cfg)


def _step(cfg: Config, forward, criterion: nn.Module, device: torch.device, dtype: torch.dtype | None,
          queue: MemoryQueue | None):
    """Stage 1's step: the views embedded, the contrastive loss (against the queue too, with one), and for the
    joint objective the classifier's cross-entropy (its hits counted as the training accuracy)."""
    use_labels = cfg.loss != "simclr"

    def step(batch):
        x, y = batch  # x: [B, V, C, H, W]
        b, v = x.shape[:2]
        flat = as_model_input(x.flatten(0, 1), device)
        with autocast(device, dtype):
            keys = queue.keys(flat, b) if queue is not None else None
            out = forward(flat)
        z, logits = out if isinstance(out, tuple) else (out, None)
        z = z.float().view(b, v, -1)
        labels = y if use_labels else None
        if queue is not None:
            loss = queue.loss(criterion, z, y)
            queue.push(keys, y)
        else:
            loss = criterion(z, labels)
        if logits is None:
            return loss, None
        per_view = y.repeat_interleave(v)  # the views are flattened image-major
        logits = logits.float()
        hits = int((predicted_class(logits) == per_view).sum()) / v  # in images, as the loop counts them
        return joint_loss(loss, logits, per_view, cfg.ce_weight), hits

    return step


def pretrain(ctx: StageContext, data: DataSplits) -> StageResult:
    """Stage 1: train encoder and projection head with the stage-1 loss ``cfg.loss`` (SupCon by default;
    SimCLR's ignores the labels), with the kNN monitor of ``cfg.knn_every``. Writes nothing but its metrics and
    checkpoints: :func:`supcon.stages.train_run` writes the run's files.

    It follows the stopping policy of every stage (``cfg.patience``): it stops after that many epochs without a
    better kNN accuracy on the validation split, measured every epoch, and restores its best epoch, whose loss and
    kNN accuracy the summary reports. With ``--loss supcon+ce`` its classifier trains in the same stage and is what
    the policy watches (``cfg.monitor``), and the summary holds its accuracies (the run then needs no stage 2)."""
    cfg, ctx = ctx.cfg, ctx.for_stage("pretrain")
    started = time.perf_counter()
    stage = build_stage1(cfg, data, ctx.device, ctx.dtype)
    classify = stage.classify
    # without a kNN monitor the loop sees no score to watch: it trains the whole budget and keeps the last epoch
    result = fit(stage.trainable, ctx.fit_options("pretrain", cfg.epochs, None if classify is not None else "knn_acc"))
    method = cfg.loss if cfg.loss in ("simclr", "supcon+ce") else "supcon"  # stage 1's own (supcon.methods)
    kept = result.kept_epoch
    summary = {"method": method, "loss": cfg.loss, "seed": cfg.seed, "optimizer": cfg.resolved_optimizer("supcon"),
               "lr": cfg.resolved_lr("supcon"),
               **stage.progress.summary(result.history[kept - 1]["loss"]), **stage.monitor.summary(kept),
               "val_acc": None, "train_acc": None, "epochs": len(result.history), "pretrain_best_epoch": kept,
               "pretrain_stopped_early": result.stopped_early, "pretrain_steps": result.steps}
    if classify is not None:  # the joint classifier, measured once training and its choices are over
        summary.update(train_acc=accuracy(classify(data.train.images), data.train.labels),
                       val_acc=accuracy(classify(data.val.images), data.val.labels),
                       **test_metrics(classify(data.test.images), data.test.labels), best_epoch=result.best_epoch,
                       stopped_early=result.stopped_early)
    summary["seconds"] = summary["pretrain_seconds"] = time.perf_counter() - started + result.earlier_seconds
    return StageResult(summary, result, stage.model.encoder, stage.model, stage.inputs)


def _joint_classifier(model: SupConModel, inputs: Inputs, cfg: Config, device: torch.device,
                      dtype: torch.dtype | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The joint objective's classifier on images: the encoder and its linear layer, without augmentation."""
    model = Classifier(model.encoder, model.classifier)
    plain = inputs.plain()

    def logits(images: torch.Tensor) -> torch.Tensor:
        return outputs(model, images, transform=plain, device=device, batch_size=cfg.eval_batch_size, dtype=dtype)
    return logits
