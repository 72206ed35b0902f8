"""A finished run's embeddings, read without changing the run: exported, drawn with t-SNE, classified by kNN,
and mapped for the HTML report.

>>> from supcon.experiments.embeddings import embed_run, knn_run, tsne_run
>>> embed_run("runs/imagenet5", "emb.npz")          # train_x, train_y, val_x, val_y, class_names
>>> tsne_run("runs/imagenet5", projection=True)     # tsne.png, tsne_projection.png (the only files written)
>>> knn_run("runs/imagenet5")["knn_acc"]            # weighted kNN accuracy of the encoder's features
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from supcon.augment import Inputs
from supcon.config import ENCODER_TITLES, TSNE_POINTS, Config
from supcon.data import DataSplits
from supcon.device import resolve_device
from supcon.evaluate.inference import outputs, predicted_class
from supcon.evaluate.knn import WEIGHTS, knn_accuracy
from supcon.evaluate.tsne import tsne_subset
from supcon.runs import RunDir
from supcon.runs.load import data_for_run, load_encoder, load_linear, load_projection
from supcon.stages.pictures import tsne_picture

SPLITS = ("train", "val", "test", "all")


def _embedding_models(run: RunDir, projection: bool, device: torch.device
                      ) -> tuple[dict[str, nn.Module], Config, Inputs]:
    encoder, cfg, inputs = load_encoder(run.path, device)
    models: dict[str, nn.Module] = {"x": encoder}
    if projection:
        models["proj"] = load_projection(run.path, encoder, cfg)
    return models, cfg, inputs


@dataclass
class ValEmbeddings:
    """A run's validation images (a class-balanced subset), their encoder embeddings and predicted classes."""

    indices: np.ndarray  # positions in the validation split
    images: torch.Tensor  # uint8 [N, C, H, W], as the encoder saw them (resized to its input)
    labels: np.ndarray
    features: np.ndarray  # float32 [N, D]
    predicted: np.ndarray | None  # by the run's linear classifier; None for a run without one (stage 1 only)
    class_names: list[str]
    seed: int


def val_embeddings(run_dir: str | Path, max_points: int = TSNE_POINTS, batch_size: int = 512,
                   cache: dict[tuple, DataSplits] | None = None) -> ValEmbeddings:
    """The encoder embeddings of at most ``max_points`` validation images of a run (chosen as ``tsne.png``'s are:
    seeded and class-balanced) with the classes its linear classifier predicts for them."""
    run = RunDir(run_dir).require()
    device = resolve_device("auto")
    encoder, cfg, inputs = load_encoder(run.path, device)
    data = data_for_run(run.path, cfg, inputs, cache=cache)
    idx = tsne_subset(data.val.labels, max_points, cfg.seed)
    images = data.val.images[torch.from_numpy(idx)]
    features = outputs(encoder, images, transform=inputs.plain(), device=device, batch_size=batch_size)
    fc = load_linear(run.path, encoder, cfg, data.num_classes)
    predicted = None
    if fc is not None:
        with torch.no_grad():
            predicted = predicted_class(fc(features.to(device)).float()).cpu().numpy()
    return ValEmbeddings(idx, images, data.val.labels.numpy()[idx], features.numpy(), predicted,
                         list(data.val.class_names), cfg.seed)


def embed_run(run_dir: str | Path, out: str | Path, dataset: str | None = None, split: str = "all",
              projection: bool = False, batch_size: int = 512) -> Path:
    """Export the encoder embeddings of a run's data (or ``dataset``) as ``.npz``.

    Keys: ``SPLIT_x`` (embeddings, float32 ``[N, D]``) and ``SPLIT_y`` (labels) for each split asked for
    (``train``, ``val``, ``test``, or ``all`` three), ``class_names``, and with ``projection`` also ``SPLIT_proj``
    (the projection head's output, pretrain runs only).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    run = RunDir(run_dir).require()
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


def tsne_run(run_dir: str | Path, projection: bool = False) -> list[Path]:
    """Draw ``RUN_DIR/tsne.png`` (validation embeddings by class) and, with ``projection``, ``tsne_projection.png``."""
    run = RunDir(run_dir).require()
    device = resolve_device("auto")
    models, cfg, inputs = _embedding_models(run, projection, device)
    data = data_for_run(run.path, cfg, inputs)
    summary = run.summary()
    accuracy = f" (val acc {summary['val_acc']:.3f})" if summary.get("val_acc") is not None else ""
    titles = {"x": ENCODER_TITLES[summary["method"]] + accuracy, "proj": "projection head output"}
    paths = []
    for key, model in models.items():
        path = run.file("tsne.png" if key == "x" else "tsne_projection.png")
        tsne_picture(model, data, inputs, path, titles[key], cfg.seed, cfg.eval_batch_size)
        paths.append(path)
    return paths


def knn_run(run_dir: str | Path, dataset: str | None = None, k: int | None = None, temperature: float | None = None,
            weights: str = "exp", batch_size: int = 512) -> dict[str, Any]:
    """kNN accuracy of a finished run's encoder: the validation images' features against the training images'.

    The run's own split by default, or ``dataset`` (resized to the encoder's input). ``k`` and ``temperature``
    default to the run's ``knn_k`` and ``knn_temperature``; ``weights="uniform"`` counts every neighbour once.
    Returns ``knn_acc`` with what it was measured on; the run directory is not changed.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    run = RunDir(run_dir).require()
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
