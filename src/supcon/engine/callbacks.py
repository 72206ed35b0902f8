"""Callbacks: what a stage or its caller adds to :func:`~supcon.engine.loop.fit` without the loop knowing it.

A :class:`Callback` sees the loop at fixed points (:meth:`~Callback.on_fit_start`,
:meth:`~Callback.on_epoch_start`, :meth:`~Callback.on_step_end`), may add numbers to each epoch's record
(:meth:`~Callback.evaluate`) and keeps its own state through the protocol of torch modules and Lightning's
callbacks: every checkpoint holds ``{callback.state_key: callback.state_dict()}`` for the callbacks with a state,
and a resumed run hands each one its entry back through :meth:`~Callback.load_state_dict` before it starts. A
stage's own callbacks (stage 1's progress record, kNN monitor and memory queue) come with its
:class:`~supcon.engine.loop.Trainable`; a caller's (:class:`SignalAt`, a test's) with the
:class:`~supcon.engine.loop.FitOptions`, after the stage's.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import torch

from supcon.engine import distributed
from supcon.engine.state import LoopState


class Callback:
    """The hooks :func:`~supcon.engine.loop.fit` calls; each does nothing unless a subclass says otherwise.

    ``state_key`` names the callback's entry in a checkpoint. It must stay the same across versions, since a
    resumed run finds its state by it, and differ between the callbacks of one run that have a state; the class
    name unless a subclass sets its own."""

    @property
    def state_key(self) -> str:
        return type(self).__qualname__

    def on_fit_start(self, stage: str) -> None:
        """``fit`` starts training ``stage``, after any checkpoint was restored."""

    def on_epoch_start(self, epoch: int) -> None:
        """``epoch`` starts (or continues, in a resumed run), before its batches are made."""

    def on_step_end(self, state: LoopState, batch: list[torch.Tensor], loss: float) -> None:
        """The optimizer step on ``batch``, whose loss was ``loss``, is done and counted in ``state``; the step's
        checkpoint, if one is due, comes after every callback's hook."""

    def evaluate(self) -> dict[str, float]:
        """Numbers for the epoch's record, after the trainable's own ``evaluate`` (on the main process only)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this callback (tensors and plain values); empty: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` returned in the run that saved the checkpoint."""


class SignalAt(Callback):
    """Sends this process ``signal`` right after optimizer step ``step`` (counted over the stage) of the ``nth``
    run of ``stage`` (any stage: the ``nth`` run of each) in this process, before that step's checkpoint.

    Tests of Ctrl-C and of killed runs interrupt a run at a known step this way, instead of racing a file watcher
    against it; ``python tests/signal_launcher.py SIGKILL:16 pretrain ...`` does it to a ``supcon`` command."""

    def __init__(self, signal: int | str, step: int, stage: str | None = None, nth: int = 1, rank: int | None = None):
        self.signal = _signal_number(signal)
        self.step, self.stage, self.nth, self.rank = int(step), stage, int(nth), rank
        self.runs: Counter[str] = Counter()  # on_fit_start calls of each stage, in this object's life
        self.armed = False

    @classmethod
    def from_spec(cls, spec: str) -> SignalAt:
        """``SIGNAL:STEP[:STAGE[:NTH[:RANK]]]``, as in ``SIGKILL:3:pretrain:2`` or ``SIGKILL:8::1:1`` (the process of
        rank 1 alone, in a distributed run)."""
        name, step, *rest = spec.split(":")
        if len(rest) > 3:
            raise ValueError(f"a signal spec is SIGNAL:STEP[:STAGE[:NTH[:RANK]]]; got {spec!r}")
        return cls(name, int(step), rest[0] if rest and rest[0] else None, int(rest[1]) if len(rest) > 1 else 1,
                   int(rest[2]) if len(rest) > 2 else None)

    def on_fit_start(self, stage: str) -> None:
        self.runs[stage] += 1
        here = self.rank is None or self.rank == distributed.rank()
        self.armed = here and self.stage in (None, stage) and self.runs[stage] == self.nth

    def on_step_end(self, state: LoopState, batch: list[torch.Tensor], loss: float) -> None:
        if self.armed and state.global_step == self.step:
            # raise_signal, not os.kill: kill may deliver the signal to another thread (torch's, tqdm's), whose
            # handler can then run after the loop's check for Ctrl-C, so the run would stop a step late or not at
            # all; raise_signal runs the handler in this thread before it returns.
            signal.raise_signal(self.signal)


def _signal_number(value: int | str) -> int:
    if isinstance(value, str):
        try:
            return int(signal.Signals[value.upper()])
        except KeyError:
            raise ValueError(f"unknown signal {value!r}; expected a name such as SIGINT or SIGKILL") from None
    return int(value)
