"""A memory queue for stage 1 (MoCo-style SupCon): the last K projected embeddings and their labels, from a
momentum copy of the model, used as extra contrast vectors of the same exact loss.

Each step the copy's weights move towards the trained model's (``m x copy + (1 - m) x model``), the copy embeds
the batch without gradients, the loss takes the batch's own embeddings as its anchors against the batch and the
queue together (``SupConLoss(..., anchors=...)``: the queue's entries are positives and negatives, never anchors,
and carry no gradient), and the copy's embeddings of the batch then replace the oldest entries. A small batch so
sees the positives and negatives of a large one, at the cost of one forward pass without gradients.

The queue is one of stage 1's callbacks (:mod:`supcon.engine.callbacks`): its :meth:`MemoryQueue.state_dict`
(the entries, where the next ones go, and the momentum copy's weights) is in every checkpoint, so that a resumed
run continues with the queue and the copy it had.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from supcon.engine.callbacks import Callback


class MemoryQueue(Callback):
    """The queue of ``size`` embeddings (``size / views`` images of ``views`` views each) of dimension ``dim``:
    ``z`` ``[size / views, views, dim]`` and their ``labels``, of which the first ``filled`` rows hold entries and
    row ``position`` is replaced next."""

    state_key = "memory_queue"

    def __init__(self, model: nn.Module, size: int, views: int, dim: int, momentum: float, device: torch.device):
        if size < 1 or not 0 <= momentum < 1:
            raise ValueError(f"a queue needs size >= 1 and momentum in [0, 1); got {size} and {momentum}")
        self.model, self.momentum, self.views = model, momentum, views
        self.copy = copy.deepcopy(model).requires_grad_(False)
        self.samples = math.ceil(size / views)
        self.z = torch.zeros(self.samples, views, dim, device=device)
        self.labels = torch.zeros(self.samples, dtype=torch.long, device=device)
        self.filled = 0
        self.position = 0

    # The keys are those of the flat dict that checkpoints of earlier versions kept, so that those still resume.
    def state_dict(self) -> dict[str, Any]:
        return {"queue_z": self.z, "queue_y": self.labels, "queue_filled": self.filled,
                "queue_next": self.position, "queue_copy": self.copy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # copied into the tensors there are: a checkpoint is read onto the CPU, the queue may live on a GPU
        self.z.copy_(state["queue_z"])
        self.labels.copy_(state["queue_y"])
        self.filled, self.position = int(state["queue_filled"]), int(state["queue_next"])
        self.copy.load_state_dict(state["queue_copy"])

    @torch.no_grad()
    def keys(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """The momentum copy's embeddings ``[batch, views, dim]`` of the flattened views ``x``, after moving its
        weights towards the trained model's."""
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
        filled = self.filled
        if filled == 0:
            return z, labels, None
        features = torch.cat([z, self.z[:filled].to(z.dtype)])
        return (features, torch.cat([labels, self.labels[:filled]]),
                torch.arange(len(z), device=z.device))

    def push(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Replace the oldest entries by ``keys`` ``[B, V, D]`` and their ``labels`` (the newest win when the batch
        is larger than the queue)."""
        keys, labels = keys[-self.samples:], labels[-self.samples:]
        start = self.position
        rows = (torch.arange(len(keys), device=keys.device) + start) % self.samples
        self.z[rows] = keys.detach().to(self.z.dtype)
        self.labels[rows] = labels
        self.position = (start + len(keys)) % self.samples
        self.filled = min(self.samples, self.filled + len(keys))
