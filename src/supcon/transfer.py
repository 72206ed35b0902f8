"""A finished run's encoder, reused: a linear probe on another data set, embeddings exported, t-SNE pictures.

These read a run directory and never change it (except :func:`tsne_run`, which adds its pictures there).

>>> from supcon.config import Config
>>> from supcon import transfer
>>> transfer.linear_transfer("runs/imagenet5", Config(dataset="npz:flowers5_64.npz"), "runs/to-flowers")
>>> transfer.embed_run("runs/imagenet5", "emb.npz")          # train_x, train_y, val_x, val_y, class_names
>>> transfer.tsne_run("runs/imagenet5", projection=True)    # tsne.png, tsne_projection.png
>>> transfer.knn_run("runs/imagenet5")["knn_acc"]           # weighted kNN accuracy of the encoder's features
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from supcon import distributed, train
from supcon.config import TSNE_POINTS, Config
from supcon.data import DataSplits
from supcon.evaluate.knn import WEIGHTS, knn_accuracy
from supcon.evaluate.tsne import tsne_subset
from supcon.io import load_weights, read_json, require_run_dir
from supcon.models import Encoder, ProjectionHead, SupConModel
from supcon.tracking import open_tracker

SPLITS = ("train", "val", "both")
ENCODER_TITLES = {"supcon": "SupCon encoder", "simclr": "SimCLR encoder", "ce": "cross-entropy encoder"}


def _first_run(run_dir: Path) -> dict[str, Any]:
    return read_json(run_dir / "results.json")["runs"][0]


def check_inputs(data: DataSplits, inputs: train.Inputs, run_dir: str | Path) -> None:
    """A one-line error unless ``data`` has the channels and size that the encoder in ``run_dir`` takes."""
    if data.channels != inputs.channels:
        raise ValueError(f"the encoder in {run_dir} takes {inputs.channels}-channel images; {data.name} has "
                         f"{data.channels} channel{'s' if data.channels > 1 else ''}")
    if data.image_size != inputs.image_size:
        raise ValueError(f"the encoder in {run_dir} takes {inputs.image_size}x{inputs.image_size} images; "
                         f"{data.name} gives {data.image_size}x{data.image_size}")


def data_for_run(run_dir: str | Path, cfg: Config, inputs: train.Inputs, dataset: str | None = None,
                 cache: dict[tuple, DataSplits] | None = None) -> DataSplits:
    """The run's own split (same seed and subsampling) or, given another ``dataset``, all of that one.

    Images are resized to the encoder's input size in either case. Given a ``cache``, runs that load the same
    data (a comparison's two methods) load it once.
    """
    if dataset is None or dataset == cfg.dataset:
        load = cfg.replace(image_size=inputs.image_size)
    else:
        load = Config(dataset=dataset, image_size=inputs.image_size, val_fraction=cfg.val_fraction, seed=cfg.seed)
    key = (load.dataset, load.image_size, load.val_fraction, load.seed, load.max_train, load.max_val, load.data_dir,
           load.label_noise, load.label_noise_mode)
    if cache is not None and key in cache:
        data = cache[key]
    else:
        data = train.load_data(load.replace(quiet=True))
        if cache is not None:
            cache[key] = data
    check_inputs(data, inputs, run_dir)
    return data


def load_projection(run_dir: str | Path, encoder: Encoder, cfg: Config) -> SupConModel:
    """The run's encoder followed by its projection head (a pretrain run's ``projection.safetensors``)."""
    path = Path(run_dir) / "projection.safetensors"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no projection head (projection.safetensors); only pretrain runs have one")
    head = ProjectionHead(encoder.out_dim, cfg.proj_hidden, cfg.proj_dim, cfg.projection)
    load_weights(path, head)
    return SupConModel(encoder, head.to(next(encoder.parameters()).device)).eval()


def linear_transfer(source: str | Path, cfg: Config, out: str | Path, data: DataSplits | None = None
                    ) -> train.StageResult:
    """Train a linear probe on the frozen encoder of ``source`` (a pretrain or ce run) on ``cfg.dataset``.

    The images are resized to the encoder's input size and fed as its training did (same scaling and
    normalisation statistics). ``out`` becomes a complete run directory, with a copy of the encoder so that
    ``tsne``, ``embed`` and ``report`` read it like any other run; ``source`` is left as it was.
    """
    source, out = require_run_dir(source), Path(out)
    if out.resolve() == source.resolve():
        raise ValueError(f"the transfer run needs its own directory; to add a probe to {source} use --run")
    encoder, source_cfg, inputs = train.load_encoder(source)
    if cfg.image_size not in (None, inputs.image_size):
        raise ValueError(f"the encoder in {source} takes {inputs.image_size}x{inputs.image_size} images; leave "
                         f"--image-size out (images are resized to it) or set it to {inputs.image_size}")
    # The encoder's architecture is the source's, whatever the options say; the config records what ran.
    cfg = cfg.replace(image_size=inputs.image_size, encoder=source_cfg.encoder, stem=source_cfg.stem,
                      normalize=source_cfg.normalize, encoder_from=str(source), run=None, out=str(out))
    if data is None:
        data = train.load_data(cfg)
    check_inputs(data, inputs, source)
    previous = _first_run(source)
    if distributed.is_main():  # in a distributed run the other processes write nothing
        out.mkdir(parents=True, exist_ok=True)
        train._refuse_finished(cfg, out, "linear")
        if cfg.resume is None:
            (out / "metrics.jsonl").unlink(missing_ok=True)
            (out / "results.json").unlink(missing_ok=True)  # as train._setup: no stale results beside a new config
        cfg.save(out / "config.yaml")  # first, so that --resume finds the run's options
    with open_tracker(cfg, out) as track:
        stage2 = train.linear_probe(cfg, data, encoder, out, inputs, track)
        summary = {"method": previous["method"], "loss": previous.get("loss"), "encoder_from": str(source),
                   "encoder_dataset": read_json(source / "results.json").get("dataset"), "supcon_loss": None,
                   **stage2.summary, "seconds": stage2.summary["linear_seconds"]}
        # One writer of a run's files (config.yaml, weights, results.json) for every kind of run.
        train._save_run(out, cfg, data, summary, inputs, {"encoder": encoder})
        xy = None
        if distributed.is_main():  # the encoder's embeddings of the new data, for TensorBoard's projector
            train.log_projector(track, encoder, data, inputs, "linear", len(stage2.fit.history), cfg.seed,
                                cfg.eval_batch_size)
        if cfg.tsne and distributed.is_main():
            title = f"{ENCODER_TITLES[previous['method']]} from {source.name} (val acc {summary['val_acc']:.3f})"
            xy = train.tsne_picture(encoder, data, inputs, out / "tsne.png", title, cfg.seed, cfg.eval_batch_size)
            track.log_image("tsne", out / "tsne.png")
        track.log_summary(summary)
    return train.StageResult(summary, stage2.fit, encoder, stage2.model, inputs, xy)


def _embedding_models(run_dir: Path, projection: bool, device: torch.device
                      ) -> tuple[dict[str, nn.Module], Config, train.Inputs]:
    encoder, cfg, inputs = train.load_encoder(run_dir, device)
    models: dict[str, nn.Module] = {"x": encoder}
    if projection:
        models["proj"] = load_projection(run_dir, encoder, cfg)
    return models, cfg, inputs


def load_linear(run_dir: str | Path, encoder: Encoder, cfg: Config, num_classes: int) -> nn.Linear | None:
    """The run's linear classifier on ``encoder``'s features (``linear.safetensors``); None before stage 2."""
    path = Path(run_dir) / "linear.safetensors"
    if not path.is_file():
        return None
    fc = nn.Linear(encoder.out_dim, train.output_size(cfg.head, num_classes))
    load_weights(path, fc)
    return fc.to(next(encoder.parameters()).device).eval()


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
    run_dir = require_run_dir(run_dir)
    device = train.resolve_device("auto")
    encoder, cfg, inputs = train.load_encoder(run_dir, device)
    data = data_for_run(run_dir, cfg, inputs, cache=cache)
    idx = tsne_subset(data.val.labels, max_points, cfg.seed)
    images = data.val.images[torch.from_numpy(idx)]
    features = train.predict(encoder, images, inputs.plain(), device, batch_size)
    fc = load_linear(run_dir, encoder, cfg, data.num_classes)
    predicted = None
    if fc is not None:
        with torch.no_grad():
            predicted = train.predicted_class(fc(features.to(device)).float()).cpu().numpy()
    return ValEmbeddings(idx, images, data.val.labels.numpy()[idx], features.numpy(), predicted,
                         list(data.val.class_names), cfg.seed)


def embed_run(run_dir: str | Path, out: str | Path, dataset: str | None = None, split: str = "both",
              projection: bool = False, batch_size: int = 512) -> Path:
    """Export the encoder embeddings of a run's data (or ``dataset``) as ``.npz``.

    Keys: ``train_x``/``val_x`` (embeddings, float32 ``[N, D]``), ``train_y``/``val_y`` (labels) for the
    ``split`` asked for, ``class_names``, and with ``projection`` also ``train_proj``/``val_proj`` (the
    projection head's output, pretrain runs only).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    run_dir = require_run_dir(run_dir)
    device = train.resolve_device("auto")
    models, cfg, inputs = _embedding_models(run_dir, projection, device)
    data = data_for_run(run_dir, cfg, inputs, dataset)
    arrays: dict[str, np.ndarray] = {"class_names": np.array(data.train.class_names, dtype=str)}
    for name in (("train", "val") if split == "both" else (split,)):
        part = getattr(data, name)
        for key, model in models.items():
            arrays[f"{name}_{key}"] = train.predict(model, part.images, inputs.plain(), device, batch_size).numpy()
        arrays[f"{name}_y"] = part.labels.numpy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:  # a file object: np.savez would append ".npz" to a name without it
        np.savez(fh, **arrays)
    return out


def tsne_run(run_dir: str | Path, projection: bool = False) -> list[Path]:
    """Draw ``RUN_DIR/tsne.png`` (validation embeddings by class) and, with ``projection``, ``tsne_projection.png``."""
    run_dir = require_run_dir(run_dir)
    device = train.resolve_device("auto")
    models, cfg, inputs = _embedding_models(run_dir, projection, device)
    data = data_for_run(run_dir, cfg, inputs)
    run = _first_run(run_dir)
    accuracy = f" (val acc {run['val_acc']:.3f})" if run.get("val_acc") is not None else ""
    titles = {"x": ENCODER_TITLES[run["method"]] + accuracy, "proj": "projection head output"}
    paths = []
    for key, model in models.items():
        path = run_dir / ("tsne.png" if key == "x" else "tsne_projection.png")
        train.tsne_picture(model, data, inputs, path, titles[key], cfg.seed, cfg.eval_batch_size)
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
    run_dir = require_run_dir(run_dir)
    device = train.resolve_device("auto")
    encoder, cfg, inputs = train.load_encoder(run_dir, device)
    data = data_for_run(run_dir, cfg, inputs, dataset)
    k = cfg.knn_k if k is None else k
    temperature = cfg.knn_temperature if temperature is None else temperature
    features = {name: train.predict(encoder, getattr(data, name).images, inputs.plain(), device, batch_size)
                for name in ("train", "val")}
    acc = knn_accuracy(features["train"].to(device), data.train.labels, features["val"].to(device),
                       data.val.labels, k=k, temperature=temperature, weights=weights)
    return {"knn_acc": acc, "dataset": data.name, "train_images": len(data.train), "val_images": len(data.val),
            "k": k, "temperature": temperature, "weights": weights}
