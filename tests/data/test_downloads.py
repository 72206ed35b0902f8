"""Tests for the named, downloaded data sets, on small archives built here in each one's real layout.

Nothing touches the network: each data set's URL is pointed at a file:// URL of an archive the test builds,
with that archive's own size and sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from supcon.cli import main
from supcon.data import available_datasets, describe, load_dataset
from supcon.data import cache as cache_module
from supcon.data import downloads as dl

FLOWERS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
IMAGENET5 = ["airplane", "car", "cat", "dog", "elephant"]


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return load_sample_images().images  # two real 427x640 photos


def _jpeg(photos, i: int, fmt: str = "JPEG") -> bytes:
    """A small real photo crop of varying size, as the originals vary in size."""
    rng = np.random.default_rng(i)
    src = photos[i % 2]
    h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
    y, x = int(rng.integers(0, src.shape[0] - h)), int(rng.integers(0, src.shape[1] - w))
    buf = io.BytesIO()
    Image.fromarray(src[y : y + h, x : x + w]).save(buf, fmt)
    return buf.getvalue()


def _tgz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


BAD_PETS = {"PetImages/Cat/666.jpg", "PetImages/Dog/11702.jpg", "PetImages/Cat/Thumbs.db"}


def _members(name: str, photos) -> dict[str, bytes]:
    m: dict[str, bytes] = {}
    if name == "flowers5":
        for c, cls in enumerate(FLOWERS):
            for i in range(7):
                m[f"flower_photos/{cls}/{1000 * c + i}_photo.jpg"] = _jpeg(photos, 10 * c + i)
        m["flower_photos/LICENSE.txt"] = b"CC-BY by their photographers"
    elif name == "cats_vs_dogs":
        for c, cls in enumerate(["Cat", "Dog"]):
            for i in range(10):
                m[f"PetImages/{cls}/{i}.jpg"] = _jpeg(photos, 20 * c + i)
        good = m["PetImages/Cat/0.jpg"]
        m["PetImages/Cat/666.jpg"] = good[: len(good) // 3]  # a JPEG cut short
        m["PetImages/Dog/11702.jpg"] = b""  # zero bytes, as in the real archive
        m["PetImages/Cat/Thumbs.db"] = b"\xd0\xcf\x11\xe0 not an image"
        m["CDLA-Permissive-2.0.pdf"] = b"%PDF-1.4 licence"
        m["readme[1].txt"] = b"cats and dogs"
    elif name == "imagenet5":
        top = "imagenet-5-categories-master"
        m[f"{top}/README.md"] = b"# imagenet-5-categories"
        for c, cls in enumerate(IMAGENET5):
            for split, n in (("train", 8), ("test", 2)):
                for i in range(n):
                    m[f"{top}/{cls}/{split}/{split}{i}.jpg"] = _jpeg(photos, 30 * c + 10 * (split == "test") + i)
    else:
        rng = np.random.default_rng(0)
        k = 10 if name == "cifar10" else 100

        def batch(n: int, key: str) -> bytes:
            labels = rng.permutation(np.arange(n) % k).tolist()  # each class twice where n allows
            d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: labels}
            return pickle.dumps(d, protocol=2)  # the originals are Python 2 pickles

        if name == "cifar10":
            top = "cifar-10-batches-py"
            for i in range(1, 6):
                m[f"{top}/data_batch_{i}"] = batch(14, "labels")
            m[f"{top}/test_batch"] = batch(6, "labels")
            m[f"{top}/batches.meta"] = pickle.dumps({"label_names": [f"c{i}" for i in range(k)]}, protocol=2)
        else:
            top = "cifar-100-python"
            m[f"{top}/train"] = batch(700, "fine_labels")
            m[f"{top}/test"] = batch(5, "fine_labels")
            names = {"fine_label_names": [f"f{i}" for i in range(k)], "coarse_label_names": ["x"] * 20}
            m[f"{top}/meta"] = pickle.dumps(names, protocol=2)
        m[f"{top}/readme.html"] = b"<html></html>"
    return m


class Remote:
    """Serves built archives at file:// URLs and counts the downloads."""

    def __init__(self, tmp: Path, monkeypatch, photos):
        self.dir, self.monkeypatch, self.photos = tmp / "remote", monkeypatch, photos
        self.dir.mkdir()
        self.fetches: list[str] = []
        fetch = dl._fetch

        def counting(url, dest, progress):
            self.fetches.append(url)
            fetch(url, dest, progress)

        monkeypatch.setattr(dl, "_fetch", counting)
        monkeypatch.setenv(dl.ENV_VAR, str(tmp / "cache"))

    def serve(self, name: str, members: dict[str, bytes] | None = None, checksum: bool = True) -> Path:
        src = dl.SOURCES[name]
        build = _zip if src.filename.endswith(".zip") else _tgz
        path = build(self.dir / src.filename, members or _members(name, self.photos))
        data = path.read_bytes()
        size, sha = (len(data), hashlib.sha256(data).hexdigest()) if checksum else (None, None)
        self.monkeypatch.setitem(dl.SOURCES, name, replace(src, url=path.as_uri(), size=size, sha256=sha))
        return path


@pytest.fixture
def remote(tmp_path, monkeypatch, photos) -> Remote:
    return Remote(tmp_path, monkeypatch, photos)


def _counts(labels: torch.Tensor, k: int) -> list[int]:
    return torch.bincount(labels, minlength=k).tolist()


def test_names_are_registered():
    assert available_datasets()[3:] == ["flowers5", "cats_vs_dogs", "imagenet5", "cifar10", "cifar100"]
    for src in dl.SOURCES.values():
        assert src.url.startswith("https://")
        assert (src.sha256 is None) == (src.size is None) == (src.url.startswith("https://github.com/"))


def test_flowers5_download_once_split_and_cache(remote, tmp_path, monkeypatch):
    remote.serve("flowers5")
    s = load_dataset("flowers5", image_size=16, progress=True)
    cache = tmp_path / "cache"
    assert remote.fetches == [dl.SOURCES["flowers5"].url]
    assert s.name == "flowers5" and s.train.class_names == FLOWERS and s.skipped == []
    assert s.train.images.shape[1:] == (3, 16, 16) and s.train.images.dtype == torch.uint8
    # 35 photos pooled: ceil(0.15 * 35) = 6 in test, as many in val, stratified: every class in every split
    assert (len(s.train), len(s.val), len(s.test)) == (23, 6, 6)
    assert min(_counts(s.val.labels, 5)) == min(_counts(s.test.labels, 5)) == 1
    assert min(_counts(s.train.labels, 5)) == 4
    assert (cache / "flower_photos.tgz").is_file() and (cache / "flower_photos" / dl.MARKER).is_file()
    (decoded,) = (cache / "decoded").iterdir()  # the decoded cache: one raw file per split, memory-mapped
    assert {p.name for p in decoded.iterdir()} == {"train.u8", "val.u8", "test.u8", "meta.json"}
    assert not [p for p in [*cache.iterdir(), *(cache / "decoded").iterdir()] if p.name.startswith(".")]

    # Second load: no download, no extraction, no decoding; the same split from the cache.
    def fail(*args, **kwargs):
        raise AssertionError("must not run again")

    with monkeypatch.context() as m:
        m.setattr(dl, "_extract", fail)
        m.setattr(cache_module, "_write", fail)
        again = load_dataset("flowers5", image_size=16)
    assert remote.fetches == [dl.SOURCES["flowers5"].url]
    assert torch.equal(again.val.images, s.val.images) and torch.equal(again.train.labels, s.train.labels)
    assert torch.equal(again.test.images, s.test.images)
    # seeded: a different split seed gives a different (still stratified) split, decoded into a cache of its own
    other = load_dataset("flowers5", image_size=16, split_seed=1)
    assert len(list((cache / "decoded").iterdir())) == 2
    assert len(other.test) == 6 and not torch.equal(other.test.images, s.test.images)
    assert min(_counts(other.test.labels, 5)) == 1


def test_flowers5_default_size_is_128(remote):
    remote.serve("flowers5")
    s = load_dataset("flowers5", max_train=10)
    assert s.image_size == 128 and len(s.train) == 10 and len(s.val) == len(s.test) == 6


def test_cats_vs_dogs_skips_and_counts_bad_files(remote, tmp_path):
    remote.serve("cats_vs_dogs")
    # A quick run first: only its subsample is decoded (and cached under a key of its own).
    quick = load_dataset("cats_vs_dogs", image_size=16, max_train=6, max_val=2, split_seed=3)
    s = load_dataset("cats_vs_dogs", image_size=16)
    assert s.train.class_names == ["cat", "dog"]
    assert {p for p, _ in s.skipped} == {str(tmp_path / "cache" / m) for m in BAD_PETS}
    reasons = {Path(p).name: why for p, why in s.skipped}
    assert reasons["11702.jpg"] == "empty file" and "Thumbs.db" in reasons and all(reasons.values())
    # 23 files listed, split 15/4/4 before decoding; the 3 bad ones drop out of whichever split they fell in
    assert len(s.train) + len(s.val) + len(s.test) == 20 and len(s.val) <= 4 and len(s.test) <= 4
    assert _counts(torch.cat([s.train.labels, s.val.labels, s.test.labels]), 2) == [10, 10]
    assert describe(s).endswith("3 unreadable files skipped")
    assert (tmp_path / "cache" / "PetImages" / "CDLA-Permissive-2.0.pdf").is_file()  # the licence is kept
    # From the cache now: the skipped list is kept, and a quick run gets the same images as before.
    cached = load_dataset("cats_vs_dogs", image_size=16)
    assert cached.skipped == s.skipped
    again = load_dataset("cats_vs_dogs", image_size=16, max_train=6, max_val=2, split_seed=3)
    assert torch.equal(again.train.images, quick.train.images) and torch.equal(again.val.images, quick.val.images)
    assert again.skipped == quick.skipped


def test_imagenet5_uses_its_own_split(remote):
    remote.serve("imagenet5", checksum=False)  # as configured: a branch archive has no stable checksum
    assert dl.SOURCES["imagenet5"].sha256 is None
    s = load_dataset("imagenet5", image_size=16, val_fraction=0.25)  # its test/ folders are the test split
    assert s.train.class_names == IMAGENET5
    assert _counts(s.test.labels, 5) == [2] * 5  # val is carved from train/: a quarter of its 8 a class
    assert _counts(s.val.labels, 5) == [2] * 5 and _counts(s.train.labels, 5) == [6] * 5


def test_imagenet5_extracted_clone_in_data_dir(remote, tmp_path, photos):
    """--data-dir holding a git clone (the repository's own folder name), with no archive and no network."""
    remote.serve("imagenet5", checksum=False)
    clone = tmp_path / "mine"
    for name, data in _members("imagenet5", photos).items():
        path = clone / name.replace("imagenet-5-categories-master", "imagenet-5-categories")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    s = load_dataset("imagenet5", image_size=16, data_dir=clone)
    assert remote.fetches == [] and (len(s.train) + len(s.val), len(s.test)) == (40, 10)
    # the data dir may be the tree itself, too
    assert len(load_dataset("imagenet5", image_size=16, data_dir=clone / "imagenet-5-categories").test) == 10


@pytest.mark.parametrize("name, k, sizes", [("cifar10", 10, (59, 11, 6)), ("cifar100", 100, (595, 105, 5))])
def test_cifar_pickles_and_official_split(remote, name, k, sizes):
    members = _members(name, None)
    remote.serve(name, members)
    s = load_dataset(name)
    assert s.image_size == 32 and s.channels == 3 and (len(s.train), len(s.val), len(s.test)) == sizes
    assert s.train.class_names == [f"{'c' if k == 10 else 'f'}{i}" for i in range(k)]
    first = "cifar-10-batches-py/data_batch_1" if k == 10 else "cifar-100-python/train"
    raw = pickle.loads(members[first], encoding="latin1")
    test = pickle.loads(members["cifar-10-batches-py/test_batch" if k == 10 else "cifar-100-python/test"],
                        encoding="latin1")
    # rows are R, G, B planes of 32x32 each; the official test batch is the test split, in its order
    assert torch.equal(s.test.images[0], torch.from_numpy(test["data"][0].reshape(3, 32, 32)))
    assert s.test.labels.tolist() == test["labels" if k == 10 else "fine_labels"]
    assert torch.equal(s.train.images[0], torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))
    assert load_dataset(name, image_size=16).train.images.shape == (sizes[0], 3, 16, 16)


def test_cifar_refuses_pickled_code(remote):
    members = _members("cifar10", None)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({"label_names": shutil.rmtree})
    remote.serve("cifar10", members)
    with pytest.raises(ValueError, match="refusing to load shutil.rmtree"):
        load_dataset("cifar10")


def test_checksum_mismatch_deletes_the_download(remote, tmp_path, monkeypatch):
    remote.serve("flowers5")
    src = dl.SOURCES["flowers5"]
    monkeypatch.setitem(dl.SOURCES, "flowers5", replace(src, sha256="0" * 64))
    with pytest.raises(ValueError) as e:
        load_dataset("flowers5")
    msg = str(e.value)
    assert f"sha256 {src.sha256}, expected {'0' * 64}" in msg and "flower_photos.tgz" in msg and "\n" not in msg
    assert not (tmp_path / "cache" / "flower_photos.tgz").exists()
    assert not (tmp_path / "cache" / "flower_photos").exists()
    monkeypatch.setitem(dl.SOURCES, "flowers5", replace(src, size=src.size + 1))
    with pytest.raises(ValueError, match=f"{src.size} bytes, expected {src.size + 1}"):
        load_dataset("flowers5")
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("name", ["flowers5", "cats_vs_dogs"])
def test_truncated_archive(remote, tmp_path, name):
    path = remote.serve(name, checksum=False)  # no checksum to catch it: extraction must
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        load_dataset(name)
    assert dl.SOURCES[name].filename in str(e.value) and "\n" not in str(e.value)
    assert list((tmp_path / "cache").iterdir()) == []  # no half-extracted tree, no bad download


def test_truncated_archive_caught_by_size(remote, tmp_path):
    path = remote.serve("flowers5")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="100 bytes, expected"):
        load_dataset("flowers5")
    assert list((tmp_path / "cache").iterdir()) == []


def test_offline_names_the_url_and_the_way_out(remote, tmp_path, monkeypatch):
    url = (tmp_path / "nowhere" / "flower_photos.tgz").as_uri()
    monkeypatch.setitem(dl.SOURCES, "flowers5", replace(dl.SOURCES["flowers5"], url=url))
    with pytest.raises(ValueError) as e:
        load_dataset("flowers5")
    msg = str(e.value)
    assert msg.startswith(f"could not download {url} (") and "\n" not in msg
    assert f"put flower_photos.tgz (or its extracted tree) in {tmp_path / 'cache'}" in msg and "--data-dir" in msg
    assert list((tmp_path / "cache").iterdir()) == []  # no partial download left


def test_data_dir_with_a_placed_archive(remote, tmp_path, monkeypatch):
    archive = remote.serve("flowers5")
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(archive, mine / archive.name)
    monkeypatch.setitem(dl.SOURCES, "flowers5", replace(dl.SOURCES["flowers5"], url="file:///no/such/file"))
    s = load_dataset("flowers5", image_size=16, data_dir=mine)
    assert remote.fetches == [] and len(s.train) + len(s.val) + len(s.test) == 35
    assert (mine / "flower_photos" / dl.MARKER).is_file() and not (tmp_path / "cache").exists()
    # A placed copy that fails its checksum is reported, and left for its owner to replace.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / archive.name).write_bytes(b"x" * dl.SOURCES["flowers5"].size)
    with pytest.raises(ValueError, match=r"sha256 .*\(replace it with a good copy\)"):
        load_dataset("flowers5", data_dir=bad)
    assert (bad / archive.name).is_file()


def test_incomplete_tree_is_not_used(remote, tmp_path):
    remote.serve("flowers5")
    (tmp_path / "cache" / "flower_photos" / "daisy").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a complete flowers5 tree.*delete it"):
        load_dataset("flowers5")
    assert remote.fetches == []


def test_cli_ce_on_flowers5(remote, tmp_path, capsys):
    remote.serve("flowers5")
    data_dir, out = tmp_path / "dd", tmp_path / "run"
    code = main(["ce", "--dataset", "flowers5", "--data-dir", str(data_dir), "--image-size", "16",
                 "--encoder", "smallcnn", "--epochs", "1", "--batch-size", "16", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (data_dir / "flower_photos" / dl.MARKER).is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "flowers5" and results["class_names"] == FLOWERS
