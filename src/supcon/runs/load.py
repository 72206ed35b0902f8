"""A finished run read back: its encoder, projection head and linear head, as one classifier, with its data, and
its validation embeddings for the HTML report's maps.

>>> from supcon.runs import load_classifier, load_run
>>> loaded = load_classifier("runs/compare-digits/ce")      # a Classifier on [0, 1] pixels, its config, inputs
>>> run = load_run("runs/compare-digits")                     # its supcon/ run, ready to classify files
>>> indices, probabilities = run.predict(["cat.jpg"])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from supcon.augment import Inputs
from supcon.config import TSNE_POINTS, Config
from supcon.data import DataSplits, load_data
from supcon.device import place, resolve_device
from supcon.evaluate.inference import outputs, predicted_class
from supcon.evaluate.predict import RunClassifier
from supcon.evaluate.tsne import tsne_subset
from supcon.io import load_weights
from supcon.methods import encoder_method
from supcon.models import Classifier, Encoder, ProjectionHead, SupConModel, build_encoder
from supcon.runs.rundir import RunDir


def output_size(head: str, num_classes: int) -> int:
    """The classifier's outputs: one logit for ``head="binary"`` (two classes only), else one per class."""
    if head == "binary":
        if num_classes != 2:
            raise ValueError(f"--head binary needs a two-class data set; this one has {num_classes} classes")
        return 1
    return num_classes


def load_encoder(run_dir: str | Path, device: str | torch.device = "cpu", weights: str | Path | None = None
                 ) -> tuple[Encoder, Config, Inputs]:
    """A finished run's encoder (in eval mode, placed on ``device`` as training placed it), config and inputs;
    ``weights`` reads another file of the run's encoder (stage 1's, while a run fine-tunes)."""
    run = RunDir(run_dir)
    results = run.record()
    cfg = run.config()
    if len(results["runs"]) > 1:
        raise ValueError(f"{run.path} holds a comparison, not one encoder; give one of its runs: "
                         f"{run.path / 'supcon'} or {run.path / 'ce'}")
    inputs = Inputs(**results["input"])
    trained_by = encoder_method(results["runs"][0])  # a transfer's encoder is its source's
    encoder = build_encoder(cfg.encoder, inputs.channels, inputs.image_size, cfg.stem, normalize=trained_by != "ce")
    load_weights(weights if weights is not None else run.weights("encoder"), encoder)
    device = torch.device(device) if not isinstance(device, torch.device) else device
    return place(encoder, device).eval(), cfg, inputs


def load_projection(run_dir: str | Path, encoder: Encoder, cfg: Config) -> SupConModel:
    """The run's encoder followed by its projection head (a pretrain run's ``projection.safetensors``)."""
    path = RunDir(run_dir).weights("projection")
    if not path.is_file():
        raise ValueError(f"{run_dir} has no projection head (projection.safetensors); only pretrain runs have one")
    head = ProjectionHead(encoder.out_dim, cfg.proj_hidden, cfg.proj_dim, cfg.projection)
    load_weights(path, head)
    return SupConModel(encoder, head.to(next(encoder.parameters()).device)).eval()


def load_linear(run_dir: str | Path, encoder: Encoder, cfg: Config, num_classes: int) -> nn.Linear | None:
    """The run's linear classifier on ``encoder``'s features (``linear.safetensors``); None before stage 2."""
    path = RunDir(run_dir).weights("linear")
    if not path.is_file():
        return None
    fc = nn.Linear(encoder.out_dim, output_size(cfg.head, num_classes))
    load_weights(path, fc)
    return fc.to(next(encoder.parameters()).device).eval()


@dataclass
class LoadedRun:
    """A finished run as a classifier: ``model`` takes float pixels in [0, 1] (it standardises them itself where
    the run did), with the run's directory, options, input scaling, summary and class names."""

    run: RunDir
    model: Classifier
    cfg: Config
    inputs: Inputs
    summary: dict[str, Any]
    classes: list[str]


def load_classifier(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """A finished run's classifier (see :class:`LoadedRun`): a ce run, a pretrain run with its linear probe, or a
    transfer run. A one-line ValueError for a comparison (give one of its runs) or a run without a linear head."""
    run = RunDir(run_dir).require()
    results = run.results()
    if len(results.get("runs", [])) != 1:
        raise ValueError(f"{run.path} holds a comparison; give one of its runs: {run.path / 'supcon'} or "
                         f"{run.path / 'ce'}")
    classes = results.get("class_names")
    if not classes or not results.get("input"):
        raise ValueError(f"{run.path / 'results.json'} lacks class_names or input (written by an older supcon?)")
    if not run.weights("linear").is_file():
        raise ValueError(f"{run.path} has no linear head (linear.safetensors): a pretrain run needs its linear probe "
                         f"first (supcon linear --run {run.path})")
    device = resolve_device(device) if isinstance(device, str) else device
    encoder, cfg, inputs = load_encoder(run.path, device)
    fc = load_linear(run.path, encoder, cfg, len(classes))
    model = Classifier(encoder, fc, mean=inputs.mean, std=inputs.std).to(device).eval()
    return LoadedRun(run, model, cfg, inputs, results["runs"][0], list(classes))


def load_run(run_dir: str | Path, device: str | torch.device = "auto", method: str | None = None) -> RunClassifier:
    """A finished run ready to classify images (:class:`~supcon.evaluate.predict.RunClassifier`).

    ``run_dir``: a ``ce`` run, a ``pretrain`` run with a linear probe, a transfer run, or a ``compare``
    directory (its ``method``'s run, by default SupCon's: :meth:`RunDir.resolve`). ``device``: ``auto`` (CUDA,
    MPS, then the CPU), or a torch device name.
    """
    run = RunDir(run_dir).resolve(method)
    if not run.file("config.yaml").is_file():
        raise ValueError(f"{run.path} is not a run directory (no config.yaml)")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    loaded = load_classifier(run.path, device)
    inputs = loaded.inputs
    return RunClassifier(run.path, loaded.model, loaded.classes, inputs.image_size, inputs.channels,
                         loaded.summary.get("method"), device, inputs.stored_size,
                         inputs.pixels() if inputs.stored_size else None)


def check_inputs(data: DataSplits, inputs: Inputs, run_dir: str | Path) -> None:
    """A one-line error unless ``data`` has the channels and size that the encoder in ``run_dir`` takes."""
    if data.channels != inputs.channels:
        raise ValueError(f"the encoder in {run_dir} takes {inputs.channels}-channel images; {data.name} has "
                         f"{data.channels} channel{'s' if data.channels > 1 else ''}")
    if data.image_size != inputs.image_size:
        raise ValueError(f"the encoder in {run_dir} takes {inputs.image_size}x{inputs.image_size} images; "
                         f"{data.name} gives {data.image_size}x{data.image_size}")


def data_for_run(run_dir: str | Path, cfg: Config, inputs: Inputs, dataset: str | None = None,
                 cache: dict[tuple, DataSplits] | None = None) -> DataSplits:
    """The run's own split (same seed, subsampling and label noise) or, given another ``dataset``, all of that
    one; images resized to the encoder's input size. Given a ``cache``, runs that load the same data (a
    comparison's two methods) load it once."""
    # stored as the run's own images were (larger than its input where it cropped from a decoded cache; at its
    # input size for a run trained on images resized to it), so that its input scaling applies as it did
    stored = inputs.stored_size or inputs.image_size
    if dataset is None or dataset == cfg.dataset:
        load = cfg.replace(image_size=inputs.image_size, store_size=stored)
    else:
        load = Config(dataset=dataset, image_size=inputs.image_size, store_size=stored, val_fraction=cfg.val_fraction,
                      test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)
    key = (load.dataset, load.image_size, load.store_size, load.val_fraction, load.test_fraction, load.split_seed,
           load.max_train, load.max_val, load.max_test, load.data_dir, load.label_noise, load.label_noise_mode)
    if cache is not None and key in cache:
        data = cache[key]
    else:
        data = load_data(load.replace(quiet=True))
        if cache is not None:
            cache[key] = data
    check_inputs(data, inputs, run_dir)
    return data


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
