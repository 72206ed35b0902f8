"""The decoded cache: image files decoded once, in worker processes, into uint8 files that training memory-maps.

A data set of files (``folder:`` and the named photo sets) is decoded at its *stored* size, which is chosen apart
from the training size (``--store-size``; the views crop from the stored images and resize to ``--image-size``),
into one raw ``[N, 3, S, S]`` uint8 file per split. Training and evaluation index those files through a memory
map: the pages are the file's, read as batches need them, so the process's own (anonymous) memory does not grow
with the data set, and the operating system shares and drops them as it likes.

A cache is keyed by what its pixels depend on: the folder, every file's name, size and modification time and its
label, the split's members and the stored size; any change gives a new key, and so a new cache. It is written into
a scratch folder and renamed into place only once complete (``meta.json``, its last file, says so), so that a
cache a killed process left behind is never read half-written: it is found incomplete, deleted and rebuilt.

Layout: ``<data dir>/decoded/<name>-<key>/`` holding ``train.u8``, ``val.u8``, ``test.u8`` and ``meta.json``
(counts, labels, class names, the skipped files and their reasons). Delete the ``decoded/`` folder to clear it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import uuid
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .core import ImageDataset
from .decode import decode_image

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FORMAT = 1
CHUNK = 256  # files a worker decodes per task: large enough to amortise the task, small enough for the bar
WORKERS = max(1, min(8, os.cpu_count() or 1))


def cache_key(root: Path, files: list[Path], labels: np.ndarray, split: tuple[np.ndarray, ...], size: int) -> str:
    """What the decoded pixels depend on, hashed: every file's path, size, modification time and label, each
    split's members, and the stored size."""
    digest = hashlib.sha256(f"{FORMAT} {root.resolve()} {size}".encode())
    for path, label in zip(files, labels.tolist(), strict=True):
        stat = path.stat()
        digest.update(f"\n{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}".encode())
    for members in split:
        digest.update(np.asarray(members, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()[:20]


def decoded_splits(name: str, root: Path, files: list[Path], labels: np.ndarray, split: tuple[np.ndarray, ...],
                   classes: list[str], size: int, cache_dir: Path, progress: bool = False, native: bool = False
                   ) -> tuple[dict[str, ImageDataset], list[tuple[str, str]], bool]:
    """The three splits of ``files`` (``split``: each split's indices into them) decoded at ``size`` px, from the
    cache when it holds them, else decoded now and cached; and the files skipped with their reasons, and whether
    the cache was reused. The images are memory-mapped tensors. ``native``: ``size`` is the files' own size, which
    every file must have (a one-line error names one that does not), rather than a size to resize them to."""
    key = cache_key(root, files, labels, split, size)
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    home = cache_dir / "decoded" / f"{slug}-{key}"
    found = _read(home, classes)
    if found is not None:
        log.info("decoded images of %s read from %s", name, home)
        return (*found, True)
    if home.exists():  # a cache some process never finished: it is not to be trusted
        log.warning("rebuilding the incomplete decoded cache %s", home)
        shutil.rmtree(home, ignore_errors=True)
    _write(home, root, files, labels, split, size, progress, f"decoding {name}", native)
    found = _read(home, classes)
    if found is None:
        raise ValueError(f"the decoded cache {home} could not be read back after writing it")
    return (*found, False)


def _read(home: Path, classes: list[str]) -> tuple[dict[str, ImageDataset], list[tuple[str, str]]] | None:
    try:
        meta = json.loads((home / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or not meta.get("complete"):
        return None
    size, parts = meta["size"], {}
    for name in SPLITS:
        count = meta["counts"][name]
        path = home / f"{name}.u8"
        if not path.is_file() or path.stat().st_size != count * 3 * size * size:
            return None
        # copy-on-write: a tensor that may be written (torch warns about read-only arrays) without ever
        # changing the file; pages stay the file's until something writes to them, which nothing here does
        array = np.memmap(path, dtype=np.uint8, mode="c", shape=(count, 3, size, size)) if count else \
            np.zeros((0, 3, size, size), np.uint8)
        labels = torch.tensor(meta["labels"][name], dtype=torch.int64)
        parts[name] = ImageDataset(torch.from_numpy(array), labels, list(classes))
    return parts, [tuple(entry) for entry in meta["skipped"]]


def _write(home: Path, root: Path, files: list[Path], labels: np.ndarray, split: tuple[np.ndarray, ...], size: int,
           progress: bool, what: str, native: bool) -> None:
    """Decode into a scratch folder beside ``home`` and rename it into place once ``meta.json`` is written."""
    from tqdm.auto import tqdm

    scratch = home.with_name(f".{home.name}.{uuid.uuid4().hex[:8]}.partial")
    scratch.mkdir(parents=True)
    try:
        counts, kept_labels, skipped, noted = {}, {}, [], []
        total = sum(len(members) for members in split)
        bar = tqdm(total=total, desc=what, unit="img", disable=None if progress else True)  # None: off in a log
        # fork where there is one, as DataLoader's workers do: the workers decode with Pillow and numpy only, and
        # need not import torch again (spawn costs seconds a worker, and cannot start from a script on stdin)
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context(method)) as pool:
            for name, members in zip(SPLITS, split, strict=True):
                paths = [str(files[i]) for i in members]
                good, bad = _decode_split(pool, paths, scratch / f"{name}.u8", size, bar, native, noted)
                counts[name] = len(good)
                kept_labels[name] = labels[np.asarray(members, dtype=np.int64)[good]].tolist()
                skipped += bad
        bar.close()
        if noted:
            # Pillow warns about odd files (corrupt EXIF, bad TIFF tags) without naming them, once per file: one
            # line for all of them; the files are kept if they decode
            warnings.warn(f"{len(noted)} decoder warning(s) while reading images in {root} (first: {noted[0]}); "
                          "files that still decoded were kept", stacklevel=4)
        meta = {"format": FORMAT, "size": size, "counts": counts, "labels": kept_labels,
                "skipped": [list(entry) for entry in skipped], "complete": True}
        (scratch / "meta.json").write_text(json.dumps(meta))
        os.replace(scratch, home)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _decode_split(pool: ProcessPoolExecutor, paths: list[str], target: Path, size: int, bar, native: bool,
                  noted: list[str]) -> tuple[list[int], list[tuple[str, str]]]:
    """Decode ``paths`` into the raw file ``target`` in the workers, each writing its chunk in place; then pack the
    readable images to the front. Returns the positions that decoded and the skipped files with their reasons;
    the decoder's warnings are added to ``noted``."""
    frame = 3 * size * size
    with open(target, "wb") as fh:
        fh.truncate(len(paths) * frame)
    futures = [pool.submit(_decode_chunk, paths[start:start + CHUNK], str(target), start, size, native)
               for start in range(0, len(paths), CHUNK)]
    good: list[int] = []
    bad: list[tuple[str, str]] = []
    for future in futures:
        ok, reasons, messages = future.result()
        noted += messages
        good += ok
        bad += reasons
        bar.update(len(ok) + len(reasons))
    if len(good) < len(paths):  # move the readable images down over the holes the others left
        array = np.memmap(target, dtype=np.uint8, mode="r+", shape=(len(paths), frame)) if paths else None
        for row, position in enumerate(good):
            if row != position:
                array[row] = array[position]
        if array is not None:
            array.flush()
            del array
        with open(target, "r+b") as fh:
            fh.truncate(len(good) * frame)
    return good, bad


def _decode_chunk(paths: list[str], target: str, start: int, size: int, native: bool = False
                  ) -> tuple[list[int], list[tuple[str, str]], list[str]]:
    """A worker's task: decode ``paths`` and write each image at its row (``start`` + its position) of ``target``;
    returns the rows written, the files skipped with their reasons, and the decoder's warnings."""
    frame = 3 * size * size
    ok, bad = [], []
    with open(target, "r+b") as fh, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, path in enumerate(paths):
            array, reason = decode_image(path, None if native else size)
            if array is None:
                bad.append((path, reason))
                continue
            if array.shape[:2] != (size, size):
                raise ValueError(f"images in {Path(path).parent.parent} differ in size ({size}×{size} in others, "
                                 f"{array.shape[1]}×{array.shape[0]} in {path}); pass image_size to resize them "
                                 "to a square")
            fh.seek((start + i) * frame)
            fh.write(np.ascontiguousarray(array.transpose(2, 0, 1)).tobytes())
            ok.append(start + i)
    return ok, bad, [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
