"""Stage 1's kNN monitor: how well the encoder's features classify the validation split while stage 1 trains."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from supcon.augment import Inputs
from supcon.config import Config
from supcon.data import DataSplits
from supcon.engine.batches import EpochBatches
from supcon.evaluate.inference import outputs
from supcon.evaluate.knn import KnnSchedule, chance_accuracy, knn_accuracy


def encoder_knn(encoder: nn.Module, data: DataSplits, inputs: Inputs, device: torch.device, cfg: Config,
                dtype: torch.dtype | None = None) -> float:
    """kNN accuracy (``cfg.knn_k`` neighbours, votes ``exp(s / cfg.knn_temperature)``) of the validation images'
    ``encoder`` features against the training images', both without augmentation."""
    plain = inputs.plain()
    train_x = outputs(encoder, data.train.images, transform=plain, device=device, batch_size=cfg.eval_batch_size,
                      dtype=dtype)
    val_x = outputs(encoder, data.val.images, transform=plain, device=device, batch_size=cfg.eval_batch_size,
                    dtype=dtype)
    return knn_accuracy(train_x.to(device), data.train.labels, val_x.to(device), data.val.labels, k=cfg.knn_k,
                        temperature=cfg.knn_temperature)


class KnnMonitor:
    """Stage 1's kNN monitor, as the loop's ``evaluate`` hook: ``knn_acc`` (and ``knn_seconds``) in the epoch's
    record when :class:`~supcon.evaluate.knn.KnnSchedule` says it is due.

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
        # The curve and the period chosen by "auto" live in ``state``, the dict that the loop checkpoints and
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
        """The loop's end-of-epoch hook: ``knn_acc`` and ``knn_seconds`` when a measurement is due, else ``{}``."""
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
