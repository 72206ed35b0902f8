"""t-SNE pictures of learned embeddings, one panel per method, side by side (and UMAP's 2-D map, for the report)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from supcon.data import stratified_subset
from supcon.io import save_figure

MIN_POINTS = 5  # below this the perplexity t-SNE needs is not defined


def tsne_2d(features: torch.Tensor | np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``[N, D]`` features (cosine distance, since the representations live on the sphere)."""
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float32)
    if len(x) < MIN_POINTS:
        raise ValueError(f"t-SNE needs at least {MIN_POINTS} points; got {len(x)}")
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    return TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed).fit_transform(x)


def umap_available() -> bool:
    """Whether ``umap-learn`` is installed (an optional extra: ``pip install umap-learn``)."""
    import importlib.metadata

    # the distribution, not the module name: PyPI's unrelated "umap" package, or a folder an uninstall left
    # behind, also import as "umap"
    try:
        importlib.metadata.version("umap-learn")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def umap_2d(features: torch.Tensor | np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D UMAP of ``[N, D]`` features (cosine distance, as :func:`tsne_2d`); needs ``umap-learn``."""
    if not umap_available():
        raise ImportError("UMAP needs umap-learn: pip install umap-learn")
    import umap
    x = np.asarray(features, dtype=np.float32)
    if len(x) < MIN_POINTS:
        raise ValueError(f"UMAP needs at least {MIN_POINTS} points; got {len(x)}")
    neighbours = min(15, len(x) - 1)
    # n_jobs=1: a seeded UMAP runs on one thread anyway, and says so in a warning unless asked for one
    return umap.UMAP(n_components=2, n_neighbors=neighbours, metric="cosine", random_state=seed, n_jobs=1
                     ).fit_transform(x).astype(np.float32)


def tsne_subset(labels: torch.Tensor | np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` points, class-balanced and seeded, so that pictures repeat."""
    return stratified_subset(np.asarray(labels), max_points, seed, "the t-SNE points")


def draw_tsne(panels: Sequence[tuple[str, torch.Tensor | np.ndarray]], labels: torch.Tensor | np.ndarray,
              class_names: Sequence[str], path: str | Path, seed: int = 0) -> tuple[Path, list[np.ndarray]]:
    """Embed each ``(title, features[N, D])`` panel with t-SNE and draw them; returns the path and the 2-D points."""
    points = [tsne_2d(features, seed) for _, features in panels]
    path = plot_embeddings([(title, xy) for (title, _), xy in zip(panels, points, strict=True)], np.asarray(labels),
                           class_names, path)
    return path, points


def plot_embeddings(panels: Sequence[tuple[str, np.ndarray]], labels: np.ndarray, class_names: Sequence[str],
                    path: str | Path) -> Path:
    """Scatter each ``(title, points[N, 2])`` panel coloured by class, with one shared legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.0), squeeze=False)
    for ax, (title, xy) in zip(axes[0], panels, strict=True):
        for c, name in enumerate(class_names):
            sel = labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=9, color=cmap(c % cmap.N), label=name, alpha=0.8,
                       linewidths=0)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes[0][0].get_legend_handles_labels()
    ncol = min(len(class_names), 5 * len(panels))  # about five names fit under a panel
    rows = -(-len(class_names) // ncol)
    fig.legend(handles, names, loc="lower center", ncol=ncol, frameon=False, markerscale=2)
    fig.tight_layout(rect=(0, 0.03 + 0.05 * rows, 1, 1))
    return save_figure(fig, path, dpi=110)
