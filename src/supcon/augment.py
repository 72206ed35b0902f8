"""Augmentation policies and the multi-view transform, built on ``torchvision.transforms.v2``.

Images stay uint8 ``[C, H, W]`` tensors through every policy; the last step scales them to float in [0, 1]
(and optionally normalises with a mean and std).

>>> from supcon.augment import multiview_transform
>>> views = multiview_transform("simclr", image_size=32, views=2)
>>> v0, v1 = views(image_uint8)              # two differently augmented float views
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

POLICIES = ("none", "crop", "simclr", "autoaugment", "randaugment")


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
    steps: list[v2.Transform] = [v2.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if policy == "simclr":
        steps += [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)]
        if blur:
            kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)  # odd, about a tenth of the image as in SimCLR
            steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    elif policy == "autoaugment":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
    elif policy == "randaugment":
        steps.append(v2.RandAugment())
    return v2.Compose(steps)


def view_transform(policy: str, image_size: int, *, mean=None, std=None, **policy_options) -> v2.Transform:
    """One view: the policy on uint8, then the scaling to float."""
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
                        mean=None, std=None, **policy_options) -> MultiViewTransform:
    """``views`` independently augmented views; ``first_view="crop"`` makes view 0 a plain crop+resize (and
    flip) while the others use ``policy``, the scheme of the study we reproduce."""
    if views < 1:
        raise ValueError(f"views must be at least 1; got {views}")
    if first_view not in ("same", "crop"):
        raise ValueError(f"first_view must be 'same' or 'crop'; got {first_view!r}")
    first = "crop" if first_view == "crop" else policy
    transforms = [view_transform(first, image_size, mean=mean, std=std, **policy_options)]
    transforms += [view_transform(policy, image_size, mean=mean, std=std, **policy_options)
                   for _ in range(views - 1)]
    return MultiViewTransform(transforms)


def apply_batch(transform, images: torch.Tensor) -> torch.Tensor:
    """Apply a per-image transform to a uint8 batch ``[B, C, H, W]``; returns ``[B, C, H, W]`` (or
    ``[B, V, C, H, W]`` for a :class:`MultiViewTransform`).

    transforms.v2 draws one set of random parameters per call, so each image gets its own call.
    """
    if images.ndim != 4 or images.dtype != torch.uint8 or len(images) == 0:
        got = f"{images.dtype} {tuple(images.shape)}"
        raise ValueError(f"expected a non-empty uint8 batch shaped [B, C, H, W]; got {got}")
    if isinstance(transform, MultiViewTransform):
        return torch.stack([torch.stack(transform(img)) for img in images])
    return torch.stack([transform(img) for img in images])
