"""The decoded cache: folders larger than memory train from a memory map, decoded once; crops come from the stored
resolution; a cache a killed process left is rebuilt, never read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from supcon.augment import Inputs, resized_crop
from supcon.data import cache as cache_module
from supcon.data import load_dataset

SRC = Path(__file__).resolve().parents[2] / "src"
STORED = 96  # px: 10,000 images at 96 px are 276 MB decoded, 2,500 are 69 MB


def _write_folder(root: Path, count: int, size: int = STORED) -> None:
    """``count`` small JPEGs in two classes, copies of 24 encoded textures (encoding each file anew would make
    the large test a minute slower, and the memory measured does not depend on the pixels)."""
    import io

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(24):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=80)
        blobs.append(buffer.getvalue())
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / ("a" if i % 2 else "b") / f"{i:05d}.jpg").write_bytes(blobs[i % len(blobs)])


CHILD = r"""
import json, sys, threading, time
import supcon.data.cache as cache
calls = []
write = cache._write
cache._write = lambda *a, **k: (calls.append(1), write(*a, **k))[1]
peak, done = [0], threading.Event()

def rss_anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_anon())
        done.wait(0.01)

from supcon.config import Config
from supcon.stages import load_data, stage_context
from supcon.stages.pretrain import pretrain
threading.Thread(target=sample, daemon=True).start()
cfg = Config(dataset="folder:" + sys.argv[1], image_size=8, store_size=STORED, val_fraction=0.045, test_fraction=0.045,
             max_train=int(sys.argv[2]), epochs=1, batch_size=500, encoder="smallcnn", knn_every="0", tsne=False,
             quiet=True, views=1, proj_hidden=64)  # the smallest step: the data is what is measured
data = load_data(cfg)
assert data.stored_size == STORED and data.image_size == 8 and len(data.train) == int(sys.argv[2])
pretrain(stage_context(cfg), data)
done.set()
peak[0] = max(peak[0], rss_anon())
print(json.dumps({"peak_anon_kib": peak[0], "decoded": len(calls)}))
""".replace("STORED", str(STORED))


def _pretrain_once(root: Path, images: int, data_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "2", "SUPCON_DATA_DIR": str(data_dir)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(root), str(images)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="RssAnon is read from Linux's /proc")
def test_resident_memory_does_not_grow_with_the_data_set_and_the_cache_is_reused(tmp_path):
    root = tmp_path / "big"
    _write_folder(root, 12_000)  # 10,000 to train on once 4.5 % each are held out for val and test
    small = _pretrain_once(root, 2_500, tmp_path / "data")
    large = _pretrain_once(root, 10_000, tmp_path / "data")
    assert small["decoded"] == large["decoded"] == 1
    decoded_mib = (10_000 - 2_500) * 3 * STORED * STORED / 2**20
    assert decoded_mib > 190  # what holding the images in memory would add (207 MB)
    grew_mib = (large["peak_anon_kib"] - small["peak_anon_kib"]) / 1024
    # measured: 14 MiB (2026-12-08, Intel Xeon); holding the decoded images would add 198 MiB
    assert grew_mib < 100, f"anonymous memory grew by {grew_mib:.0f} MiB from 2,500 to 10,000 images"
    again = _pretrain_once(root, 10_000, tmp_path / "data")
    assert again["decoded"] == 0  # the same files, split and size: the cache is read, nothing is decoded


def test_the_crop_from_the_stored_image_is_torchvisions_resized_crop_of_it():
    """The random-resized crop takes its box on the stored image and resizes to the training size in one step,
    antialiased when it shrinks: what transforms.v2's RandomResizedCrop does to the full image with that box."""
    torch.manual_seed(0)
    stored = torch.rand(4, 3, STORED, STORED)
    boxes = torch.tensor([[0, 0, 96, 96], [10, 5, 60, 80], [30, 40, 41, 33], [2, 50, 90, 46]])
    for size in (16, 32, 128):  # shrinking (antialiased) and enlarging
        ours = resized_crop(stored, boxes, size)
        for image, (top, left, h, w), got in zip(stored, boxes.tolist(), ours, strict=True):
            want = F.resized_crop(image, top, left, h, w, [size, size], antialias=True)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_validation_sees_the_centre_crop_of_the_stored_image(tmp_path):
    _write_folder(tmp_path / "f", 60, size=64)
    data = load_dataset(f"folder:{tmp_path / 'f'}", image_size=32, store_size=64)
    assert data.stored_size == 64 and data.image_size == 32
    inputs = Inputs.of_images(data.train.images, image_size=data.image_size, crop=0.875)
    assert (inputs.stored_size, inputs.crop) == (64, 0.875)
    x = data.val.images[:3]
    want = F.resized_crop(x.float() / 255, 4, 4, 56, 56, [32, 32], antialias=True)  # 56 = 0.875 x 64, centred
    torch.testing.assert_close(inputs.plain()(x), want, atol=1e-6, rtol=0)


def test_a_cache_left_half_written_by_a_killed_process_is_rebuilt(tmp_path):
    _write_folder(tmp_path / "f", 40, size=32)
    data_dir = tmp_path / "data"
    loaded = load_dataset(f"folder:{tmp_path / 'f'}", data_dir=data_dir)
    # copies: the memory map of a file truncated below would fault when read (as any program's would)
    first = {name: getattr(loaded, name).images.clone() for name in ("train", "val", "test")}
    del loaded
    (home,) = (data_dir / "decoded").iterdir()
    # a killed writer leaves its scratch folder beside the caches, and never a cache without its meta.json; both
    # are simulated here, the second by truncating a finished cache's split and removing the file that vouches
    scratch = home.with_name(f".{home.name}.dead.partial")
    scratch.mkdir()
    (scratch / "train.u8").write_bytes(b"\0" * 100)
    (home / "meta.json").unlink()
    with open(home / "train.u8", "r+b") as fh:
        fh.truncate(10)
    again = load_dataset(f"folder:{tmp_path / 'f'}", data_dir=data_dir)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(again, name).images, first[name])
    assert json.loads((home / "meta.json").read_text())["complete"] is True
    # a changed file makes a new key: the cache is not mistaken for the new contents
    path = next((tmp_path / "f" / "a").iterdir())
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path, format="JPEG")
    os.utime(path, ns=(1, 1))
    load_dataset(f"folder:{tmp_path / 'f'}", data_dir=data_dir)
    assert len([p for p in (data_dir / "decoded").iterdir() if not p.name.startswith(".")]) == 2


def test_the_cache_key_follows_the_files_the_split_and_the_size(tmp_path):
    _write_folder(tmp_path / "f", 10, size=16)
    files = sorted((tmp_path / "f").rglob("*.jpg"))
    labels = np.array([int(p.parent.name == "a") for p in files])
    split = (np.arange(6), np.arange(6, 8), np.arange(8, 10))
    key = cache_module.cache_key(tmp_path / "f", files, labels, split, 16)
    assert key == cache_module.cache_key(tmp_path / "f", files, labels, split, 16)
    assert key != cache_module.cache_key(tmp_path / "f", files, labels, split, 32)
    assert key != cache_module.cache_key(tmp_path / "f", files, labels, (split[0], split[2], split[1]), 16)
    files[0].write_bytes(files[1].read_bytes())
    assert key != cache_module.cache_key(tmp_path / "f", files, labels, split, 16)
