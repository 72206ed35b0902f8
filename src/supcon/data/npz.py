"""`npz:PATH`: arrays x_train, y_train, x_test, y_test, class_names (the format of ../shared/data)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from .core import DataSplits, ImageDataset, LoadOptions, register_loader

KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")


@register_loader("npz", takes_path=True)
def load_npz(arg: str, opts: LoadOptions) -> DataSplits:
    """Load an .npz with its own train/test split (test becomes val; val_fraction is not used)."""
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
    except ValueError as e:  # object arrays, which would need pickle
        raise ValueError(f"{path}: cannot read arrays without pickle ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}; expected {list(KEYS)}")

    names = arrays["class_names"]
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise ValueError(f"{path}: class_names must be a 1-D string array, got {names.dtype} {names.shape}")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
    if len(class_names) < 2:
        raise ValueError(f"{path}: needs at least 2 classes, class_names has {len(class_names)}")

    def part(split: str) -> ImageDataset:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
            raise ValueError(
                f"{path}: x_{split} must be uint8 [N, H, W, C] with C in (1, 3) or [N, H, W], "
                f"got {x.dtype} {x.shape}"
            )
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise ValueError(f"{path}: y_{split} must be a 1-D integer array, got {y.dtype} {y.shape}")
        if len(y) != len(x):
            raise ValueError(f"{path}: y_{split} has {len(y)} labels for {len(x)} images in x_{split}")
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise ValueError(
                f"{path}: y_{split} has labels in [{y.min()}, {y.max()}], expected 0..{len(class_names) - 1} "
                f"({len(class_names)} class_names)"
            )
        if len(y) == 0:
            raise ValueError(f"{path}: x_{split} is empty")
        x = x[..., None] if x.ndim == 3 else x
        images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return ImageDataset(images, torch.from_numpy(y.astype(np.int64)), class_names)

    train, val = part("train"), part("test")
    if train.images.shape[1:] != val.images.shape[1:]:
        raise ValueError(
            f"{path}: x_train and x_test differ in image shape: {tuple(train.images.shape[1:])} "
            f"vs {tuple(val.images.shape[1:])}"
        )
    return DataSplits(train, val, f"npz:{path.stem}", [])
