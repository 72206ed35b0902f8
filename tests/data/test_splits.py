"""Every data set yields train, val and test: the source's own held-out split is test, val is carved from train,
and the carving follows --split-seed, never the training seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from supcon.config import Config
from supcon.data import describe, load_data, load_dataset


def _rows(ds) -> set[bytes]:
    return {bytes(x) for x in ds.images.flatten(1).numpy()}


def _disjoint(data) -> None:
    train, val, test = _rows(data.train), _rows(data.val), _rows(data.test)
    assert not (train & val) and not (train & test) and not (val & test)


def test_digits_are_carved_three_ways_stratified():
    data = load_dataset("digits")
    assert (len(data.train), len(data.val), len(data.test)) == (1257, 270, 270)  # 70 / 15 / 15 of 1,797
    assert describe(data) == "digits: 1257 train / 270 val / 270 test, 10 classes, 1×8×8"
    for part in (data.val, data.test):
        assert torch.bincount(part.labels).min() >= 26  # about 27 of each digit in each held-out split
    other = load_dataset("digits", split_seed=1)
    assert not torch.equal(other.test.labels, data.test.labels) or not torch.equal(other.test.images,
                                                                                   data.test.images)
    assert load_dataset("digits", val_fraction=0.1, test_fraction=0.2).test.labels.numel() == 360


def test_the_training_seed_does_not_move_the_splits():
    a, b = load_data(Config(seed=0)), load_data(Config(seed=7))
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(a, name).images, getattr(b, name).images)
        assert torch.equal(getattr(a, name).labels, getattr(b, name).labels)


def test_an_npz_keeps_its_test_split_and_carves_val_from_train(shared_data):
    path = shared_data / "imagenet5_64.npz"
    data = load_dataset(f"npz:{path}", image_size=16)
    with np.load(path) as z:
        assert len(data.test) == len(z["y_test"]) == 250
        assert len(data.train) + len(data.val) == len(z["y_train"]) == 1250
        assert torch.equal(data.test.labels, torch.from_numpy(z["y_test"]))
    assert len(data.val) == 188 and sorted(torch.bincount(data.val.labels).tolist()) == [37, 37, 38, 38, 38]
    _disjoint(load_dataset(f"npz:{path}", image_size=8))


def test_a_folder_with_train_and_val_uses_val_as_test(shared_data):
    root = SHARED_DATA / "imagenet5_128"
    data = load_dataset(f"folder:{root}", image_size=8, max_train=100, max_val=20, max_test=25)
    assert (len(data.train), len(data.val), len(data.test)) == (100, 20, 25)
    _disjoint(data)


def test_a_folder_with_its_own_val_and_test_keeps_both(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4), ("test", 5)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / c / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert (len(data.train), len(data.val), len(data.test)) == (24, 8, 10)
    _disjoint(data)


def test_fractions_that_leave_nothing_to_train_on_are_refused():
    with pytest.raises(ValueError, match="must leave images to train on"):
        load_dataset("digits", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="must leave images to train on"):
        Config(val_fraction=0.6, test_fraction=0.5)
