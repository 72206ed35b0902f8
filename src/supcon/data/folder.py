"""`folder:PATH`: one sub-folder per class, optionally under train/ and val/ (or test/)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .cache import decoded_splits
from .core import (
    DataSplits,
    LoadOptions,
    register_loader,
    split_indices,
    stratified_subset,
)

log = logging.getLogger(__name__)

# Pillow releases the GIL while decoding, so a few threads help even on 2 cores.
DECODE_WORKERS = min(4, os.cpu_count() or 1)
DATA_DIR_ENV = "SUPCON_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/supcon"


@register_loader("folder", takes_path=True)
def load_folder(arg: str, opts: LoadOptions) -> DataSplits:
    """Decode a class-per-folder tree once into uint8 [N, 3, H, W] tensors (RGB).

    With PATH/train and PATH/test (or PATH/val) the held-out folder is the test split and val is carved from
    train, unless PATH/val and PATH/test both exist, which are then val and test. Otherwise PATH/<class> is split
    three ways. Files that do not decode are skipped and listed in `DataSplits.skipped`.
    """
    root = Path(arg).expanduser()
    if root.is_file():
        raise ValueError(f"{root} is a file; folder:PATH needs a directory of class sub-folders (npz:PATH for .npz)")
    if not root.is_dir():
        raise ValueError(f"folder not found: {root}")
    paths, labels, split, classes, places = _plan(root, opts)
    asked = opts.store_size or opts.image_size
    size = asked or _native_size(paths, root)
    parts, skipped, _ = decoded_splits(f"folder-{root.name}", root, paths, labels, tuple(split), classes, size,
                                       data_dir(opts), opts.progress, native=asked is None)
    decoded = torch.cat([part.labels for part in parts.values()])
    for c, name in enumerate(classes):
        if not (decoded == c).any():
            bad = int(sum((labels[idx] == c).sum() for idx in split))
            raise ValueError(f"class '{name}' has no readable images in {root} ({bad} file(s) tried, all skipped)")
        for part, where in zip(parts.values(), places, strict=True):
            if not (part.labels == c).any():
                raise ValueError(f"class '{name}' has no readable images in {where}")
    if skipped:
        for p, why in skipped:
            log.info("skipped unreadable image %s: %s", p, why)
        warnings.warn(f"{_skip_summary(skipped)} in {root} (listed in DataSplits.skipped and, for a run, in "
                      "its skipped_images.txt)", stacklevel=3)
    input_size = opts.image_size if opts.image_size not in (None, size) else None
    return DataSplits(parts["train"], parts["val"], parts["test"], f"folder:{root.name or root.resolve().name}",
                      skipped, input_size=input_size)


def data_dir(opts: LoadOptions) -> Path:
    """Where downloads and decoded caches live: ``opts.data_dir``, else ``$SUPCON_DATA_DIR``, else
    ``~/.cache/supcon``."""
    return Path(opts.data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


def _native_size(paths: list[Path], root: Path) -> int:
    """The side of the files' own images, where no size is asked for: they must be square, and all one size."""
    for path in paths:
        array, _ = decode_image(path, None)
        if array is not None:
            h, w = array.shape[:2]
            if h != w:
                raise ValueError(f"{root}: images are {w}×{h}, not square; pass image_size to resize them")
            return int(h)
    raise ValueError(f"no readable images in {root}")


def _plan(root: Path, opts: LoadOptions):
    """The files of a folder data set, their labels, the train/val/test indices into them, the class names and
    where each split comes from (for messages)."""
    held_out = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        classes = _class_dirs(root / "train")
        own_val = held_out.name == "test" and (root / "val").is_dir()
        folders = [root / "train", *([root / "val"] if own_val else []), held_out]
        for folder in folders[1:]:
            extra = sorted(set(_class_dirs(folder, check=False)) - set(classes))
            if extra:
                raise ValueError(f"{folder} has classes not in {root / 'train'}: {extra}")
        listed = [_list_files(folder, classes, require_all=folder == folders[0]) for folder in folders]
        paths = [p for files, _ in listed for p in files]
        labels = np.concatenate([lab for _, lab in listed])
        which = np.concatenate([np.full(len(lab), i) for i, (_, lab) in enumerate(listed)])
        if own_val:
            split = [np.flatnonzero(which == i) for i in range(3)]
            split = [idx[stratified_subset(labels[idx], most, opts.split_seed, f"folder {root} {name}")]
                     for idx, most, name in zip(split, (opts.max_train, opts.max_val, opts.max_test),
                                                ("train", "val", "test"), strict=True)]
            places = tuple(str(f) for f in folders)
        else:
            split = list(split_indices(labels, which == 1, opts, f"folder {root}"))
            places = (f"{root / 'train'} (train split)", f"{root / 'train'} (val split)", str(held_out))
    else:
        classes = _class_dirs(root)
        paths, labels = _list_files(root, classes, require_all=True)
        split = list(split_indices(labels, None, opts, f"folder {root}"))
        places = tuple(f"{root} ({name} split)" for name in ("train", "val", "test"))
    return paths, labels, split, classes, places


def _skip_summary(skipped: list[tuple[str, str]]) -> str:
    """"skipped 4 unreadable image file(s) (1 empty, 1 truncated, 2 not images)"."""
    kinds = {"empty": 0, "truncated": 0, "not images": 0, "corrupt": 0}
    for _, why in skipped:
        key = ("empty" if why == "empty file" else "truncated" if why.startswith("truncated")
               else "not images" if why.startswith("not ") else "corrupt")
        kinds[key] += 1
    parts = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
    return f"skipped {len(skipped)} unreadable image file(s) ({parts})"


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _class_dirs(d: Path, check: bool = True) -> list[str]:
    names = sorted(p.name for p in d.iterdir() if p.is_dir() and not _hidden(p.name))
    if check and not names:
        raise ValueError(f"no class sub-folders in {d} (expected {d}/<class>/<image files>)")
    if check and len(names) == 1:
        raise ValueError(f"only one class ('{names[0]}') in {d}; need at least 2 class sub-folders")
    return names


def _list_files(d: Path, classes: list[str], require_all: bool) -> tuple[list[Path], np.ndarray]:
    paths: list[Path] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        found = []
        if (d / name).is_dir():
            for dirpath, dirnames, filenames in os.walk(d / name):
                dirnames[:] = sorted(n for n in dirnames if not _hidden(n))
                found += [Path(dirpath) / f for f in sorted(filenames) if not _hidden(f)]
        if not found and (require_all or (d / name).is_dir()):
            raise ValueError(f"class '{name}' has no readable images in {d}")
        paths += found
        labels += [c] * len(found)
    if not paths:
        raise ValueError(f"no image files in {d}")
    return paths, np.asarray(labels, dtype=np.int64)


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
