"""Classify new images with a finished run's classifier, fed the images as its training fed them.

:func:`supcon.runs.load_run` gives a :class:`RunClassifier` for a ``ce`` run, a ``pretrain`` run with a linear probe
(``supcon linear --run``), a transfer run, or a ``compare`` directory (its ``supcon/`` run). Files are decoded by
the training loader's own :func:`~supcon.data.decode.decode_image` (any size; gray, palette, RGBA, CMYK, 16-bit and
float images converted to RGB as in training; :func:`classify_files`, what ``supcon predict`` runs, skips images of
more than 8 bits unless told to convert them) and resized with Pillow's bicubic filter to the run's input size, the
route that the ``folder:`` and named data sets take, and the one that made the ``npz`` copies in ``../shared/data``.

>>> import supcon
>>> run = supcon.load_run("runs/compare-imagenet5")          # uses its supcon/ run
>>> indices, probabilities = run.predict(["cat.jpg", "dog.png"])
>>> [run.classes[i] for i in indices]
['cat', 'dog']
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from supcon.config import shared
from supcon.data import resize_uint8
from supcon.data.decode import DECODE_WORKERS, decode_image, image_array
from supcon.evaluate.calibration import probabilities
from supcon.evaluate.inference import outputs
from supcon.options import TOOL, check_options, option

FORMATS = ("text", "json", "csv")


class Predictions(NamedTuple):
    """What :meth:`RunClassifier.predict` returns: ``indices`` (int64 ``[N]``, into ``classes``) and
    ``probabilities`` (float32 ``[N, C]``, rows summing to 1)."""

    indices: torch.Tensor
    probabilities: torch.Tensor


@dataclass
class FileResult:
    """One file of :func:`classify_files`: its probabilities, or the reason it was skipped; ``label`` is the
    index of the class its folder is named after (None where no folder names a class)."""

    path: Path
    label: int | None
    probabilities: torch.Tensor | None = None
    reason: str = ""

    @property
    def skipped(self) -> bool:
        return self.probabilities is None


class RunClassifier:
    """A finished run's classifier (``model``: float pixels in [0, 1] to logits) with its classes and input size,
    ready to classify images (see :func:`supcon.runs.load_run`)."""

    def __init__(self, run_dir: Path, model: nn.Module, classes: list[str], image_size: int, channels: int,
                 method: str, device: torch.device, stored_size: int | None = None, view=None):
        self.run_dir, self.model, self.classes = run_dir, model, list(classes)
        self.channels, self.method, self.device = channels, method, device
        # Files are read at the size the run's images were stored at (its input size, or larger for a run that
        # cropped from a decoded cache, whose ``view`` then takes the centre crop to the input size).
        self.image_size = stored_size or image_size
        self.input_size, self.view = image_size, view

    def __repr__(self) -> str:
        return (f"RunClassifier({str(self.run_dir)!r}, method={self.method!r}, classes={self.classes}, "
                f"input={self.channels}x{self.input_size}x{self.input_size})")

    def probabilities(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities (float32 ``[N, C]``, on the CPU) of uint8 images already at the run's size and
        channels (``[N, C, S, S]``, what :meth:`prepare` returns)."""
        expected = (self.channels, self.image_size, self.image_size)
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected uint8 images shaped [N, {', '.join(map(str, expected))}]; got "
                             f"{images.dtype} {tuple(images.shape)} (RunClassifier.prepare converts them)")
        if not len(images):
            return torch.empty(0, len(self.classes))
        return probabilities(outputs(self.model, images, transform=self.view, device=self.device,
                                     batch_size=batch_size))

    def predict(self, images: Any, batch_size: int = 256) -> Predictions:
        """Classify ``images``: image file paths, PIL images, or a uint8 (0-255) or float (0-1) tensor batch
        ``[N, C, H, W]`` (or one image ``[C, H, W]``); see :meth:`prepare` for how each is converted. A file that
        cannot be read is a ``ValueError`` naming it (:func:`classify_files` skips such files instead)."""
        probs = self.probabilities(self.prepare(images), batch_size)
        return Predictions(probs.argmax(1), probs)

    def prepare(self, images: Any) -> torch.Tensor:
        """uint8 ``[N, C, S, S]`` at the run's input size and channels.

        Files and PIL images go the way the training loader reads files (orientation, conversion to RGB, Pillow's
        bicubic resize); tensors the way :func:`~supcon.data.load_dataset` resizes arrays (torchvision's
        antialiased bicubic) after float tensors are rounded to 8 bits, the precision training images had.
        Colour images become gray for a gray run (ITU-R 601 luma) and gray ones are repeated for a colour run.
        """
        if isinstance(images, torch.Tensor):
            return self._prepare_tensor(images)
        if isinstance(images, (str, os.PathLike)) or _is_pil(images):
            images = [images]
        if not isinstance(images, Sequence) or isinstance(images, (bytes, np.ndarray)):
            raise ValueError(f"images must be paths, PIL images or a uint8/float tensor [N, C, H, W]; got "
                             f"{type(images).__name__}")
        arrays = []
        for item in images:
            if _is_pil(item):
                arrays.append(image_array(item, self.image_size))
                continue
            if not isinstance(item, (str, os.PathLike)):
                raise ValueError(f"images must be paths, PIL images or a uint8/float tensor [N, C, H, W]; got a "
                                 f"list holding {type(item).__name__}")
            array, reason = decode_image(Path(item), self.image_size)
            if array is None:
                raise ValueError(f"cannot read {item}: {reason}")
            arrays.append(array)
        return self._from_arrays(arrays)

    def _from_arrays(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """uint8 [H, W, 3] arrays (already at the run's size) as a uint8 [N, C, S, S] batch."""
        if not arrays:
            return torch.empty(0, self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        if self.channels == 1:
            from PIL import Image

            # Pillow's luma, as the conversion of a gray data set's files would have been
            arrays = [np.asarray(Image.fromarray(a).convert("L"))[..., None] for a in arrays]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def _prepare_tensor(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"a tensor of images must be [N, C, H, W] or [C, H, W] with C 1 or 3; got "
                             f"{tuple(images.shape)}")
        images = images.detach().cpu()
        if images.is_floating_point():
            if len(images) and (images.min() < 0 or images.max() > 1 or not images.isfinite().all()):
                raise ValueError("a float tensor of images must hold values in [0, 1]; got "
                                 f"{images.min().item():g} to {images.max().item():g}")
            images = (images * 255).round().to(torch.uint8)
        elif images.dtype != torch.uint8:
            raise ValueError(f"a tensor of images must be uint8 (0-255) or float (0-1); got {images.dtype}")
        if images.shape[1] != self.channels:
            if self.channels == 1:
                from torchvision.transforms.v2.functional import rgb_to_grayscale

                images = rgb_to_grayscale(images)
            else:
                images = images.expand(-1, 3, -1, -1)
        if len(images) == 0:
            return images.contiguous()
        return resize_uint8(images.contiguous(), self.image_size)


def _is_pil(x: Any) -> bool:
    from PIL import Image

    return isinstance(x, Image.Image)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def find_images(paths: Iterable[str | Path], classes: Sequence[str] = ()) -> list[tuple[Path, int | None]]:
    """Every file under ``paths`` (files as given, folders walked recursively and sorted, hidden files left out),
    each with the index in ``classes`` of the nearest folder named after a class: the folder itself for a file
    given alone, any folder from the file's own up to the one given for a folder (None where none is)."""
    index = {name: i for i, name in enumerate(classes)}
    found: list[tuple[Path, int | None]] = []
    for given in map(Path, paths):
        if given.is_file():
            found.append((given, index.get(given.parent.resolve().name)))
            continue
        if not given.is_dir():
            raise ValueError(f"not found: {given}")
        before = len(found)
        top = given.resolve()
        for dirpath, dirnames, filenames in os.walk(given):
            dirnames[:] = sorted(n for n in dirnames if not _hidden(n))
            here = Path(dirpath)
            label = None
            for folder in [here.resolve(), *here.resolve().parents]:
                if folder.name in index:
                    label = index[folder.name]
                    break
                if folder == top:
                    break
            found += [(here / f, label) for f in sorted(filenames) if not _hidden(f)]
        if len(found) == before:
            raise ValueError(f"no files in {given}")
    return found


HIGH_BIT_DEPTH = ("skip", "convert")


def bits_per_sample(path: Path) -> int | None:
    """The bits per sample of an image file with more than 8 (a 16-bit PNG or TIFF, a 32-bit integer or float
    image), else None; None too for a file that cannot be opened, which the decoder then reports."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            head = f.read(25)
        # A 16-bit RGB(A) PNG opens in an 8-bit mode (Pillow reduces it), so its header is read instead.
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[24] > 8:
            return head[24]
        with Image.open(path) as im:
            if im.mode.startswith("I;16"):
                return 16
            if im.mode in ("I", "F"):
                return 32
    except Exception:  # any file Pillow cannot open; decode_image gives the reason
        return None
    return None


def decode_for_prediction(path: Path, size: int | None, high_bit_depth: str = "skip"
                          ) -> tuple[np.ndarray | None, str]:
    """:func:`~supcon.data.decode.decode_image`, except that an image of more than 8 bits per sample is skipped
    with its reason when ``high_bit_depth`` is ``"skip"``: the runs are trained on 8-bit photos, and a 16-bit or
    float image (a scan, a depth map, a microscope frame) is seldom one, so it is reported rather than silently
    answered. ``"convert"`` classifies it scaled to 8 bits, as the training loader reads it."""
    _check_high_bit_depth(high_bit_depth)
    if high_bit_depth == "skip":
        bits = bits_per_sample(path)
        if bits is not None:
            return None, (f"{bits}-bit image (predict takes 8-bit images; --high-bit-depth convert classifies it "
                          "scaled to 8 bits, as training reads it)")
    return decode_image(path, size)


def _check_high_bit_depth(value: str) -> None:
    if value not in HIGH_BIT_DEPTH:
        raise ValueError(f"high_bit_depth must be one of {', '.join(HIGH_BIT_DEPTH)}; got {value!r}")


@dataclass
class PredictOptions:
    """``supcon predict``'s options (beside the run and the paths); the flags are made from these fields."""

    top_k: int = option(1, "also give the next K-1 classes and their probabilities", TOOL, metavar="K")
    format: str = option("text", "text: one tab-separated line per image; csv: a header and one row per image; "
                         "json: one document with predictions, skipped files and the summary", TOOL,
                         choices=("text", "json", "csv"))
    method: str | None = option(None, "in a compare directory, whose run classifies (default: the SupCon one)",
                                TOOL, metavar="NAME")
    batch_size: int = shared("eval_batch_size", "images decoded and classified at a time")
    high_bit_depth: str = option("skip", "images of more than 8 bits per sample (16-bit PNG or TIFF, float): skip "
                                 "them with the reason, since the runs learned from 8-bit photos, or convert them "
                                 "to 8 bits as the training loader does and classify them", TOOL,
                                 choices=HIGH_BIT_DEPTH)
    device: str = shared("device")
    quiet: bool = shared("quiet", "no progress bar")

    def __post_init__(self):
        check_options(self, positive=("top_k", "batch_size"))


def classify_files(run: RunClassifier, files: Sequence[tuple[Path, int | None]],
                   batch_size: int = PredictOptions.batch_size, progress: bool = False,
                   high_bit_depth: str = PredictOptions.high_bit_depth) -> Iterator[FileResult]:
    """Classify ``files`` (what :func:`find_images` returns) ``batch_size`` at a time, in order, decoding with a
    few threads; a file that cannot be read, and with ``high_bit_depth="skip"`` an image of more than 8 bits per
    sample (see :func:`decode_for_prediction`), comes back with ``reason`` set instead of probabilities."""
    from tqdm.auto import tqdm

    _check_high_bit_depth(high_bit_depth)
    bar = tqdm(total=len(files), desc="predicting", unit="img", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=DECODE_WORKERS) as pool:
        try:
            for start in range(0, len(files), batch_size):
                chunk = files[start:start + batch_size]
                decoded = list(pool.map(lambda f: decode_for_prediction(f[0], run.image_size, high_bit_depth),
                                            chunk))
                good = [array for array, _ in decoded if array is not None]
                probs = iter(run.probabilities(run._from_arrays(good), batch_size)) if good else iter(())
                for (path, label), (array, reason) in zip(chunk, decoded, strict=True):
                    yield FileResult(path, label, next(probs) if array is not None else None, reason)
                bar.update(len(chunk))
        finally:
            bar.close()


def summarize(results: Sequence[FileResult]) -> dict[str, Any]:
    """Counts and, over the files whose folder names a class, the accuracy (None where there are none)."""
    done = [r for r in results if not r.skipped]
    labelled = [r for r in done if r.label is not None]
    correct = sum(int(r.probabilities.argmax()) == r.label for r in labelled)
    return {"images": len(done), "skipped": len(results) - len(done),
            "skip_reasons": dict(Counter(_reason_kind(r.reason) for r in results if r.skipped)),
            "labelled": len(labelled), "correct": correct,
            "accuracy": correct / len(labelled) if labelled else None}


def _reason_kind(reason: str) -> str:
    """The kind of a skip reason, for counting: "not an image (.txt file)" -> "not an image", "pixel values up to
    70000 in a mode F image; ..." -> "pixel values"."""
    return re.split(r" \(|;| in a mode| up to", reason)[0]


def summary_line(summary: dict[str, Any], run_dir: str | Path | None = None) -> str:
    """"classified 250 images with runs/x (2 skipped: 1 not an image, 1 truncated file); accuracy 0.8120 (203 of
    the 250 in folders named after a class)"."""
    text = f"classified {summary['images']:,} image{'s' * (summary['images'] != 1)}"
    if run_dir is not None:
        text += f" with {run_dir}"
    if summary["skipped"]:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(summary["skip_reasons"].items()))
        text += f" ({summary['skipped']:,} skipped: {kinds})"
    if summary["accuracy"] is not None:
        text += (f"; accuracy {summary['accuracy']:.4f} ({summary['correct']:,} of the {summary['labelled']:,} "
                 "in folders named after a class)")
    return text


class PredictionWriter:
    """Writes :class:`FileResult` rows as ``text`` (one aligned line per image: path, class, confidence, then the
    runners-up with ``top_k`` > 1), ``csv`` (a header, then one row per image) or ``json`` (one document at the
    end: ``predictions``, ``skipped`` and ``summary``)."""

    def __init__(self, stream: IO[str], fmt: str, classes: Sequence[str], top_k: int = 1):
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be positive; got {top_k}")
        self.stream, self.fmt, self.classes, self.top_k = stream, fmt, list(classes), min(top_k, len(classes))
        self.rows: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.csv = None
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            header = ["path", "class", "confidence"]
            for k in range(2, self.top_k + 1):
                header += [f"class_{k}", f"confidence_{k}"]
            self.csv.writerow(header + ["folder_class"])

    def _top(self, probs: torch.Tensor) -> list[tuple[str, float]]:
        values, indices = probs.topk(self.top_k)
        return [(self.classes[i], float(p)) for p, i in zip(values.tolist(), indices.tolist(), strict=True)]

    def write(self, result: FileResult) -> str | None:
        """Record one result; returns the text line for ``text`` (for the caller to print beside a progress
        bar), else writes it itself (csv) or keeps it for the end (json)."""
        if result.skipped:
            self.skipped.append({"path": str(result.path), "reason": result.reason})
            return None
        top = self._top(result.probabilities)
        folder = None if result.label is None else self.classes[result.label]
        if self.fmt == "text":
            line = f"{result.path}\t{top[0][0]}\t{top[0][1]:.4f}"
            if len(top) > 1:
                line += "\t" + "  ".join(f"{name} {p:.4f}" for name, p in top[1:])
            return line
        if self.fmt == "csv":
            self.csv.writerow([str(result.path)] + [x for name, p in top for x in (name, f"{p:.6f}")]
                              + [folder or ""])
            return None
        self.rows.append({"path": str(result.path), "class": top[0][0], "index": self.classes.index(top[0][0]),
                          "confidence": top[0][1], "top_k": [{"class": n, "probability": p} for n, p in top],
                          "folder_class": folder})
        return None

    def close(self, summary: dict[str, Any]) -> None:
        if self.fmt == "json":
            json.dump({"predictions": self.rows, "skipped": self.skipped, "summary": summary}, self.stream,
                      indent=1)
            self.stream.write("\n")
        self.stream.flush()
