"""Label noise for robustness studies: a seeded share of the training labels replaced by a wrong class.

>>> from supcon.data import load_dataset
>>> from supcon.data.noise import with_label_noise
>>> data = with_label_noise(load_dataset("digits"), rate=0.2, mode="sym", seed=0)
>>> data.noisy_labels            # round(0.2 * N) of the N training labels and as many of val's changed; test is clean
305

``sym`` (symmetric) gives each chosen label one of the K - 1 other classes, uniformly; ``asym`` (asymmetric)
moves class ``c`` to ``(c + 1) mod K``, a fixed confusion between neighbouring class indices, the usual
stand-in for "a labeller who mixes up similar classes" when no confusion matrix is known.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from .core import DataSplits, ImageDataset

NOISE_MODES = ("sym", "asym")
# Mixed into the seed so that the noise draws are not the same stream as the split or the subsample.
_STREAM = 0x6E6F6973
_VAL_STREAM = 0x76616C


def noisy_labels(labels: torch.Tensor, rate: float, num_classes: int, mode: str = "sym", seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``labels`` with exactly ``round(rate * N)`` of them changed to another class; and which ones changed.

    Returns ``(new_labels, changed)``: int64 ``[N]`` and the sorted indices that were changed. The same
    ``seed`` picks the same images and the same wrong classes; a larger ``rate`` with the same seed changes a
    superset of the images a smaller one changed (the choice is a prefix of one seeded permutation).
    """
    if mode not in NOISE_MODES:
        raise ValueError(f"label noise mode must be one of {', '.join(NOISE_MODES)}; got {mode!r}")
    if not 0 <= rate < 1:
        raise ValueError(f"label noise must be in [0, 1); got {rate!r}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes; got {num_classes}")
    labels = labels.long()
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1} for label noise")
    rng = np.random.default_rng([int(seed), _STREAM])
    count = int(round(rate * len(labels)))
    changed = np.sort(rng.permutation(len(labels))[:count])
    old = labels.numpy()[changed]
    if mode == "sym":  # an offset of 1..K-1 never lands on the true class and reaches every other one equally
        new = (old + rng.integers(1, num_classes, size=count)) % num_classes
    else:
        new = (old + 1) % num_classes
    out = labels.clone()
    out[torch.from_numpy(changed)] = torch.from_numpy(new).long()
    return out, torch.from_numpy(changed).long()


def with_label_noise(data: DataSplits, rate: float, mode: str = "sym", seed: int = 0) -> DataSplits:
    """``data`` with :func:`noisy_labels` applied to its training and validation splits; the test split stays
    clean. A practitioner has no clean labels to stop early on: the validation split that picks the epoch is
    as noisy as the training split, and only the test split says what was learned.

    ``noisy_labels`` of the result counts the changed labels of both (0 for ``rate`` 0, which returns ``data``
    as is).
    """
    if rate == 0:
        return data
    labels, changed = noisy_labels(data.train.labels, rate, data.num_classes, mode, seed)
    # another stream for val, so that its choice does not mirror train's
    val_labels, val_changed = noisy_labels(data.val.labels, rate, data.num_classes, mode, seed + _VAL_STREAM)
    train = ImageDataset(data.train.images, labels, data.train.class_names)
    val = ImageDataset(data.val.images, val_labels, data.val.class_names)
    return replace(data, train=train, val=val, noisy_labels=len(changed) + len(val_changed))
