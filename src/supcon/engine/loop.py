"""The one training loop of every stage: :func:`fit` trains a :class:`Trainable` under :class:`FitOptions`.

The loop owns what every stage shares: batches, the optimizer and schedule steps, mixed-precision scaling,
early stopping with the best weights restored, one ``metrics.jsonl`` line per epoch, progress bars, atomic
checkpoints, resuming and Ctrl-C. A stage only says what a batch's loss is (``Trainable.step``) and how it is
validated (``Trainable.evaluate``); what else it keeps an eye on while it trains lives in its callbacks
(:mod:`supcon.engine.callbacks`), whose states every checkpoint keeps with the loop's.

Where the loop is, is one typed :class:`LoopState`, saved in every checkpoint, so that a resumed run on the CPU
ends as the uninterrupted one. Tests stop a run at a known step with the
:class:`~supcon.engine.callbacks.SignalAt` callback.
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from supcon.engine import distributed
from supcon.engine.batches import EpochBatches
from supcon.engine.callbacks import Callback
from supcon.engine.checkpoint import Checkpoints, rng_state, set_rng_state
from supcon.engine.state import LoopState
from supcon.io import append_jsonl, atomic_write_text

MONITORS = {"val_acc": 1.0, "val_loss": -1.0, "knn_acc": 1.0}  # the sign that makes a larger score better


@dataclass
class Trainable:
    """What :func:`fit` trains: the model, one step's loss, the batches and the optimizer.

    ``step(batch) -> (loss, n_correct or None)``; ``batches(epoch)`` yields one epoch's batches (an
    :class:`EpochBatches` also resumes mid-epoch without remaking the skipped ones); ``evaluate()`` returns the
    epoch's validation metrics; ``backward(loss)`` replaces ``loss.backward()`` (it gets the scaled loss under
    fp16), for a step whose backward pass is its own (:class:`~supcon.engine.gradcache.GradCache`).
    ``callbacks`` are the stage's own :class:`~supcon.engine.callbacks.Callback` objects (its numbers beside the
    loss, a monitor, a queue), checkpointed with the loop.
    """

    model: nn.Module
    step: Callable[[list[torch.Tensor]], tuple[torch.Tensor, int | None]]
    batches: Callable[..., Iterator[list[torch.Tensor]]]
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    scaler: torch.amp.GradScaler | None = None
    backward: Callable[[torch.Tensor], None] | None = None
    evaluate: Callable[[], dict[str, float]] | None = None
    callbacks: Sequence[Callback] = ()


@dataclass
class FitOptions:
    """How :func:`fit` trains: ``monitor`` (``val_acc``, higher is better, or ``val_loss``) picks the best epoch;
    with ``patience > 0`` training stops after that many epochs without a better value and the best epoch's
    weights are restored. ``on_epoch(record)`` sees each epoch's record after it is written to
    ``metrics_path``. With ``checkpoints`` the loop saves one at the end of every epoch, every
    ``checkpoints.every`` steps and on Ctrl-C; ``resume`` continues from the newest good one. ``callbacks`` are
    the caller's, called after the trainable's own."""

    epochs: int
    stage: str = "train"
    patience: int = 0
    monitor: str = "val_acc"
    grad_clip: float | None = None
    metrics_path: Path | None = None
    progress: bool = True
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    checkpoints: Checkpoints | None = None
    resume: bool = False
    detect_anomaly: bool = False
    callbacks: Sequence[Callback] = ()


@dataclass
class FitResult:
    """What :func:`fit` did: one record per epoch, the best epoch by ``monitor``, its validation accuracy, the
    epoch whose weights the model holds at the end (``kept_epoch``: the best one where early stopping restored it,
    else the last), whether it stopped early, the optimizer steps it took, its time, and the checkpoint it resumed
    from."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    kept_epoch: int | None = None
    steps: int = 0
    best_val_acc: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    resumed_from: Path | None = None  # the checkpoint this run continued, if any
    earlier_seconds: float = 0.0  # training time before that checkpoint, in the processes that saved it


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`fit` after it saved a checkpoint (``checkpoint``) that a resumed run continues; None
    in a distributed run stopped mid-epoch, which continues from its last checkpoint instead."""

    def __init__(self, stage: str, epoch: int, step: int, checkpoint: Path | None):
        saved = f"checkpoint saved to {checkpoint}" if checkpoint is not None else "the last checkpoint is kept"
        super().__init__(f"{stage} interrupted at epoch {epoch}, step {step}; {saved}")
        self.stage, self.epoch, self.step, self.checkpoint = stage, epoch, step, checkpoint


class StopOnInterrupt:
    """While active, the first Ctrl-C only asks the loop to stop at the next step boundary, where a checkpoint
    can be saved whose model, optimizer and random states belong together; a second Ctrl-C stops at once."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopOnInterrupt:
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


def likely_cause(stage: str, scaler) -> str:
    """What usually makes a loss or the weights non-finite in ``stage``."""
    causes = ["a learning rate too high (lower it, or add warm-up or --grad-clip)"]
    if stage == "pretrain":
        causes.append("a temperature too small")
    if scaler is not None:
        causes.insert(0, "fp16 overflow (a small temperature overflows fp16: raise --temperature or use --amp bf16 "
                         "or none)")
    return "likely cause: " + "; or ".join(causes)


def fit(task: Trainable, options: FitOptions) -> FitResult:
    """Train ``task`` for ``options.epochs`` (fewer if early stopping ends it); see :class:`FitOptions`."""
    if options.monitor not in MONITORS:
        raise ValueError(f"monitor must be one of {', '.join(MONITORS)}; got {options.monitor!r}")
    anomaly = torch.autograd.set_detect_anomaly(True) if options.detect_anomaly else contextlib.nullcontext()
    with StopOnInterrupt(options.checkpoints is not None) as stop, anomaly:
        return _Loop(task, options, stop).run()


class _Loop:
    """One run of :func:`fit`: its state, and the steps of an epoch."""

    def __init__(self, task: Trainable, options: FitOptions, stop: StopOnInterrupt):
        self.task, self.options, self.stop = task, options, stop
        self.state, self.result = LoopState(), FitResult()
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.restored_rng: dict[str, Any] | None = None
        self.started = time.perf_counter()
        self.callbacks = [*task.callbacks, *options.callbacks]
        keys = [c.state_key for c in self.callbacks if c.state_dict()]
        if len(set(keys)) < len(keys):
            raise ValueError(f"two callbacks keep their state under one key: {sorted(keys)}")
        self.progress = options.progress and distributed.is_main()
        # Bars on a terminal; in a log file (a batch job, nohup, CI) their redraws would be noise: one plain line
        # an epoch instead.
        self.bars = self.progress and sys.stderr.isatty()
        self.epoch_images = 0

    def run(self) -> FitResult:
        options = self.options
        if options.resume and options.checkpoints is not None:
            self._restore()
        if options.resume and options.metrics_path is not None:  # lines written after the checkpoint go again
            _rewrite_stage(options.metrics_path, options.stage, self.result.history)
        for callback in self.callbacks:
            callback.on_fit_start(options.stage)
        first = self.state.epoch if not self.result.stopped_early else options.epochs + 1
        epoch_bar = tqdm(range(first, options.epochs + 1), desc=options.stage, unit="epoch",
                         disable=not self.bars, file=sys.stderr, dynamic_ncols=True, initial=first - 1,
                         total=options.epochs)
        for epoch in epoch_bar:
            self._train_epoch(epoch)
            record = self._end_epoch(epoch)
            epoch_bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k in ("loss", "val_acc")})
            if self.progress and not self.bars:
                print(self._epoch_line(record), file=sys.stderr, flush=True)
            if self.result.stopped_early:
                break
        epoch_bar.close()
        self.result.kept_epoch = len(self.result.history)
        if self.best_weights is not None:
            self.task.model.load_state_dict(self.best_weights)
            self.result.kept_epoch = self.result.best_epoch
        self.result.steps = self.state.global_step
        self.result.seconds = self.result.earlier_seconds + time.perf_counter() - self.started
        return self.result

    def _restore(self) -> None:
        """Put the newest good checkpoint back: modules, history, loop state, shuffle and the callbacks' states;
        the random states wait until the batches the epoch skips are behind the loop."""
        found = self.options.checkpoints.latest()
        if found is None:
            return
        saved, self.result.resumed_from = found
        written_by = saved.get("world_size", 1)
        if written_by != distributed.world_size():
            raise ValueError(f"{self.options.stage}: {found[1]} was written by {written_by} process(es) and this run "
                             f"has {distributed.world_size()}; resume with --nproc {written_by}, as it started, "
                             "since each process's random streams are in it")
        task = self.task
        self.state = LoopState.from_dict(saved["loop"])
        self.result.earlier_seconds = self.state.seconds
        self.best_weights = saved["best_state"]
        self.result.history = list(saved["history"])
        for key, value in saved["result"].items():
            setattr(self.result, key, value)
        task.model.load_state_dict(saved["model"])
        task.optimizer.load_state_dict(saved["optimizer"])
        if task.scheduler is not None and saved["scheduler"] is not None:
            task.scheduler.load_state_dict(saved["scheduler"])
        if task.scaler is not None and saved["scaler"] is not None:
            task.scaler.load_state_dict(saved["scaler"])
        if isinstance(task.batches, EpochBatches) and saved["batches"] is not None:
            task.batches.load_state_dict(saved["batches"])
        states = saved.get("callbacks")
        if states is None:  # written before callbacks: one flat dict of the stage's numbers, or None
            states = _flat_states(saved.get("extra") or {}, self.callbacks)
        for callback in self.callbacks:
            if callback.state_key in states:
                callback.load_state_dict(states[callback.state_key])
        streams = saved.get("rng_of_ranks")
        self.restored_rng = streams[distributed.rank()] if streams else saved["rng"]
        if self.progress:
            print(f"{self.options.stage}: resuming from {self.result.resumed_from}", file=sys.stderr)

    def _train_epoch(self, epoch: int) -> None:
        state, steps = self.state, self.task.steps_per_epoch
        if state.epoch != epoch or not state.skip:
            state.epoch, state.skip = epoch, 0
            state.new_epoch()
        self.task.model.train()
        self.epoch_started = time.perf_counter()
        for callback in self.callbacks:
            callback.on_epoch_start(epoch)
        batches = _batches_from(self.task.batches, epoch, state.skip)
        bar = tqdm(batches, total=steps, desc=f"epoch {epoch}", leave=False, unit="batch",
                   disable=not self.bars, file=sys.stderr, dynamic_ncols=True, initial=state.skip)
        if self.restored_rng is not None:  # after any batches replayed to be skipped, which may have drawn numbers
            set_rng_state(self.restored_rng)
            self.restored_rng = None
        for batch in bar:
            value = self._step(batch, epoch)
            bar.set_postfix(loss=f"{value:.4f}")
            for callback in self.callbacks:  # before this step's checkpoint, which then holds what they recorded
                callback.on_step_end(state, batch, value)
            if self.stop.requested:  # also a Ctrl-C that a callback raised (SignalAt) in this step
                # a checkpoint of several processes is taken together, at points they all reach; one process's
                # Ctrl-C is not one of them, so a distributed run continues from its last periodic checkpoint
                saved = self._save(over=False) if not distributed.is_distributed() else None
                raise TrainingInterrupted(self.options.stage, epoch, state.skip, saved)
            checkpoints = self.options.checkpoints
            # a mark on an epoch's last step is left to the end-of-epoch checkpoint just after it
            if checkpoints is not None and checkpoints.every and state.global_step % checkpoints.every == 0 \
                    and state.skip < steps:
                self._save(over=False)

    def _step(self, batch: list[torch.Tensor], epoch: int) -> float:
        """One optimizer step on ``batch``; returns its loss."""
        task, options, state = self.task, self.options, self.state
        loss, correct = task.step(batch)
        value = loss.item()
        if not math.isfinite(value):
            checkpoints = options.checkpoints
            kept = (f"; the last good checkpoint is kept in {checkpoints.directory}"
                    if checkpoints is not None and checkpoints.has_any() else "")
            raise FloatingPointError(f"{options.stage}: the loss became {value} at epoch {epoch}, step "
                                     f"{state.skip + 1}; {likely_cause(options.stage, task.scaler)}{kept}")
        task.optimizer.zero_grad(set_to_none=True)
        backward = task.backward or torch.Tensor.backward
        try:
            if task.scaler is not None:
                backward(task.scaler.scale(loss))
                task.scaler.unscale_(task.optimizer)
            else:
                backward(loss)
        except RuntimeError as err:
            if not options.detect_anomaly:
                raise
            raise FloatingPointError(f"{options.stage}: anomaly at epoch {epoch}, step {state.skip + 1}: "
                                     f"{str(err).splitlines()[0]}") from err
        if options.grad_clip is not None:
            nn.utils.clip_grad_norm_(task.model.parameters(), options.grad_clip)
        if task.scaler is not None:
            task.scaler.step(task.optimizer)
            task.scaler.update()
        else:
            task.optimizer.step()
        if task.scheduler is not None:
            task.scheduler.step()
        n = len(batch[-1])
        state.loss_sum += value * n
        state.seen += n
        if correct is not None:
            state.correct += correct
            state.counted = True
        state.skip += 1
        state.global_step += 1
        return value

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        """The epoch's record (written, tracked), early stopping's verdict and the end-of-epoch checkpoint."""
        task, options, state, result = self.task, self.options, self.state, self.result
        # Data-parallel: every process's images and hits (its losses are already the global batch's).
        loss_sum, seen, correct = distributed.all_sum([state.loss_sum, state.seen, state.correct])
        self.epoch_images = seen
        record: dict[str, Any] = {"stage": options.stage, "epoch": epoch, "loss": loss_sum / max(1, seen),
                                  "lr": task.optimizer.param_groups[0]["lr"]}
        if state.counted:
            record["train_acc"] = correct / max(1, seen)
        if task.evaluate is not None or self.callbacks:
            record.update(distributed.from_main(self._evaluate))  # one verdict, so early stopping agrees everywhere
        record["seconds"] = time.perf_counter() - self.epoch_started
        result.history.append(record)
        if options.metrics_path is not None:
            append_jsonl(options.metrics_path, record)
        if options.on_epoch is not None:
            options.on_epoch(record)
        value = record.get(options.monitor)
        sign = MONITORS[options.monitor]
        if value is not None and (state.best_score is None or sign * value > state.best_score):
            state.best_score, result.best_epoch, state.bad_epochs = sign * value, epoch, 0
            result.best_val_acc = record.get("val_acc")
            if options.patience > 0:
                self.best_weights = copy.deepcopy(task.model.state_dict())
        elif value is not None:
            state.bad_epochs += 1
            result.stopped_early = options.patience > 0 and state.bad_epochs >= options.patience
        if options.checkpoints is not None:
            path = self._save(over=True)
            if self.stop.requested:
                raise TrainingInterrupted(options.stage, epoch, state.skip, path)
        return record

    def _epoch_line(self, record: dict[str, Any]) -> str:
        """The plain progress line of an epoch: ``pretrain: epoch 3/30 loss 4.1234 knn_acc 0.9100 850 img/s 2.1 s,
        about 57 s left``."""
        epochs, history = self.options.epochs, self.result.history
        metrics = " ".join(f"{k} {record[k]:.4f}" for k in ("loss", "val_acc", "val_loss", "knn_acc") if k in record)
        seconds = record["seconds"]
        speed = f" {self.epoch_images / seconds:,.0f} img/s" if seconds > 0 and self.epoch_images else ""
        mean = sum(r["seconds"] for r in history) / len(history)
        left = (epochs - record["epoch"]) * mean
        remaining = f", about {_duration(left)} left" if record["epoch"] < epochs else ""
        return f"{self.options.stage}: epoch {record['epoch']}/{epochs} {metrics}{speed} {seconds:.1f} s{remaining}"

    def _evaluate(self) -> dict[str, float]:
        """The trainable's validation metrics, then what each callback adds."""
        record = dict(self.task.evaluate()) if self.task.evaluate is not None else {}
        for callback in self.callbacks:
            record.update(callback.evaluate())
        return record

    def _save(self, over: bool) -> Path:
        """A checkpoint of where the loop is; ``over``: the epoch is evaluated and logged (the next one starts)."""
        task, options, state = self.task, self.options, self.state
        model = task.model
        bad = [name for name, p in model.state_dict().items() if p.is_floating_point() and not p.isfinite().all()]
        if bad:  # a diverged state never replaces a good checkpoint
            raise FloatingPointError(f"{options.stage}: the weights became non-finite ({bad[0]}) at epoch "
                                     f"{state.epoch}, step {state.skip}; {likely_cause(options.stage, task.scaler)}; "
                                     f"the last good checkpoint is kept in {options.checkpoints.directory}")
        # every process's random streams (its augmentations differ), so that each resumes its own: a collective,
        # so every process saves together; the others' part of the checkpoint ends there, rank 0 alone writes it
        rng = rng_state()
        streams = distributed.gather_objects(rng)
        if not distributed.is_main():
            return options.checkpoints.path(state.epoch, state.skip)
        loop = dataclasses.replace(state, seconds=self.result.earlier_seconds + time.perf_counter() - self.started)
        if over:
            loop = dataclasses.replace(loop, epoch=state.epoch + 1, skip=0)
            loop.new_epoch()
        saved = {
            "loop": dataclasses.asdict(loop), "best_state": self.best_weights, "history": self.result.history,
            "result": {"best_epoch": self.result.best_epoch, "best_val_acc": self.result.best_val_acc,
                       "stopped_early": self.result.stopped_early},
            "model": model.state_dict(), "optimizer": task.optimizer.state_dict(),
            "scheduler": task.scheduler.state_dict() if task.scheduler is not None else None,
            "scaler": task.scaler.state_dict() if task.scaler is not None else None,
            "batches": task.batches.state_dict() if isinstance(task.batches, EpochBatches) else None,
            "rng": rng, "world_size": distributed.world_size(),
            "callbacks": {key: value for key, value in ((c.state_key, c.state_dict()) for c in self.callbacks)
                          if value},
        }
        if len(streams) > 1:
            saved["rng_of_ranks"] = streams
        return options.checkpoints.save(saved, state.epoch, state.skip)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else \
        f"{seconds / 3600:.1f} h"


def _flat_states(flat: dict[str, Any], callbacks: Sequence[Callback]) -> dict[str, dict[str, Any]]:
    """The callbacks' states in a checkpoint written before they existed, whose ``extra`` was one flat dict of
    every owner's numbers: each stateful callback whose keys are all there takes its own (the owners of those
    numbers kept their old names as their state's keys)."""
    states = {}
    for callback in callbacks:
        keys = list(callback.state_dict())
        if keys and all(key in flat for key in keys):
            states[callback.state_key] = {key: flat[key] for key in keys}
    return states


def _batches_from(batches, epoch: int, skip: int) -> Iterator[list[torch.Tensor]]:
    """The batches of ``epoch`` after its first ``skip``: an :class:`EpochBatches` skips them without making
    them; another source makes them and they are dropped (so they use up whatever random numbers they draw)."""
    if skip and isinstance(batches, EpochBatches):
        return batches(epoch, skip=skip)
    iterator = iter(batches(epoch))
    for _ in range(skip):
        next(iterator)
    return iterator


def _rewrite_stage(metrics_path: Path, stage: str, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl`` with this stage's lines replaced by ``history`` (other stages' lines kept)."""
    lines = metrics_path.read_text().splitlines(keepends=True) if metrics_path.is_file() else []
    kept = [line for line in lines if line.strip() and json.loads(line).get("stage") != stage]
    atomic_write_text(metrics_path, "".join(kept) + "".join(json.dumps(r) + "\n" for r in history))
