"""Augmentation policies and the multi-view transform.

Two implementations of the same policies:

- per image, on ``torchvision.transforms.v2``: images stay uint8 ``[C, H, W]`` tensors through every policy;
  the last step scales them to float in [0, 1] (and optionally normalises with a mean and std). Every policy.
- per batch (``batched=True``; ``none``, ``crop`` and ``simclr``): :class:`BatchedView` draws the same random
  parameters from the same distributions, independently for each image, but applies them to a whole
  ``[B, C, H, W]`` batch at once, in float, on the images' device (on a GPU with no host synchronisation; see
  :mod:`supcon.augment.batched`). This is what training uses: one transforms.v2 call per image took
  13 % of a ResNet-18 step at 64 px on 2 quiet CPU cores and over half of it on loaded ones; the batched path
  takes 4 % (``benchmarks/bench_train.py``).

>>> from supcon.augment import multiview_transform, apply_batch
>>> views = multiview_transform("simclr", image_size=32, views=2)
>>> v0, v1 = views(image_uint8)              # two differently augmented float views
>>> batch = apply_batch(multiview_transform("simclr", 32, 2, batched=True), images_uint8)  # [B, 2, C, 32, 32]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import v2

from supcon.augment.batched import BATCHED_POLICIES, BatchedMultiView, BatchedView
from supcon.augment.ops import (
    BLUR_P,
    BLUR_SIGMA,
    CROP_RATIO,
    GRAYSCALE_P,
    JITTER,
    JITTER_P,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    color_jitter,
    gaussian_blur,
    random_gaussian_blur,
    random_grayscale,
    resize_weights,
    resized_crop,
    sample_crops,
)

POLICIES = ("none", "crop", "simclr", "autoaugment", "randaugment")
__all__ = ["BATCHED_POLICIES", "BLUR_P", "BLUR_SIGMA", "CROP_RATIO", "GRAYSCALE_P", "JITTER", "JITTER_P", "POLICIES",
           "BatchedMultiView", "BatchedView", "CentreView", "Inputs", "MultiViewTransform", "adjust_brightness",
           "adjust_contrast", "adjust_hue", "adjust_saturation", "apply_batch", "blur_kernel_size", "color_jitter",
           "gaussian_blur", "is_batched", "multiview_transform", "policy_transform", "random_gaussian_blur",
           "random_grayscale", "resize_weights", "resized_crop", "sample_crops", "to_float", "view_transform"]


def to_float(mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> v2.Transform:
    """uint8 to float in [0, 1], then ``(x - mean) / std`` when both are given."""
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    steps: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True)]
    if mean is not None:
        steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def policy_transform(policy: str, image_size: int, *, crop_scale: float = 0.2, hflip: bool = True,
                     blur: bool = False) -> v2.Transform:
    """The uint8-to-uint8 part of a policy, for images already at ``image_size``.

    - ``none``: identity.
    - ``crop``: random resized crop (area share ``crop_scale``..1) and horizontal flip.
    - ``simclr``: crop, flip, colour jitter 0.4/0.4/0.4/0.1 with p=0.8, grayscale with p=0.2 and, with
      ``blur``, Gaussian blur (kernel ~10% of the image) with p=0.5 (SimCLR's SimAugment).
    - ``autoaugment`` / ``randaugment``: crop, flip, then torchvision's ImageNet AutoAugment / RandAugment.
    """
    if policy not in POLICIES:
        raise ValueError(f"augmentation policy must be one of {', '.join(POLICIES)}; got {policy!r}")
    if policy == "none":
        return v2.Identity()
    steps: list[v2.Transform] = [v2.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), ratio=CROP_RATIO,
                                                      antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if policy == "simclr":
        steps += [v2.RandomApply([v2.ColorJitter(*JITTER)], p=JITTER_P), v2.RandomGrayscale(p=GRAYSCALE_P)]
        if blur:
            steps.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(image_size), sigma=BLUR_SIGMA)],
                                        p=BLUR_P))
    elif policy == "autoaugment":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
    elif policy == "randaugment":
        steps.append(v2.RandAugment())
    return v2.Compose(steps)


def view_transform(policy: str, image_size: int, *, mean=None, std=None, batched: bool = False,
                   **policy_options) -> v2.Transform | BatchedView:
    """One view: the policy on uint8, then the scaling to float.

    ``batched=True`` gives a :class:`BatchedView` where the policy has one (``none``, ``crop``, ``simclr``)
    and the per-image transforms.v2 pipeline otherwise.
    """
    if batched and policy in BATCHED_POLICIES:
        return BatchedView(policy, image_size, mean=mean, std=std, **policy_options)
    return v2.Compose([policy_transform(policy, image_size, **policy_options), to_float(mean, std)])


class MultiViewTransform:
    """Applies one transform per view to the same image and returns the list of views."""

    def __init__(self, transforms: Sequence[v2.Transform]):
        if not transforms:
            raise ValueError("a multi-view transform needs at least one view")
        self.transforms = list(transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [t(image) for t in self.transforms]


def multiview_transform(policy: str, image_size: int, views: int = 2, *, first_view: str = "same",
                        mean=None, std=None, batched: bool = False, **policy_options) -> MultiViewTransform:
    """``views`` independently augmented views; ``first_view="crop"`` makes view 0 a plain crop+resize (and
    flip) while the others use ``policy``, the scheme of the study we reproduce. ``batched=True``: a
    :class:`BatchedMultiView` where every view's policy has a batched form (see :func:`view_transform`)."""
    if views < 1:
        raise ValueError(f"views must be at least 1; got {views}")
    if first_view not in ("same", "crop"):
        raise ValueError(f"first_view must be 'same' or 'crop'; got {first_view!r}")
    if policy not in POLICIES:
        policy_transform(policy, image_size)  # raises the usual message
    first = "crop" if first_view == "crop" else policy
    batched = batched and policy in BATCHED_POLICIES
    kinds = [first] + [policy] * (views - 1)
    transforms = [view_transform(kind, image_size, mean=mean, std=std, batched=batched, **policy_options)
                  for kind in kinds]
    return BatchedMultiView(transforms) if batched else MultiViewTransform(transforms)


@dataclass
class Inputs:
    """How a run's images become model inputs: their size and channels, pixels scaled to [0, 1] and, for a run
    trained with ``--normalize``, standardised with its training images' per-channel ``mean`` and ``std``.
    Where the images are stored larger than the model's input (``stored_size``, a decoded cache), validation,
    test and prediction see the centre ``crop`` share of each, resized to ``image_size``, as torchvision's
    references do. ``results.json`` stores it as ``input``, so that evaluation feeds a run as its training did."""

    image_size: int
    channels: int
    mean: list[float] | None = None
    std: list[float] | None = None
    stored_size: int | None = None
    crop: float = 1.0

    @classmethod
    def of_images(cls, images: Tensor, normalize: bool = False, image_size: int | None = None,
                  crop: float = 1.0) -> Inputs:
        """The inputs of uint8 training ``images`` ``[N, C, S, S]`` fed at ``image_size`` (default: S, then with
        no crop); with ``normalize`` their channel statistics, gathered a chunk at a time (a memory-mapped set is
        never read whole into memory)."""
        stored = int(images.shape[2])
        image_size = image_size or stored
        mean = std = None
        if normalize:
            total, squares, count = torch.zeros(images.shape[1], dtype=torch.float64), None, 0
            for start in range(0, len(images), 4096):
                x = images[start:start + 4096].double() / 255
                total += x.sum(dim=(0, 2, 3))
                squares = x.pow(2).sum(dim=(0, 2, 3)) + (squares if squares is not None else 0)
                count += x.shape[0] * x.shape[2] * x.shape[3]
            mean_t = total / count
            std_t = ((squares / count - mean_t ** 2) * count / max(1, count - 1)).clamp_min(0).sqrt()
            mean, std = mean_t.float().tolist(), std_t.float().clamp_min(1e-3).tolist()
        larger = stored != image_size
        return cls(image_size, int(images.shape[1]), mean, std, stored if larger else None, crop if larger else 1.0)

    def plain(self):
        """uint8 to the model's float input, a whole batch at a time, without augmentation."""
        if self.stored_size in (None, self.image_size) and self.crop == 1.0:
            return view_transform("none", self.image_size, mean=self.mean, std=self.std, batched=True)
        return CentreView(self.image_size, self.crop, self.mean, self.std)

    def pixels(self):
        """As :meth:`plain`, but float pixels in [0, 1], not standardised (what a classifier that standardises its
        own input takes, and what corruptions perturb)."""
        return Inputs(self.image_size, self.channels, None, None, self.stored_size, self.crop).plain()


class CentreView:
    """Validation's view of stored images larger than the model's input: the centre ``crop`` share of each,
    resized (antialiased bilinear) to ``image_size``, as one batched call; uint8 ``[B, C, S, S]`` to float."""

    def __init__(self, image_size: int, crop: float = 0.875, mean=None, std=None):
        if not 0 < crop <= 1:
            raise ValueError(f"crop must be in (0, 1]; got {crop}")
        self.image_size, self.crop = image_size, crop
        self.normalize = to_float(mean, std).transforms[1:]  # the scaling is done here, in float

    def __call__(self, images: Tensor) -> Tensor:
        from torchvision.transforms.v2 import functional as F

        single = images.ndim == 3
        x = (images[None] if single else images).float().div_(255)
        side = x.shape[-1]
        keep = max(1, round(side * self.crop))
        top = (side - keep) // 2
        x = F.resized_crop(x, top, top, keep, keep, [self.image_size] * 2, antialias=True).clamp_(0, 1)
        for step in self.normalize:
            x = step(x)
        return x[0] if single else x


def is_batched(transform) -> bool:
    """Whether ``transform`` takes a whole batch in one call (a :class:`BatchedView`, :class:`BatchedMultiView` or
    :class:`CentreView`)."""
    return isinstance(transform, BatchedView | BatchedMultiView | CentreView)


def apply_batch(transform, images: torch.Tensor) -> torch.Tensor:
    """Apply a per-image transform to a uint8 batch ``[B, C, H, W]``; returns ``[B, C, H, W]`` (or
    ``[B, V, C, H, W]`` for a :class:`MultiViewTransform`).

    transforms.v2 draws one set of random parameters per call, so each image gets its own call; a
    :class:`BatchedView` or :class:`BatchedMultiView` takes the whole batch in one call.
    """
    if images.ndim != 4 or images.dtype != torch.uint8 or len(images) == 0:
        got = f"{images.dtype} {tuple(images.shape)}"
        raise ValueError(f"expected a non-empty uint8 batch shaped [B, C, H, W]; got {got}")
    if is_batched(transform):
        return transform(images)
    if isinstance(transform, MultiViewTransform):
        return torch.stack([torch.stack(transform(img)) for img in images])
    return torch.stack([transform(img) for img in images])
