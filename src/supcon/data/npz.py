"""`npz:PATH`: arrays x_train, y_train, x_test, y_test, class_names (the format of ../shared/data)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from .core import DataSplits, ImageDataset, LoadOptions, register_loader, three_splits

KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")


@register_loader("npz", takes_path=True)
def load_npz(arg: str, opts: LoadOptions) -> DataSplits:
    """Load an .npz with its own train/test split: x_test is the test split, val is carved from x_train.

    Images may also be [N, H, W] (gray), other integer types within 0..255, or finite floats in 0..1 or 0..255;
    anything else, and labels that are not 0-based indices into class_names, is a one-line ValueError.
    """
    path = Path(arg).expanduser()
    if not path.is_file() and Path(f"{path}.npz").is_file():
        path = Path(f"{path}.npz")
    if not path.is_file():
        raise ValueError(f"npz file not found: {path}")
    # np.load falls back to unpickling anything that is not a zip; refuse that up front.
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            arrays = {k: z[k] for k in KEYS if k in z.files}
    except Exception as e:  # zipfile and numpy raise many types on corrupt bytes (BadZipFile, EOFError, ...)
        if isinstance(e, ValueError) and "pickle" in str(e):  # object arrays
            raise ValueError(f"{path}: cannot read arrays without pickle ({_first_line(e)}); store plain numeric "
                             "and string arrays") from None
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {_first_line(e)})") from None
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}; expected {list(KEYS)}")

    names = arrays["class_names"]
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise ValueError(f"{path}: class_names must be a 1-D string array, got {names.dtype} {names.shape}")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
    if len(class_names) < 2:
        raise ValueError(f"{path}: needs at least 2 classes, class_names has {len(class_names)}")
    twice = sorted({n for n in class_names if class_names.count(n) > 1})
    if twice:
        raise ValueError(f"{path}: class_names must be distinct; repeated: {twice}")

    def part(split: str) -> ImageDataset:
        x = _images(arrays[f"x_{split}"], f"{path}: x_{split}")
        y = _labels(arrays[f"y_{split}"], f"{path}: y_{split}", class_names)
        if len(y) != len(x):
            raise ValueError(f"{path}: y_{split} has {len(y)} labels for {len(x)} images in x_{split}")
        if split == "train":
            # A name without training images is usually an off-by-one between y and class_names.
            absent = [n for c, n in enumerate(class_names) if not (y == c).any()]
            if absent:
                raise ValueError(f"{path}: y_train has no images of class(es) {absent}; every name in class_names "
                                 "needs training images (labels are 0-based indices into class_names)")
        images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return ImageDataset(images, torch.from_numpy(y), class_names)

    pool, test = part("train"), part("test")
    if pool.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(
            f"{path}: x_train and x_test differ in image shape: {tuple(pool.images.shape[1:])} "
            f"vs {tuple(test.images.shape[1:])}"
        )
    train, val, test = three_splits(pool, test, opts, f"{path}")
    return DataSplits(train, val, test, f"npz:{path.stem}", [])


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


_IMAGES = "[N, H, W, C] with C in (1, 3) or [N, H, W]: uint8 0..255, or floats in 0..1 or 0..255"


def _images(x: np.ndarray, what: str) -> np.ndarray:
    """x as uint8 [N, H, W, C]; other integer types and floats are taken only where their range is unambiguous."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        hint = ""
        if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
            hint = "; it looks channels-first: use x.transpose(0, 2, 3, 1)"
        elif x.ndim == 4 and x.shape[-1] == 4:
            hint = "; for RGBA drop the alpha channel: x[..., :3]"
        raise ValueError(f"{what} must be {_IMAGES}, got {x.dtype} {x.shape}{hint}")
    if len(x) == 0:
        raise ValueError(f"{what} is empty")
    if 0 in x.shape[1:3]:
        raise ValueError(f"{what} has images of size {x.shape[1]}×{x.shape[2]}; expected {_IMAGES}")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "iu":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{what} is {x.dtype} with values in [{lo}, {hi}]; expected {_IMAGES} "
                             "(scale 16-bit images to 8 bits first)")
        return x.astype(np.uint8)
    if x.dtype.kind == "f":
        finite = np.isfinite(x)
        if not finite.all():
            raise ValueError(f"{what} has {int((~finite).sum())} NaN or infinite values; expected {_IMAGES}")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{what} is {x.dtype} with values in [{lo:g}, {hi:g}]; expected {_IMAGES} "
                             "(normalised arrays are not accepted: store the raw pixels)")
        # The usual convention: floats up to 1 are 0..1 intensities (torchvision's to_tensor), else 0..255.
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.round(x.astype(np.float64) * scale).astype(np.uint8)
    raise ValueError(f"{what} must be {_IMAGES}, got {x.dtype} {x.shape}")


def _labels(y: np.ndarray, what: str, class_names: list[str]) -> np.ndarray:
    """y as int64 [N] of indices into class_names."""
    k = len(class_names)
    if y.ndim == 2 and y.shape[1] == k and y.shape[0] != 1:
        raise ValueError(f"{what} must be 1-D class indices, got {y.dtype} {y.shape} (one-hot? use y.argmax(1))")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"{what} must be a 1-D integer array of class indices 0..{k - 1}, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"{what} has labels in [{y.min()}, {y.max()}], expected 0..{k - 1} ({k} class_names)")
    return y.astype(np.int64)
