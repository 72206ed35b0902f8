"""Batched pixel operations with per-image parameters: crop-and-resize as two matrix products, colour
adjustments, grayscale and Gaussian blur on a float ``[B, C, H, W]`` batch (the kernels :mod:`supcon.augment.batched`
composes into policies)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
JITTER_P = 0.8
GRAYSCALE_P = 0.2
BLUR_P = 0.5
BLUR_SIGMA = (0.1, 2.0)
# ITU-R 601 luma, the weights of transforms.v2's rgb_to_grayscale.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def draw_device(device, generator: torch.Generator | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def blur_kernel_size(image_size: int) -> int:
    """Odd, about a tenth of the image, as in SimCLR."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def uniform(n: int, low: float, high: float, generator, *shape: int, device=None) -> Tensor:
    return torch.empty(n, *shape, dtype=torch.float64, device=device).uniform_(low, high, generator=generator)


def rand(n: int, generator, *shape: int, device=None) -> Tensor:
    return torch.rand(n, *shape, generator=generator, device=device)


def sample_crops(n: int, height: int, width: int, scale: tuple[float, float], ratio=CROP_RATIO,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
    """``n`` independent RandomResizedCrop boxes ``[n, 4]`` (top, left, height, width), int64, drawn on ``device``
    (default: the generator's, else the CPU) without reading anything back to the host.

    The distribution of transforms.v2's ``RandomResizedCrop.make_params``: up to ten attempts of an area share
    uniform in ``scale`` and a log-uniform aspect ratio; the first box that fits is placed uniformly; if none
    fits, the largest centred box within ``ratio``.
    """
    device = draw_device(device, generator)
    attempts = 10
    target = height * width * uniform(n, scale[0], scale[1], generator, attempts, device=device)
    aspect = uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, attempts, device=device).exp_()
    w = (target * aspect).sqrt_().round_()
    h = (target / aspect).sqrt_().round_()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # argmax returns the first maximum
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    u = uniform(n, 0.0, 1.0, generator, 2, device=device)
    top = (u[:, 0] * (height - h + 1)).floor_().clamp_(max=height - h)
    left = (u[:, 1] * (width - w + 1)).floor_().clamp_(max=width - w)
    # The fallback box depends on the sizes only: selected with where, so that nothing is read back.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    none_fit = ~fits.any(1)
    w, h = torch.where(none_fit, float(fw), w), torch.where(none_fit, float(fh), h)
    top = torch.where(none_fit, float((height - fh) // 2), top)
    left = torch.where(none_fit, float((width - fw) // 2), left)
    return torch.stack([top, left, h, w], 1).long()


def resize_weights(start: Tensor, length: Tensor, out_size: int, in_size: int,
                   flip: Tensor | None = None) -> Tensor:
    """``[n, out_size, in_size]`` matrices that crop ``[start, start + length)`` and resize it to ``out_size``
    along one axis, as bilinear ``interpolate(..., antialias=True)`` does (a triangle filter widened by the
    scale when shrinking), reversed along the output where ``flip``; built on ``start``'s device."""
    device = start.device
    length = length.float()
    scale = length / out_size
    support = scale.clamp(min=1.0)
    centre = scale[:, None] * (torch.arange(out_size, dtype=torch.float32, device=device) + 0.5)  # [n, out]
    if flip is not None:
        centre = torch.where(flip[:, None], centre.flip(1), centre)
    k = torch.arange(in_size, dtype=torch.float32, device=device) + 0.5 - start[:, None].float()  # [n, in]
    inside = ((k > 0) & (k < length[:, None])).float()
    weights = (k[:, None, :] - centre[:, :, None]).div_(support[:, None, None]).abs_().neg_().add_(1).clamp_(min=0)
    weights.mul_(inside[:, None, :])
    return weights.div_(weights.sum(-1, keepdim=True))


def rows_major(x: Tensor) -> Tensor:
    """``x`` ``[n, C, H, W]`` as ``[n, H, C, W]`` contiguous memory (no copy where it already is)."""
    return x.transpose(1, 2).contiguous()


def resized_crop(x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop each image of a float batch ``[n, C, H, W]`` to its box and resize it to ``size`` (bilinear, with
    antialiasing), then flip it horizontally where ``flip``: two batched matrix products, each over all channels
    at once, with per-image interpolation weights built on the images' device.

    The channels ride in the matrices' rows: with the images in ``[n, H, C, W]`` memory (as
    :class:`BatchedMultiView` converts them; others are copied so once), the columns are resized by ``[n, H*C,
    W] @ [n, W, S]`` and the rows by ``[n, S, H] @ [n, H, C*S]``, with no copies between. The result is a
    ``[n, C, S, S]`` view of ``[n, S, C, S]`` memory.
    """
    n, c, height, width = x.shape
    boxes = boxes.to(x.device)
    rows = resize_weights(boxes[:, 0], boxes[:, 2], size, height).to(x.dtype)  # [n, S, H]
    cols = resize_weights(boxes[:, 1], boxes[:, 3], size, width, None if flip is None else flip.to(x.device))
    cols = cols.to(x.dtype).transpose(1, 2)  # [n, W, S]
    across = torch.bmm(rows_major(x).view(n, height * c, width), cols)  # [n, H, C, S]
    out = torch.bmm(rows, across.view(n, height, c * size))  # [n, S, C, S]
    return out.view(n, size, c, size).transpose(1, 2)


def grayscale(x: Tensor) -> Tensor:
    """``[n, 1, H, W]``; the ITU-R 601 weights of transforms.v2."""
    r, g, b = x.unbind(1)
    return r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


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
    mean = (grayscale(x) if x.shape[1] == 3 else x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend_(x, mean, factor)


def _saturation_(x: Tensor, factor: Tensor) -> Tensor:
    return x if x.shape[1] == 1 else _blend_(x, grayscale(x), factor)


def _hue(x: Tensor, factor: Tensor, out: Tensor | None = None, channels_at_once: bool | None = None) -> Tensor:
    """``x`` with its hue rotated by ``factor`` (a share of the circle), into ``out`` (which may be ``x``) or a new
    tensor: the hue as transforms.v2 computes it (in sixths, ``H``, from the channel that holds the maximum, red
    before green before blue), shifted, and back to RGB with the closed form ``max - (max - min) clamp(min(k,
    4 - k), 0, 1)``, ``k = (H + m) mod 6`` (m = 5, 3, 1 for R, G, B), which is what transforms.v2's sector table
    gives. ``channels_at_once`` (None: off the CPU) computes the last step for the three channels in one go."""
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    spread = maxc - torch.minimum(torch.minimum(r, g), b)
    inv = spread.clamp(min=1e-30).reciprocal_()  # a grey pixel (spread 0) has differences 0: any hue will do
    # (Reductions over the three channels, aminmax and argmax, are ten times slower on the CPU than these.)
    h = torch.where(maxc == r, (g - b).mul_(inv),
                    torch.where(maxc == g, (b - r).mul_(inv).add_(2), (r - g).mul_(inv).add_(4)))
    h.add_(_factor(factor, x, 2), alpha=6).remainder_(6)
    out = torch.empty_like(x) if out is None else out
    if not (channels_at_once if channels_at_once is not None else x.device.type != "cpu"):
        # A channel at a time on the CPU: the temporaries stay in cache (a third faster here).
        for channel, m in enumerate((5, 3, 1)):
            k = h.add(m).remainder_(6)
            torch.minimum(k, 4 - k, out=k).clamp_(0, 1)
            torch.sub(maxc, k.mul_(spread), out=out[:, channel])
        return out
    # Elsewhere the three channels at once: a third of the kernel launches.
    k = h[:, None].add(torch.arange(5, 0, -2, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).remainder_(6)
    k = torch.minimum(k, 4 - k).clamp_(0, 1).mul_(spread[:, None])
    return torch.sub(maxc[:, None], k, out=out)


def _hue_(x: Tensor, factor: Tensor) -> Tensor:
    return x if x.shape[1] == 1 else _hue(x, factor, out=x)


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
    return x.clone() if x.shape[1] == 1 else _hue(x, factor)


def _gaussian_kernels(kernel_size: int, sigma: Tensor, dtype: torch.dtype, device) -> Tensor:
    """``[n, kernel_size]`` normalised Gaussians, one per ``sigma``, as transforms.v2's 1-D kernel."""
    t = torch.arange(kernel_size, dtype=torch.float64, device=device) - (kernel_size - 1) / 2
    return torch.softmax(-0.5 * (t / sigma.to(device, torch.float64)[:, None]) ** 2, dim=1).to(dtype)


def gaussian_blur(x: Tensor, kernel_size: int, sigma: Tensor) -> Tensor:
    """A separable Gaussian blur with one ``sigma`` per image, reflect-padded as transforms.v2's."""
    n, c, height, width = x.shape
    kernel = _gaussian_kernels(kernel_size, sigma, x.dtype, x.device).repeat_interleave(c, 0)  # [n * C, k]
    pad = kernel_size // 2
    y = torch.nn.functional.pad(x.reshape(1, n * c, height, width), [pad] * 4, mode="reflect")
    y = torch.nn.functional.conv2d(y, kernel[:, None, None, :], groups=n * c)
    y = torch.nn.functional.conv2d(y, kernel[:, None, :, None], groups=n * c)
    return y.view(n, c, height, width)


# ---------------------------------------------------------------------------------------------- device path


def color_jitter(x: Tensor, jitter: Tensor, order: Tensor, factors: Tensor) -> Tensor:
    """transforms.v2's ``ColorJitter`` with per-image parameters, on a float batch ``[n, C, H, W]``, out of place
    and without host synchronisation: where ``jitter``, image ``i`` gets the adjustments ``order[i]`` (a
    permutation of 0 brightness, 1 contrast, 2 saturation, 3 hue) in that order, with ``factors[i]`` ``[n, 4]``.

    Four slots; slot ``k`` applies to each image the adjustment ``order[:, k]``. Brightness, contrast and
    saturation are each a blend ``f x + (1 - f) other`` (other: 0, the grey mean, the grey image), so a slot
    applies whichever of them an image has as ``clamp(a x + b gray(x) + c mean(gray(x)), 0, 1)`` with per-image
    ``a, b, c`` (``a = 1, b = c = 0`` where the slot holds hue or nothing, which leaves the image as it is). Hue
    is computed for the whole batch and kept where the slot holds it. Saturation and hue leave one-channel images
    alone, as in transforms.v2.
    """
    n, c = x.shape[:2]
    factors, order = factors.to(x.device, x.dtype), order.to(x.device)
    slot_factor = factors.gather(1, order).view(n, 4, 1, 1, 1)  # the factor of each slot's adjustment
    op = torch.where(jitter.to(x.device)[:, None], order, 4)  # [n, 4]; 4: nothing (an image not jittered)
    if c == 1:
        op = torch.where(op >= 2, 4, op)  # saturation and hue leave one channel alone
    op = op.view(n, 4, 1, 1, 1)
    keep = torch.where(op <= 2, slot_factor, 1.0)  # brightness, contrast and saturation scale the image by f
    to_mean = torch.where(op == 1, 1 - slot_factor, 0.0)
    to_gray = torch.where(op == 2, 1 - slot_factor, 0.0)
    for slot in range(4):
        gray = grayscale(x) if c == 3 else x
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        x = (x * keep[:, slot]).addcmul_(gray, to_gray[:, slot]).addcmul_(mean, to_mean[:, slot]).clamp_(0, 1)
        if c == 3:
            x = torch.where(op[:, slot] == 3, _hue(x, slot_factor[:, slot, 0, 0, 0]), x)
    return x


def random_grayscale(x: Tensor, mask: Tensor) -> Tensor:
    """The images where ``mask`` turned to grey (the luma in every channel), out of place, without host
    synchronisation; one-channel images are returned as they are, as transforms.v2 does."""
    if x.shape[1] != 3:
        return x
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)


def random_gaussian_blur(x: Tensor, kernel_size: int, sigma: Tensor, mask: Tensor) -> Tensor:
    """The images where ``mask`` blurred with their own ``sigma`` (transforms.v2's ``gaussian_blur``: one 2-D
    convolution with the outer product of the 1-D kernel, reflect-padded), the others unchanged: one grouped
    convolution over the batch, with a delta kernel (the identity) for the images not blurred."""
    n, c, height, width = x.shape
    kernel = _gaussian_kernels(kernel_size, sigma, x.dtype, x.device)  # [n, k]
    centre = torch.arange(kernel_size, device=x.device) == kernel_size // 2
    kernel = torch.where(mask.to(x.device)[:, None], kernel, centre.to(x.dtype))
    kernel2d = (kernel[:, :, None] * kernel[:, None, :]).repeat_interleave(c, 0)  # [n * C, k, k]
    pad = kernel_size // 2
    y = torch.nn.functional.pad(x.reshape(1, n * c, height, width), [pad] * 4, mode="reflect")
    return torch.nn.functional.conv2d(y, kernel2d[:, None], groups=n * c).view(n, c, height, width)


# ---------------------------------------------------------------------------------------------- grouped path

# In the order of ColorJitter's fn_idx.
JITTER_OPS = (_brightness_, _contrast_, _saturation_, _hue_)


def where_(x: Tensor, mask: Tensor, fn, *args: Tensor) -> Tensor:
    """Replace the images where ``mask`` by ``fn`` of them (with their own rows of ``args``), in place."""
    idx = mask.nonzero().squeeze(1)
    if len(idx):
        dev = idx.to(x.device)
        x.index_copy_(0, dev, fn(x.index_select(0, dev), *(a[idx] for a in args)))
    return x
