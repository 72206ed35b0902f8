r"""Common corruptions at five severities, and the accuracies and corruption errors of a classifier under them.

The corruptions follow ImageNet-C (Hendrycks & Dietterich 2019) in kind, with the parameters of its 64 px
version, Tiny-ImageNet-C, where it has them; spatial parameters (blur widths, shifts) are in pixels of a
64 px image and scale with the image size, so that a severity means the same on a photo at 32 or 128 px.
:data:`PARAMETERS` holds them and :func:`parameter_table` writes them as the Markdown table in
``docs/robustness.md``.

>>> from supcon.evaluate.corruptions import corrupt
>>> x = torch.rand(8, 3, 64, 64)                          # float images in [0, 1]
>>> y = corrupt(x, "gaussian_blur", severity=3)            # same shape, dtype and range

Randomness: image ``i`` draws its noise from its own generator, seeded by ``seeds[i]`` (default ``i``), so a
corrupted image does not depend on the batch it is in, and the same seeds give the same draws at every
severity (severity 5 of Gaussian noise is severity 1's noise, scaled), which makes the severities' accuracies
differ by the corruption's strength alone.

The corruption error of ImageNet-C compares a model's errors :math:`E_{s,c}` under corruption ``c`` at
severity ``s`` with a baseline model's:
:math:`\mathrm{CE}_c = \sum_s E_{s,c} / \sum_s E^{base}_{s,c}`, and the relative corruption error subtracts each
model's clean error first: :math:`\mathrm{rCE}_c = \sum_s (E_{s,c} - E_{clean}) / \sum_s (E^{base}_{s,c} -
E^{base}_{clean})`; mCE and relative mCE average them over the corruptions (:func:`corruption_errors`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as TF
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from supcon.evaluate.attacks import ATTACKS, fgsm, pgd
from supcon.evaluate.inference import correct, outputs

__all__ = ["CORRUPTIONS", "PARAMETERS", "SEVERITIES", "adversarial_accuracy", "adversarial_hits", "corrupt",
           "corruption_accuracy", "corruption_errors", "corruption_hits", "disk_kernel", "hit_rates",
           "image_seeds", "parameter_table"]

SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIZE = 64  # the image size the spatial parameters below are given for
# Per corruption: what it does, and each parameter's values at severities 1..5 ("px": pixels at 64 px, scaled).
PARAMETERS: dict[str, dict[str, Any]] = {
    "gaussian_noise": {"how": "x + N(0, sigma^2) per pixel and channel, clipped to [0, 1]",
                       "sigma": (0.04, 0.08, 0.12, 0.15, 0.18)},
    "shot_noise": {"how": "Poisson(x * photons) / photons, clipped to [0, 1]",
                   "photons": (250, 100, 50, 30, 15)},
    "gaussian_blur": {"how": "`v2.functional.gaussian_blur`, kernel 2 ceil(3 sigma) + 1, reflected edges",
                      "sigma (px)": (0.5, 0.75, 1.0, 1.25, 1.5)},
    "defocus_blur": {"how": "convolution with a disk of the given radius, anti-aliased by 16 x 16 supersampling, "
                            "reflected edges",
                     "radius (px)": (1.0, 1.5, 2.0, 2.5, 3.0)},
    "jpeg": {"how": "`v2.functional.jpeg` of the image rounded to uint8", "quality": (65, 58, 50, 40, 25)},
    "contrast": {"how": "`v2.functional.adjust_contrast`: blend with the image's mean grey level",
                 "factor": (0.4, 0.3, 0.2, 0.1, 0.05)},
    "brightness": {"how": "the HSV value V of every pixel raised by the shift (capped at 1), hue and saturation "
                          "kept: x * min(V + shift, 1) / V",
                   "shift": (0.1, 0.2, 0.3, 0.4, 0.5)},
    "pixelate": {"how": "`v2.functional.resize` down to int(size x scale) (antialiased), then back up (nearest)",
                 "scale": (0.9, 0.8, 0.7, 0.6, 0.5)},
    "elastic": {"how": "`v2.functional.elastic` with a random affine map (rotation, shift, zoom, each uniform in "
                       "+-max) plus a smooth random field (uniform noise blurred by sigma 2 px, scaled to the given "
                       "RMS displacement); black outside the image",
                "rotation (deg)": (2, 4, 6, 8, 10), "shift (px)": (1.0, 1.5, 2.0, 2.5, 3.0),
                "zoom": (0.02, 0.04, 0.06, 0.08, 0.10), "field RMS (px)": (0.25, 0.5, 0.75, 1.0, 1.25)},
}
CORRUPTIONS = tuple(PARAMETERS)
_ELASTIC_SMOOTH_PX = 2.0
_SUPERSAMPLE = 16


def parameter_table() -> str:
    """:data:`PARAMETERS` as a Markdown table: one row per corruption parameter, one column per severity."""
    rows = ["| corruption | what it does | parameter | " + " | ".join(f"s{s}" for s in SEVERITIES) + " |",
            "|---|---|---|" + "---|" * len(SEVERITIES)]
    for name, spec in PARAMETERS.items():
        first = True
        for key, values in spec.items():
            if key == "how":
                continue
            cells = " | ".join(f"{v:g}" for v in values)
            lead = f"| `{name}` | {spec['how']} |" if first else "| | |"
            rows.append(f"{lead} {key} | {cells} |")
            first = False
    return "\n".join(rows)


def _parameter(name: str, key: str, severity: int) -> float:
    return PARAMETERS[name][key][severity - 1]


def _generators(seeds: Sequence[int] | None, count: int) -> list[torch.Generator]:
    seeds = range(count) if seeds is None else seeds
    if len(seeds) != count:
        raise ValueError(f"expected one seed per image: {count} images, {len(seeds)} seeds")
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _draw(generators: list[torch.Generator], shape: Sequence[int], kind: str = "rand") -> Tensor:
    """One draw of ``shape`` per image from its own generator, stacked: ``[B, *shape]`` on the CPU."""
    fn = torch.rand if kind == "rand" else torch.randn
    return torch.stack([fn(tuple(shape), generator=g) for g in generators])


def image_seeds(seed: int, indices: Sequence[int] | Tensor, stream: int = 0) -> list[int]:
    """Seeds for the images ``indices`` of a split: each image's own, the same in every batch it may be in;
    ``stream`` separates uses (one corruption from another, corruptions from attacks)."""
    base = (int(seed) * 1_000_003 + int(stream)) * 1_000_033
    return [(base + int(i)) % (2 ** 63) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)]


def corrupt(images: Tensor, name: str, severity: int, seeds: Sequence[int] | None = None) -> Tensor:
    """``images`` (float ``[B, C, H, W]`` in [0, 1], C 1 or 3) under corruption ``name`` at ``severity`` (1-5).

    Returns float32 images of the same shape, in [0, 1], on the same device. Image ``i`` draws its randomness
    from a generator seeded ``seeds[i]`` (default ``i``).
    """
    if name not in PARAMETERS:
        raise ValueError(f"corruption must be one of {', '.join(CORRUPTIONS)}; got {name!r}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(map(str, SEVERITIES))}; got {severity!r}")
    if images.dim() != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
        raise ValueError(f"expected float images [B, C, H, W] with C 1 or 3, got {images.dtype} "
                         f"{tuple(images.shape)}")
    x = images.float()
    scale = min(x.shape[-2:]) / REFERENCE_SIZE  # spatial parameters are given at 64 px
    out = _CORRUPT[name](x, severity, scale, lambda: _generators(seeds, len(x)))
    return out.clamp(0, 1).to(torch.float32)


def _gaussian_noise(x: Tensor, severity: int, scale: float, generators) -> Tensor:
    # v2.functional.gaussian_noise draws from the global generator; the same noise from per-image generators
    # makes every run see the same corrupted images, on any device and in any batch.
    noise = _draw(generators(), x.shape[1:], "randn").to(x.device)
    return x + _parameter("gaussian_noise", "sigma", severity) * noise


def _shot_noise(x: Tensor, severity: int, scale: float, generators) -> Tensor:
    photons = _parameter("shot_noise", "photons", severity)
    rates = x.cpu() * photons
    counts = torch.stack([torch.poisson(r, generator=g) for r, g in zip(rates, generators(), strict=True)])
    return (counts / photons).to(x.device)


def _blur_kernel_size(sigma: float, side: int) -> int:
    """2 ceil(3 sigma) + 1, at least 3, and at most 2 side - 1 (reflect padding must stay inside the image)."""
    return min(max(3, 2 * math.ceil(3 * sigma) + 1), 2 * side - 1)


def _gaussian_blur(x: Tensor, severity: int, scale: float, generators) -> Tensor:
    sigma = _parameter("gaussian_blur", "sigma (px)", severity) * scale
    size = _blur_kernel_size(sigma, min(x.shape[-2:]))
    return F.gaussian_blur(x, [size, size], [sigma, sigma])


def disk_kernel(radius: float) -> Tensor:
    """A disk of ``radius`` pixels as a normalised 2-D kernel; each tap is the share of its pixel the disk
    covers (16 x 16 samples per pixel), so that radii between whole pixels differ."""
    reach = max(0, math.ceil(radius + 0.5) - 1)
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float64)
    sub = (torch.arange(_SUPERSAMPLE, dtype=torch.float64) + 0.5) / _SUPERSAMPLE - 0.5
    points = (offsets[:, None] + sub[None, :]).reshape(-1)  # sample coordinates along one axis
    inside = (points[:, None] ** 2 + points[None, :] ** 2 <= radius ** 2).double()
    n = len(offsets)
    cover = inside.reshape(n, _SUPERSAMPLE, n, _SUPERSAMPLE).mean(dim=(1, 3))
    if cover.sum() == 0:  # a disk smaller than the centre's samples: the identity
        cover[reach, reach] = 1.0
    return (cover / cover.sum()).float()


def _defocus_blur(x: Tensor, severity: int, scale: float, generators) -> Tensor:
    kernel = disk_kernel(_parameter("defocus_blur", "radius (px)", severity) * scale).to(x.device)
    reach = kernel.shape[0] // 2
    if reach == 0:
        return x
    reach_ok = min(reach, min(x.shape[-2:]) - 1)  # reflect padding needs a pad smaller than the image side
    kernel = kernel[reach - reach_ok:reach + reach_ok + 1, reach - reach_ok:reach + reach_ok + 1]
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    padded = TF.pad(x, [reach_ok] * 4, mode="reflect")
    return TF.conv2d(padded, kernel.expand(channels, 1, *kernel.shape), groups=channels)


def _jpeg(x: Tensor, severity: int, scale: float, generators) -> Tensor:
    pixels = (x.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
    quality = int(_parameter("jpeg", "quality", severity))
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs for TorchCodec's, still there
        warnings.simplefilter("ignore", DeprecationWarning)
        compressed = F.jpeg(pixels, quality=quality)
    return (compressed.float() / 255).to(x.device)


def _contrast(x: Tensor, severity: int, scale: float, generators) -> Tensor:
    return F.adjust_contrast(x, _parameter("contrast", "factor", severity))


def _brightness(x: Tensor, severity: int, scale: float, generators) -> Tensor:
    # ImageNet-C adds the shift to HSV's V = max(R, G, B) and converts back. With hue and saturation fixed, RGB
    # scales with V, so this is that conversion in closed form. (v2.functional.adjust_brightness multiplies
    # instead, which leaves dark pixels dark: another corruption.)
    shift = _parameter("brightness", "shift", severity)
    value = x.amax(dim=1, keepdim=True)
    raised = (value + shift).clamp(max=1.0)
    return torch.where(value > 0, x * raised / value.clamp_min(1e-12), raised.expand_as(x))


def _pixelate(x: Tensor, severity: int, scale: float, generators) -> Tensor:
    h, w = x.shape[-2:]
    factor = _parameter("pixelate", "scale", severity)
    small = [max(1, int(h * factor)), max(1, int(w * factor))]
    down = F.resize(x, small, interpolation=InterpolationMode.BILINEAR, antialias=True)
    return F.resize(down, [h, w], interpolation=InterpolationMode.NEAREST_EXACT)


def _elastic(x: Tensor, severity: int, scale: float, generators) -> Tensor:
    b, _, h, w = x.shape
    gens = generators()
    affine = _draw(gens, (4,)) * 2 - 1  # rotation, shift x, shift y, zoom: each uniform in [-1, 1]
    field = _draw(gens, (2, h, w)) * 2 - 1
    smooth = _ELASTIC_SMOOTH_PX * scale
    size = _blur_kernel_size(smooth, min(h, w))
    field = F.gaussian_blur(field, [size, size], [smooth, smooth])
    field = field / field.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
    field = field * _parameter("elastic", "field RMS (px)", severity) * scale  # [B, 2, H, W] in pixels
    angle = torch.deg2rad(affine[:, 0] * _parameter("elastic", "rotation (deg)", severity))
    zoom = 1 + affine[:, 3] * _parameter("elastic", "zoom", severity)
    shift = affine[:, 1:3] * _parameter("elastic", "shift (px)", severity) * scale
    # where each output pixel samples the input, relative to the centre: zoom * R(angle) p + shift
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) - (h - 1) / 2,
                            torch.arange(w, dtype=torch.float32) - (w - 1) / 2, indexing="ij")
    cos, sin = (zoom * torch.cos(angle))[:, None, None], (zoom * torch.sin(angle))[:, None, None]
    dx = cos * xs - sin * ys - xs + shift[:, 0, None, None] + field[:, 0]
    dy = sin * xs + cos * ys - ys + shift[:, 1, None, None] + field[:, 1]
    # v2's displacement is in the grid's normalised coordinates, where the image spans 2
    displacement = torch.stack([dx * 2 / w, dy * 2 / h], dim=-1).to(x.device)  # [B, H, W, 2]
    return torch.cat([F.elastic(x[i:i + 1], displacement[i:i + 1], interpolation=InterpolationMode.BILINEAR)
                      for i in range(b)])


_CORRUPT: dict[str, Callable[..., Tensor]] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "gaussian_blur": _gaussian_blur,
    "defocus_blur": _defocus_blur, "jpeg": _jpeg, "contrast": _contrast, "brightness": _brightness,
    "pixelate": _pixelate, "elastic": _elastic,
}
assert tuple(_CORRUPT) == CORRUPTIONS


# ---------------------------------------------------------------------------------------------- evaluation


def _as_float(images: Tensor) -> Tensor:
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def corruption_hits(model: nn.Module, images: Tensor, labels: Tensor,
                    corruptions: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES, *,
                    seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 256,
                    advance: Callable[[], None] | None = None) -> dict[str, dict[int, Tensor]]:
    """Per image, whether ``model`` (on float images in [0, 1]) classifies it right under each corruption and
    severity (bool ``[N]``): what :func:`corruption_accuracy` averages, kept per image for paired intervals.

    ``advance()`` is called after each (corruption, severity), for a progress bar.
    """
    unknown = sorted(set(corruptions) - set(CORRUPTIONS))
    if unknown:
        raise ValueError(f"unknown corruption(s) {', '.join(unknown)}; expected some of {', '.join(CORRUPTIONS)}")
    results: dict[str, dict[int, Tensor]] = {}
    for stream, name in enumerate(CORRUPTIONS):
        if name not in corruptions:
            continue
        results[name] = {}
        for severity in severities:
            def transform(x, indices, name=name, severity=severity, stream=stream):
                return corrupt(x, name, severity, image_seeds(seed, indices, stream))

            logits = outputs(model, images, device=device, batch_size=batch_size, perturb=transform)
            results[name][severity] = correct(logits, labels)
            if advance is not None:
                advance()
    return results


def corruption_accuracy(model: nn.Module, images: Tensor, labels: Tensor,
                        corruptions: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES,
                        **options: Any) -> dict[str, dict[int, float]]:
    """Accuracy of ``model`` (on float images in [0, 1]) on ``images`` under each corruption and severity (the
    options of :func:`corruption_hits`)."""
    return {name: hit_rates(by) for name, by in
            corruption_hits(model, images, labels, corruptions, severities, **options).items()}


def hit_rates(hits: dict[Any, Tensor]) -> dict[Any, float]:
    """Each condition's per-image hits (bool ``[N]``) as its accuracy."""
    return {key: h.float().mean().item() for key, h in hits.items()}


def adversarial_accuracy(model: nn.Module, images: Tensor, labels: Tensor, attack: str,
                         epsilons: Sequence[float], **options: Any) -> dict[float, float]:
    """Accuracy under ``attack`` (``fgsm`` or ``pgd``, see :mod:`supcon.evaluate.attacks`) at each eps (in [0, 1]
    pixel units; the options of :func:`adversarial_hits`)."""
    return hit_rates(adversarial_hits(model, images, labels, attack, epsilons, **options))


def adversarial_hits(model: nn.Module, images: Tensor, labels: Tensor, attack: str,
                     epsilons: Sequence[float], *, steps: int = 10, seed: int = 0,
                     device: torch.device | str = "cpu", batch_size: int = 256,
                     advance: Callable[[], None] | None = None) -> dict[float, Tensor]:
    """Per image, whether ``model`` still classifies it right under ``attack`` at each eps (bool ``[N]``). PGD's
    random start of image ``i`` is seeded by its index, whatever the batch."""
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(ATTACKS)}; got {attack!r}")
    labels = labels.long()
    was_training = model.training
    model.eval()  # the attacks switch to eval mode themselves; the accuracy below must be measured in it too
    try:
        return _adversarial(model, images, labels, attack, epsilons, steps, seed, device, batch_size, advance)
    finally:
        model.train(was_training)


def _adversarial(model, images, labels, attack, epsilons, steps, seed, device, batch_size, advance):
    results = {}
    for eps in epsilons:
        hits = []
        for start in range(0, len(images), batch_size):
            x = _as_float(images[start:start + batch_size]).to(device)
            y = labels[start:start + len(x)].to(device)
            if attack == "fgsm":
                x_adv = fgsm(model, x, y, eps)
            else:
                seeds = image_seeds(seed, range(start, start + len(x)), len(CORRUPTIONS))
                x_adv = pgd(model, x, y, eps, steps=steps, seeds=seeds)
            with torch.no_grad():
                hits.append(correct(model(x_adv).float(), y))
        results[eps] = torch.cat(hits)
        if advance is not None:
            advance()
    return results


def corruption_errors(accuracy: dict[str, dict[int, float]], clean: float,
                      baseline: dict[str, dict[int, float]], baseline_clean: float) -> dict[str, Any]:
    """ImageNet-C's corruption errors of a model (``accuracy`` per corruption and severity, ``clean`` accuracy)
    against a ``baseline``'s (the same severities).

    Returns ``ce`` and ``relative_ce`` per corruption, and their means ``mce`` and ``relative_mce``. A ratio whose
    denominator is not positive (a baseline without errors, or no worse under the corruption than clean) is
    None and left out of the mean; ``mce_over`` / ``relative_mce_over`` name the corruptions that were averaged.
    """
    ce, relative = {}, {}
    for name, by_severity in accuracy.items():
        if name not in baseline:
            continue
        severities = sorted(by_severity)
        missing = [s for s in severities if s not in baseline[name]]
        if missing:
            raise ValueError(f"the baseline has no {name} accuracy at severity {missing[0]}")
        errors = sum(1 - by_severity[s] for s in severities)
        base_errors = sum(1 - baseline[name][s] for s in severities)
        ce[name] = errors / base_errors if base_errors > 0 else None
        rel = errors - len(severities) * (1 - clean)
        base_rel = base_errors - len(severities) * (1 - baseline_clean)
        relative[name] = rel / base_rel if base_rel > 1e-12 else None

    def mean(values: dict[str, float | None]) -> tuple[float | None, list[str]]:
        kept = [k for k, v in values.items() if v is not None]
        return (sum(values[k] for k in kept) / len(kept) if kept else None), kept

    mce, mce_over = mean(ce)
    rmce, rmce_over = mean(relative)
    return {"ce": ce, "relative_ce": relative, "mce": mce, "relative_mce": rmce, "mce_over": mce_over,
            "relative_mce_over": rmce_over}
