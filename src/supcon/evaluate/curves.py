"""Training curves of a run directory, drawn from its ``metrics.jsonl`` into ``curves.png``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from supcon.io import save_figure

# knn_acc: stage 1's kNN monitor (validation features against training features), on the same axes as the
# probe's and CE's accuracies so that the two stages read alike.
ACCURACIES = (("train_acc", "train"), ("val_acc", "val"), ("knn_acc", "kNN (val)"))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run, in the order they were written (empty if there are none yet); the lines of
    events (``{"event": "restart", ...}``, an elastic restart of a distributed run) are left out."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {number} is not valid JSON ({err.msg})") from None
        if "event" not in record:
            records.append(record)
    return records


def curve_panels(records: Iterable[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """``(stage, "loss" | "accuracy", rows)`` for each panel of the curves: a loss panel per stage, and an
    accuracy panel for each stage that logged one."""
    stages: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        stages.setdefault(record.get("stage", "train"), []).append(record)
    panels = []
    for stage, rows in stages.items():
        panels.append((stage, "loss", rows))
        if any(key in row for row in rows for key, _ in ACCURACIES):
            panels.append((stage, "accuracy", rows))
    return panels


def plot_curves(run_dir: str | Path, path: str | Path | None = None) -> Path | None:
    """Loss per epoch of every stage, and its train/val (or kNN) accuracy where it has them; ``None`` without
    metrics.

    Stages are taken from the records (pretrain, linear, ce, or any other), each on its own axes, since a
    contrastive loss and a cross-entropy live on different scales.
    """
    records = read_metrics(run_dir)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = curve_panels(records)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (stage, kind, rows) in zip(axes[0], panels, strict=True):
        epochs = [row["epoch"] for row in rows]
        if kind == "loss":
            ax.plot(epochs, [row["loss"] for row in rows], marker=".", color="tab:red")
        else:
            for key, label in ACCURACIES:
                if any(key in row for row in rows):
                    ax.plot([row["epoch"] for row in rows if key in row], [row[key] for row in rows if key in row],
                            marker=".", label=label)
            val = [(row["val_acc"], row["epoch"]) for row in rows if "val_acc" in row]
            if val:  # the epoch that early stopping restores
                best, epoch = max(val, key=lambda pair: (pair[0], -pair[1]))
                ax.axvline(epoch, color="grey", linestyle=":", label=f"best val {best:.3f}")
            ax.set_ylim(0, 1.02)  # the full range, so that runs side by side compare at a glance
            ax.legend(frameon=False)
        ax.set_title(f"{stage}: {kind}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if len(set(epochs)) == 1:
            ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path if path is not None else Path(run_dir) / "curves.png", dpi=100)
