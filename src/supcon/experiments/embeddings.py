"""A finished run's embeddings, read without changing the run: exported, drawn with t-SNE and classified by kNN
(the HTML report's maps use :func:`supcon.runs.load.val_embeddings`).

>>> from supcon.experiments.embeddings import embed_run, knn_run, tsne_run
>>> embed_run("runs/imagenet5", "emb.npz")          # train_x, train_y, val_x, val_y, class_names
>>> tsne_run("runs/imagenet5", projection=True)     # tsne.png, tsne_projection.png (the only files written)
>>> knn_run("runs/imagenet5")["knn_acc"]            # weighted kNN accuracy of the encoder's features
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from supcon.augment import Inputs
from supcon.config import Config, shared
from supcon.device import resolve_device
from supcon.evaluate.inference import outputs
from supcon.evaluate.knn import WEIGHTS, knn_accuracy
from supcon.methods import encoder_title
from supcon.options import TOOL, check_options, option
from supcon.runs import RunDir
from supcon.runs.load import data_for_run, load_encoder, load_projection
from supcon.stages.pictures import tsne_picture

SPLITS = ("train", "val", "test", "all")


def _method_option():
    """The ``--method`` of the commands that read one run's model (a compare directory holds several)."""
    return option(None, "in a compare directory, whose run to read (default: the SupCon one)", TOOL, metavar="NAME")


@dataclass
class EmbedOptions:
    """``supcon embed``'s options (beside the run and ``--out``); the flags are made from these fields."""

    dataset: str | None = option(None, "data set to embed, resized to the encoder's input size (default: the "
                                 "run's own, with its split)", TOOL, metavar="SPEC")
    method: str | None = _method_option()
    split: str = option("all", "which split to export (all: the three)", TOOL, choices=SPLITS)
    projection: bool = option(False, "also export the projection head's output (pretrain runs) as train_proj / "
                              "val_proj", TOOL)
    batch_size: int = shared("eval_batch_size")

    def __post_init__(self):
        check_options(self, positive=("batch_size",))


@dataclass
class TsneOptions:
    """``supcon tsne``'s options (beside the run); the flags are made from these fields."""

    method: str | None = _method_option()
    projection: bool = option(False, "also draw the projection head's output (pretrain runs) to "
                              "RUN_DIR/tsne_projection.png", TOOL)


@dataclass
class KnnOptions:
    """``supcon knn``'s options (beside the run); the flags are made from these fields."""

    dataset: str | None = option(None, "data set whose training images are the neighbours and whose validation "
                                 "images are classified, resized to the encoder's input size (default: the run's "
                                 "own, with its split)", TOOL, metavar="SPEC")
    method: str | None = _method_option()
    k: int | None = option(None, "neighbours (default: the run's --knn-k)", TOOL, metavar="K")
    temperature: float | None = option(None, "votes weigh exp(similarity / T) (default: the run's "
                                       "--knn-temperature)", TOOL, metavar="T")
    weights: str = option("exp", "exp(similarity / T) per neighbour, or 1 (uniform)", TOOL, choices=WEIGHTS)
    batch_size: int = shared("eval_batch_size")

    def __post_init__(self):
        check_options(self, positive=("k", "temperature", "batch_size"))


def _embedding_models(run: RunDir, projection: bool, device: torch.device
                      ) -> tuple[dict[str, nn.Module], Config, Inputs]:
    encoder, cfg, inputs = load_encoder(run.path, device)
    models: dict[str, nn.Module] = {"x": encoder}
    if projection:
        models["proj"] = load_projection(run.path, encoder, cfg)
    return models, cfg, inputs


def embed_run(run_dir: str | Path, out: str | Path, options: EmbedOptions | None = None, **changes) -> Path:
    """Export the encoder embeddings of a run's data (or ``dataset``) as ``.npz``; ``changes`` are
    :class:`EmbedOptions` fields (``embed_run(run, "e.npz", split="val")``).

    Keys: ``SPLIT_x`` (embeddings, float32 ``[N, D]``) and ``SPLIT_y`` (labels) for each split asked for
    (``train``, ``val``, ``test``, or ``all`` three), ``class_names``, and with ``projection`` also ``SPLIT_proj``
    (the projection head's output, pretrain runs only).
    """
    opts = dataclasses.replace(options or EmbedOptions(), **changes)
    dataset, split, projection, batch_size = opts.dataset, opts.split, opts.projection, opts.batch_size
    run = RunDir(run_dir).resolve(opts.method)
    device = resolve_device("auto")
    models, cfg, inputs = _embedding_models(run, projection, device)
    data = data_for_run(run.path, cfg, inputs, dataset)
    arrays: dict[str, np.ndarray] = {"class_names": np.array(data.train.class_names, dtype=str)}
    for name in (("train", "val", "test") if split == "all" else (split,)):
        part = getattr(data, name)
        for key, model in models.items():
            arrays[f"{name}_{key}"] = outputs(model, part.images, transform=inputs.plain(), device=device,
                                              batch_size=batch_size).numpy()
        arrays[f"{name}_y"] = part.labels.numpy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:  # a file object: np.savez would append ".npz" to a name without it
        np.savez(fh, **arrays)
    return out


def tsne_run(run_dir: str | Path, options: TsneOptions | None = None, **changes) -> list[Path]:
    """Draw the run's ``tsne.png`` (validation embeddings by class) and, with ``projection``,
    ``tsne_projection.png``; ``changes`` are :class:`TsneOptions` fields. In a compare directory they go into the
    chosen ``method``'s run folder."""
    opts = dataclasses.replace(options or TsneOptions(), **changes)
    projection = opts.projection
    run = RunDir(run_dir).resolve(opts.method)
    device = resolve_device("auto")
    models, cfg, inputs = _embedding_models(run, projection, device)
    data = data_for_run(run.path, cfg, inputs)
    summary = run.summary()
    accuracy = f" (val acc {summary['val_acc']:.3f})" if summary.get("val_acc") is not None else ""
    titles = {"x": encoder_title(summary) + accuracy, "proj": "projection head output"}
    paths = []
    for key, model in models.items():
        path = run.file("tsne.png" if key == "x" else "tsne_projection.png")
        tsne_picture(model, data, inputs, path, titles[key], cfg.seed, cfg.eval_batch_size)
        paths.append(path)
    return paths


def knn_run(run_dir: str | Path, options: KnnOptions | None = None, **changes) -> dict[str, Any]:
    """kNN accuracy of a finished run's encoder: the validation images' features against the training images';
    ``changes`` are :class:`KnnOptions` fields (``knn_run(run, k=10)``).

    The run's own split by default, or ``dataset`` (resized to the encoder's input). ``k`` and ``temperature``
    default to the run's ``knn_k`` and ``knn_temperature``; ``weights="uniform"`` counts every neighbour once.
    Returns ``knn_acc`` with what it was measured on; the run directory is not changed.
    """
    opts = dataclasses.replace(options or KnnOptions(), **changes)
    dataset, k, temperature, weights, batch_size = opts.dataset, opts.k, opts.temperature, opts.weights, \
        opts.batch_size
    run = RunDir(run_dir).resolve(opts.method)
    device = resolve_device("auto")
    encoder, cfg, inputs = load_encoder(run.path, device)
    data = data_for_run(run.path, cfg, inputs, dataset)
    k = cfg.knn_k if k is None else k
    temperature = cfg.knn_temperature if temperature is None else temperature
    features = {name: outputs(encoder, getattr(data, name).images, transform=inputs.plain(), device=device,
                              batch_size=batch_size) for name in ("train", "val")}
    acc = knn_accuracy(features["train"].to(device), data.train.labels, features["val"].to(device),
                       data.val.labels, k=k, temperature=temperature, weights=weights)
    return {"knn_acc": acc, "dataset": data.name, "train_images": len(data.train), "val_images": len(data.val),
            "k": k, "temperature": temperature, "weights": weights}
