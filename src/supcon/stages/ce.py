"""The baseline: the same encoder and a linear layer trained end to end with cross-entropy."""

from __future__ import annotations

import time

from supcon.augment import Inputs, view_transform
from supcon.data import DataSplits
from supcon.device import place
from supcon.engine import distributed
from supcon.engine.batches import EpochBatches
from supcon.engine.loop import Trainable, fit
from supcon.evaluate.inference import accuracy, outputs
from supcon.evaluate.knn import chance_accuracy
from supcon.models import Classifier, build_encoder
from supcon.runs.load import output_size
from supcon.stages.common import (
    StageContext,
    StageResult,
    classification_step,
    compiled,
    optimizer_and_schedule,
    policy_options,
    scaler_for,
    test_metrics,
    validation_metrics,
)
from supcon.stages.knn_monitor import encoder_knn


def train_ce(ctx: StageContext, data: DataSplits) -> StageResult:
    """Train the CE baseline with early stopping on ``cfg.monitor``; the stage writes nothing but its metrics and
    checkpoints. Its summary carries the same kNN accuracy as stage 1's monitor (unless ``knn_every`` is 0), so
    that the tables compare the two encoders."""
    cfg, ctx = ctx.cfg, ctx.for_stage("ce")
    started = time.perf_counter()
    device, dtype = ctx.device, ctx.dtype
    inputs = Inputs.of_images(data.train.images, cfg.normalize, data.image_size, cfg.val_crop)
    # The CE baseline follows the usual practice (and the reference implementations): the classifier sees the
    # raw representation; normalising it would cap the logits and slow CE down.
    encoder = build_encoder(cfg.encoder, data.channels, data.image_size, cfg.stem, normalize=False,
                            pretrained=cfg.pretrained)
    model = place(Classifier(encoder, output_size(cfg.head, data.num_classes)), device)
    transform = view_transform(cfg.augment, data.image_size, mean=inputs.mean, std=inputs.std, **policy_options(cfg))
    plain = inputs.plain()
    batches = EpochBatches(data.train.images, data.train.labels, cfg.batch_size, cfg.seed, transform, device)
    optimizer, scheduler = optimizer_and_schedule(cfg, model.parameters(), batches.steps, cfg.epochs,
                                                  cfg.resolved_optimizer("ce"), cfg.resolved_lr("ce"),
                                                  cfg.weight_decay)
    forward = compiled(distributed.wrap(model, device, cfg.sync_bn), cfg)

    def logits_of(images):
        return outputs(model, images, transform=plain, device=device, batch_size=cfg.eval_batch_size, dtype=dtype)

    task = Trainable(model, classification_step(forward, device, dtype), batches, batches.steps, optimizer,
                     scheduler, scaler_for(dtype),
                     evaluate=lambda: validation_metrics(logits_of(data.val.images), data.val.labels))
    result = fit(task, ctx.fit_options("ce", cfg.epochs))
    summary = {"method": "ce", "loss": "ce", "seed": cfg.seed, "stage1_loss": None,
               "train_acc": accuracy(logits_of(data.train.images), data.train.labels),
               "val_acc": accuracy(logits_of(data.val.images), data.val.labels),
               **test_metrics(logits_of(data.test.images), data.test.labels),
               "epochs": len(result.history), "best_epoch": result.best_epoch, "steps": result.steps,
               "stopped_early": result.stopped_early, "val_chance": chance_accuracy(data.val.labels),
               # what trained it, for the notes' advice: they suggest only what would change something
               "optimizer": cfg.resolved_optimizer("ce"), "lr": cfg.resolved_lr("ce"),
               "warmup_epochs": cfg.warmup_epochs,
               "seconds": time.perf_counter() - started + result.earlier_seconds}
    if cfg.knn_every != "0":
        summary["knn_acc"] = encoder_knn(model.encoder, data, inputs, device, cfg, dtype)
    return StageResult(summary, result, model.encoder, model, inputs)
