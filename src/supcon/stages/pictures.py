"""A run's pictures: the t-SNE of its validation images' embeddings, its training curves and, for trackers that
keep them, the embeddings themselves (TensorBoard's projector)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from supcon.augment import Inputs
from supcon.config import TSNE_POINTS, Config
from supcon.data import DataSplits, resize_uint8
from supcon.engine.tracking import Tracker
from supcon.evaluate.curves import plot_curves
from supcon.evaluate.inference import outputs
from supcon.evaluate.tsne import MIN_POINTS, draw_tsne, tsne_2d, tsne_subset
from supcon.runs import RunDir

# TensorBoard's projector: points (a seeded, class-balanced subsample of larger validation splits) and the
# thumbnail size; 71 x 64 px per side of the sprite stays within the 8192 px the projector reads.
PROJECTOR_POINTS = 5000
PROJECTOR_THUMBNAIL = 64


def _val_features(encoder: nn.Module, data: DataSplits, inputs: Inputs, seed: int, batch_size: int,
                  max_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation subset the pictures show (seeded, class-balanced) and its embeddings by ``encoder``."""
    idx = torch.from_numpy(tsne_subset(data.val.labels, max_points, seed))
    return idx, outputs(encoder, data.val.images[idx], transform=inputs.plain(), batch_size=batch_size)


def tsne_picture(encoder: nn.Module, data: DataSplits, inputs: Inputs, path: str | Path, title: str, seed: int = 0,
                 batch_size: int = 512, max_points: int = TSNE_POINTS) -> Any:
    """Draw the t-SNE of the validation images' embeddings by ``encoder`` (any module on images) to ``path``.

    Larger splits are subsampled to ``max_points`` (seeded, class-balanced); returns the 2-D points.
    """
    idx, features = _val_features(encoder, data, inputs, seed, batch_size, max_points)
    _, (xy,) = draw_tsne([(title, features)], data.val.labels[idx], data.val.class_names, path, seed)
    return xy


def tsne_points(encoder: nn.Module, data: DataSplits, inputs: Inputs, seed: int = 0, batch_size: int = 512,
                max_points: int = TSNE_POINTS) -> Any:
    """The 2-D points :func:`tsne_picture` draws, without drawing them."""
    return tsne_2d(_val_features(encoder, data, inputs, seed, batch_size, max_points)[1], seed)


def log_projector(track: Tracker, encoder: nn.Module, data: DataSplits, inputs: Inputs, tag: str, step: int,
                  seed: int = 0, batch_size: int = 512, max_points: int = PROJECTOR_POINTS) -> None:
    """Hand the validation images' ``encoder`` embeddings, their class names and thumbnails (at most
    ``PROJECTOR_THUMBNAIL`` px) to ``track.log_embedding`` (TensorBoard's projector), for trackers that keep them.

    Larger splits are subsampled to ``max_points`` (seeded, class-balanced), which keeps the sprite of
    thumbnails within the projector's 8192 x 8192 px."""
    if not track.embeddings:
        return
    idx, features = _val_features(encoder, data, inputs, seed, batch_size, max_points)
    images = data.val.images[idx]
    if images.shape[-1] > PROJECTOR_THUMBNAIL:
        images = resize_uint8(images, PROJECTOR_THUMBNAIL)
    labels = [data.val.class_names[i] for i in data.val.labels[idx].tolist()]
    track.log_embedding(tag, features, labels, images, step)


def draw_curves(run: RunDir, track: Tracker) -> None:
    """``curves.png`` of every stage in the run's ``metrics.jsonl``, tracked."""
    if (path := plot_curves(run.path)) is not None:
        track.log_image("curves", path)


def draw_run_pictures(cfg: Config, run: RunDir, track: Tracker, data: DataSplits, encoder: nn.Module | None,
                      inputs: Inputs | None, title: str, curves: bool = True, stage: str | None = None,
                      step: int = 0) -> Any:
    """The end of a run: ``curves.png`` and, given an encoder and ``cfg.tsne``, ``tsne.png``; both tracked.
    Given a ``stage`` (the tag) and its last epoch (``step``), the tracker also gets the encoder's embeddings.
    Returns the t-SNE points (None where none were drawn)."""
    if curves:
        draw_curves(run, track)
    if encoder is not None and stage is not None:
        log_projector(track, encoder, data, inputs, stage, step, cfg.seed, cfg.eval_batch_size)
    if encoder is None or not cfg.tsne:
        return None
    if len(data.val) < MIN_POINTS:  # a picture is not worth failing a finished run for
        warnings.warn(f"no tsne.png: t-SNE needs at least {MIN_POINTS} validation images; {data.name} has "
                      f"{len(data.val)}", stacklevel=2)
        return None
    xy = tsne_picture(encoder, data, inputs, run.file("tsne.png"), title, cfg.seed, cfg.eval_batch_size)
    track.log_image("tsne", run.file("tsne.png"))
    return xy
