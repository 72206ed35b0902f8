r"""Margins and calibration of a classifier's logits.

- The **margin** of an image is its correct class's logit minus the largest other logit: positive exactly when
  the image is classified correctly, and larger when a bigger change of the logits is needed to flip it.
- The **expected calibration error** (ECE; Naeini et al. 2015, Guo et al. 2017) bins the images by confidence
  (the top class's probability) into ``bins`` equal-width bins :math:`B_m = ((m-1)/M, m/M]` and averages the gap
  between each bin's accuracy and mean confidence, weighted by its share of the images:
  :math:`\mathrm{ECE} = \sum_m \frac{|B_m|}{N} |\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|`.
- The **reliability diagram** draws each bin's accuracy against its confidence; a calibrated model lies on the
  diagonal.

A binary head (one logit ``z``, sigmoid) is the two-class model with logits ``[0, z]``: softmax([0, z]) is
``[1 - sigmoid(z), sigmoid(z)]``, so :func:`class_logits` turns it into that and everything below treats both
heads alike (the binary head's margin is ``z`` for class 1 and ``-z`` for class 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from supcon.io import save_figure

__all__ = ["calibration_bins", "calibration_summary", "class_logits", "expected_calibration_error", "margins",
           "plot_margins", "plot_reliability", "probabilities"]

BINS = 15


def class_logits(logits: Tensor) -> Tensor:
    """One logit per class ``[N, K]``; a binary head's single column ``z`` becomes ``[0, z]``."""
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"expected logits shaped [N, K], got {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def probabilities(logits: Tensor) -> Tensor:
    """Class probabilities ``[N, K]``: softmax, or ``[1 - sigmoid(z), sigmoid(z)]`` for a binary head (in float32,
    or float64 for float64 logits)."""
    z = class_logits(logits)
    return (z if z.dtype == torch.float64 else z.float()).softmax(dim=1)


def margins(logits: Tensor, labels: Tensor) -> Tensor:
    """Correct class's logit minus the largest other logit, per image (``[N]``)."""
    z = class_logits(logits).float()
    labels = labels.long().to(z.device)
    correct = z.gather(1, labels[:, None])[:, 0]
    others = z.scatter(1, labels[:, None], float("-inf"))
    return correct - others.max(dim=1).values


def calibration_bins(logits: Tensor, labels: Tensor, bins: int = BINS) -> dict[str, Tensor]:
    """Per equal-width confidence bin: ``count``, ``accuracy`` and mean ``confidence`` (NaN in empty bins) and
    the bin ``edges`` (``bins + 1`` of them, 0 to 1)."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"expected bins to be an integer >= 1, got {bins!r}")
    probs = class_logits(logits).double().softmax(dim=1)  # bins are decided in float64
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels.long().to(predicted.device)).double()
    # bin m holds ((m-1)/M, m/M]: ceil(conf * M) - 1, with conf = 0 (impossible for probabilities) kept in bin 0
    index = (confidence * bins).ceil().long().sub(1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    accuracy = torch.bincount(index, weights=correct, minlength=bins) / count
    mean_confidence = torch.bincount(index, weights=confidence, minlength=bins) / count
    return {"count": count.long(), "accuracy": accuracy, "confidence": mean_confidence,
            "edges": torch.linspace(0, 1, bins + 1, dtype=torch.float64)}


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = BINS) -> float:
    """The ECE of ``logits`` against ``labels`` with ``bins`` equal-width confidence bins (see the module)."""
    if len(labels) == 0:
        raise ValueError("the calibration error needs at least one image")
    b = calibration_bins(logits, labels, bins)
    filled = b["count"] > 0
    gaps = (b["accuracy"][filled] - b["confidence"][filled]).abs()
    return float((b["count"][filled].double() * gaps).sum() / len(labels))


def calibration_summary(logits: Tensor, labels: Tensor, bins: int = BINS) -> dict[str, Any]:
    """Accuracy, ECE, negative log-likelihood, mean confidence and the margin distribution, as plain numbers."""
    z = class_logits(logits).float()
    labels = labels.long()
    m = margins(z, labels)
    quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    q = torch.quantile(m.double(), quantiles).tolist()
    b = calibration_bins(z, labels, bins)
    return {"accuracy": float((z.argmax(1) == labels).double().mean()),
            "ece": expected_calibration_error(z, labels, bins),
            "nll": float(torch.nn.functional.cross_entropy(z, labels)),
            "mean_confidence": float(probabilities(z).max(dim=1).values.double().mean()),
            "margin_mean": float(m.double().mean()),
            "margin_quantiles": dict(zip(("p10", "p25", "p50", "p75", "p90"), q, strict=True)),
            "bins": {"count": b["count"].tolist(), "accuracy": _nan_to_none(b["accuracy"]),
                     "confidence": _nan_to_none(b["confidence"])}}


def _nan_to_none(values: Tensor) -> list[float | None]:
    return [None if v != v else float(v) for v in values.tolist()]


def plot_reliability(panels: list[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """Reliability diagrams, one panel per ``(title, calibration_summary)``: each bin's accuracy as a bar at its
    confidence range, the diagonal of perfect calibration, and the ECE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for ax, (title, summary) in zip(axes[0], panels, strict=True):
        bins = summary["bins"]
        n = len(bins["count"])
        width = 1 / n
        lefts = [i * width for i in range(n)]
        acc = [a if a is not None else 0.0 for a in bins["accuracy"]]
        conf = [c if c is not None else (i + 0.5) * width for i, c in enumerate(bins["confidence"])]
        ax.bar(lefts, acc, width=width, align="edge", color="tab:blue", edgecolor="white", label="accuracy")
        gap = [c - a if bins["count"][i] else 0.0 for i, (a, c) in enumerate(zip(acc, conf, strict=True))]
        ax.bar(lefts, gap, bottom=acc, width=width, align="edge", facecolor="none", edgecolor="tab:red",
               hatch="//", linewidth=0.8, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(f"{title}\nECE {summary['ece']:.3f}", fontsize=9)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_margins(panels: list[tuple[str, Tensor]], path: str | Path) -> Path:
    """Histograms of the logit margins, one line per ``(title, margins)``, on shared bins; 0 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = torch.cat([m.double() for _, m in panels])
    low, high = float(values.min()), float(values.max())
    if low == high:
        low, high = low - 1, high + 1
    edges = torch.linspace(low, high, 41).tolist()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for title, m in panels:
        ax.hist(m.double().numpy(), bins=edges, histtype="step", linewidth=1.5, label=title, density=True)
    ax.axvline(0, color="black", linewidth=1, linestyle="--")
    ax.set_xlabel("margin: correct logit minus the best other")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
