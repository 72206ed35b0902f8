"""A memory queue for stage 1 (MoCo-style SupCon): the last K projected embeddings and their labels, from a
momentum copy of the model, used as extra contrast vectors of the same exact loss.

Each step the copy's weights move towards the trained model's (``m x copy + (1 - m) x model``), the copy embeds
the batch without gradients, the loss takes the batch's own embeddings as its anchors against the batch and the
queue together (``SupConLoss(..., anchors=...)``: the queue's entries are positives and negatives, never anchors,
and carry no gradient), and the copy's embeddings of the batch then replace the oldest entries. A small batch so
sees the positives and negatives of a large one, at the cost of one forward pass without gradients.

The queue lives in the dict ``state`` (the loop's ``extra_state``), so that a checkpoint holds it and a resumed
run continues with the queue and the momentum copy it had.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class MemoryQueue:
    """The queue of ``size`` embeddings (``size / views`` images of ``views`` views each) of dimension ``dim``."""

    def __init__(self, model: nn.Module, size: int, views: int, dim: int, momentum: float, state: dict[str, Any],
                 device: torch.device):
        if size < 1 or not 0 <= momentum < 1:
            raise ValueError(f"a queue needs size >= 1 and momentum in [0, 1); got {size} and {momentum}")
        self.model, self.momentum, self.views = model, momentum, views
        self.copy = copy.deepcopy(model).requires_grad_(False)
        self.samples = math.ceil(size / views)
        self.state = state
        state.setdefault("queue_z", torch.zeros(self.samples, views, dim, device=device))
        state.setdefault("queue_y", torch.zeros(self.samples, dtype=torch.long, device=device))
        state.setdefault("queue_filled", 0)
        state.setdefault("queue_next", 0)
        state.setdefault("queue_copy", self.copy.state_dict())
        self._live = state["queue_copy"]

    def _sync(self) -> None:
        """A resumed run's checkpoint replaced the state's tensors: the copy takes its saved weights back."""
        if self.state["queue_copy"] is not self._live:
            self.copy.load_state_dict(self.state["queue_copy"])
            self.state["queue_copy"] = self._live = self.copy.state_dict()

    @torch.no_grad()
    def keys(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """The momentum copy's embeddings ``[batch, views, dim]`` of the flattened views ``x``, after moving its
        weights towards the trained model's."""
        self._sync()
        for mine, theirs in zip(self.copy.parameters(), self.model.parameters(), strict=True):
            mine.mul_(self.momentum).add_(theirs.detach(), alpha=1 - self.momentum)
        out = self.copy(x)
        out = out[0] if isinstance(out, tuple) else out
        return out.float().view(batch, self.views, -1)

    def loss(self, criterion: nn.Module, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``criterion``'s mean over the batch's anchors (every view of each image of ``z`` ``[B, V, D]``) against
        the batch and the queue. ``anchors=`` gives the anchors' share of the mean over every row, so it is
        scaled back to theirs alone."""
        features, every, anchors = self.contrast(z, labels)
        if anchors is None:
            return criterion(features, every)
        return criterion(features, every, anchors=anchors) * (len(features) / len(anchors))

    def contrast(self, z: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The loss's input: the batch's ``z`` ``[B, V, D]`` and ``labels`` followed by the queue's filled entries,
        and the anchors (the batch's rows; None while the queue is empty)."""
        filled = self.state["queue_filled"]
        if filled == 0:
            return z, labels, None
        features = torch.cat([z, self.state["queue_z"][:filled].to(z.dtype)])
        return (features, torch.cat([labels, self.state["queue_y"][:filled]]),
                torch.arange(len(z), device=z.device))

    def push(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Replace the oldest entries by ``keys`` ``[B, V, D]`` and their ``labels`` (the newest win when the batch
        is larger than the queue)."""
        keys, labels = keys[-self.samples:], labels[-self.samples:]
        start = self.state["queue_next"]
        rows = (torch.arange(len(keys), device=keys.device) + start) % self.samples
        self.state["queue_z"][rows] = keys.detach().to(self.state["queue_z"].dtype)
        self.state["queue_y"][rows] = labels
        self.state["queue_next"] = (start + len(keys)) % self.samples
        self.state["queue_filled"] = min(self.samples, self.state["queue_filled"] + len(keys))
