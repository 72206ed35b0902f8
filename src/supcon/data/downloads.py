"""Named data sets fetched from their original archives: flowers5, cats_vs_dogs, imagenet5, cifar10, cifar100.

Each archive is downloaded once into the data dir (`data_dir`, else $SUPCON_DATA_DIR, else ~/.cache/supcon),
checked against its published size and sha256, and extracted once; the photo sets are then decoded once per
image size into a cache `<name>_<size>px.npz` beside the extracted tree. The data dir may also hold a copy
fetched elsewhere: the archive itself, or its extracted tree under the archive's own top-level folder name.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from supcon.io import new_file_mode

from .cache import decoded_splits
from .core import DataSplits, ImageDataset, LoadOptions, register_loader, split_indices, three_splits

log = logging.getLogger(__name__)

ENV_VAR = "SUPCON_DATA_DIR"
DEFAULT_DIR = "~/.cache/supcon"
MARKER = ".supcon-complete"  # written inside a tree before it is moved into place, so only complete trees have it


@dataclass(frozen=True)
class Source:
    """Where one data set comes from and what its archive unpacks to."""

    url: str
    filename: str  # the archive's name in the data dir
    size: int | None  # bytes; None where the archive is not byte-stable
    sha256: str | None
    tree: str  # the archive's top-level folder
    folders: tuple[str, ...]  # class folders under the tree (or under <tree>/<class>/{train,test} for imagenet5)
    classes: tuple[str, ...]  # the class names reported, in label order
    own_split: bool  # the tree has its own train/test split; otherwise a seeded stratified split is made
    image_size: int  # the decode size when image_size is None (the photos differ in size)
    other_trees: tuple[str, ...] = ()  # other names an extracted copy may have, e.g. a git clone's


# Checksums: size and sha256 as published by TensorFlow Datasets (url_checksums/tf_flowers.txt) for
# flower_photos.tgz, and by Hugging Face datasets (datasets/*/dataset_infos.json, "download_checksums") for the
# PetImages zip and the CIFAR tarballs; the CIFAR sha256s agree with Keras' cifar10/cifar100 loaders and with
# torchvision's prototype datasets, and their md5s with torchvision.datasets.CIFAR10/100.
SOURCES: dict[str, Source] = {
    "flowers5": Source(
        url="https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz",
        filename="flower_photos.tgz",
        size=228_813_984,
        sha256="4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c",
        tree="flower_photos",
        folders=("daisy", "dandelion", "roses", "sunflowers", "tulips"),
        classes=("daisy", "dandelion", "roses", "sunflowers", "tulips"),
        own_split=False,
        image_size=128,
    ),
    "cats_vs_dogs": Source(
        url="https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/"
        "kagglecatsanddogs_5340.zip",
        filename="kagglecatsanddogs_5340.zip",
        size=824_887_076,
        sha256="b7974bd00a84a99921f36ee4403f089853777b5ae8d151c76a86e64900334af9",
        tree="PetImages",
        folders=("Cat", "Dog"),
        classes=("cat", "dog"),
        own_split=False,
        image_size=128,
    ),
    # A GitHub branch archive is generated on request and is not byte-stable, so it has no published checksum:
    # only the zip's own CRCs are checked. The layout (<class>/train/*.jpg, <class>/test/*.jpg; 250 + 50 per
    # class) is the repository's, as its README describes.
    "imagenet5": Source(
        url="https://github.com/thunderInfy/imagenet-5-categories/archive/refs/heads/master.zip",
        filename="imagenet-5-categories-master.zip",
        size=None,
        sha256=None,
        tree="imagenet-5-categories-master",
        folders=("airplane", "car", "cat", "dog", "elephant"),
        classes=("airplane", "car", "cat", "dog", "elephant"),
        own_split=True,
        image_size=128,
        other_trees=("imagenet-5-categories",),
    ),
    "cifar10": Source(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        filename="cifar-10-python.tar.gz",
        size=170_498_071,
        sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        tree="cifar-10-batches-py",
        folders=(),
        classes=(),  # read from batches.meta
        own_split=True,
        image_size=32,
    ),
    "cifar100": Source(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        filename="cifar-100-python.tar.gz",
        size=169_001_437,
        sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        tree="cifar-100-python",
        folders=(),
        classes=(),  # read from meta
        own_split=True,
        image_size=32,
    ),
}


def _data_dir(opts: LoadOptions) -> Path:
    return Path(opts.data_dir or os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()


# ---------------------------------------------------------------- fetch, verify, extract


def _prepare(name: str, root: Path, progress: bool = False) -> Path:
    """The extracted tree of data set `name` under `root`, downloading and extracting it first if need be."""
    src = SOURCES[name]
    for tree in (root / src.tree, *(root / t for t in src.other_trees)):
        if (tree / MARKER).is_file():
            return tree
        if tree.is_dir() and _looks_complete(tree, src):  # extracted elsewhere and placed here
            return tree
    if root.name in (src.tree, *src.other_trees) and _looks_complete(root, src):
        return root  # the data dir is the tree itself
    if (root / src.tree).exists():
        raise ValueError(
            f"{root / src.tree} exists but is not a complete {name} tree (no {MARKER}, missing class folders); "
            "delete it to extract the archive again"
        )
    archive = root / src.filename
    downloaded = not archive.is_file()
    if downloaded:
        root.mkdir(parents=True, exist_ok=True)
        _fetch(src.url, archive, progress)
    try:
        _verify(archive, src, downloaded)
        return _extract(archive, root, src, progress)
    except ValueError:
        if downloaded:  # a copy someone placed here is theirs to replace; ours would fail the same way again
            archive.unlink(missing_ok=True)
        raise


def _looks_complete(tree: Path, src: Source) -> bool:
    if src.folders:
        return all((tree / f).is_dir() for f in src.folders)
    return (tree / ("batches.meta" if src.tree.startswith("cifar-10-") else "meta")).is_file()


def _fetch(url: str, dest: Path, progress: bool) -> None:
    """Download `url` to `dest` through a temporary file beside it, so that `dest` is only ever complete."""
    from tqdm.auto import tqdm

    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        os.chmod(tmp, new_file_mode())
        request = urllib.request.Request(url, headers={"User-Agent": "supcon"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=60) as response:
            total = response.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"downloading {dest.name}", disable=None if progress else True) as bar:
                received = 0
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                if total and received != int(total):  # the only check left for an archive without a checksum
                    raise ValueError(f"connection closed after {received} of {total} bytes")
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        Path(tmp).unlink(missing_ok=True)
        reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
        raise ValueError(
            f"could not download {url} ({reason}); to use a copy fetched elsewhere, put {dest.name} "
            f"(or its extracted tree) in {dest.parent}, or point --data-dir at a directory holding it"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _verify(archive: Path, src: Source, downloaded: bool) -> None:
    after = "it was deleted; run again to download it anew" if downloaded else "replace it with a good copy"
    size = archive.stat().st_size
    if src.size is not None and size != src.size:
        raise ValueError(
            f"{archive}: {size} bytes, expected {src.size} (a truncated or different file; {after})"
        )
    if src.sha256 is not None:
        digest = hashlib.sha256()
        with open(archive, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != src.sha256:
            raise ValueError(f"{archive}: sha256 {digest.hexdigest()}, expected {src.sha256} ({after})")


def _extract(archive: Path, root: Path, src: Source, progress: bool) -> Path:
    """Unpack into a scratch folder and move the finished tree into place, so a failure leaves nothing behind."""
    from tqdm.auto import tqdm

    scratch = Path(tempfile.mkdtemp(prefix=f".{src.tree}.", suffix=".partial", dir=root))
    try:
        bar = tqdm(desc=f"extracting {archive.name}", unit="file", disable=None if progress else True)
        try:
            if archive.name.endswith(".zip"):
                with zipfile.ZipFile(archive) as z:
                    for member in z.infolist():
                        z.extract(member, scratch)  # checks each member's CRC and strips unsafe paths
                        bar.update()
            else:
                with tarfile.open(archive, "r:*") as t:
                    for member in t:
                        # The "data" filter refuses links and paths that leave the folder (Python >= 3.10.12).
                        t.extract(member, scratch, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
                        bar.update()
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
            if isinstance(e, OSError) and e.errno is not None:  # the disk (full, read-only), not the archive
                raise ValueError(f"{archive}: cannot extract it into {root} ({e})") from None
            raise ValueError(
                f"{archive}: cannot extract it, the archive is truncated or corrupt ({type(e).__name__}: {e})"
            ) from None
        finally:
            bar.close()
        tree = scratch / src.tree
        if not tree.is_dir() or not _looks_complete(tree, src):
            raise ValueError(f"{archive}: no complete {src.tree}/ folder inside; is it the right archive?")
        for extra in scratch.iterdir():  # keep licence and readme files that sit beside the tree
            if extra != tree and extra.is_file():
                shutil.move(extra, tree / extra.name)
        (tree / MARKER).write_text(f"{src.url}\n")
        dest = root / src.tree
        try:
            os.rename(tree, dest)
        except OSError:
            if not (dest / MARKER).is_file():  # not a concurrent extraction that finished first
                raise
        return dest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------- photo sets: list, split, decode, cache


def _list(tree: Path, src: Source) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Relative paths, labels and is-test flags of every file, in a fixed order (unreadable files included)."""
    files: list[str] = []
    labels: list[int] = []
    test: list[bool] = []
    parts = [("train", False), ("test", True)] if src.own_split else [("", False)]
    for c, folder in enumerate(src.folders):
        for sub, is_test in parts:
            d = tree / folder / sub
            if not d.is_dir():
                raise ValueError(f"{tree} is incomplete: {d} is missing (delete {tree} to extract it again)")
            names = sorted(p.name for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
            files += [str(Path(folder, sub, n)) for n in names]
            labels += [c] * len(names)
            test += [is_test] * len(names)
    return files, np.asarray(labels, dtype=np.int64), np.asarray(test, dtype=bool)


def _load_photos(name: str, tree: Path, opts: LoadOptions) -> DataSplits:
    src = SOURCES[name]
    size = opts.store_size or opts.image_size or src.image_size
    files, labels, test = _list(tree, src)
    # Split and subsample the file list, not the decoded images, so that a quick run decodes only what it uses.
    split = split_indices(labels, test if src.own_split else None, opts, name)
    parts, skipped, _ = decoded_splits(name, tree, [tree / f for f in files], labels, split, list(src.classes), size,
                                       _data_dir(opts), opts.progress)
    for part_name, part in parts.items():
        missing = sorted(set(range(len(src.classes))) - set(part.labels.tolist()))
        if missing:
            raise ValueError(f"{name}: class '{src.classes[missing[0]]}' has no readable images in the {part_name} "
                             "split")
    for p, why in skipped:
        log.info("skipped unreadable image %s: %s", p, why)
    train_size = opts.image_size or src.image_size
    return DataSplits(parts["train"], parts["val"], parts["test"], name, skipped,
                      input_size=train_size if train_size != size else None)


# ---------------------------------------------------------------- CIFAR: python pickle batches


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a tree placed in the data dir by hand is not trusted code."""

    ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED or (
            module.split(".")[0] == "numpy" and name in ("_reconstruct", "_frombuffer", "scalar")
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path, *keys: str) -> dict:
    try:
        with open(path, "rb") as fh:
            d = _ArraysOnly(fh, encoding="latin1").load()
    except FileNotFoundError:
        raise ValueError(f"{path} is missing (delete {path.parent} to extract the archive again)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a CIFAR batch ({type(e).__name__}: {e})") from None
    missing = [k for k in keys if not isinstance(d, dict) or k not in d]
    if missing:
        raise ValueError(f"{path}: not a CIFAR batch (no {missing} entries)")
    return d


def _load_cifar(name: str, tree: Path, opts: LoadOptions) -> DataSplits:
    if name == "cifar10":
        meta, key, names_key = "batches.meta", "labels", "label_names"
        batches = ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
    else:
        meta, key, names_key = "meta", "fine_labels", "fine_label_names"
        batches = (["train"], ["test"])
    classes = [str(n) for n in _unpickle(tree / meta, names_key)[names_key]]

    def part(files: list[str]) -> ImageDataset:
        xs, ys = [], []
        for f in files:
            d = _unpickle(tree / f, "data", key)
            x, y = np.asarray(d["data"]), np.asarray(d[key])
            if x.dtype != np.uint8 or x.shape[1:] != (3 * 32 * 32,) or y.shape != (len(x),) or y.dtype.kind not in "iu":
                raise ValueError(f"{tree / f}: expected uint8 data [N, 3072] and {key} [N], got {x.dtype} {x.shape}")
            xs.append(x.reshape(-1, 3, 32, 32))  # stored as R, G, B planes of 32x32: already NCHW
            ys.append(y.astype(np.int64))
        y = np.concatenate(ys)
        if y.min() < 0 or y.max() >= len(classes):
            raise ValueError(f"{tree}: labels outside 0..{len(classes) - 1}")
        return ImageDataset(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(y), classes)

    # The whole set is 180 MB and reads in a second: no cache, and max_train / max_val act in load_dataset.
    train, val, test = three_splits(part(batches[0]), part(batches[1]), opts, name)
    return DataSplits(train, val, test, name, [])


# ---------------------------------------------------------------- registration


def _loader(name: str) -> Callable[[str, LoadOptions], DataSplits]:
    def load(arg: str, opts: LoadOptions) -> DataSplits:
        root = _data_dir(opts)
        tree = _prepare(name, root, opts.progress)
        if name.startswith("cifar"):
            return _load_cifar(name, tree, opts)
        return _load_photos(name, tree, opts)

    load.__doc__ = f"{name}: downloaded once from {SOURCES[name].url}, cached in the data dir."
    return load


for _name in SOURCES:
    register_loader(_name, takes_path=False)(_loader(_name))
