"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download)."""

from __future__ import annotations

import numpy as np
import torch

from .core import DataSplits, ImageDataset, LoadOptions, register_loader, split_indices


@register_loader("digits", takes_path=False)
def load_digits(arg: str, opts: LoadOptions) -> DataSplits:
    """The digits as uint8 [N, 1, 8, 8] (0..16 scaled to 0..255); train, val and test carved, stratified."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = d.target.astype(np.int64)
    names = [str(n) for n in d.target_names]
    tr, va, te = split_indices(labels, None, opts, "digits")

    def part(idx: np.ndarray) -> ImageDataset:
        return ImageDataset(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]), names)

    return DataSplits(part(tr), part(va), part(te), "digits", [])
