"""Data containers, the loader registry and the shared split / subsample / resize steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supcon.options import check_data_options


@dataclass
class ImageDataset:
    """One split held in memory: uint8 images [N, C, H, W] (C is 1 or 3) and int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __post_init__(self) -> None:
        # Fail here, at construction, rather than deep inside a training step.
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be uint8 [N, C, H, W] with C in (1, 3), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise ValueError(
                f"labels must be int64 [{len(self.images)}], "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataSplits:
    """The three splits of one data set, plus the files that could not be decoded.

    ``train`` is what the model learns from; ``val`` is what every choice sees (early stopping, the epoch restored,
    a sweep's best cell, defaults); ``test`` is held out from all of them and evaluated once, after training.
    """

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    name: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    noisy_labels: int = 0  # training (and val) labels changed on purpose (supcon.data.noise); test is never noisy
    input_size: int | None = None  # the training size, where the images are stored larger (a decoded cache)
    empty_classes: list[str] = field(default_factory=list)  # class folders left out: they held no files

    @property
    def num_classes(self) -> int:
        """The number of classes (of the training split's class names)."""
        return len(self.train.class_names)

    @property
    def channels(self) -> int:
        """1 (grayscale) or 3 (RGB)."""
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        """The side in pixels of the images the models see (square): the stored size, or the training size the
        views crop and resize the stored images to."""
        return self.input_size or self.stored_size

    @property
    def stored_size(self) -> int:
        """The side in pixels of the images as stored (square)."""
        return int(self.train.images.shape[2])


@dataclass(frozen=True)
class LoadOptions:
    """The options of `load_dataset`, handed to every loader; checked when made."""

    image_size: int | None = None
    store_size: int | None = None  # the decoded cache's size; None: image_size (or the files' own)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    max_train: int | None = None
    max_val: int | None = None
    max_test: int | None = None
    progress: bool = False
    data_dir: str | None = None  # where the named data sets are downloaded and cached

    def __post_init__(self):
        check_data_options(self)
        for key in ("image_size", "store_size", "max_train", "max_val", "max_test"):  # numpy ints to int
            if getattr(self, key) is not None:
                object.__setattr__(self, key, int(getattr(self, key)))
        object.__setattr__(self, "val_fraction", float(self.val_fraction))
        object.__setattr__(self, "test_fraction", float(self.test_fraction))
        object.__setattr__(self, "split_seed", int(self.split_seed))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))


Loader = Callable[[str, LoadOptions], DataSplits]


@dataclass(frozen=True)
class _Entry:
    fn: Loader
    usage: str
    takes_path: bool


_LOADERS: dict[str, _Entry] = {}


def register_loader(scheme: str, *, takes_path: bool) -> Callable[[Loader], Loader]:
    """Register `fn(arg, options) -> DataSplits` for specs `scheme` (or `scheme:PATH` if takes_path).

    Loaders may apply max_train / max_val / image_size themselves (to avoid decoding what is then
    thrown away); `load_dataset` applies them afterwards in any case, which is then a no-op.
    """

    def deco(fn: Loader) -> Loader:
        _LOADERS[scheme] = _Entry(fn, f"{scheme}:PATH" if takes_path else scheme, takes_path)
        return fn

    return deco


def available_datasets() -> list[str]:
    """The accepted forms of `spec`, for --help: e.g. ["digits", "npz:PATH", "folder:PATH"]."""
    return [e.usage for e in _LOADERS.values()]


def load_dataset(spec: str = "digits", options: LoadOptions | None = None, **changes: Any) -> DataSplits:
    """Load a data set into memory as uint8 tensors, split into train, val and test.

    spec: "digits" (scikit-learn's 8x8 digits), "npz:PATH" (x_train/y_train/x_test/y_test/
    class_names), "folder:PATH" (one sub-folder per class, optionally under train/ and test/ or val/),
    or a named data set downloaded on first use into `data_dir` (default $SUPCON_DATA_DIR, else
    ~/.cache/supcon): "flowers5", "cats_vs_dogs", "imagenet5", "cifar10", "cifar100".

    Where the source has a held-out split of its own (an npz's x_test, a folder's test/ or val/, the
    test sets of ImageNet-5 and CIFAR) it is the test split, and val is carved from the training images
    (`val_fraction` of them); otherwise test (`test_fraction`) and val (`val_fraction`) are both carved
    from all. Carving is stratified and seeded with `split_seed`, which is not the training seed: runs
    of several seeds see the same splits. `image_size` resizes to a square once at load time (None
    keeps the stored size, which must then be square; the named photo sets, whose photos differ in
    size, default to 128). `store_size` (the folder and named photo sets) decodes the files at that
    size into a cache on disk that the images then memory-map (see :mod:`supcon.data.cache`); the
    views crop from it and resize to `image_size`. `max_train` / `max_val` / `max_test` take a
    seeded, class-balanced subsample. These are the fields of ``options`` (:class:`LoadOptions`), or keywords:
    ``load_dataset("digits", image_size=16)``. Raises ValueError (one line) on a bad spec, a missing path or
    malformed data.
    """
    opts = replace(options or LoadOptions(), **changes)
    scheme, sep, arg = spec.partition(":")
    entry = _LOADERS.get(scheme)
    if entry is None or entry.takes_path != bool(sep) or (entry.takes_path and not arg):
        hint = ""
        if Path(spec).exists():  # a bare path: say which prefix it needs
            hint = f" (did you mean {'folder' if Path(spec).is_dir() else 'npz'}:{spec}?)"
        raise ValueError(f"unknown data set {spec!r}; valid forms: {', '.join(available_datasets())}{hint}")
    splits = entry.fn(arg, opts)
    # a decoded cache keeps its stored size (the views resize); arrays in memory are resized once, here
    resize = None if splits.input_size is not None else opts.image_size
    for name, most in (("train", opts.max_train), ("val", opts.max_val), ("test", opts.max_test)):
        part = _finish(getattr(splits, name), most, opts.split_seed, resize, f"{splits.name} {name}")
        setattr(splits, name, part)
    h, w = splits.train.images.shape[2:]
    if h != w:  # the models and augmentations downstream take one image_size
        raise ValueError(f"{splits.name}: images are {h}×{w}, not square; pass image_size to resize them")
    return splits


def split_indices(labels: np.ndarray, is_test: np.ndarray | None, opts: LoadOptions, what: str
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted indices into ``labels`` of the train, val and test splits (see :func:`load_dataset`), each
    subsampled to ``max_train``/``max_val``/``max_test``. ``is_test`` marks the source's own held-out images
    (None: the source has none). Loaders that decode files call it first, so that they decode only what they
    keep."""
    labels = np.asarray(labels)
    if is_test is not None and is_test.any():
        test = np.flatnonzero(is_test)
        pool = np.flatnonzero(~is_test)
        keep, val = stratified_split(labels[pool], opts.val_fraction, opts.split_seed, f"{what} train")
        train, val = pool[keep], pool[val]
    else:
        rest, test = stratified_split(labels, opts.test_fraction, opts.split_seed, what)
        # val is val_fraction of all the images: a larger share of what test left
        keep, val = stratified_split(labels[rest], opts.val_fraction / (1 - opts.test_fraction), opts.split_seed,
                                     f"{what} after the test split")
        train, val = rest[keep], rest[val]
    chosen = []
    for idx, most, name in ((train, opts.max_train, "train"), (val, opts.max_val, "val"),
                            (test, opts.max_test, "test")):
        chosen.append(idx[stratified_subset(labels[idx], most, opts.split_seed, f"{what} {name}")])
    return chosen[0], chosen[1], chosen[2]


def three_splits(pool: ImageDataset, test: ImageDataset | None, opts: LoadOptions, what: str
                 ) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """Train, val and test of a source held in memory: ``pool`` (its training images, or all of them) and
    ``test`` (its own held-out split, or None), carved as :func:`split_indices` says."""
    if test is None:
        train, val, held = split_indices(pool.labels.numpy(), None, opts, what)
        return _take(pool, train), _take(pool, val), _take(pool, held)
    keep, val = stratified_split(pool.labels.numpy(), opts.val_fraction, opts.split_seed, f"{what} train")
    return _take(pool, keep), _take(pool, val), test


def _take(ds: ImageDataset, idx: np.ndarray) -> ImageDataset:
    index = torch.from_numpy(np.asarray(idx))
    return ImageDataset(ds.images[index].contiguous(), ds.labels[index].contiguous(), ds.class_names)


def describe(splits: DataSplits) -> str:
    """One line: "npz:imagenet5_64: 1062 train / 188 val / 250 test, 5 classes, 3×64×64"."""
    c, h, w = splits.train.images.shape[1:]
    size = f"{c}×{h}×{w}"
    if splits.image_size != h:
        size = f"{c}×{splits.image_size}×{splits.image_size} (views of the {h} px images stored)"
    text = (
        f"{splits.name}: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test, "
        f"{splits.num_classes} classes, {size}"
    )
    if splits.skipped:
        text += f", {len(splits.skipped)} unreadable files skipped"
    if splits.noisy_labels:
        text += (f", {splits.noisy_labels} of {len(splits.train) + len(splits.val)} training and validation labels "
                 "noisy")
    return text


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified (train_idx, val_idx), each sorted so that source order is kept."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    n, k = len(labels), len(counts)
    n_val = int(np.ceil(val_fraction * n))  # what scikit-learn does with a float test_size
    if counts.min() < 2 or n_val < k or n - n_val < k:
        raise ValueError(
            f"{what} is too small for a stratified split with val_fraction={val_fraction}: {n} images, "
            f"{k} classes, smallest class {counts.min()} (each split needs >= 1 per class)"
        )
    tr, va = train_test_split(np.arange(n), test_size=val_fraction, stratify=labels, random_state=seed)
    return np.sort(tr), np.sort(va)


def stratified_subset(labels: np.ndarray, size: int | None, seed: int, what: str) -> np.ndarray:
    """Sorted indices of a seeded, class-balanced subsample of `size` (all if size is None or >= N)."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    n = len(labels)
    if size is None or size >= n:
        return np.arange(n)
    k = len(np.unique(labels))
    if size < k:
        raise ValueError(f"cannot take a class-balanced subsample of {size} from {what}: it has {k} classes")
    if np.unique(labels, return_counts=True)[1].min() < 2:
        return _proportional_subset(labels, size, seed)
    keep, _ = train_test_split(np.arange(n), train_size=size, stratify=labels, random_state=seed)
    return np.sort(keep)


def _proportional_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Per-class quotas by largest remainder (at least one each), members drawn with a seeded generator.

    scikit-learn's stratified split refuses classes of one member, which small real data sets do have.
    """
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.maximum(1, np.floor(size * counts / len(labels)).astype(int))
    order = np.argsort(-(size * counts / len(labels) - np.floor(size * counts / len(labels))), kind="stable")
    for i in order:
        if quota.sum() >= size:
            break
        if quota[i] < counts[i]:
            quota[i] += 1
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(keep))


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 512) -> torch.Tensor:
    """Resize uint8 [N, C, H, W] to [N, C, size, size] (bicubic, antialiased), back to uint8."""
    if images.shape[-2:] == (size, size):
        return images
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    # Chunks keep the float intermediate torchvision makes for bicubic small.
    out = [
        F.resize(images[i : i + chunk], [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        for i in range(0, len(images), chunk)
    ]
    return torch.cat(out).to(torch.uint8).contiguous()


def _finish(
    ds: ImageDataset, max_n: int | None, seed: int, image_size: int | None, what: str
) -> ImageDataset:
    keep = stratified_subset(ds.labels.numpy(), max_n, seed, what)
    if len(keep) < len(ds):
        idx = torch.from_numpy(keep)
        ds = ImageDataset(ds.images[idx].contiguous(), ds.labels[idx].contiguous(), ds.class_names)
    if image_size is not None:
        ds = ImageDataset(resize_uint8(ds.images, image_size), ds.labels, ds.class_names)
    return ds
