"""Stage 1's kNN monitor: how well the encoder's features classify the validation split while stage 1 trains."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from supcon.augment import Inputs
from supcon.config import Config
from supcon.data import DataSplits
from supcon.engine.callbacks import Callback
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


class KnnMonitor(Callback):
    """Stage 1's kNN monitor, one of its callbacks: ``knn_acc`` (and ``knn_seconds``) in the epoch's record when
    :class:`~supcon.evaluate.knn.KnnSchedule` says it is due, and the untrained encoder's accuracy (epoch 0) when
    training starts, the baseline that tells "never started" from "stopped early".

    Its state is the curve and the period ``auto`` chose, so that a resumed run keeps both. The epoch's start time
    lets ``auto`` compare the kNN's cost with the epoch's training. The random state is restored after each
    measurement and the encoder is run in eval mode, so the monitor never changes what is trained.
    """

    state_key = "knn_monitor"

    def __init__(self, cfg: Config, data: DataSplits, encoder: nn.Module, inputs: Inputs, device: torch.device,
                 dtype: torch.dtype | None = None, every_epoch: bool = False):
        self.cfg, self.data, self.encoder, self.inputs = cfg, data, encoder, inputs
        self.device, self.dtype = device, dtype
        # a stage that stops on the monitor needs it every epoch, whatever it costs: `auto` then means 1
        every = 1 if every_epoch and cfg.knn_every == "auto" else cfg.knn_every
        self.schedule = KnnSchedule(every if every == "auto" else int(every), cfg.epochs)
        self.on = self.schedule.resolved != 0
        self.curve: list[list[float]] = []  # [epoch, accuracy]; epoch 0 is the untrained encoder
        self.epoch, self.started = 0, time.perf_counter()

    # The keys are those of the flat dict that checkpoints of earlier versions kept, so that those still resume.
    def state_dict(self) -> dict[str, Any]:
        return {"knn_curve": self.curve, "knn_every": self.schedule.resolved} if self.on else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curve = [list(point) for point in state["knn_curve"]]
        self.schedule.resolved = state["knn_every"]

    def measure(self) -> tuple[float, float]:
        """The encoder's kNN accuracy now, and the seconds it took; the random state is left as it was."""
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            acc = encoder_knn(self.encoder, self.data, self.inputs, self.device, self.cfg, self.dtype)
        return acc, time.perf_counter() - t0

    def on_fit_start(self, stage: str) -> None:
        if self.on and not self.curve:  # a resumed run has its curve, the untrained encoder's point first
            self.curve.append([0, self.measure()[0]])

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch, self.started = epoch, time.perf_counter()

    def evaluate(self) -> dict[str, float]:
        """``knn_acc`` and ``knn_seconds`` when a measurement is due, else ``{}``."""
        train_seconds = time.perf_counter() - self.started
        if not self.on or not self.schedule.due(self.epoch):
            return {}
        acc, seconds = self.measure()
        self.schedule.measured(seconds, train_seconds)
        self.curve.append([self.epoch, acc])
        return {"knn_acc": acc, "knn_seconds": seconds}

    def summary(self, epoch: int | None = None) -> dict[str, Any]:
        """The run summary's kNN entries: the accuracy at ``epoch`` (the one stage 1 kept; default and where it
        was not measured: the last), the curve, chance and the period (``{}`` when off)."""
        if not self.on:
            return {}
        at = {int(e): acc for e, acc in self.curve[1:]}
        last = self.curve[-1][1] if len(self.curve) > 1 else None
        return {"knn_acc": at.get(epoch, last), "knn_curve": self.curve,
                "knn_chance": chance_accuracy(self.data.val.labels), "knn_every": self.schedule.resolved}
