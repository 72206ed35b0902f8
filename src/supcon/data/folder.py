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
from .decode import decode_image

log = logging.getLogger(__name__)

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
    paths, labels, split, classes, places, empty = _plan(root, opts)
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
                      skipped, input_size=input_size, empty_classes=empty)


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
    where each split comes from (for messages), and the empty class folders left out."""
    held_out = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        classes, empty = _class_dirs(root / "train")
        own_val = held_out.name == "test" and (root / "val").is_dir()
        folders = [root / "train", *([root / "val"] if own_val else []), held_out]
        for folder in folders[1:]:
            extra = sorted(set(_class_dirs(folder, check=False)[0]) - set(classes) - set(empty))
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
        classes, empty = _class_dirs(root)
        paths, labels = _list_files(root, classes, require_all=True)
        split = list(split_indices(labels, None, opts, f"folder {root}"))
        places = tuple(f"{root} ({name} split)" for name in ("train", "val", "test"))
    return paths, labels, split, classes, places, empty


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


def _class_dirs(d: Path, check: bool = True) -> tuple[list[str], list[str]]:
    """The class folders of ``d`` that hold files, and those that hold none. An empty class folder (a user still
    sorting images) is left out with one warning, not an error; ``check``: fewer than two classes with files is
    one."""
    names = sorted(p.name for p in d.iterdir() if p.is_dir() and not _hidden(p.name))
    if check and not names:
        raise ValueError(f"no class sub-folders in {d} (expected {d}/<class>/<image files>)")
    empty = [name for name in names if not _has_files(d / name)]
    kept = [name for name in names if name not in empty]
    if check and not kept:
        raise ValueError(f"no class sub-folder of {d} holds any file ({len(names)} empty: {', '.join(names)})")
    if check and len(kept) == 1:
        raise ValueError(f"only one class ('{kept[0]}') in {d} has files; need at least 2 class sub-folders")
    if check and empty:
        warnings.warn(f"skipped {len(empty)} empty class folder(s) in {d}: {', '.join(empty)}; training on the "
                      f"{len(kept)} classes that hold files", stacklevel=4)
    return kept, empty


def _has_files(d: Path) -> bool:
    return any(not _hidden(f) for _, _, files in os.walk(d) for f in files)


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
