"""The batches of each epoch: a seeded shuffle, the view transform applied, on the device.

On a GPU the uint8 training images live on the device when they take less than :data:`RESIDENT_SHARE` of its
free memory (ImageNet-5 at 128 px is 61 MB, CIFAR-10 150 MB), so that a batch is an index on the device and the
augmentation that follows runs there too, with no copy and no host work per batch; larger sets stay in pinned host
memory and each batch is copied asynchronously one batch ahead of the step that needs it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from supcon.augment import apply_batch, is_batched
from supcon.device import to_device
from supcon.engine import distributed

RESIDENT_SHARE = 0.25  # of the device's free memory: the most the training images may take to live there


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
        self.resident = _fits_on(device, images) and is_batched(transform)
        if self.resident:  # per-image transforms run on the host: those images stay there
            self.images, self.labels = images.to(device), labels.to(device)
        self.generator = torch.Generator().manual_seed(seed)
        self._epoch_start: torch.Tensor | None = None
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
        order = shuffled_batches(len(self.labels), self.batch_size, self.generator, self.min_last)
        return self._iterate(order[skip:])

    def _iterate(self, order: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
        # One batch ahead only where a copy can overlap the step: on CUDA, from pinned host memory. A per-image
        # transform draws its random numbers on the host when it runs, so it runs in turn, as the step needs it.
        ahead = self.device.type == "cuda" and not self.resident and not self._per_image()
        staged = None
        for idx in order:
            batch = self._stage(distributed.shard(idx))
            if not ahead:
                yield self._finish(batch)
                continue
            if staged is not None:
                yield self._finish(staged)
            staged = batch  # its copy is under way while the step before it runs
        if staged is not None:
            yield self._finish(staged)
        self._epoch_start = None

    def _per_image(self) -> bool:
        return self.transform is not None and not is_batched(self.transform)

    def _stage(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's uint8 images and labels, on the device (on CUDA a copy started, not awaited)."""
        if self.resident:
            idx = idx.to(self.device, non_blocking=True)
            return self.images[idx], self.labels[idx]
        x = self.images[idx]
        if self._per_image():
            x = apply_batch(self.transform, x)  # per image, on the host
        return to_device(x, self.device), self.labels[idx].to(self.device, non_blocking=True)

    def _finish(self, staged: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        x, y = staged
        if is_batched(self.transform):
            x = apply_batch(self.transform, x)  # uint8 travelled: a quarter of the bytes
        return [x, y]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shuffle's state, for a checkpoint: the generator as it was when the epoch in progress began."""
        return {"generator": self._epoch_start if self._epoch_start is not None else self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a :meth:`state_dict`: the next epoch drawn is the one that was in progress."""
        self.generator.set_state(state["generator"])
        self._epoch_start = None


def _fits_on(device: torch.device, images: torch.Tensor) -> bool:
    """Whether ``images`` may live on ``device``: a GPU with room for them in :data:`RESIDENT_SHARE` of its free
    memory (the CPU keeps them where they are anyway)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() < RESIDENT_SHARE * free
