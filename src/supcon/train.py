"""One training loop for every stage: ``pretrain`` (stage 1), ``linear_probe`` (stage 2) and ``train_ce``.

:func:`fit` is the loop: batches, optimizer and schedule, mixed precision, early stopping with the best
weights restored, one ``metrics.jsonl`` line per epoch and progress bars. The three stage functions only
say what a batch is and what its loss is.

>>> from supcon.config import Config
>>> from supcon.data import load_dataset
>>> from supcon import train
>>> cfg = Config(dataset="digits", epochs=5)
>>> data = load_dataset(cfg.dataset)
>>> stage1 = train.pretrain(cfg, data, "runs/digits")
>>> probe = train.linear_probe(cfg, data, stage1.encoder, "runs/digits")
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from supcon import distributed
from supcon.augment import BatchedMultiView, BatchedView, apply_batch, multiview_transform, view_transform
from supcon.checkpoint import Checkpoints, rng_state, set_rng_state
from supcon.config import LOSS_NAMES, TSNE_POINTS, Config
from supcon.data import DataSplits, load_dataset, resize_uint8, with_label_noise
from supcon.device import resolve_device
from supcon.evaluate.curves import plot_curves
from supcon.evaluate.knn import KnnSchedule, chance_accuracy, knn_accuracy
from supcon.evaluate.tsne import MIN_POINTS, draw_tsne, tsne_2d, tsne_subset
from supcon.io import (
    append_jsonl,
    atomic_write_text,
    load_weights,
    read_json,
    require_run_dir,
    save_weights,
    write_json,
)
from supcon.losses import MaxMarginContrastiveLoss, NPairsLoss, SupConLoss
from supcon.models import Classifier, Encoder, ProjectionHead, SupConModel, build_encoder
from supcon.tracking import Tracker, open_tracker

# TensorBoard's projector: points (a seeded, class-balanced subsample of larger validation splits) and the
# thumbnail size; 71 x 64 px per side of the sprite stays within the 8192 px the projector reads.
PROJECTOR_POINTS = 5000
PROJECTOR_THUMBNAIL = 64

# ---------------------------------------------------------------------------------------------- devices


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision only on CUDA: bf16 where the card supports it (no loss scaling needed), else fp16."""
    if device.type != "cuda" or amp == "none":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


# ---------------------------------------------------------------------------------------------- batches


@dataclass
class Inputs:
    """How images become model inputs: float scaling, optional normalisation, size and channels."""

    image_size: int
    channels: int
    mean: list[float] | None = None
    std: list[float] | None = None

    @classmethod
    def for_data(cls, data: DataSplits, normalize: bool) -> Inputs:
        """The inputs of ``data``: its size and channels and, with ``normalize``, its training images' per-channel
        mean and std."""
        mean = std = None
        if normalize:
            x = data.train.images.float() / 255
            mean = x.mean(dim=(0, 2, 3)).tolist()
            std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
        return cls(data.image_size, data.channels, mean, std)

    def plain(self):
        """uint8 to the model's float input, a whole batch at a time."""
        return view_transform("none", self.image_size, mean=self.mean, std=self.std, batched=True)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator, min_last: int = 2
                     ) -> list[torch.Tensor]:
    """A seeded permutation cut into batches; a trailing batch under ``min_last`` is dropped (BatchNorm needs
    two images, on each process when the batch is split over several)."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < min_last:
        batches.pop()
    return batches


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, transform, device: torch.device, batch_size: int = 512,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """Model outputs for a uint8 image tensor, in eval mode and batches, returned on the CPU in float32."""
    was_training = model.training
    model.eval()
    outputs = []
    batched = isinstance(transform, BatchedView | BatchedMultiView)
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        x = apply_batch(transform, x.to(device)) if batched else apply_batch(transform, x).to(device)
        with autocast(device, dtype):
            outputs.append(model(_as_model_input(x, device)).float().cpu())
    model.train(was_training)
    return torch.cat(outputs)


def predicted_class(logits: torch.Tensor) -> torch.Tensor:
    """Class indices from logits: argmax, or ``logit > 0`` for a binary head's single column."""
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of ``labels`` that :func:`predicted_class` gets right."""
    return (predicted_class(logits) == labels).float().mean().item()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; for a binary head (one logit) sigmoid + binary cross-entropy, as the study did."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype))
    return F.cross_entropy(logits, labels)


def output_size(head: str, num_classes: int) -> int:
    """The classifier's outputs: one logit for ``head="binary"`` (two classes only), else one per class."""
    if head == "binary":
        if num_classes != 2:
            raise ValueError(f"--head binary needs a two-class data set; this one has {num_classes} classes")
        return 1
    return num_classes


def validation_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``val_acc`` and ``val_loss`` of validation logits: what :func:`fit`'s ``evaluate`` returns for a classifier."""
    return {"val_acc": accuracy(logits, labels), "val_loss": classification_loss(logits, labels).item()}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``, or a context that does nothing when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------- the loop


def build_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """SGD (with ``momentum``, optionally Nesterov), Adam, AdamW or RMSprop on the parameters that need gradients."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                               weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of sgd, adam, adamw, rmsprop; got {name!r}")


def build_schedule(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, steps_per_epoch: int,
                   warmup_epochs: float = 0.0, step_epochs: int = 30, step_gamma: float = 0.1):
    """A per-step LambdaLR: linear warm-up, then fixed, cosine (to zero at the last step) or step decay."""
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if schedule not in ("fixed", "cosine", "step"):
        raise ValueError(f"schedule must be fixed, cosine or step; got {schedule!r}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if schedule == "step":
            return step_gamma ** (step // max(1, step_epochs * steps_per_epoch))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class FitResult:
    """What :func:`fit` did: one record per epoch, the best epoch by validation accuracy (whose weights it
    restored), whether it stopped early, its time, and the checkpoint it resumed from."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_acc: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    resumed_from: Path | None = None  # the checkpoint this run continued, if any
    earlier_seconds: float = 0.0  # training time before that checkpoint, in the processes that saved it


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`fit` after it saved a checkpoint (``checkpoint``) that a resumed run continues."""

    def __init__(self, stage: str, epoch: int, step: int, checkpoint: Path):
        super().__init__(f"{stage} interrupted at epoch {epoch}, step {step}; checkpoint saved to {checkpoint}")
        self.stage, self.epoch, self.step, self.checkpoint = stage, epoch, step, checkpoint


class _StopOnInterrupt:
    """While active, the first Ctrl-C only asks the loop to stop at the next step boundary, where a checkpoint
    can be saved whose model, optimizer and random states belong together; a second Ctrl-C stops at once."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def __enter__(self) -> _StopOnInterrupt:
        if self.enabled and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # os.write, not print: the handler may run in the middle of another write to stderr (a progress bar)
        os.write(2, b"\nsupcon: stopping after this step to save a checkpoint (Ctrl-C again to stop at once)\n")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _likely_cause(stage: str, scaler) -> str:
    causes = ["a learning rate too high (lower it, or add warm-up or --grad-clip)"]
    if stage == "pretrain":
        causes.append("a temperature too small")
    if scaler is not None:
        causes.insert(0, "fp16 overflow (a small temperature overflows fp16: raise --temperature or use --amp bf16 "
                         "or none)")
    return "likely cause: " + "; or ".join(causes)


def fit(model: nn.Module, step: Callable[[list[torch.Tensor]], tuple[torch.Tensor, int | None]],
        epoch_batches: Callable[[int], Iterator[list[torch.Tensor]]], steps_per_epoch: int, *, epochs: int,
        optimizer: torch.optim.Optimizer, scheduler=None, evaluate: Callable[[], dict[str, float]] | None = None,
        patience: int = 0, monitor: str = "val_acc", grad_clip: float | None = None,
        scaler: torch.amp.GradScaler | None = None, stage: str = "train", metrics_path: Path | None = None,
        progress: bool = True, on_epoch: Callable[[dict[str, Any]], None] | None = None,
        backward: Callable[[torch.Tensor], None] | None = None, checkpoints: Checkpoints | None = None,
        resume: bool = False, extra_state: dict[str, Any] | None = None,
        detect_anomaly: bool = False) -> FitResult:
    """The training loop shared by every stage.

    ``step(batch) -> (loss, n_correct or None)`` computes one batch's loss; ``epoch_batches(epoch)`` yields
    the batches of one epoch; ``evaluate()`` returns validation metrics. ``monitor`` (``val_acc``, higher is
    better, or ``val_loss``, lower is better) picks the best epoch; with ``patience > 0`` training stops after
    that many epochs without a better value and the best epoch's weights are restored. ``on_epoch(record)``
    sees each epoch's record after it is written to ``metrics_path`` (a tracker's ``log_metrics``, for instance).
    ``backward(loss)`` replaces ``loss.backward()`` (it gets the scaled loss under fp16), for steps whose
    backward pass is their own, such as :class:`GradCache`.

    With ``checkpoints``, the loop saves one at the end of every epoch and every ``checkpoints.every`` optimizer
    steps; on Ctrl-C it saves one at the next step boundary and raises :class:`TrainingInterrupted`. ``resume``
    continues from the newest good one: model, optimizer, schedule, scaler, random states, the shuffle of
    ``epoch_batches`` (an :class:`EpochBatches`; another callable is replayed and its batches dropped), the
    epoch's running sums, early stopping, the history (``metrics_path`` is rewritten to it) and ``extra_state``,
    a dict of the caller's own numbers, updated in place. A resumed run on the CPU ends as the uninterrupted one.
    ``detect_anomaly`` runs under ``torch.autograd.set_detect_anomaly``.
    """
    if monitor not in ("val_acc", "val_loss"):
        raise ValueError(f"monitor must be val_acc or val_loss; got {monitor!r}")
    anomaly = torch.autograd.set_detect_anomaly(True) if detect_anomaly else contextlib.nullcontext()
    with _StopOnInterrupt(checkpoints is not None) as stop, anomaly:
        return _fit(model, step, epoch_batches, steps_per_epoch, epochs, optimizer, scheduler, evaluate, patience,
                    monitor, grad_clip, scaler, stage, metrics_path, progress, on_epoch, backward, checkpoints,
                    resume, extra_state, detect_anomaly, stop)


def _fit(model, step, epoch_batches, steps_per_epoch, epochs, optimizer, scheduler, evaluate, patience, monitor,
         grad_clip, scaler, stage, metrics_path, progress, on_epoch, backward, checkpoints, resume, extra_state,
         detect_anomaly, stop) -> FitResult:
    sign = 1.0 if monitor == "val_acc" else -1.0
    best_score = None
    backward = backward or torch.Tensor.backward
    result = FitResult()
    best_state = None
    bad_epochs = 0
    # where a resumed run starts: an epoch, the batches of it already trained on, the epoch's sums so far
    first, skip, global_step = 1, 0, 0
    total_loss, total_seen, total_correct, counted = 0.0, 0, 0, False
    restored_rng = None
    if resume and checkpoints is not None and (found := checkpoints.latest()) is not None:
        state, result.resumed_from = found
        loop = state["loop"]
        first, skip, global_step = loop["epoch"], loop["skip"], loop["global_step"]
        total_loss, total_seen, total_correct, counted = loop["sums"]
        best_score, bad_epochs, result.earlier_seconds = loop["best_score"], loop["bad_epochs"], loop["seconds"]
        best_state = state["best_state"]
        restored_rng = _restore(state, result, model, optimizer, scheduler, scaler, epoch_batches, extra_state)
        if result.stopped_early:
            first = epochs + 1
        if progress:
            print(f"{stage}: resuming from {result.resumed_from}", file=sys.stderr)
    if resume and metrics_path is not None:  # lines written after the checkpoint are written again
        _rewrite_stage(metrics_path, stage, result.history)

    def save(epoch: int, done: int, over: bool) -> Path:
        """A checkpoint after ``done`` batches of ``epoch``; ``over``: the epoch is evaluated and logged."""
        bad = [name for name, p in model.state_dict().items() if p.is_floating_point() and not p.isfinite().all()]
        if bad:  # a diverged state never replaces a good checkpoint
            raise FloatingPointError(f"{stage}: the weights became non-finite ({bad[0]}) at epoch {epoch}, step "
                                     f"{done}; {_likely_cause(stage, scaler)}; the last good checkpoint is kept in "
                                     f"{checkpoints.directory}")
        loop = {"epoch": epoch + 1 if over else epoch, "skip": 0 if over else done, "global_step": global_step,
                "sums": [0.0, 0, 0, False] if over else [total_loss, total_seen, total_correct, counted],
                "best_score": best_score, "bad_epochs": bad_epochs,
                "seconds": result.earlier_seconds + time.perf_counter() - start}
        return checkpoints.save(_checkpoint_state(loop, best_state, result, model, optimizer, scheduler, scaler,
                                                  epoch_batches, extra_state), epoch, done)

    start = time.perf_counter()
    progress = progress and distributed.is_main()
    epoch_bar = tqdm(range(first, epochs + 1), desc=stage, unit="epoch", disable=not progress, file=sys.stderr,
                     dynamic_ncols=True, initial=first - 1, total=epochs)
    for epoch in epoch_bar:
        model.train()
        t0 = time.perf_counter()
        done = skip if epoch == first else 0
        if not done:
            total_loss, total_seen, total_correct, counted = 0.0, 0, 0, False
        batch_bar = tqdm(_batches_from(epoch_batches, epoch, done), total=steps_per_epoch, desc=f"epoch {epoch}",
                         leave=False, unit="batch", disable=not progress, file=sys.stderr, dynamic_ncols=True,
                         initial=done)
        if restored_rng is not None:  # after any batches replayed to be skipped, which may have drawn numbers
            set_rng_state(restored_rng)
            restored_rng = None
        for batch in batch_bar:
            loss, correct = step(batch)
            value = loss.item()
            if not math.isfinite(value):
                kept = (f"; the last good checkpoint is kept in {checkpoints.directory}"
                        if checkpoints is not None and checkpoints.has_any() else "")
                raise FloatingPointError(f"{stage}: the loss became {value} at epoch {epoch}, step {done + 1}; "
                                         f"{_likely_cause(stage, scaler)}{kept}")
            optimizer.zero_grad(set_to_none=True)
            try:
                if scaler is not None:
                    backward(scaler.scale(loss))
                    scaler.unscale_(optimizer)
                else:
                    backward(loss)
            except RuntimeError as err:
                if not detect_anomaly:
                    raise
                raise FloatingPointError(f"{stage}: anomaly at epoch {epoch}, step {done + 1}: "
                                         f"{str(err).splitlines()[0]}") from err
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            n = len(batch[-1])
            total_loss += value * n
            total_seen += n
            if correct is not None:
                total_correct += correct
                counted = True
            batch_bar.set_postfix(loss=f"{value:.4f}")
            done += 1
            global_step += 1
            if stop.requested:
                raise TrainingInterrupted(stage, epoch, done, save(epoch, done, over=False))
            # a mark on an epoch's last step is left to the end-of-epoch checkpoint just after it
            if checkpoints is not None and checkpoints.every and global_step % checkpoints.every == 0 \
                    and done < steps_per_epoch:
                save(epoch, done, over=False)
        # Data-parallel: every process's images and hits (its losses are already the global batch's).
        total_loss, total_seen, total_correct = distributed.all_sum([total_loss, total_seen, total_correct])
        record: dict[str, Any] = {"stage": stage, "epoch": epoch, "loss": total_loss / max(1, total_seen),
                                  "lr": optimizer.param_groups[0]["lr"]}
        if counted:
            record["train_acc"] = total_correct / max(1, total_seen)
        if evaluate is not None:
            record.update(distributed.from_main(evaluate))  # one verdict, so early stopping agrees everywhere
        record["seconds"] = time.perf_counter() - t0
        result.history.append(record)
        if metrics_path is not None:
            append_jsonl(metrics_path, record)
        if on_epoch is not None:
            on_epoch(record)
        epoch_bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k in ("loss", "val_acc")})

        val = record.get(monitor)
        if val is not None and (best_score is None or sign * val > best_score):
            best_score, result.best_epoch, bad_epochs = sign * val, epoch, 0
            result.best_val_acc = record.get("val_acc")
            if patience > 0:
                best_state = copy.deepcopy(model.state_dict())
        elif val is not None:
            bad_epochs += 1
            if patience > 0 and bad_epochs >= patience:
                result.stopped_early = True
        if checkpoints is not None:
            path = save(epoch, done, over=True)
            if stop.requested:
                raise TrainingInterrupted(stage, epoch, done, path)
        if result.stopped_early:
            break
    epoch_bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = result.earlier_seconds + time.perf_counter() - start
    return result


def _batches_from(epoch_batches, epoch: int, skip: int) -> Iterator[list[torch.Tensor]]:
    """The batches of ``epoch`` after its first ``skip``: an :class:`EpochBatches` skips them without making
    them; another source makes them and they are dropped (so they use up whatever random numbers they draw)."""
    if skip and isinstance(epoch_batches, EpochBatches):
        return epoch_batches(epoch, skip=skip)
    batches = iter(epoch_batches(epoch))
    for _ in range(skip):
        next(batches)
    return batches


def _checkpoint_state(loop: dict[str, Any], best_state, result: FitResult, model, optimizer, scheduler, scaler,
                      epoch_batches, extra_state) -> dict[str, Any]:
    return {
        "loop": loop,
        "best_state": best_state,
        "history": result.history,
        "result": {"best_epoch": result.best_epoch, "best_val_acc": result.best_val_acc,
                   "stopped_early": result.stopped_early},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "batches": epoch_batches.state_dict() if isinstance(epoch_batches, EpochBatches) else None,
        "rng": rng_state(),
        "extra": dict(extra_state) if extra_state is not None else None,
    }


def _restore(state: dict[str, Any], result: FitResult, model, optimizer, scheduler, scaler, epoch_batches,
             extra_state) -> dict[str, Any]:
    """Put a checkpoint's modules, history and caller's state back; returns the random states, which the loop
    sets once the batches it skips are behind it."""
    result.history = list(state["history"])
    for key, value in state["result"].items():
        setattr(result, key, value)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    if isinstance(epoch_batches, EpochBatches) and state["batches"] is not None:
        epoch_batches.load_state_dict(state["batches"])
    if extra_state is not None and state["extra"] is not None:
        extra_state.clear()
        extra_state.update(state["extra"])
    return state["rng"]


def _rewrite_stage(metrics_path: Path, stage: str, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl`` with this stage's lines replaced by ``history`` (other stages' lines kept)."""
    lines = metrics_path.read_text().splitlines(keepends=True) if metrics_path.is_file() else []
    kept = [line for line in lines if line.strip() and json.loads(line).get("stage") != stage]
    atomic_write_text(metrics_path, "".join(kept) + "".join(json.dumps(r) + "\n" for r in history))


# ---------------------------------------------------------------------------------------------- stages


@dataclass
class StageResult:
    """What a stage returns: the trained modules, its metrics and the summary written to ``results.json``."""

    summary: dict[str, Any]
    fit: FitResult
    encoder: Encoder
    model: nn.Module
    inputs: Inputs
    tsne_xy: Any = None  # the 2-D t-SNE points of tsne.png (val subset of tsne_subset), when one was drawn


def load_data(cfg: Config) -> DataSplits:
    """The data set a config names, with its size, split and subsampling options, and ``cfg.label_noise`` applied
    to the training labels: every command that trains reads its data here, so the noise is the same in each."""
    with distributed.main_first():  # one process downloads and extracts; the others then read its cache
        data = load_dataset(cfg.dataset, image_size=cfg.image_size, val_fraction=cfg.val_fraction, seed=cfg.seed,
                            max_train=cfg.max_train, max_val=cfg.max_val, data_dir=cfg.data_dir,
                            progress=not cfg.quiet and distributed.is_main())
    return with_label_noise(data, cfg.label_noise, cfg.label_noise_mode, cfg.seed)


def _setup(cfg: Config, out: str | Path | None, fresh: bool = True):
    """Seed, device, AMP dtype and the output directory of a stage; a first stage starts a new metrics log.

    Under torchrun this joins the process group; only rank 0 gets the directory (the others write nothing), and
    each process seeds its own augmentations (DDP copies rank 0's initial weights to all).
    """
    device = distributed.init(resolve_device(cfg.device))
    torch.manual_seed(cfg.seed + distributed.rank())
    out = Path(out) if out is not None and distributed.is_main() else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if fresh:
            (out / "metrics.jsonl").unlink(missing_ok=True)
            # An earlier run's results must not outlive it: config.yaml is written when a run starts, and a
            # results.json beside it would make a run killed now look finished (to a sweep, or to --resume).
            (out / "results.json").unlink(missing_ok=True)
    return device, amp_dtype(cfg.amp, device), out


def _checkpoints(cfg: Config, out: Path | None, stage: str) -> Checkpoints | None:
    """The stage's checkpoints in ``out`` (none without a run directory, or with ``keep_checkpoints`` 0). A run
    that does not resume deletes the stage's old ones first: they belong to an earlier run in this directory,
    and a later ``--resume`` must not mistake them for this run's. In a distributed run rank 0 alone keeps them."""
    if out is None or not distributed.is_main():
        return None
    checkpoints = Checkpoints(out, stage, max(1, cfg.keep_checkpoints), cfg.ckpt_every, cfg.to_dict())
    if cfg.resume is None:
        checkpoints.clear()
    return checkpoints if cfg.keep_checkpoints > 0 else None


def _resuming(cfg: Config, checkpoints: Checkpoints | None) -> bool:
    return cfg.resume is not None and checkpoints is not None and checkpoints.has_any()


def stage_finished(run_dir: str | Path, stage: str) -> dict[str, Any] | None:
    """The run summary if ``stage`` (``pretrain``, ``linear`` or ``ce``) finished in ``run_dir``, else None.

    A stage has finished when its results and weights are written and its checkpoints are gone: a stage deletes
    them as its very last act, so one killed while writing its outputs still has them and is resumed instead.
    """
    run_dir = Path(run_dir)
    if Checkpoints(run_dir, stage).has_any():
        return None
    try:
        run = read_json(run_dir / "results.json")["runs"][0]
    except (ValueError, KeyError, IndexError, TypeError, OSError):
        return None
    if stage == "ce":
        done = run.get("method") == "ce" and not run.get("encoder_from")
    elif stage == "pretrain":
        done = run.get("method") in ("supcon", "simclr") and (run_dir / "encoder.safetensors").is_file()
    else:
        done = (run.get("val_acc") is not None and (run_dir / "linear.safetensors").is_file()
                and (run.get("method") != "ce" or bool(run.get("encoder_from"))))
    return run if done else None


def _refuse_finished(cfg: Config, out: Path | None, stage: str) -> None:
    if cfg.resume is not None and out is not None and stage_finished(out, stage) is not None:
        raise ValueError(f"nothing to resume: the {stage} stage in {out} has finished (results.json)")


def _drop_stage(metrics_path: Path, stage: str) -> None:
    if metrics_path.is_file():
        lines = metrics_path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line).get("stage") != stage]
        if len(kept) != len(lines):
            atomic_write_text(metrics_path, "".join(kept))


def _channels_last(device: torch.device) -> bool:
    # Convolutions run faster on channels-last tensors on CUDA and, through oneDNN, on the CPU as well (the
    # ResNet-18 step at 64 px on 2 cores: 15 % more images/s; benchmarks/bench_train.py).
    return device.type in ("cuda", "cpu")


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    model.to(device)
    if _channels_last(device):
        model.to(memory_format=torch.channels_last)
    return model


def _as_model_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Images in the memory layout the model was prepared for (a no-op where they already are)."""
    if _channels_last(device) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _compiled(model: nn.Module, cfg: Config):
    """``model``'s forward, through ``torch.compile`` with ``cfg.compile``. The module itself stays as it is, so
    its state dict, train/eval switches and saved weights are untouched; only the training step calls this."""
    return torch.compile(model) if cfg.compile else model


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _optimizer_and_schedule(cfg: Config, params, steps_per_epoch: int, epochs: int, name: str, lr: float,
                            weight_decay: float):
    optimizer = build_optimizer(name, params, lr, weight_decay, cfg.momentum, cfg.nesterov)
    scheduler = build_schedule(optimizer, cfg.schedule, epochs * steps_per_epoch, steps_per_epoch,
                               cfg.warmup_epochs, cfg.step_epochs, cfg.step_gamma)
    return optimizer, scheduler


def _make_encoder(cfg: Config, data: DataSplits, normalize: bool = True) -> Encoder:
    return build_encoder(cfg.encoder, data.channels, data.image_size, cfg.stem, normalize=normalize,
                         pretrained=cfg.pretrained)


def _policy_options(cfg: Config) -> dict[str, Any]:
    return {"crop_scale": cfg.crop_scale, "hflip": cfg.hflip, "blur": cfg.blur, "batched": cfg.batch_augment}


class EpochBatches:
    """The batches of each epoch: a seeded shuffle, the transform applied, moved to the device.

    One generator runs on across the epochs (so each epoch has its own order, and runs repeat the orders of
    earlier versions). :meth:`state_dict` is the generator's state at the start of the epoch in progress, or
    its current state between epochs, so that a run resumed mid-epoch draws the same order again and skips
    the batches it has trained on (``batches(epoch, skip=n)``) without making them.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, transform,
                 device: torch.device):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.transform, self.device = transform, device
        self.generator = torch.Generator().manual_seed(seed)
        self._epoch_start: torch.Tensor | None = None
        self.on_epoch_start: Callable[[int], None] | None = None  # the kNN monitor's clock
        # Every process draws the same permutation and keeps its part of each batch: batch_size is the global batch.
        self.min_last = distributed.min_batch()
        if batch_size < self.min_last:
            raise ValueError(f"--batch-size is the global batch, split over {distributed.world_size()} processes: "
                             f"expected at least {self.min_last} (two images each), got {batch_size}")
        steps = -(-len(labels) // batch_size)
        last = len(labels) - (steps - 1) * batch_size
        self.steps = steps - (steps > 1 and last < self.min_last)  # as shuffled_batches drops it

    def __call__(self, epoch: int, skip: int = 0) -> Iterator[list[torch.Tensor]]:
        self._epoch_start = self.generator.get_state()
        if self.on_epoch_start is not None:
            self.on_epoch_start(epoch)
        order = shuffled_batches(len(self.labels), self.batch_size, self.generator, self.min_last)
        return self._iterate(order[skip:])

    def _iterate(self, order: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
        batched = isinstance(self.transform, BatchedView | BatchedMultiView)
        for idx in order:
            idx = distributed.shard(idx)
            x = self.images[idx]
            if batched:
                x = apply_batch(self.transform, _to_device(x, self.device))  # uint8 travels: a quarter of the bytes
            elif self.transform is not None:
                x = _to_device(apply_batch(self.transform, x), self.device)
            else:
                x = _to_device(x, self.device)
            yield [x, self.labels[idx].to(self.device)]
        self._epoch_start = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shuffle's state, for a checkpoint: the generator as it was when the epoch in progress began."""
        return {"generator": self._epoch_start if self._epoch_start is not None else self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a :meth:`state_dict`: the next epoch drawn is the one that was in progress."""
        self.generator.set_state(state["generator"])
        self._epoch_start = None


def _epoch_batches(images: torch.Tensor, labels: torch.Tensor, cfg: Config, transform, device
                   ) -> tuple[EpochBatches, int]:
    batches = EpochBatches(images, labels, cfg.batch_size, cfg.seed, transform, device)
    return batches, batches.steps


def _write_results(out: Path | None, data: DataSplits, summary: dict[str, Any], inputs: Inputs) -> None:
    if out is None or not distributed.is_main():
        return
    write_json(out / "results.json", {"dataset": data.name, "runs": [summary], "input": dataclasses.asdict(inputs),
                                      "class_names": data.train.class_names, "skipped_images": len(data.skipped),
                                      "noisy_labels": data.noisy_labels})
    write_skipped(out, data)


def _start_stage(cfg: Config, out: str | Path | None, stage: str):
    """A training stage's start: refuse a finished one, find its checkpoints, set up (a resumed run keeps its
    metrics), and write the options that ``--resume`` reads back. Returns device, AMP dtype, run directory (None
    on the other processes of a distributed run) and checkpoints."""
    out = Path(out) if out is not None else None
    _refuse_finished(cfg, out, stage)
    checkpoints = _checkpoints(cfg, out, stage)
    device, dtype, out = _setup(cfg, out, fresh=not _resuming(cfg, checkpoints))
    _save_config(cfg, out)
    return device, dtype, out, checkpoints


def _save_config(cfg: Config, out: Path | None) -> None:
    """The run's options, written when it starts: ``--resume`` reads them back."""
    if out is not None:
        cfg.save(out / "config.yaml")


def _save_run(out: Path | None, cfg: Config, data: DataSplits, summary: dict[str, Any], inputs: Inputs,
              weights: dict[str, nn.Module]) -> None:
    """The files of a run directory: the resolved config, each module's weights and the results."""
    if out is None or not distributed.is_main():
        return
    cfg.save(out / "config.yaml")
    for name, module in weights.items():
        save_weights(out / f"{name}.safetensors", module)
    _write_results(out, data, summary, inputs)


def write_skipped(out: Path, data: DataSplits) -> None:
    """List the images the loader could not read, one ``path<TAB>reason`` a line, in ``skipped_images.txt``."""
    if data.skipped and distributed.is_main():
        atomic_write_text(out / "skipped_images.txt", "".join(f"{p}\t{why}\n" for p, why in data.skipped))


@dataclass
class Stage1:
    """What :func:`pretrain` runs, built by :func:`build_stage1`: the model, the loss, the batches and one
    training step, ready for :func:`fit` (``benchmarks/bench_train.py`` times the same objects)."""

    model: SupConModel
    criterion: nn.Module
    views: Any
    batches: Callable[[int], Iterator[list[torch.Tensor]]]
    steps: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: Callable[[list[torch.Tensor]], tuple[torch.Tensor, None]]
    backward: Callable[[torch.Tensor], None] | None
    scaler: torch.amp.GradScaler | None
    inputs: Inputs

    def fit(self, cfg: Config, out: Path | None = None, epoch_batches=None, on_epoch=None,
            evaluate=None, checkpoints: Checkpoints | None = None, extra_state: dict[str, Any] | None = None
            ) -> FitResult:
        """Train for ``cfg.epochs`` with :func:`fit` (``epoch_batches`` replaces the built batches, as the kNN
        monitor's wrapper does)."""
        return fit(self.model, self.step, epoch_batches or self.batches, self.steps, epochs=cfg.epochs,
                   optimizer=self.optimizer, scheduler=self.scheduler, grad_clip=cfg.grad_clip, scaler=self.scaler,
                   stage="pretrain", metrics_path=out / "metrics.jsonl" if out else None, progress=not cfg.quiet,
                   backward=self.backward, on_epoch=on_epoch, evaluate=evaluate, checkpoints=checkpoints,
                   resume=cfg.resume is not None, extra_state=extra_state, detect_anomaly=cfg.detect_anomaly)


PAIRWISE_LOSSES = ("maxmargin", "npairs")  # no anchors= option: they cannot run on a gathered batch


def stage1_criterion(cfg: Config) -> nn.Module:
    """The stage-1 loss ``cfg.loss`` names, with its options."""
    if cfg.loss == "maxmargin":
        return MaxMarginContrastiveLoss(cfg.margin, cfg.margin_distance, block_size=cfg.loss_block_size)
    if cfg.loss == "npairs":
        return NPairsLoss(cfg.temperature, block_size=cfg.loss_block_size)
    return SupConLoss(cfg.temperature, cfg.base_temperature, variant="in" if cfg.loss == "supcon_in" else "out",
                      contrast_mode=cfg.contrast_mode, block_size=cfg.loss_block_size)


def build_stage1(cfg: Config, data: DataSplits, device: torch.device, dtype: torch.dtype | None) -> Stage1:
    """Model, loss, augmentation, batches, optimizer and step of stage 1 (seed the global RNG first)."""
    inputs = Inputs.for_data(data, cfg.normalize)
    encoder = _make_encoder(cfg, data)
    head = ProjectionHead(encoder.out_dim, cfg.proj_hidden, cfg.proj_dim, cfg.projection)
    model = _prepare(SupConModel(encoder, head), device)
    forward = _compiled(distributed.wrap(model, device, cfg.sync_bn), cfg)
    criterion = stage1_criterion(cfg)
    if distributed.is_distributed():
        if cfg.loss in PAIRWISE_LOSSES:
            raise ValueError(f"--loss {cfg.loss} does not run distributed: only the supcon, supcon_in and simclr "
                             "losses can split the global batch's anchors between processes")
        criterion = distributed.GatheredLoss(criterion)
    views = multiview_transform(cfg.augment, data.image_size, cfg.views, first_view=cfg.first_view,
                                mean=inputs.mean, std=inputs.std, **_policy_options(cfg))
    batches, steps = _epoch_batches(data.train.images, data.train.labels, cfg, views, device)
    optimizer, scheduler = _optimizer_and_schedule(cfg, model.parameters(), steps, cfg.epochs,
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
                z = forward(_as_model_input(x.flatten(0, 1), device)).view(b, v, -1)
            return criterion(z.float(), y if use_labels else None), None

    return Stage1(model, criterion, views, batches, steps, optimizer, scheduler, step, backward, _scaler(dtype),
                  inputs)


def pretrain(cfg: Config, data: DataSplits, out: str | Path | None = None, tracker: Tracker | None = None
             ) -> StageResult:
    """Stage 1: train encoder and projection head with the stage-1 loss ``cfg.loss`` (SupCon by default;
    SimCLR's ignores the labels), with the kNN monitor of ``cfg.knn_every``."""
    track = tracker if tracker is not None else open_tracker(cfg, out)  # first: a missing package fails early
    started = time.perf_counter()
    device, dtype, out, checkpoints = _start_stage(cfg, out, "pretrain")
    stage = build_stage1(cfg, data, device, dtype)
    use_labels = cfg.loss != "simclr"
    reference = {"start": None, "floor": 0.0, "batches": 0}
    loss_of = stage.step

    def step(batch):
        loss, _ = loss_of(batch)
        if reference["start"] is None:
            reference["start"] = loss.item()
        labels = distributed.gather(batch[1])  # the floor of the global batch, which the loss is taken on
        reference["floor"] += loss_floor(labels if use_labels else None, batch[0].shape[1], cfg.loss)
        reference["batches"] += 1
        return loss, None

    stage.step = step
    monitor = KnnMonitor(cfg, data, stage.model.encoder, stage.inputs, device, dtype, state=reference)
    if monitor.on:
        if not _resuming(cfg, checkpoints):  # a resumed run gets its curve back from the checkpoint
            monitor.initial()
        result = stage.fit(cfg, out, monitor.batches(stage.batches), on_epoch=track.log_metrics,
                           evaluate=monitor.evaluate, checkpoints=checkpoints, extra_state=reference)
    else:
        result = stage.fit(cfg, out, on_epoch=track.log_metrics, checkpoints=checkpoints, extra_state=reference)
    final = result.history[-1]["loss"]
    floor = reference["floor"] / max(1, reference["batches"])
    start = reference["start"]
    summary = {"method": "simclr" if cfg.loss == "simclr" else "supcon", "loss": cfg.loss,
               "supcon_loss": final, "supcon_loss_start": start, "supcon_loss_floor": floor,
               "stage1_progress": (start - final) / (start - floor) if start - floor > 1e-6 else None,
               **monitor.summary(), "val_acc": None, "train_acc": None, "epochs": len(result.history)}
    summary["seconds"] = summary["pretrain_seconds"] = time.perf_counter() - started + result.earlier_seconds
    model, inputs = stage.model, stage.inputs
    _save_run(out, cfg, data, summary, inputs, {"encoder": model.encoder, "projection": model.head})
    xy = _pictures(cfg, out, track, data, model.encoder, inputs, f"{LOSS_NAMES[cfg.loss]} encoder (stage 1)",
                   stage="pretrain", step=len(result.history))
    _done(track, tracker, summary)
    if checkpoints is not None:
        checkpoints.clear()
    return StageResult(summary, result, model.encoder, model, inputs, xy)


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


def encoder_knn(encoder: nn.Module, data: DataSplits, inputs: Inputs, device: torch.device, cfg: Config,
                dtype: torch.dtype | None = None) -> float:
    """kNN accuracy (``cfg.knn_k`` neighbours, votes ``exp(s / cfg.knn_temperature)``) of the validation images'
    ``encoder`` features against the training images', both without augmentation."""
    plain = inputs.plain()
    train_x = predict(encoder, data.train.images, plain, device, cfg.eval_batch_size, dtype)
    val_x = predict(encoder, data.val.images, plain, device, cfg.eval_batch_size, dtype)
    return knn_accuracy(train_x.to(device), data.train.labels, val_x.to(device), data.val.labels, k=cfg.knn_k,
                        temperature=cfg.knn_temperature)


class KnnMonitor:
    """Stage 1's kNN monitor, as :func:`fit`'s ``evaluate`` hook: ``knn_acc`` (and ``knn_seconds``) in the
    epoch's record when :class:`~supcon.evaluate.knn.KnnSchedule` says it is due.

    :meth:`batches` wraps the epoch batches to learn each epoch's number and start time (so ``auto`` can compare
    the kNN's cost with the epoch's training). The random state is restored after each measurement and the
    encoder is run in eval mode, so the monitor never changes what is trained.
    """

    def __init__(self, cfg: Config, data: DataSplits, encoder: nn.Module, inputs: Inputs, device: torch.device,
                 dtype: torch.dtype | None = None, state: dict[str, Any] | None = None):
        self.cfg, self.data, self.encoder, self.inputs = cfg, data, encoder, inputs
        self.device, self.dtype = device, dtype
        self.schedule = KnnSchedule(cfg.knn_every if cfg.knn_every == "auto" else int(cfg.knn_every), cfg.epochs)
        self.on = self.schedule.resolved != 0
        # The curve and the period chosen by "auto" live in ``state``, the dict that fit() checkpoints and
        # restores in place (its ``extra_state``), so that a resumed run keeps both.
        self.state = state if state is not None else {}
        self.state.setdefault("knn_curve", [])  # [epoch, accuracy]; epoch 0 is the untrained encoder
        self.state.setdefault("knn_every", self.schedule.resolved)
        self.epoch, self.started = 0, time.perf_counter()

    @property
    def curve(self) -> list[list[float]]:
        """``[epoch, kNN accuracy]`` pairs so far; epoch 0 is the untrained encoder."""
        return self.state["knn_curve"]

    def measure(self) -> tuple[float, float]:
        """The encoder's kNN accuracy now, and the seconds it took; the random state is left as it was."""
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            acc = encoder_knn(self.encoder, self.data, self.inputs, self.device, self.cfg, self.dtype)
        return acc, time.perf_counter() - t0

    def initial(self) -> None:
        """The untrained encoder's accuracy: the baseline that tells "never started" from "stopped early"."""
        self.curve.append([0, self.measure()[0]])

    def _epoch_started(self, epoch: int) -> None:
        self.epoch, self.started = epoch, time.perf_counter()

    def batches(self, epoch_batches: Callable[[int], Iterator[list[torch.Tensor]]]):
        """``epoch_batches`` that also tell the monitor when each epoch starts."""
        if isinstance(epoch_batches, EpochBatches):  # kept as it is, so that checkpoints hold its shuffle state
            epoch_batches.on_epoch_start = self._epoch_started
            return epoch_batches

        def wrapped(epoch: int):
            self._epoch_started(epoch)
            return epoch_batches(epoch)
        return wrapped

    def evaluate(self) -> dict[str, float]:
        """:func:`fit`'s end-of-epoch hook: ``knn_acc`` and ``knn_seconds`` when a measurement is due, else ``{}``."""
        train_seconds = time.perf_counter() - self.started
        self.schedule.resolved = self.state["knn_every"]
        if not self.schedule.due(self.epoch):
            return {}
        acc, seconds = self.measure()
        self.schedule.measured(seconds, train_seconds)
        self.state["knn_every"] = self.schedule.resolved
        self.curve.append([self.epoch, acc])
        return {"knn_acc": acc, "knn_seconds": seconds}

    def summary(self) -> dict[str, Any]:
        """The run summary's kNN entries: the last accuracy, the curve, chance and the period (``{}`` when off)."""
        if not self.on:
            return {}
        return {"knn_acc": self.curve[-1][1] if len(self.curve) > 1 else None, "knn_curve": self.curve,
                "knn_chance": chance_accuracy(self.data.val.labels), "knn_every": self.schedule.resolved}


class GradCache:
    """A stage-1 step in chunks, for batches whose activations do not fit in memory (Gao et al., 2021).

    ``step`` embeds every view of the batch under ``torch.no_grad()``, ``chunk_size`` images at a time, so no
    activations are kept, and computes the loss on all the embeddings at once; ``backward`` takes the gradient
    of the loss with respect to the embeddings, then runs the model again on each chunk with gradients on and
    backpropagates that chunk's share (``z_chunk.backward(grad_chunk)``). The loss, and so its gradient, sees
    the whole batch; memory holds one chunk's activations. The price is a second forward pass.

    The parameter gradients equal the plain step's, with one exception: BatchNorm in training mode normalises
    each chunk with that chunk's own statistics (in both passes, so the two agree), which is the plain step on
    a model whose BatchNorm sees ``chunk_size`` images, as on a multi-GPU run without synchronised BatchNorm.
    With ``chunk_size`` at least the batch, or BatchNorm in eval mode, or no BatchNorm, they are the same. The
    running statistics are updated once per chunk by the second pass only (the first pass keeps them), so every
    image counts once. Random numbers drawn in the forward pass (dropout, say; none today) are replayed: the
    generator state before each chunk is kept and restored for its second pass.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, chunk_size: int, device: torch.device,
                 dtype: torch.dtype | None = None, forward: Callable | None = None, use_labels: bool = True):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive; got {chunk_size}")
        self.model, self.criterion, self.chunk_size = model, criterion, chunk_size
        self.device, self.dtype, self.use_labels = device, dtype, use_labels
        self.forward = forward or model
        self._pending: tuple | None = None

    def step(self, batch: list[torch.Tensor]) -> tuple[torch.Tensor, None]:
        """The loss of a ``[B, V, C, H, W]`` batch, embedded chunk by chunk without gradients."""
        x, y = batch  # x: [B, V, C, H, W]
        b, v = x.shape[:2]
        chunks = _as_model_input(x.flatten(0, 1), self.device).split(self.chunk_size)
        states, embeddings = [], []
        with torch.no_grad(), _running_stats_kept(self.model):
            for chunk in chunks:
                states.append(_rng_state(self.device))
                with autocast(self.device, self.dtype):
                    embeddings.append(self.forward(chunk))
        after = _rng_state(self.device)
        z = torch.cat(embeddings)
        z = z.to(torch.promote_types(z.dtype, torch.float32)).requires_grad_()  # fp32 (or fp64) leaf
        self._pending = (chunks, states, after, z)
        return self.criterion(z.view(b, v, -1), y if self.use_labels else None), None

    def backward(self, loss: torch.Tensor) -> None:
        """The parameter gradients of the last :meth:`step`'s loss, by a second pass over its chunks."""
        chunks, states, after, z = self._pending
        self._pending = None
        loss.backward()
        for chunk, grad, state in zip(chunks, z.grad.split(self.chunk_size), states, strict=True):
            _set_rng_state(state, self.device)
            with autocast(self.device, self.dtype):
                zc = self.forward(chunk)
            zc.backward(grad.to(zc.dtype))
        _set_rng_state(after, self.device)


def _rng_state(device: torch.device):
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@contextlib.contextmanager
def _running_stats_kept(model: nn.Module):
    """Normalisation layers' running statistics as they were before the block (the layers still normalise
    with the batch's own statistics in training mode)."""
    buffers = [buf for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
               for buf in (m.running_mean, m.running_var, m.num_batches_tracked) if buf is not None]
    saved = [buf.clone() for buf in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in zip(buffers, saved, strict=True):
                buf.copy_(value)


def _scaler(dtype: torch.dtype | None):
    return torch.amp.GradScaler("cuda") if dtype == torch.float16 else None


class LinearProbe(nn.Module):
    """A frozen encoder (always in eval mode, so BatchNorm statistics stay put) and a trainable linear layer."""

    def __init__(self, encoder: Encoder, outputs: int):
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.fc = nn.Linear(encoder.out_dim, outputs)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.encoder(x)
        return self.fc(h)


def _classification_step(forward, device, dtype):
    def step(batch):
        x, y = batch
        with autocast(device, dtype):
            logits = forward(_as_model_input(x, device))
        logits = logits.float()
        loss = distributed.global_mean(classification_loss(logits, y), len(y))
        return loss, int((predicted_class(logits) == y).sum())
    return step


def linear_probe(cfg: Config, data: DataSplits, encoder: Encoder, out: str | Path | None = None,
                 inputs: Inputs | None = None, tracker: Tracker | None = None) -> StageResult:
    """Stage 2: freeze the encoder, drop the projection head and train a linear classifier with CE.

    Early stopping on validation accuracy (``cfg.patience``) restores the best epoch's weights. Without
    augmentation (``cfg.linear_augment="none"``) the features are computed once and the loop runs on them.
    """
    track = tracker if tracker is not None else open_tracker(cfg, out)
    started = time.perf_counter()
    out = Path(out) if out is not None else None
    checkpoints = _checkpoints(cfg, out, "linear")
    device, dtype, out = _setup(cfg, out, fresh=False)  # stage 2 adds to stage 1's metrics
    if out is not None:
        _drop_stage(out / "metrics.jsonl", "linear")  # a repeated probe replaces the last one
    inputs = inputs or Inputs.for_data(data, cfg.normalize)
    probe = _prepare(LinearProbe(encoder, output_size(cfg.head, data.num_classes)), device)
    plain = inputs.plain()
    if cfg.linear_augment == "none":
        train_x = predict(encoder, data.train.images, plain, device, cfg.eval_batch_size, dtype)
        val_x = predict(encoder, data.val.images, plain, device, cfg.eval_batch_size, dtype)
        head, transform = probe.fc, None
    else:
        train_x, val_x = data.train.images, data.val.images
        head = probe
        transform = view_transform(cfg.linear_augment, data.image_size, mean=inputs.mean, std=inputs.std,
                                   **_policy_options(cfg))
    batches, steps = _epoch_batches(train_x, data.train.labels, cfg, transform, device)
    optimizer, scheduler = _optimizer_and_schedule(cfg, probe.fc.parameters(), steps, cfg.linear_epochs,
                                                   cfg.linear_optimizer, cfg.resolved_linear_lr(), 0.0)

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        if transform is None:
            with torch.no_grad():
                return probe.fc(x.to(device)).float().cpu()
        return predict(probe, x, plain, device, cfg.eval_batch_size, dtype)

    def evaluate():
        return validation_metrics(logits_of(val_x), data.val.labels)

    forward = distributed.wrap(head, device)
    forward = forward if transform is None else _compiled(forward, cfg)  # compiling a lone linear layer gains nothing
    result = fit(head, _classification_step(forward, device, dtype), batches, steps, epochs=cfg.linear_epochs,
                 optimizer=optimizer, scheduler=scheduler, evaluate=evaluate, patience=cfg.patience,
                 monitor=cfg.monitor,
                 grad_clip=cfg.grad_clip, stage="linear", metrics_path=out / "metrics.jsonl" if out else None,
                 progress=not cfg.quiet, on_epoch=track.log_metrics, checkpoints=checkpoints,
                 resume=cfg.resume is not None, detect_anomaly=cfg.detect_anomaly)
    summary = {"train_acc": accuracy(logits_of(train_x), data.train.labels),
               "val_acc": accuracy(logits_of(val_x), data.val.labels),
               "linear_epochs": len(result.history), "best_epoch": result.best_epoch,
               "stopped_early": result.stopped_early,
               "linear_seconds": time.perf_counter() - started + result.earlier_seconds}
    if out is not None:
        save_weights(out / "linear.safetensors", probe.fc)
    _pictures(cfg, out, track, data)
    _done(track, tracker, summary)
    if checkpoints is not None:
        checkpoints.clear()
    return StageResult(summary, result, encoder, probe, inputs)


def train_ce(cfg: Config, data: DataSplits, out: str | Path | None = None, tracker: Tracker | None = None
             ) -> StageResult:
    """The baseline: the same encoder and a linear layer trained end to end with cross-entropy."""
    track = tracker if tracker is not None else open_tracker(cfg, out)  # first: a missing package fails early
    started = time.perf_counter()
    device, dtype, out, checkpoints = _start_stage(cfg, out, "ce")
    inputs = Inputs.for_data(data, cfg.normalize)
    # The CE baseline follows the usual practice (and the reference implementations): the classifier sees the
    # raw representation; normalising it would cap the logits and slow CE down.
    model = _prepare(Classifier(_make_encoder(cfg, data, normalize=False), output_size(cfg.head, data.num_classes)),
                     device)
    transform = view_transform(cfg.augment, data.image_size, mean=inputs.mean, std=inputs.std,
                               **_policy_options(cfg))
    plain = inputs.plain()
    batches, steps = _epoch_batches(data.train.images, data.train.labels, cfg, transform, device)
    optimizer, scheduler = _optimizer_and_schedule(cfg, model.parameters(), steps, cfg.epochs,
                                                   cfg.resolved_optimizer("ce"), cfg.resolved_lr("ce"),
                                                   cfg.weight_decay)
    forward = _compiled(distributed.wrap(model, device, cfg.sync_bn), cfg)

    def evaluate():
        return validation_metrics(predict(model, data.val.images, plain, device, cfg.eval_batch_size, dtype),
                                  data.val.labels)

    result = fit(model, _classification_step(forward, device, dtype), batches, steps, epochs=cfg.epochs,
                 optimizer=optimizer, scheduler=scheduler, evaluate=evaluate, patience=cfg.patience,
                 monitor=cfg.monitor,
                 grad_clip=cfg.grad_clip, scaler=_scaler(dtype), stage="ce",
                 metrics_path=out / "metrics.jsonl" if out else None, progress=not cfg.quiet,
                 on_epoch=track.log_metrics, checkpoints=checkpoints, resume=cfg.resume is not None,
                 detect_anomaly=cfg.detect_anomaly)
    train_logits = predict(model, data.train.images, plain, device, cfg.eval_batch_size, dtype)
    val_logits = predict(model, data.val.images, plain, device, cfg.eval_batch_size, dtype)
    summary = {"method": "ce", "loss": "ce", "supcon_loss": None, "train_acc": accuracy(train_logits,
               data.train.labels), "val_acc": accuracy(val_logits, data.val.labels),
               "epochs": len(result.history), "best_epoch": result.best_epoch,
               "stopped_early": result.stopped_early, "val_chance": chance_accuracy(data.val.labels),
               "seconds": time.perf_counter() - started + result.earlier_seconds}
    if cfg.knn_every != "0":  # the same kNN as stage 1's monitor, so that the tables compare the two encoders
        summary["knn_acc"] = encoder_knn(model.encoder, data, inputs, device, cfg, dtype)
    _save_run(out, cfg, data, summary, inputs, {"encoder": model.encoder, "linear": model.fc})
    xy = _pictures(cfg, out, track, data, model.encoder, inputs,
                   f"cross-entropy encoder (val acc {summary['val_acc']:.3f})", stage="ce", step=len(result.history))
    _done(track, tracker, summary)
    if checkpoints is not None:
        checkpoints.clear()
    return StageResult(summary, result, model.encoder, model, inputs, xy)


def supcon(cfg: Config, data: DataSplits, out: str | Path | None = None, tracker: Tracker | None = None
           ) -> StageResult:
    """Both stages: :func:`pretrain`, then :func:`linear_probe` on its encoder; one run directory."""
    track = tracker if tracker is not None else open_tracker(cfg, out)  # one tracked run for both stages
    resuming = cfg.resume is not None and out is not None
    if resuming and stage_finished(out, "linear") is not None:
        finished = load_finished(out, cfg)
        _done(track, tracker, finished.summary)
        return finished
    if resuming and stage_finished(out, "pretrain") is not None:
        stage1 = load_finished(out, cfg)
    else:
        stage1 = pretrain(cfg, data, out, track)
    stage2 = linear_probe(cfg, data, stage1.encoder, out, stage1.inputs, track)
    summary = {**stage1.summary, **stage2.summary,
               "seconds": stage1.summary["seconds"] + stage2.summary["linear_seconds"]}
    _write_results(Path(out) if out is not None else None, data, summary, stage1.inputs)
    _done(track, tracker, summary)
    return StageResult(summary, stage2.fit, stage1.encoder, stage2.model, stage1.inputs, stage1.tsne_xy)


# ---------------------------------------------------------------------------------------------- run dirs


def load_encoder(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Encoder, Config, Inputs]:
    """Rebuild a finished run's encoder from its ``config.yaml``, ``results.json`` and weights."""
    run_dir = require_run_dir(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = Config.from_yaml(run_dir / "config.yaml")
    results = read_json(run_dir / "results.json")
    if len(results["runs"]) > 1:
        raise ValueError(f"{run_dir} holds a comparison, not one encoder; give one of its runs: "
                         f"{run_dir / 'supcon'} or {run_dir / 'ce'}")
    inputs = Inputs(**results["input"])
    method = results["runs"][0]["method"]
    encoder = build_encoder(cfg.encoder, inputs.channels, inputs.image_size, cfg.stem,
                            normalize=method != "ce")
    load_weights(run_dir / "encoder.safetensors", encoder)
    return encoder.to(device).eval(), cfg, inputs


def load_finished(run_dir: str | Path, cfg: Config) -> StageResult:
    """A finished stage read back from ``run_dir`` (for a resumed run that keeps it): its summary, and its encoder
    on ``cfg.device`` in the layout training gave it, so that what comes next computes what it computed the first
    time. There is no fit history (``fit`` is empty) and no t-SNE points."""
    device = resolve_device(cfg.device)
    encoder, _, inputs = load_encoder(run_dir, device)
    _prepare(encoder, device)
    summary = read_json(Path(run_dir) / "results.json")["runs"][0]
    return StageResult(summary, FitResult(), encoder, encoder, inputs)


def linear_probe_run(run_dir: str | Path, cfg: Config | None = None, data: DataSplits | None = None
                     ) -> StageResult:
    """Stage 2 on a finished ``pretrain`` run directory; its ``results.json`` then holds the full SupCon run.

    ``cfg`` defaults to the run's own ``config.yaml`` (the data set and stage-2 options are taken from it).
    """
    run_dir = Path(run_dir)
    encoder, run_cfg, inputs = load_encoder(run_dir)
    cfg = cfg or run_cfg
    previous = read_json(run_dir / "results.json")["runs"][0]
    if previous["method"] == "ce":
        raise ValueError(f"{run_dir} is a cross-entropy run; linear probes need a pretrain run")
    _refuse_finished(cfg, run_dir, "linear")
    cfg.save(run_dir / "config.yaml")  # first, so that --resume finds the probe's options
    if data is None:
        data = load_data(cfg)
    if (data.channels, data.image_size) != (inputs.channels, inputs.image_size):
        raise ValueError(f"the encoder in {run_dir} expects {inputs.channels}x{inputs.image_size}x"
                         f"{inputs.image_size} images; {data.name} gives {data.channels}x{data.image_size}x"
                         f"{data.image_size} (set --image-size)")
    track = open_tracker(cfg, run_dir)
    stage2 = linear_probe(cfg, data, encoder, run_dir, inputs, track)
    summary = {**previous, **stage2.summary,
               "seconds": previous.get("pretrain_seconds", previous["seconds"]) + stage2.summary["linear_seconds"]}
    _write_results(run_dir, data, summary, inputs)
    xy = None
    if not (run_dir / "tsne.png").is_file():  # the frozen encoder's picture is already there if stage 1 drew it
        title = f"{'SimCLR' if previous['method'] == 'simclr' else 'SupCon'} encoder"
        xy = _pictures(cfg, run_dir, track, data, encoder, inputs, title, curves=False)
    _done(track, None, summary)
    return StageResult(summary, stage2.fit, encoder, stage2.model, inputs, xy)


# ---------------------------------------------------------------------------------------------- pictures, tracking


def tsne_picture(encoder: nn.Module, data: DataSplits, inputs: Inputs, path: str | Path, title: str, seed: int = 0,
                 batch_size: int = 512, max_points: int = TSNE_POINTS) -> Any:
    """Draw the t-SNE of the validation images' embeddings by ``encoder`` (any module on images) to ``path``.

    Larger splits are subsampled to ``max_points`` (seeded, class-balanced); returns the 2-D points.
    """
    idx = torch.from_numpy(tsne_subset(data.val.labels, max_points, seed))
    device = next(encoder.parameters()).device
    features = predict(encoder, data.val.images[idx], inputs.plain(), device, batch_size)
    _, (xy,) = draw_tsne([(title, features)], data.val.labels[idx], data.val.class_names, path, seed)
    return xy


def tsne_points(encoder: nn.Module, data: DataSplits, inputs: Inputs, seed: int = 0, batch_size: int = 512,
                max_points: int = TSNE_POINTS) -> Any:
    """The 2-D points :func:`tsne_picture` draws, without drawing them."""
    idx = torch.from_numpy(tsne_subset(data.val.labels, max_points, seed))
    device = next(encoder.parameters()).device
    return tsne_2d(predict(encoder, data.val.images[idx], inputs.plain(), device, batch_size), seed)


def log_projector(track: Tracker, encoder: nn.Module, data: DataSplits, inputs: Inputs, tag: str, step: int,
                  seed: int = 0, batch_size: int = 512, max_points: int = PROJECTOR_POINTS) -> None:
    """Hand the validation images' ``encoder`` embeddings, their class names and thumbnails (at most
    ``PROJECTOR_THUMBNAIL`` px) to ``track.log_embedding`` (TensorBoard's projector), for trackers that keep them.

    Larger splits are subsampled to ``max_points`` (seeded, class-balanced), which keeps the sprite of
    thumbnails within the projector's 8192 x 8192 px."""
    if not track.embeddings:
        return
    idx = torch.from_numpy(tsne_subset(data.val.labels, max_points, seed))
    images = data.val.images[idx]
    features = predict(encoder, images, inputs.plain(), next(encoder.parameters()).device, batch_size)
    if images.shape[-1] > PROJECTOR_THUMBNAIL:
        images = resize_uint8(images, PROJECTOR_THUMBNAIL)
    labels = [data.val.class_names[i] for i in data.val.labels[idx].tolist()]
    track.log_embedding(tag, features, labels, images, step)


def _pictures(cfg: Config, out: Path | None, track: Tracker, data: DataSplits, encoder: Encoder | None = None,
              inputs: Inputs | None = None, title: str = "", curves: bool = True, stage: str | None = None,
              step: int = 0) -> Any:
    """The end of a stage: ``curves.png`` and, given an encoder and ``cfg.tsne``, ``tsne.png``; both tracked.
    Given a ``stage`` (the tag) and its last epoch (``step``), the tracker also gets the encoder's embeddings."""
    if out is None or not distributed.is_main():
        return None
    if curves and (path := plot_curves(out)) is not None:
        track.log_image("curves", path)
    if encoder is not None and stage is not None:
        log_projector(track, encoder, data, inputs, stage, step, cfg.seed, cfg.eval_batch_size)
    if encoder is None or not cfg.tsne:
        return None
    if len(data.val) < MIN_POINTS:  # a picture is not worth failing a finished run for
        warnings.warn(f"no tsne.png: t-SNE needs at least {MIN_POINTS} validation images; {data.name} has "
                      f"{len(data.val)}", stacklevel=2)
        return None
    xy = tsne_picture(encoder, data, inputs, out / "tsne.png", title, cfg.seed, cfg.eval_batch_size)
    track.log_image("tsne", out / "tsne.png")
    return xy


def _done(track: Tracker, given: Tracker | None, summary: dict[str, Any]) -> None:
    """A tracker that the stage opened itself ends with it; a caller's stays open for the caller's next stage."""
    if given is None:
        track.log_summary(summary)
        track.close()
