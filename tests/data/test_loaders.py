"""Tests for supcon.data: digits, npz (real files and broken ones), folders with bad files."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from supcon.data import DataSplits, available_datasets, describe, load_dataset

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NPZ = SHARED / "imagenet5_64.npz"
JPEG_ROOT = SHARED / "imagenet5_128" / "train"
CLASSES = ["airplane", "car", "cat"]

needs_npz = pytest.mark.skipif(not NPZ.is_file(), reason=f"real data set not found at {NPZ}")
needs_jpegs = pytest.mark.skipif(not JPEG_ROOT.is_dir(), reason=f"real JPEG folder not found at {JPEG_ROOT}")


# ---------------------------------------------------------------- digits


def test_digits_shapes_and_split():
    s = load_dataset("digits")
    assert isinstance(s, DataSplits) and s.name == "digits"
    assert s.num_classes == 10 and s.channels == 1 and s.image_size == 8
    for ds in (s.train, s.val, s.test):
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (1, 8, 8)
        assert ds.labels.dtype == torch.int64
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert len(s.val) == len(s.test) == 270  # ceil(0.15 * 1797) each
    assert int(s.train.images.max()) == 255 and int(s.train.images.min()) == 0
    # stratified: each class's share of val and of test matches its fraction to within one image
    tr, va, te = (torch.bincount(part.labels) for part in (s.train, s.val, s.test))
    for held in (va, te):
        assert (held.float() - 0.15 * (tr + va + te).float()).abs().max() <= 1.0
    assert s.skipped == []


def test_digits_seeded():
    a, b, c = (load_dataset("digits", split_seed=seed) for seed in (1, 1, 2))
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.val.labels, b.val.labels)
    assert not torch.equal(a.val.images, c.val.images)


def test_digits_resize_and_subsample():
    s = load_dataset("digits", image_size=16, val_fraction=0.3, max_train=50, max_val=20, max_test=10)
    assert s.test.images.shape == (10, 1, 16, 16)
    assert s.train.images.shape == (50, 1, 16, 16) and s.val.images.shape == (20, 1, 16, 16)
    assert s.train.images.dtype == torch.uint8
    assert torch.bincount(s.train.labels).tolist() == [5] * 10


def test_available_and_describe():
    assert available_datasets()[:3] == ["digits", "npz:PATH", "folder:PATH"]
    assert describe(load_dataset("digits")) == "digits: 1257 train / 270 val / 270 test, 10 classes, 1×8×8"


@pytest.mark.parametrize(
    "spec, kwargs, fragment",
    [
        ("nope:x", {}, "valid forms: digits, npz:PATH, folder:PATH"),
        ("digits:x", {}, "unknown data set"),
        ("npz:", {}, "unknown data set"),
        ("digits", {"val_fraction": 0.0}, "val_fraction"),
        ("digits", {"val_fraction": 1.5}, "val_fraction"),
        ("digits", {"image_size": 0}, "image_size"),
        ("digits", {"max_train": 5}, "10 classes"),
        ("digits", {"val_fraction": 0.001}, "too small for a stratified split"),
        ("npz:/no/such/file.npz", {}, "npz file not found"),
        ("folder:/no/such/folder", {}, "folder not found"),
    ],
)
def test_bad_arguments(spec, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        load_dataset(spec, **kwargs)


# ---------------------------------------------------------------- npz


@needs_npz
def test_npz_real_counts_match_manifest():
    counts = json.loads((SHARED / "MANIFEST.json").read_text())["counts"]["imagenet5"]
    s = load_dataset(f"npz:{NPZ}")
    assert s.name == "npz:imagenet5_64"
    assert s.train.class_names == ["airplane", "car", "cat", "dog", "elephant"]
    assert len(s.train) + len(s.val) == counts["train"]  # val is carved from the training images
    assert s.test.images.shape == (counts["test"], 3, 64, 64)
    assert s.train.images.dtype == torch.uint8 and s.train.labels.dtype == torch.int64
    assert (torch.bincount(s.train.labels) + torch.bincount(s.val.labels)).tolist() == [250] * 5
    assert describe(s) == "npz:imagenet5_64: 1062 train / 188 val / 250 test, 5 classes, 3×64×64"
    # NHWC -> NCHW kept the pixels where they were
    raw = np.load(NPZ)["x_test"][7]
    assert np.array_equal(s.test.images[7].permute(1, 2, 0).numpy(), raw)


@needs_npz
def test_npz_resize_and_balanced_subsample():
    s = load_dataset(f"npz:{NPZ}", image_size=32, max_train=100, max_val=25, split_seed=3)
    assert s.train.images.shape == (100, 3, 32, 32) and s.val.images.shape == (25, 3, 32, 32)
    assert s.image_size == 32 and s.train.images.dtype == torch.uint8
    assert torch.bincount(s.train.labels).tolist() == [20] * 5
    assert torch.bincount(s.val.labels).tolist() == [5] * 5
    # resizing keeps the picture: the mean intensity barely moves
    full = load_dataset(f"npz:{NPZ}", max_train=100, split_seed=3)
    assert abs(full.train.images.float().mean() - s.train.images.float().mean()) < 2.0
    again = load_dataset(f"npz:{NPZ}", image_size=32, max_train=100, max_val=25, split_seed=3)
    assert torch.equal(again.train.images, s.train.images)


def _write_npz(path: Path, **overrides) -> str:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
        "y_train": np.array([0, 0, 0, 0, 1, 1, 1, 1]),
        "x_test": rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8),
        "y_test": np.array([0, 1]),
        "class_names": np.array(["a", "b"]),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return f"npz:{path}"


def test_npz_small_good_and_grayscale(tmp_path):
    s = load_dataset(_write_npz(tmp_path / "ok.npz"))
    assert s.train.images.shape == (6, 3, 8, 8) and s.val.images.shape == (2, 3, 8, 8)  # val from train
    assert s.test.images.shape == (2, 3, 8, 8) and s.val.class_names == ["a", "b"]
    gray = _write_npz(
        tmp_path / "gray.npz", x_train=np.zeros((8, 8, 8), np.uint8), x_test=np.zeros((2, 8, 8), np.uint8)
    )
    assert load_dataset(gray).channels == 1
    wide = _write_npz(
        tmp_path / "wide.npz",
        x_train=np.zeros((8, 8, 6, 3), np.uint8),
        x_test=np.zeros((2, 8, 6, 3), np.uint8),
    )
    with pytest.raises(ValueError, match="8×6, not square; pass image_size"):
        load_dataset(wide)
    assert load_dataset(wide, image_size=4).train.images.shape == (6, 3, 4, 4)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"y_test": None}, r"missing arrays \['y_test'\]"),
        ({"x_train": np.full((8, 8, 8, 3), -0.5, np.float32)}, r"values in \[-0.5, -0.5\]; expected"),
        ({"x_train": np.zeros((8, 8, 8, 4), np.uint8)}, r"C in \(1, 3\)"),
        ({"x_train": np.zeros((8, 8), np.uint8)}, r"must be \[N, H, W, C\]"),
        ({"y_train": np.array([0, 1, 0, 1])}, "4 labels for 8 images"),
        ({"y_test": np.array([0, 2])}, r"expected 0\.\.1"),
        ({"y_train": np.array([0, 0, 0, 0, 1, 1, 1, -1])}, r"expected 0\.\.1"),
        (
            {"class_names": np.array(["a"]), "y_train": np.zeros(8, int), "y_test": np.zeros(2, int)},
            "2 classes",
        ),
        ({"x_test": np.zeros((2, 4, 4, 3), np.uint8)}, "differ in image shape"),
        ({"class_names": np.array(["a", None], dtype=object)}, "without pickle"),
    ],
)
def test_npz_errors(tmp_path, overrides, fragment):
    spec = _write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(ValueError, match=fragment) as e:
        load_dataset(spec)
    assert "bad.npz" in str(e.value) and "\n" not in str(e.value)


def test_bare_path_hint(tmp_path):
    with pytest.raises(ValueError, match=f"did you mean folder:{tmp_path}"):
        load_dataset(str(tmp_path))


def test_npz_not_a_zip(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


# ---------------------------------------------------------------- folder


def _copy_jpegs(dst: Path, per_class: int, start: int = 0) -> None:
    for c in CLASSES:
        (dst / c).mkdir(parents=True, exist_ok=True)
        for f in sorted((JPEG_ROOT / c).glob("*.jpg"))[start : start + per_class]:
            shutil.copy(f, dst / c / f.name)


def _add_odd_files(d: Path) -> tuple[list[str], np.ndarray, Path]:
    """Bad files (must be skipped) and good odd-format ones (must load) in d: (bad names, gray, source)."""
    src = sorted(d.glob("*.jpg"))[0]
    with Image.open(src) as im:
        rgb, gray = im.convert("RGB"), np.array(im.convert("L"))
    (d / "random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    (d / "truncated.jpg").write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")
    (d / ".DS_Store").write_bytes(b"\0junk")  # hidden: ignored, not even listed
    Image.fromarray(gray).save(d / "gray.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(d / "sixteen.png")
    with Image.open(d / "sixteen.png") as im:
        assert im.mode == "I;16"
    return ["random.jpg", "truncated.jpg", "empty.jpg", "notes.txt"], gray, src


@needs_jpegs
def test_folder_flat_with_bad_files(tmp_path):
    root = tmp_path / "mini"
    _copy_jpegs(root, 6)
    bad, gray, src = _add_odd_files(root / "cat")
    summary = r"skipped 4 unreadable image file\(s\) \(1 empty, 1 truncated, 2 not images\) in .*mini"
    with pytest.warns(UserWarning, match=summary):
        s = load_dataset(f"folder:{root}", val_fraction=0.25, test_fraction=0.25, split_seed=0)
    assert s.name == "folder:mini" and s.train.class_names == CLASSES
    assert sorted(Path(p).name for p, _ in s.skipped) == sorted(bad)
    reasons = {Path(p).name: why for p, why in s.skipped}
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["random.jpg"].startswith("not a recognised image format")
    assert reasons["truncated.jpg"].startswith("truncated file") and reasons["notes.txt"] == "not an image (.txt file)"
    assert all(why for why in reasons.values())
    # 6 JPEGs per class plus 3 odd-format PNGs in cat
    assert len(s.train) + len(s.val) + len(s.test) == 21
    assert torch.bincount(torch.cat([s.train.labels, s.val.labels, s.test.labels])).tolist() == [6, 6, 9]
    assert s.train.images.shape[1:] == (3, 128, 128) and s.train.images.dtype == torch.uint8
    # gray.png and the 16-bit PNG (scaled to 8 bits, not clipped to white) both load as gray as RGB;
    # the RGBA PNG loads as its RGB source: each appears twice among the loaded images
    everything = torch.cat([s.train.images, s.val.images, s.test.images])
    as_gray = torch.from_numpy(gray).expand(3, -1, -1)
    assert sum(torch.equal(img, as_gray) for img in everything) == 2
    with Image.open(src) as im:
        rgb = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    assert sum(torch.equal(img, rgb) for img in everything) == 2


@needs_jpegs
def test_folder_train_val_and_resize(tmp_path):
    root = tmp_path / "tv"
    _copy_jpegs(root / "train", 6)
    _copy_jpegs(root / "val", 2, start=6)
    Image.new("RGB", (50, 30), (200, 10, 10)).save(root / "train" / "car" / "small.png")
    with pytest.raises(ValueError, match="differ in size.*pass image_size"):
        load_dataset(f"folder:{root}")
    # val/ is the held-out test split; val is carved, stratified, from train/
    s = load_dataset(f"folder:{root}", image_size=32, progress=False, val_fraction=0.2)
    assert s.train.images.shape == (15, 3, 32, 32) and s.val.images.shape == (4, 3, 32, 32)
    assert s.test.images.shape == (6, 3, 32, 32) and torch.bincount(s.test.labels).tolist() == [2, 2, 2]
    # test/ works in place of val/
    (root / "val").rename(root / "test")
    s2 = load_dataset(f"folder:{root}", image_size=32, max_train=6, val_fraction=0.2)
    assert torch.equal(s2.test.images, s.test.images) and torch.equal(s2.val.images, s.val.images)
    assert torch.bincount(s2.train.labels).tolist() == [2, 2, 2]


@needs_jpegs
def test_folder_errors(tmp_path):
    root = tmp_path / "e"
    _copy_jpegs(root, 4)
    (root / "dog").mkdir()
    for i in range(4):
        (root / "dog" / f"broken{i}.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(ValueError, match=rf"class 'dog' has no readable images in {root} \(4 file\(s\) tried, all"):
        load_dataset(f"folder:{root}", val_fraction=0.3, test_fraction=0.3)
    shutil.rmtree(root / "dog")
    with pytest.raises(ValueError, match="too small for a stratified split"):
        load_dataset(f"folder:{root}", test_fraction=0.1)  # 12 images: 2 test images for 3 classes
    for c in CLASSES[1:]:
        shutil.rmtree(root / c)
    with pytest.raises(ValueError, match="only one class \\('airplane'\\)"):
        load_dataset(f"folder:{root}")
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'e' / 'airplane'}")
    for c in CLASSES[1:]:
        (root / c).mkdir()
    shutil.rmtree(root / CLASSES[0])
    (root / CLASSES[0]).mkdir()
    with pytest.raises(ValueError, match=rf"no class sub-folder of {root} holds any file \({len(CLASSES)} empty"):
        load_dataset(f"folder:{root}")


@needs_jpegs
def test_an_empty_class_folder_is_skipped_with_one_warning_and_recorded(tmp_path):
    """A folder data set while its user still sorts images: an empty class folder is left out, not fatal."""
    root = tmp_path / "sorting"
    _copy_jpegs(root, 4)
    (root / "zebra").mkdir()
    (root / "unsorted").mkdir()
    (root / "unsorted" / ".DS_Store").write_bytes(b"")  # hidden files are no images
    with pytest.warns(UserWarning, match=rf"skipped 2 empty class folder\(s\) in {root}: unsorted, zebra; "
                                         rf"training on the {len(CLASSES)} classes"):
        s = load_dataset(f"folder:{root}", val_fraction=0.25, test_fraction=0.25)
    assert s.train.class_names == sorted(CLASSES) and s.empty_classes == ["unsorted", "zebra"]
    from supcon.stages.run import data_facts

    assert data_facts(s)["empty_class_folders"] == ["unsorted", "zebra"]


@needs_jpegs
def test_folder_no_warning_when_clean(tmp_path):
    _copy_jpegs(tmp_path / "clean", 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = load_dataset(f"folder:{tmp_path / 'clean'}", val_fraction=0.25, test_fraction=0.25, progress=True)
    assert s.skipped == [] and len(s.val) == len(s.test) == 3


def test_stratified_subset_keeps_classes_of_one_member():
    from supcon.data import stratified_subset

    labels = np.array([0] * 20 + [1] * 10 + [2])
    keep = stratified_subset(labels, 10, seed=0, what="tiny")
    assert len(keep) == 10 and set(labels[keep]) == {0, 1, 2}
    assert np.array_equal(keep, stratified_subset(labels, 10, seed=0, what="tiny"))
