"""Where a training loop is (:class:`LoopState`): saved in every checkpoint, and handed to the callbacks after
each step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class LoopState:
    """Where the loop is: the epoch to run and the batches of it already trained on, the epoch's running sums,
    early stopping's best score and count, and the training seconds spent before this process took over."""

    epoch: int = 1
    skip: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    correct: int = 0
    counted: bool = False
    best_score: float | None = None
    bad_epochs: int = 0
    seconds: float = 0.0

    def new_epoch(self) -> None:
        """Zero the running sums: an epoch starts."""
        self.loss_sum, self.seen, self.correct, self.counted = 0.0, 0, 0, False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoopState:
        """The state a checkpoint saved (``dataclasses.asdict``), of this version or an earlier one."""
        values = dict(values)
        if "sums" in values:  # checkpoints written before the state was typed kept the sums as a list
            values["loss_sum"], values["seen"], values["correct"], values["counted"] = values.pop("sums")
        return cls(**values)
