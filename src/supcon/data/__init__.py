"""Image data sets held in memory as uint8 tensors.

`load_dataset(spec)` accepts "digits" (scikit-learn's bundled 8x8 digits, the default),
"npz:PATH" (x_train/y_train/x_test/y_test/class_names, uint8 NHWC), "folder:PATH" (one
sub-folder per class, optionally under train/ and val/ or test/) and the named data sets that
are downloaded on first use (flowers5, cats_vs_dogs, imagenet5, cifar10, cifar100; see
downloads.py). New schemes register a loader with `register_loader` in their own module and are
imported below.
"""

# Each module registers its scheme on import; this order is the order available_datasets() lists.
# isort: off
from . import digits, npz, folder, downloads  # noqa: F401

# isort: on
from .core import (
    DataSplits,
    ImageDataset,
    LoadOptions,
    available_datasets,
    describe,
    load_dataset,
    register_loader,
    resize_uint8,
    split_indices,
    stratified_split,
    stratified_subset,
    three_splits,
)
from .noise import NOISE_MODES, noisy_labels, with_label_noise

DECODED = ("folder", "flowers5", "cats_vs_dogs", "imagenet5")  # the sources decoded into a cache from files
PHOTO_SIZE = 128  # the named photo sets' training size when --image-size is not given


def store_size(cfg) -> int | None:
    """The size a config's files are decoded to: ``cfg.store_size``, else twice the training size for the sources
    decoded from files (crops then come from finer images, as the reference implementations crop the decoded
    originals); None for arrays held as they are (digits, npz, CIFAR) and for a folder without a size."""
    if cfg.store_size is not None:
        return cfg.store_size
    scheme = cfg.dataset.partition(":")[0]
    if scheme not in DECODED:
        return None
    size = cfg.image_size or (None if scheme == "folder" else PHOTO_SIZE)
    return 2 * size if size else None


def load_data(cfg, progress: bool = False) -> DataSplits:
    """The data set a :class:`~supcon.config.Config` names, with its size, split and subsampling options and its
    label noise on the training and validation labels: every command that trains or evaluates a run reads its
    data here, so the splits and the noise are the same in each. Both follow ``cfg.split_seed``, never the
    training ``cfg.seed``: the seeds of a comparison vary the training, not the data."""
    options = LoadOptions(image_size=cfg.image_size, store_size=store_size(cfg), val_fraction=cfg.val_fraction,
                          test_fraction=cfg.test_fraction, split_seed=cfg.split_seed, max_train=cfg.max_train,
                          max_val=cfg.max_val, max_test=cfg.max_test, progress=progress, data_dir=cfg.data_dir)
    data = load_dataset(cfg.dataset, options)
    return with_label_noise(data, cfg.label_noise, cfg.label_noise_mode, cfg.split_seed)

__all__ = [
    "NOISE_MODES",
    "DataSplits",
    "ImageDataset",
    "LoadOptions",
    "available_datasets",
    "describe",
    "load_data",
    "load_dataset",
    "noisy_labels",
    "register_loader",
    "resize_uint8",
    "split_indices",
    "stratified_split",
    "stratified_subset",
    "three_splits",
    "with_label_noise",
]
