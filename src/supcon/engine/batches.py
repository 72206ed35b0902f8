"""The batches of each epoch: a seeded shuffle, the view transform applied, moved to the device."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from supcon.augment import apply_batch, is_batched
from supcon.device import to_device
from supcon.engine import distributed


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator, min_last: int = 2
                     ) -> list[torch.Tensor]:
    """A seeded permutation cut into batches; a trailing batch under ``min_last`` is dropped (BatchNorm needs
    two images, on each process when the batch is split over several)."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < min_last:
        batches.pop()
    return batches


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
        batched = is_batched(self.transform)
        for idx in order:
            idx = distributed.shard(idx)
            x = self.images[idx]
            if batched:
                x = apply_batch(self.transform, to_device(x, self.device))  # uint8 travels: a quarter of the bytes
            elif self.transform is not None:
                x = to_device(apply_batch(self.transform, x), self.device)
            else:
                x = to_device(x, self.device)
            yield [x, self.labels[idx].to(self.device)]
        self._epoch_start = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shuffle's state, for a checkpoint: the generator as it was when the epoch in progress began."""
        return {"generator": self._epoch_start if self._epoch_start is not None else self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a :meth:`state_dict`: the next epoch drawn is the one that was in progress."""
        self.generator.set_state(state["generator"])
        self._epoch_start = None
