"""Augmentation of whole batches: the ``none``, ``crop`` and ``simclr`` policies with per-image random parameters
drawn from transforms.v2's distributions, applied to a ``[B, C, H, W]`` batch at once, in float.

One transforms.v2 call per image took 13 % of a ResNet-18 step at 64 px on 2 quiet CPU cores and over half of it
on loaded ones; the batched path takes 4 % (``benchmarks/bench_train.py``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

BATCHED_POLICIES = ("none", "crop", "simclr")
# The batched augmentation is a few hundred small operations. With more than one thread, each is a fork and a
# join, and on a loaded CPU a join waits for a descheduled thread: a 256-image batch took 0.3-5 s on 2 threads
# and 0.17-0.20 s on one, with other jobs running; quiet, it is about 4 % of a ResNet-18 step at 64 px either way.
AUGMENT_THREADS = 1

# The SimCLR policy's constants, shared by both implementations.
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
JITTER_P = 0.8
GRAYSCALE_P = 0.2
BLUR_P = 0.5
BLUR_SIGMA = (0.1, 2.0)


def blur_kernel_size(image_size: int) -> int:
    """Odd, about a tenth of the image, as in SimCLR."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)



def _uniform(n: int, low: float, high: float, generator, *shape: int) -> Tensor:
    return torch.empty(n, *shape, dtype=torch.float64).uniform_(low, high, generator=generator)


def sample_crops(n: int, height: int, width: int, scale: tuple[float, float], ratio=CROP_RATIO,
                 generator: torch.Generator | None = None) -> Tensor:
    """``n`` independent RandomResizedCrop boxes ``[n, 4]`` (top, left, height, width), int64.

    The distribution of transforms.v2's ``RandomResizedCrop.make_params``: up to ten attempts of an area share
    uniform in ``scale`` and a log-uniform aspect ratio; the first box that fits is placed uniformly; if none
    fits, the largest centred box within ``ratio``.
    """
    attempts = 10
    target = height * width * _uniform(n, scale[0], scale[1], generator, attempts)
    aspect = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, attempts).exp_()
    w = (target * aspect).sqrt_().round_()
    h = (target / aspect).sqrt_().round_()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # argmax returns the first maximum
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    u = _uniform(n, 0.0, 1.0, generator, 2)
    top = (u[:, 0] * (height - h + 1)).floor_().clamp_(max=height - h)
    left = (u[:, 1] * (width - w + 1)).floor_().clamp_(max=width - w)
    none_fit = ~fits.any(1)
    if bool(none_fit.any()):
        in_ratio = width / height
        if in_ratio < min(ratio):
            fw, fh = width, round(width / min(ratio))
        elif in_ratio > max(ratio):
            fw, fh = round(height * max(ratio)), height
        else:
            fw, fh = width, height
        w[none_fit], h[none_fit] = fw, fh
        top[none_fit], left[none_fit] = (height - fh) // 2, (width - fw) // 2
    return torch.stack([top, left, h, w], 1).long()


def resize_weights(start: Tensor, length: Tensor, out_size: int, in_size: int,
                   flip: Tensor | None = None) -> Tensor:
    """``[n, out_size, in_size]`` matrices that crop ``[start, start + length)`` and resize it to ``out_size``
    along one axis, as bilinear ``interpolate(..., antialias=True)`` does (a triangle filter widened by the
    scale when shrinking), reversed along the output where ``flip``."""
    length = length.float()
    scale = length / out_size
    support = scale.clamp(min=1.0)
    centre = scale[:, None] * (torch.arange(out_size, dtype=torch.float32) + 0.5)  # [n, out], crop coordinates
    if flip is not None:
        centre = torch.where(flip[:, None], centre.flip(1), centre)
    k = torch.arange(in_size, dtype=torch.float32) + 0.5 - start[:, None].float()  # [n, in], crop coordinates
    inside = ((k > 0) & (k < length[:, None])).float()
    weights = (k[:, None, :] - centre[:, :, None]).div_(support[:, None, None]).abs_().neg_().add_(1).clamp_(min=0)
    weights.mul_(inside[:, None, :])
    return weights.div_(weights.sum(-1, keepdim=True))


def resized_crop(x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop each image of a float batch ``[n, C, H, W]`` to its box and resize it to ``size`` (bilinear, with
    antialiasing), then flip it horizontally where ``flip``: two batched matrix products per channel with
    per-image interpolation weights.

    Channel-major memory (``x.transpose(0, 1)`` contiguous, as :class:`BatchedMultiView` converts its input)
    needs no copies; the result is laid out so too (a ``[n, C, S, S]`` view of a contiguous ``[C, n, S, S]``),
    which keeps each channel contiguous for the colour adjustments.
    """
    n, c, height, width = x.shape
    planes = x.transpose(0, 1).contiguous()  # [C, n, H, W]
    boxes = boxes.cpu()
    rows = resize_weights(boxes[:, 0], boxes[:, 2], size, height).to(x.device, x.dtype)  # [n, S, H]
    cols = resize_weights(boxes[:, 1], boxes[:, 3], size, width, None if flip is None else flip.cpu())
    cols = cols.to(x.device, x.dtype).transpose(1, 2)  # [n, W, S]
    out = x.new_empty(c, n, size, size)
    for channel in range(c):
        torch.bmm(rows, torch.bmm(planes[channel], cols), out=out[channel])
    return out.transpose(0, 1)


def _grayscale(x: Tensor) -> Tensor:
    """``[n, 1, H, W]``; the ITU-R 601 weights of transforms.v2."""
    r, g, b = x.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _factor(factor: Tensor, x: Tensor, dims: int = 3) -> Tensor:
    return factor.to(x.device, x.dtype).view(-1, *([1] * dims))


# The adjustments below work in place on a batch of float images in [0, 1], with one factor per image; each
# is the transforms.v2 formula for float images (``adjust_brightness`` etc. are the out-of-place versions).


def _brightness_(x: Tensor, factor: Tensor) -> Tensor:
    return x.mul_(_factor(factor, x)).clamp_(0, 1)


def _blend_(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    f = _factor(factor, x)
    return x.mul_(f).add_(other * (1 - f)).clamp_(0, 1)


def _contrast_(x: Tensor, factor: Tensor) -> Tensor:
    mean = (_grayscale(x) if x.shape[1] == 3 else x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend_(x, mean, factor)


def _saturation_(x: Tensor, factor: Tensor) -> Tensor:
    return x if x.shape[1] == 1 else _blend_(x, _grayscale(x), factor)


def _hue_(x: Tensor, factor: Tensor) -> Tensor:
    """Rotate the hue by ``factor`` (a share of the circle): the hue as transforms.v2 computes it (in sixths,
    ``H``), shifted, and back to RGB with the closed form ``max - (max - min) clamp(min(k, 4 - k), 0, 1)``,
    ``k = (H + m) mod 6`` (m = 5, 3, 1 for R, G, B), which is what transforms.v2's sector table gives."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    spread = maxc - torch.minimum(torch.minimum(r, g), b)
    inv = spread.clamp(min=1e-30).reciprocal_()  # a grey pixel (spread 0) has differences 0: any hue will do
    h = torch.where(maxc == r, (g - b).mul_(inv),
                    torch.where(maxc == g, (b - r).mul_(inv).add_(2), (r - g).mul_(inv).add_(4)))
    h.add_(_factor(factor, x, 2), alpha=6).remainder_(6)
    for channel, m in enumerate((5, 3, 1)):
        k = h.add(m).remainder_(6)
        torch.minimum(k, 4 - k, out=k).clamp_(0, 1)
        torch.sub(maxc, k.mul_(spread), out=x[:, channel])
    return x


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Per-image ``adjust_brightness`` on a float batch ``[n, C, H, W]``, ``factor`` ``[n]``."""
    return _brightness_(x.clone(), factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Per-image ``adjust_contrast`` on a float batch ``[n, C, H, W]``, ``factor`` ``[n]``."""
    return _contrast_(x.clone(), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Per-image ``adjust_saturation`` on a float batch ``[n, C, H, W]``, ``factor`` ``[n]``."""
    return _saturation_(x.clone(), factor)


def adjust_hue(x: Tensor, factor: Tensor) -> Tensor:
    """Per-image ``adjust_hue`` on a float RGB batch ``[n, 3, H, W]``, ``factor`` ``[n]`` (in turns, -0.5 to 0.5)."""
    return _hue_(x.clone(), factor)


def gaussian_blur(x: Tensor, kernel_size: int, sigma: Tensor) -> Tensor:
    """A separable Gaussian blur with one ``sigma`` per image, reflect-padded as transforms.v2's."""
    n, c, height, width = x.shape
    t = torch.arange(kernel_size, dtype=torch.float64, device=x.device) - (kernel_size - 1) / 2
    kernel = torch.softmax(-0.5 * (t / sigma.to(x.device, torch.float64)[:, None]) ** 2, dim=1).to(x.dtype)
    kernel = kernel.repeat_interleave(c, 0)  # [n * C, k]
    pad = kernel_size // 2
    y = torch.nn.functional.pad(x.reshape(1, n * c, height, width), [pad] * 4, mode="reflect")
    y = torch.nn.functional.conv2d(y, kernel[:, None, None, :], groups=n * c)
    y = torch.nn.functional.conv2d(y, kernel[:, None, :, None], groups=n * c)
    return y.view(n, c, height, width)


# In the order of ColorJitter's fn_idx.
_JITTER_OPS = (_brightness_, _contrast_, _saturation_, _hue_)


def _where_(x: Tensor, mask: Tensor, fn, *args: Tensor) -> Tensor:
    """Replace the images where ``mask`` by ``fn`` of them (with their own rows of ``args``), in place."""
    idx = mask.nonzero().squeeze(1)
    if len(idx):
        dev = idx.to(x.device)
        x.index_copy_(0, dev, fn(x.index_select(0, dev), *(a[idx] for a in args)))
    return x


class BatchedView:
    """One view of a whole uint8 batch ``[B, C, H, W]``, returned as float ``[B, C, S, S]``.

    The policy's random parameters are drawn independently for every image, from the distributions of the
    per-image transforms.v2 pipeline (:func:`policy_transform`): a RandomResizedCrop box, a flip with p=1/2,
    and for ``simclr`` colour jitter with p=0.8 (independent factors and a random order of the four
    adjustments per image), grayscale with p=0.2 and, with ``blur``, a Gaussian blur with p=0.5. They are then
    applied to the batch at once, in float32: the crop and resize are two batched matrix products with
    per-image interpolation weights (bilinear with antialiasing, flips folded in), the colour adjustments are
    the transforms.v2 formulas with per-image factors. Unlike the uint8 pipeline, nothing is rounded to 8 bits
    between the steps. Random numbers come from ``generator`` (default: torch's global generator). On the CPU
    it runs on one thread (see ``AUGMENT_THREADS``); on a GPU it runs where the images are.
    """

    def __init__(self, policy: str, image_size: int, *, crop_scale: float = 0.2, hflip: bool = True,
                 blur: bool = False, mean=None, std=None, generator: torch.Generator | None = None):
        if policy not in BATCHED_POLICIES:
            raise ValueError(f"batched augmentation supports {', '.join(BATCHED_POLICIES)}; got {policy!r}")
        self.policy, self.image_size, self.crop_scale = policy, image_size, crop_scale
        self.hflip, self.blur = hflip, blur
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.mean = None if mean is None else torch.tensor(list(mean), dtype=torch.float32)
        self.std = None if std is None else torch.tensor(list(std), dtype=torch.float32)
        self.generator = generator

    def __repr__(self) -> str:
        return (f"BatchedView({self.policy!r}, {self.image_size}, crop_scale={self.crop_scale}, "
                f"hflip={self.hflip}, blur={self.blur})")

    def sample(self, n: int, channels: int, height: int, width: int) -> dict[str, Tensor]:
        """The random parameters of ``n`` images (all on the CPU)."""
        g = self.generator
        params: dict[str, Tensor] = {}
        if self.policy == "none":
            return params
        params["boxes"] = sample_crops(n, height, width, (self.crop_scale, 1.0), generator=g)
        if self.hflip:
            params["flip"] = torch.rand(n, generator=g) < 0.5
        if self.policy == "simclr":
            params["jitter"] = torch.rand(n, generator=g) < JITTER_P
            params["order"] = torch.rand(n, 4, generator=g).argsort(1)  # a uniform permutation per image
            b, c, s, h = JITTER
            params["factors"] = torch.stack([_uniform(n, 1 - b, 1 + b, g), _uniform(n, 1 - c, 1 + c, g),
                                             _uniform(n, 1 - s, 1 + s, g), _uniform(n, -h, h, g)], 1).float()
            params["grayscale"] = torch.rand(n, generator=g) < GRAYSCALE_P
            if self.blur:
                params["blur"] = torch.rand(n, generator=g) < BLUR_P
                params["sigma"] = _uniform(n, *BLUR_SIGMA, g)
        return params

    def apply(self, x: Tensor, params: dict[str, Any]) -> Tensor:
        """The policy with the given parameters on a float batch in [0, 1]; not normalised."""
        y, order = self._apply(x, params)
        return y if order is None else torch.empty_like(y).index_copy_(0, order.to(y.device), y)

    def _apply(self, x: Tensor, params: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """:meth:`apply`, but the images may come back reordered: ``(y, order)`` with ``y[k]`` the image
        ``order[k]`` (``order`` None: in order), so that the caller's one copy into place also undoes it."""
        if self.policy == "none":
            return x, None
        if self.policy == "crop":
            return resized_crop(x, params["boxes"], self.image_size, params.get("flip")), None
        jitter, order = params["jitter"], params["order"]
        # Images sorted by their sequence of colour adjustments (24 orders, or none), so that each adjustment
        # runs on a slice of the batch in place, with no gathering or scattering per adjustment.
        code = torch.where(jitter, (order * torch.tensor([64, 16, 4, 1])).sum(1), 256)
        code, perm = code.sort(stable=True)
        params = {k: v[perm] for k, v in params.items()}
        x = x.transpose(0, 1).index_select(1, perm.to(x.device)).transpose(0, 1)  # keeps [C, n, H, W] in memory
        x = resized_crop(x, params["boxes"], self.image_size, params.get("flip"))
        values, counts = torch.unique_consecutive(code, return_counts=True)
        start = 0
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            stop = start + count
            if value < 256:
                ops = (value >> 6, (value >> 4) & 3, (value >> 2) & 3, value & 3)
                for op in ops:
                    _JITTER_OPS[op](x[start:stop], params["factors"][start:stop, op])
            start = stop
        if x.shape[1] == 3:
            _where_(x, params["grayscale"], lambda v: _grayscale(v).expand_as(v))
        if self.blur:
            kernel = blur_kernel_size(self.image_size)
            _where_(x, params["blur"], lambda v, sigma: gaussian_blur(v, kernel, sigma), params["sigma"])
        return x, perm

    def _into(self, out: Tensor, x: Tensor) -> Tensor:
        """This view of the float batch ``x`` written into ``out`` (same shape, any layout), normalised."""
        y, order = self._apply(x, self.sample(len(x), *x.shape[1:]))
        if order is None:
            out.copy_(y)
        else:
            out.index_copy_(0, order.to(out.device), y)
        return self.normalize_(out)

    def normalize_(self, x: Tensor) -> Tensor:
        """``x`` normalised in place with the view's mean and std (unchanged without them); returns ``x``."""
        if self.mean is not None:
            x.sub_(self.mean.to(x.device).view(-1, 1, 1)).div_(self.std.to(x.device).view(-1, 1, 1))
        return x

    def __call__(self, images: Tensor) -> Tensor:
        single = images.ndim == 3
        x = _to_float_planes(images[None] if single else images)
        size = x.shape[-2:] if self.policy == "none" else (self.image_size, self.image_size)
        with _cpu_threads(x.device, AUGMENT_THREADS):
            out = self._into(x.new_empty(*x.shape[:2], *size), x)
        return out[0] if single else out


def _to_float_planes(images: Tensor) -> Tensor:
    """uint8 ``[n, C, H, W]`` to float in [0, 1] (as :func:`to_float`), laid out channel-major, ``[C, n, H, W]``
    in memory, the layout :func:`resized_crop` multiplies without copies."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images [n, C, H, W]; got {images.dtype} {tuple(images.shape)}")
    planes = torch.empty(images.shape[1], images.shape[0], *images.shape[2:], device=images.device)
    return planes.copy_(images.transpose(0, 1)).mul_(1.0 / 255).transpose(0, 1)


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
    ``V`` views for a single ``[C, H, W]`` image, as :class:`MultiViewTransform`)."""

    def __init__(self, views: Sequence[BatchedView]):
        if not views:
            raise ValueError("a multi-view transform needs at least one view")
        self.transforms = list(views)

    def __len__(self) -> int:
        return len(self.transforms)

    def __call__(self, images: Tensor) -> Tensor | list[Tensor]:
        single = images.ndim == 3
        x = _to_float_planes(images[None] if single else images)  # converted once for all views
        sizes = {tuple(x.shape[-2:]) if t.policy == "none" else (t.image_size,) * 2 for t in self.transforms}
        if len(sizes) != 1:
            raise ValueError("the views of a batched multi-view transform must have one size")
        out = x.new_empty(len(x), len(self.transforms), x.shape[1], *sizes.pop())
        with _cpu_threads(x.device, AUGMENT_THREADS):
            for v, t in enumerate(self.transforms):
                t._into(out[:, v], x)
        return list(out[0]) if single else out
