"""Augmentation of whole batches: the ``none``, ``crop`` and ``simclr`` policies with per-image random parameters
drawn from transforms.v2's distributions, applied to a ``[B, C, H, W]`` batch at once, in float, on the device
the images are on.

Two ways of applying the same parameters, which give the same views (to float rounding, 1e-6):

- the **device path** (:func:`color_jitter`, :func:`random_grayscale`, :func:`random_gaussian_blur`; the default
  wherever the images are not on the CPU): a fixed sequence of batched operations whose number does not depend
  on the parameters, with no host synchronisation and no host work per batch: the random parameters are drawn
  on the images' device, nothing is read back (no ``.item()``, ``.tolist()``, ``nonzero()``), and every per-image
  choice is a ``torch.where`` or a per-image factor. Crop, resize and flip are two batched matrix products with
  per-image interpolation weights built on the device, all channels in each; colour jitter runs as four *slots*,
  slot ``k`` applying to every image the adjustment its random order puts ``k``-th (brightness, contrast and
  saturation as one per-image blend ``clamp(a x + b gray(x) + c mean(gray(x)))``, hue computed for the whole
  batch and selected by ``torch.where``); grayscale by ``torch.where``; blur as one grouped convolution with a
  per-image kernel, a delta (identity) kernel for the images not blurred.
- the **grouped path** (the CPU default): the images sorted by their order of colour adjustments, so that each
  adjustment runs in place on a slice of the batch, and grayscale and blur only on the images drawn for them. The
  slots compute every adjustment for every image, so on the CPU, where arithmetic is what counts, the grouped path
  is about five times faster (256 images, two views, one thread); it reads the group sizes back to the host,
  which on a GPU waits for the device, and its number of operations grows with the number of groups.

``BatchedView(..., device_path=True/False)`` picks a path (None: by device), so that both run and are tested on
the CPU.

Where the result differs from transforms.v2 (``policy_transform`` on uint8 images), and why:

1. **Float throughout.** transforms.v2 on uint8 rounds to 8 bits after every step (the resize rounds, the colour
   adjustments truncate, contrast's grey mean is floored, the blur rounds); here nothing is rounded, so each
   step can differ from the uint8 pipeline by up to one grey level. With the same parameters, each step agrees
   with the transforms.v2 kernel applied to float images to 1e-5 (``tests/augment/test_batched.py``), and the
   whole policy with a per-image composition of those kernels.
2. **Random numbers.** The parameters are the distributions of transforms.v2's ``make_params``, drawn
   independently for every image (and every view), but not the same draws: RandomResizedCrop's up to ten
   attempts are drawn at once and the first that fits is kept (the same distribution as stopping at it), the
   box is placed by ``floor(u * (slack + 1))`` rather than ``randint``, the factors are drawn in float64, and the
   order of the four adjustments is the ``argsort`` of four uniforms (a uniform permutation, like
   ``randperm(4)``). On a GPU the draws come from that device's generator (Philox), so a seed gives other views
   on a GPU than on the CPU.
3. **Device path only:** an image is clamped to [0, 1] in every slot, also where that slot changes nothing, which
   moves only values that the resize left above 1 by a rounding error (at most a few 1e-7); the blends add
   ``0 * gray`` and ``0 * mean`` terms, which are exact; hue's round trip through HSV is computed for every
   image in every slot but kept only where the slot applies it, so the kept values are the same numbers; the blur
   is transforms.v2's one 2-D convolution with the outer-product kernel (the grouped path convolves twice in 1-D,
   which differs from it by float rounding, under 1e-6), and its delta kernel with reflect padding reproduces an
   image exactly.
4. **Several views of one batch** with the same settings are, on the device path, drawn and transformed as one
   stacked batch of ``views * B`` images (half the launches for two views): each image's views still get
   independent parameters.

No ``torch.compile`` or CUDA graph: the device path is about three hundred small operations per stacked batch
(two ``simclr`` views), with no host synchronisation, so on a GPU their launches queue behind the previous step's
work; whether fusing them pays has to be measured on one (``benchmarks/gpu.sh``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from supcon.augment.ops import (
    BLUR_P,
    BLUR_SIGMA,
    GRAYSCALE_P,
    JITTER,
    JITTER_OPS,
    JITTER_P,
    blur_kernel_size,
    color_jitter,
    draw_device,
    gaussian_blur,
    grayscale,
    rand,
    random_gaussian_blur,
    random_grayscale,
    resized_crop,
    rows_major,
    sample_crops,
    uniform,
    where_,
)

BATCHED_POLICIES = ("none", "crop", "simclr")
# The grouped path is a few hundred small operations. With more than one thread, each is a fork and a join, and
# on a loaded CPU a join waits for a descheduled thread: a 256-image batch took 0.3-5 s on 2 threads and
# 0.17-0.20 s on one, with other jobs running; quiet, it is about 4 % of a ResNet-18 step at 64 px either way.
AUGMENT_THREADS = 1

# The SimCLR policy's constants, shared by both implementations.

def _same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are one, ``cuda`` meaning the current CUDA device."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        current = torch.cuda.current_device() if a.type == "cuda" else 0
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


class BatchedView:
    """One view of a whole uint8 batch ``[B, C, H, W]``, returned as float ``[B, C, S, S]``.

    The policy's random parameters are drawn independently for every image, from the distributions of the
    per-image transforms.v2 pipeline (:func:`policy_transform`): a RandomResizedCrop box, a flip with p=1/2,
    and for ``simclr`` colour jitter with p=0.8 (independent factors and a random order of the four
    adjustments per image), grayscale with p=0.2 and, with ``blur``, a Gaussian blur with p=0.5. They are
    drawn on the images' device and applied to the batch at once, in float32, there: the crop and resize are two
    batched matrix products with per-image interpolation weights (bilinear with antialiasing, flips folded in),
    the colour adjustments are the transforms.v2 formulas with per-image factors. Unlike the uint8 pipeline,
    nothing is rounded to 8 bits between the steps (the module docstring lists every difference).

    ``generator``: a ``torch.Generator``, or several (one per device), that the random numbers of images on its
    device come from; images on a device without one raise. None (the default): torch's default generator of the
    images' device, so that ``torch.manual_seed`` makes the views reproducible on each device.
    ``device_path``: True applies the parameters with the device path (no host synchronisation), False with the
    grouped path, None (the default) the device path wherever the images are not on the CPU. On the CPU the view
    runs on one thread (see ``AUGMENT_THREADS``).
    """

    def __init__(self, policy: str, image_size: int, *, crop_scale: float = 0.2, hflip: bool = True,
                 blur: bool = False, mean=None, std=None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 device_path: bool | None = None):
        if policy not in BATCHED_POLICIES:
            raise ValueError(f"batched augmentation supports {', '.join(BATCHED_POLICIES)}; got {policy!r}")
        self.policy, self.image_size, self.crop_scale = policy, image_size, crop_scale
        self.hflip, self.blur, self.device_path = hflip, blur, device_path
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        self._stats: dict[torch.device, tuple[Tensor, Tensor]] = {}  # mean and std, made once per device
        self.generators = (() if generator is None
                           else (generator,) if isinstance(generator, torch.Generator) else tuple(generator))

    @property
    def generator(self) -> torch.Generator | None:
        """The first of the view's generators (None: torch's default ones)."""
        return self.generators[0] if self.generators else None

    def __repr__(self) -> str:
        return (f"BatchedView({self.policy!r}, {self.image_size}, crop_scale={self.crop_scale}, "
                f"hflip={self.hflip}, blur={self.blur})")

    def generator_for(self, device: torch.device | str) -> torch.Generator | None:
        """The generator that draws for images on ``device`` (None: torch's default generator there)."""
        if not self.generators:
            return None
        device = torch.device(device)
        for g in self.generators:
            if _same_device(g.device, device):
                return g
        raise ValueError(f"{self!r} has generators on {', '.join(str(g.device) for g in self.generators)}, "
                         f"none on {device}, where the images are: give one generator per device")

    def settings(self) -> tuple:
        """What decides how the view's images are drawn and transformed: views with equal settings can be drawn as
        one stacked batch."""
        return (self.policy, self.image_size, self.crop_scale, self.hflip, self.blur, self.device_path,
                tuple(id(g) for g in self.generators), self.mean and tuple(self.mean), self.std and tuple(self.std))

    def sample(self, n: int, channels: int, height: int, width: int,
               device: torch.device | str | None = None) -> dict[str, Tensor]:
        """The random parameters of ``n`` images, drawn on ``device`` (default: that of the view's generator,
        else the CPU) from the view's generator for it; nothing is read back to the host."""
        device = draw_device(device, self.generator)
        g = self.generator_for(device)
        params: dict[str, Tensor] = {}
        if self.policy == "none":
            return params
        params["boxes"] = sample_crops(n, height, width, (self.crop_scale, 1.0), generator=g, device=device)
        if self.hflip:
            params["flip"] = rand(n, g, device=device) < 0.5
        if self.policy == "simclr":
            params["jitter"] = rand(n, g, device=device) < JITTER_P
            params["order"] = rand(n, g, 4, device=device).argsort(1)  # a uniform permutation per image
            b, c, s, h = JITTER
            params["factors"] = torch.stack([uniform(n, 1 - b, 1 + b, g, device=device),
                                             uniform(n, 1 - c, 1 + c, g, device=device),
                                             uniform(n, 1 - s, 1 + s, g, device=device),
                                             uniform(n, -h, h, g, device=device)], 1).float()
            params["grayscale"] = rand(n, g, device=device) < GRAYSCALE_P
            if self.blur:
                params["blur"] = rand(n, g, device=device) < BLUR_P
                params["sigma"] = uniform(n, *BLUR_SIGMA, g, device=device)
        return params

    def uses_device_path(self, device: torch.device) -> bool:
        """Whether images on ``device`` go through the device path."""
        return self.device_path if self.device_path is not None else device.type != "cpu"

    def apply(self, x: Tensor, params: dict[str, Any]) -> Tensor:
        """The policy with the given parameters on a float batch in [0, 1]; not normalised."""
        params = {k: v.to(x.device) for k, v in params.items()}
        if self.uses_device_path(x.device):
            return self._apply_device(x, params)
        y, order = self._apply_grouped(x, params)
        return y if order is None else torch.empty_like(y).index_copy_(0, order, y)

    def _apply_device(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """:meth:`apply` on the device path: a fixed sequence of batched operations, nothing read back."""
        if self.policy == "none":
            return x
        x = resized_crop(x, params["boxes"], self.image_size, params.get("flip"))
        if self.policy == "crop":
            return x
        x = color_jitter(x, params["jitter"], params["order"], params["factors"])
        x = random_grayscale(x, params["grayscale"])
        if self.blur:
            x = random_gaussian_blur(x, blur_kernel_size(self.image_size), params["sigma"], params["blur"])
        return x

    def _apply_grouped(self, x: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """:meth:`apply` on the grouped path, but the images may come back reordered: ``(y, order)`` with ``y[k]``
        the image ``order[k]`` (``order`` None: in order), so that the caller's one copy into place also undoes
        it."""
        if self.policy == "none":
            return x, None
        if self.policy == "crop":
            return resized_crop(x, params["boxes"], self.image_size, params.get("flip")), None
        jitter, order = params["jitter"], params["order"]
        # Images sorted by their sequence of colour adjustments (24 orders, or none), so that each adjustment
        # runs on a slice of the batch in place, with no gathering or scattering per adjustment.
        weights = torch.tensor([64, 16, 4, 1], device=order.device)
        code = torch.where(jitter, (order * weights).sum(1), 256)
        code, perm = code.sort(stable=True)
        params = {k: v[perm] for k, v in params.items()}
        x = rows_major(x).index_select(0, perm).transpose(1, 2)  # keeps [n, H, C, W] in memory
        x = resized_crop(x, params["boxes"], self.image_size, params.get("flip"))
        values, counts = torch.unique_consecutive(code, return_counts=True)
        start = 0
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            stop = start + count
            if value < 256:
                ops = (value >> 6, (value >> 4) & 3, (value >> 2) & 3, value & 3)
                for op in ops:
                    JITTER_OPS[op](x[start:stop], params["factors"][start:stop, op])
            start = stop
        if x.shape[1] == 3:
            where_(x, params["grayscale"], lambda v: grayscale(v).expand_as(v))
        if self.blur:
            kernel = blur_kernel_size(self.image_size)
            where_(x, params["blur"], lambda v, sigma: gaussian_blur(v, kernel, sigma), params["sigma"])
        return x, perm

    def _views(self, x: Tensor, out: Tensor, members: Sequence[int]) -> None:
        """The views ``members`` of ``out`` (``[n, V, C, S, S]``, contiguous) from the float batch ``x`` (``[n, C,
        H, W]``, ``[n, H, C, W]`` in memory): ``len(members)`` copies of ``x`` stacked, drawn and transformed at
        once, written into place and normalised."""
        n, copies = len(x), len(members)
        if self.policy == "none":
            for v in members:
                self.normalize_(out[:, v].copy_(x))
            return
        stacked = x if copies == 1 else rows_major(x).repeat(copies, 1, 1, 1).transpose(1, 2)
        params = self.sample(copies * n, *x.shape[1:], device=x.device)
        if self.uses_device_path(x.device):
            y = self._apply_device(stacked, params)
            for j, v in enumerate(members):
                out[:, v].copy_(y[j * n:(j + 1) * n])
        else:
            # Undo the sort straight into place: stacked image k is image k % n of view members[k // n].
            y, order = self._apply_grouped(stacked, params)
            views = len(out[0])
            place = torch.tensor(members, device=x.device).repeat_interleave(n)
            place += torch.arange(n, device=x.device).repeat(copies) * views
            out.view(n * views, *out.shape[2:]).index_copy_(0, place if order is None else place[order], y)
        for v in members:
            self.normalize_(out[:, v])

    def normalize_(self, x: Tensor) -> Tensor:
        """``x`` normalised in place with the view's mean and std (unchanged without them); returns ``x``."""
        if self.mean is None:
            return x
        stats = self._stats.get(x.device)
        if stats is None:  # once per device: a tensor made from host values is a copy the device waits for
            stats = self._stats[x.device] = (torch.tensor(self.mean, device=x.device).view(-1, 1, 1),
                                             torch.tensor(self.std, device=x.device).view(-1, 1, 1))
        return x.sub_(stats[0]).div_(stats[1])

    def __call__(self, images: Tensor) -> Tensor:
        single = images.ndim == 3
        x = _to_float_rows(images[None] if single else images)
        size = x.shape[-2:] if self.policy == "none" else (self.image_size, self.image_size)
        out = x.new_empty(len(x), 1, x.shape[1], *size)
        with _cpu_threads(x.device, AUGMENT_THREADS):
            self._views(x, out, [0])
        return out[0, 0] if single else out[:, 0]


def _to_float_rows(images: Tensor) -> Tensor:
    """uint8 ``[n, C, H, W]`` to float in [0, 1] (as :func:`to_float`), laid out ``[n, H, C, W]`` in memory, the
    layout :func:`resized_crop` multiplies without copies."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images [n, C, H, W]; got {images.dtype} {tuple(images.shape)}")
    n, c, height, width = images.shape
    rows = torch.empty(n, height, c, width, device=images.device)
    return rows.copy_(images.transpose(1, 2)).mul_(1.0 / 255).transpose(1, 2)


@contextlib.contextmanager
def _cpu_threads(device: torch.device, threads: int | None):
    """Run the block with ``threads`` intra-op threads on the CPU (None: leave them)."""
    before = torch.get_num_threads()
    if device.type != "cpu" or threads is None or threads >= before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class BatchedMultiView:
    """Several :class:`BatchedView` of one batch: uint8 ``[B, C, H, W]`` to float ``[B, V, C, S, S]`` (a list of
    ``V`` views for a single ``[C, H, W]`` image, as :class:`MultiViewTransform`). On the device path, views with
    the same settings (two ``simclr`` views, say) are drawn and transformed as one stacked batch, with independent
    parameters for every image of every view: half the launches for two views."""

    def __init__(self, views: Sequence[BatchedView]):
        if not views:
            raise ValueError("a multi-view transform needs at least one view")
        self.transforms = list(views)

    def __len__(self) -> int:
        return len(self.transforms)

    def _groups(self, device: torch.device) -> list[list[int]]:
        """The views' indices, grouped by equal settings where they take the device path; one view at a time on
        the grouped path, whose cost is arithmetic, not launches, and on the CPU the stacked batch's larger
        temporaries cost more in fresh pages than the fewer operations save."""
        groups: dict[Any, list[int]] = {}
        for v, t in enumerate(self.transforms):
            groups.setdefault(t.settings() if t.uses_device_path(device) else v, []).append(v)
        return list(groups.values())

    def __call__(self, images: Tensor) -> Tensor | list[Tensor]:
        single = images.ndim == 3
        x = _to_float_rows(images[None] if single else images)  # converted once for all views
        sizes = {tuple(x.shape[-2:]) if t.policy == "none" else (t.image_size,) * 2 for t in self.transforms}
        if len(sizes) != 1:
            raise ValueError("the views of a batched multi-view transform must have one size")
        out = x.new_empty(len(x), len(self.transforms), x.shape[1], *sizes.pop())
        with _cpu_threads(x.device, AUGMENT_THREADS):
            for members in self._groups(x.device):
                self.transforms[members[0]]._views(x, out, members)
        return list(out[0]) if single else out
