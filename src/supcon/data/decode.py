"""Image files to uint8 arrays, one file at a time, as training and ``supcon predict`` read them: EXIF orientation
applied, any mode to RGB, resized with Pillow's bicubic filter; a file that cannot be read gives its reason instead
of an error. The folder loader, the decoded cache's workers and :mod:`supcon.evaluate.predict` read files here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# Pillow releases the GIL while decoding, so a few threads help even on 2 cores.
DECODE_WORKERS = min(4, os.cpu_count() or 1)


def decode_image(path: str | Path, size: int | None) -> tuple[np.ndarray | None, str]:
    """One file to uint8 [H, W, 3] (resized to ``size`` x ``size`` unless None), or (None, the reason it cannot be
    read). Never raises: bad files are data, not bugs. Training and ``supcon predict`` read files through this."""
    from PIL import Image

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return None, "empty file"
        with Image.open(path) as im:
            # Pillow's ImageFile.LOAD_TRUNCATED_IMAGES stays False, so that load() raises on a file that ends
            # early instead of padding the missing rows with grey; load() here forces the full decode now.
            im.load()
            return image_array(im, size), ""
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        return None, _reason(path, e)


def image_array(im, size: int | None) -> np.ndarray:  # im: PIL.Image.Image
    """A decoded PIL image as training sees it: EXIF orientation applied, converted to RGB (16-bit and float
    modes rescaled, alpha dropped), resized to ``size`` x ``size`` with Pillow's bicubic filter; uint8 [H, W, 3]."""
    from PIL import Image, ImageOps

    im = _to_rgb(ImageOps.exif_transpose(im))
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def _reason(path: Path, e: Exception) -> str:
    """A short, stable explanation for skipped_images.txt; Pillow's own messages vary and repeat the path."""
    from PIL import UnidentifiedImageError

    lines = str(e).strip().splitlines()
    detail = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    if isinstance(e, UnidentifiedImageError):
        ext = path.suffix.lower()
        if ext and ext not in _image_extensions():
            return f"not an image ({ext} file)"
        return "not a recognised image format (corrupt header or unsupported type)"
    if isinstance(e, OSError) and "truncated" in detail.lower():
        return f"truncated file ({detail})"
    if isinstance(e, _BadPixels):
        return str(e)
    return f"corrupt or unsupported image ({detail})"


def _image_extensions() -> set[str]:
    from PIL import Image

    return set(Image.registered_extensions())


class _BadPixels(ValueError):
    """Pixel values that no 8-bit reading makes sense of (NaN, negative, beyond 16 bits)."""


def _to_rgb(im):  # PIL.Image.Image
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        # Pillow's own convert clips values above 255 (a 16-bit image turns white), so rescale here.
        a = np.asarray(im).astype(np.float64)
        if not np.isfinite(a).all():
            raise _BadPixels(f"non-finite pixel values (NaN or inf) in a mode {im.mode} image")
        lo, hi = a.min(), a.max()
        if lo < 0:
            raise _BadPixels(f"negative pixel values (min {lo:g}) in a mode {im.mode} image; expected 0..255, "
                             "0..65535 or, for floats, 0..1")
        if im.mode.startswith("I;16") or 255 < hi <= 65535:
            a = a / 257.0
        elif hi > 65535:
            raise _BadPixels(f"pixel values up to {hi:g} in a mode {im.mode} image; expected 0..255, 0..65535 "
                             "or, for floats, 0..1")
        elif im.mode == "F" and hi <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.round(a).clip(0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # the direct P -> RGB route warns about palette transparency
    # Alpha is dropped, not composited (as torchvision's ImageFolder loader does); CMYK uses Pillow's
    # conversion, which undoes the inverted channels of Adobe CMYK JPEGs.
    return im.convert("RGB")
