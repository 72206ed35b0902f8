r"""Weighted k-nearest-neighbour classification of encoder features: the stage-1 monitor.

A query is classified by its ``k`` most cosine-similar training features, each voting for its label with weight
``exp(s / T)`` (``s`` the cosine similarity; Wu et al. 2018, and the monitor of solo-learn and lightly) or 1
(``weights="uniform"``, scikit-learn's ``KNeighborsClassifier(metric="cosine")``). It needs no training, so its
accuracy on the validation split, taken every few epochs, shows whether stage 1 is still improving the features.

Memory: queries are processed in blocks of ``block_size`` rows, each against all ``M`` training features
(``[block_size, M]`` similarities, then their top-k), so 50,000 x 50,000 needs a few tens of MiB rather than the
10 GB of the full matrix. Each query row's result does not depend on the block it was in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KnnSchedule", "chance_accuracy", "knn_accuracy", "knn_predict"]

WEIGHTS = ("exp", "uniform")
# A [block, M] similarity buffer of about 4M elements (16 MiB in fp32): large enough that the GEMM runs at speed,
# small enough to stay in cache-sized chunks and bounded whatever M is.
_BLOCK_ELEMS = 1 << 22


def _check(k, temperature, weights, block_size) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"expected k to be an integer >= 1, got {k!r}")
    if not temperature > 0:
        raise ValueError(f"expected temperature > 0, got {temperature}")
    if weights not in WEIGHTS:
        raise ValueError(f"expected weights in {WEIGHTS}, got {weights!r}")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"expected block_size to be None (automatic) or an integer >= 1, got {block_size!r}")


@torch.no_grad()
def knn_predict(train_features: Tensor, train_labels: Tensor, queries: Tensor, *, k: int = 20,
                temperature: float = 0.07, weights: str = "exp", num_classes: int | None = None,
                block_size: int | None = None) -> Tensor:
    """Predicted class of each row of ``queries`` ``[Q, D]`` from ``train_features`` ``[M, D]`` and their labels.

    Features are L2-normalised here (cosine similarity). ``k`` is capped at ``M``. Ties between classes go to
    the smaller class index, as in scikit-learn. ``block_size`` query rows are processed at once (default:
    about 4M similarities per block); it never changes the result.
    """
    _check(k, temperature, weights, block_size)
    if train_features.dim() != 2 or queries.dim() != 2 or train_features.shape[1] != queries.shape[1]:
        raise ValueError(f"expected features shaped [M, D] and [Q, D], got {tuple(train_features.shape)} and "
                         f"{tuple(queries.shape)}")
    if len(train_labels) != len(train_features) or len(train_features) == 0:
        raise ValueError(f"expected one label per training feature and at least one, got {len(train_labels)} "
                         f"labels for {len(train_features)} features")
    train = F.normalize(train_features, dim=1)
    queries = F.normalize(queries.to(train.dtype), dim=1)
    labels = train_labels.to(train.device).long()
    num_classes = num_classes or int(labels.max()) + 1
    k = min(k, len(train))
    block_size = block_size or max(1, _BLOCK_ELEMS // len(train))
    predictions = torch.empty(len(queries), dtype=torch.long, device=train.device)
    for start in range(0, len(queries), block_size):
        sims = queries[start:start + block_size] @ train.T
        top, idx = sims.topk(k, dim=1)
        del sims
        votes = torch.ones_like(top) if weights == "uniform" else top.div_(temperature).exp_()
        scores = votes.new_zeros(len(top), num_classes).scatter_add_(1, labels[idx], votes)
        predictions[start:start + len(top)] = scores.argmax(1)  # argmax takes the first maximum: the smaller class
    return predictions


def knn_accuracy(train_features: Tensor, train_labels: Tensor, val_features: Tensor, val_labels: Tensor,
                 **options) -> float:
    """Share of ``val_features`` whose :func:`knn_predict` class is their label."""
    if len(val_features) == 0:
        raise ValueError("kNN accuracy needs at least one validation feature")
    num_classes = int(max(int(train_labels.max()), int(val_labels.max()))) + 1
    predicted = knn_predict(train_features, train_labels, val_features, num_classes=num_classes, **options)
    return (predicted.cpu() == val_labels.cpu().long()).double().mean().item()


def chance_accuracy(labels: Tensor) -> float:
    """What always guessing the most frequent class scores on ``labels``: the floor a useless encoder gets."""
    return torch.bincount(labels.long()).max().item() / len(labels)


@dataclass
class KnnSchedule:
    """At which epochs the monitor runs: every ``every`` epochs and at the last one; ``every=0`` never.

    ``every="auto"`` runs it after the first epoch and compares its cost with that epoch's training time
    (:meth:`measured`): from then on every epoch where the kNN costs under ``budget`` (10 %) of an epoch, else
    every ``sparse`` (5) epochs. ``resolved`` is the period in use once known.
    """

    every: int | str
    epochs: int
    budget: float = 0.1
    sparse: int = 5
    resolved: int | None = None

    def __post_init__(self) -> None:
        if self.every != "auto":
            self.resolved = int(self.every)

    def due(self, epoch: int) -> bool:
        if self.resolved is None:  # auto: the first epoch it sees measures the cost
            return True
        return self.resolved > 0 and (epoch % self.resolved == 0 or epoch == self.epochs)

    def measured(self, knn_seconds: float, epoch_seconds: float) -> None:
        if self.resolved is None:
            self.resolved = 1 if knn_seconds < self.budget * epoch_seconds else self.sparse
