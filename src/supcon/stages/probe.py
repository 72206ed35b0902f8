"""Stage 2: the linear probe (a linear classifier trained with cross-entropy on the frozen encoder's features, the
study's) or fine-tuning (the encoder and the classifier trained together from the stage-1 weights)."""

from __future__ import annotations

import time

import torch

from supcon.augment import Inputs, view_transform
from supcon.data import DataSplits
from supcon.device import place
from supcon.engine import distributed
from supcon.engine.batches import EpochBatches
from supcon.engine.loop import Trainable, fit
from supcon.evaluate.inference import accuracy, outputs
from supcon.models import Classifier, Encoder
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


def linear_probe(ctx: StageContext, data: DataSplits, encoder: Encoder, inputs: Inputs | None = None
                 ) -> StageResult:
    """Freeze ``encoder``, drop the projection head and train a linear classifier on its features with CE.

    Early stopping on ``cfg.monitor`` (``cfg.patience``) restores the best epoch's weights. Without augmentation
    (``cfg.linear_augment="none"``) the features are computed once and the loop runs on them. The classifier is
    ``result.model`` (its layer ``.fc``); the stage writes nothing but its metrics and checkpoints.
    """
    cfg, ctx = ctx.cfg, ctx.for_stage("linear")
    started = time.perf_counter()
    if ctx.run is not None:
        ctx.run.drop_stage_metrics("linear")  # a repeated probe replaces the last one
    device, dtype = ctx.device, ctx.dtype
    inputs = inputs or Inputs.of_images(data.train.images, cfg.normalize, data.image_size, cfg.val_crop)
    probe = place(Classifier(encoder, output_size(cfg.head, data.num_classes), frozen=True), device)
    plain = inputs.plain()
    if cfg.linear_augment == "none":
        train_x = outputs(encoder, data.train.images, transform=plain, device=device,
                          batch_size=cfg.eval_batch_size, dtype=dtype)
        val_x = outputs(encoder, data.val.images, transform=plain, device=device, batch_size=cfg.eval_batch_size,
                        dtype=dtype)
        trained, transform = probe.fc, None
    else:
        train_x, val_x = data.train.images, data.val.images
        trained = probe
        transform = view_transform(cfg.linear_augment, data.image_size, mean=inputs.mean, std=inputs.std,
                                   **policy_options(cfg))
    batches = EpochBatches(train_x, data.train.labels, cfg.batch_size, cfg.seed, transform, device)
    optimizer, scheduler = optimizer_and_schedule(cfg, probe.fc.parameters(), batches.steps, cfg.linear_epochs,
                                                  cfg.linear_optimizer, cfg.resolved_linear_lr(), 0.0)

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        if transform is None:
            with torch.no_grad():
                return probe.fc(x.to(device)).float().cpu()
        return outputs(probe, x, transform=plain, device=device, batch_size=cfg.eval_batch_size, dtype=dtype)

    forward = distributed.wrap(trained, device)
    forward = forward if transform is None else compiled(forward, cfg)  # compiling a lone linear layer gains nothing
    task = Trainable(trained, classification_step(forward, device, dtype), batches, batches.steps, optimizer,
                     scheduler, evaluate=lambda: validation_metrics(logits_of(val_x), data.val.labels))
    result = fit(task, ctx.fit_options("linear", cfg.linear_epochs))
    test_x = data.test.images
    if transform is None:  # the test features, computed now that training and its choices are over
        test_x = outputs(encoder, test_x, transform=plain, device=device, batch_size=cfg.eval_batch_size, dtype=dtype)
    summary = {"stage2": "linear", "train_acc": accuracy(logits_of(train_x), data.train.labels),
               "val_acc": accuracy(logits_of(val_x), data.val.labels),
               **test_metrics(logits_of(test_x), data.test.labels),
               "linear_epochs": len(result.history), "best_epoch": result.best_epoch, "linear_steps": result.steps,
               "stopped_early": result.stopped_early,
               "linear_seconds": time.perf_counter() - started + result.earlier_seconds}
    return StageResult(summary, result, encoder, probe, inputs)


def finetune(ctx: StageContext, data: DataSplits, encoder: Encoder, inputs: Inputs | None = None) -> StageResult:
    """Stage 2 by fine-tuning (``--stage2 finetune``): the encoder and a linear classifier trained together with
    cross-entropy from the stage-1 weights, the encoder at ``cfg.finetune_lr`` and the classifier at
    ``cfg.linear_lr`` (with ``cfg.linear_optimizer``, ``cfg.weight_decay`` and the schedule), on ``cfg.augment``'s
    views, for at most ``cfg.linear_epochs`` with early stopping on ``cfg.monitor``. The encoder is changed in
    place; the classifier is ``result.model``."""
    cfg, ctx = ctx.cfg, ctx.for_stage("finetune")
    started = time.perf_counter()
    if ctx.run is not None:
        ctx.run.drop_stage_metrics("finetune")
    device, dtype = ctx.device, ctx.dtype
    inputs = inputs or Inputs.of_images(data.train.images, cfg.normalize, data.image_size, cfg.val_crop)
    model = place(Classifier(encoder.requires_grad_(True), output_size(cfg.head, data.num_classes)), device)
    transform = view_transform(cfg.augment, data.image_size, mean=inputs.mean, std=inputs.std, **policy_options(cfg))
    plain = inputs.plain()
    batches = EpochBatches(data.train.images, data.train.labels, cfg.batch_size, cfg.seed, transform, device)
    groups = [{"params": list(model.encoder.parameters()), "lr": cfg.finetune_lr * cfg.lr_factor()},
              {"params": list(model.fc.parameters()), "lr": cfg.resolved_linear_lr()}]
    optimizer, scheduler = optimizer_and_schedule(cfg, groups, batches.steps, cfg.linear_epochs,
                                                  cfg.linear_optimizer, cfg.resolved_linear_lr(), cfg.weight_decay)

    def logits_of(images: torch.Tensor) -> torch.Tensor:
        return outputs(model, images, transform=plain, device=device, batch_size=cfg.eval_batch_size, dtype=dtype)

    forward = compiled(distributed.wrap(model, device, cfg.sync_bn), cfg)
    task = Trainable(model, classification_step(forward, device, dtype), batches, batches.steps, optimizer,
                     scheduler, scaler_for(dtype),
                     evaluate=lambda: validation_metrics(logits_of(data.val.images), data.val.labels))
    result = fit(task, ctx.fit_options("finetune", cfg.linear_epochs))
    summary = {"stage2": "finetune", "train_acc": accuracy(logits_of(data.train.images), data.train.labels),
               "val_acc": accuracy(logits_of(data.val.images), data.val.labels),
               **test_metrics(logits_of(data.test.images), data.test.labels),
               "linear_epochs": len(result.history), "best_epoch": result.best_epoch, "linear_steps": result.steps,
               "stopped_early": result.stopped_early,
               "linear_seconds": time.perf_counter() - started + result.earlier_seconds}
    return StageResult(summary, result, model.encoder, model, inputs)


def second_stage(ctx: StageContext, data: DataSplits, encoder: Encoder, inputs: Inputs | None = None
                 ) -> StageResult:
    """Stage 2 as ``cfg.stage2`` says: :func:`linear_probe` or :func:`finetune`."""
    return (finetune if ctx.cfg.stage2 == "finetune" else linear_probe)(ctx, data, encoder, inputs)
