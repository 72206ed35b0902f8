"""A sweep's tables and picture: ``sweep.md`` (the study's table), ``sweep.csv`` and ``sweep.png``.

They are drawn from the rows, runs and best cells :mod:`supcon.experiments.sweep` computes; nothing here reads
the grid itself."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from supcon.config import Config
from supcon.io import atomic_write_text, save_figure
from supcon.methods import LOSS_TITLES
from supcon.reporting.format import OPTIMIZER_TITLES, num, verdict_line, with_interval
from supcon.reporting.notes import ce_note, knn_note


def describe_cell(method: str, cfg: Config, axes: list[str], variant: dict[str, Any] | None = None) -> str:
    """The study's row label, e.g. ``RMSprop + lr decayed + without augmentation``; other axes as ``key=value``,
    and a variant's changes as ``key=value, ...`` (``base`` for the empty variant)."""
    parts = []
    for key in axes:
        value = getattr(cfg, key)
        if key == "optimizer":
            parts.append(OPTIMIZER_TITLES.get(cfg.resolved_optimizer(method), value))
        elif key == "schedule":
            parts.append({"fixed": "fixed lr", "cosine": "lr decayed (cosine)", "step": "lr decayed (step)"}[value])
        elif key == "augment":
            parts.append("without augmentation" if value == "none" else f"with augmentation ({value})")
        elif key == "loss":
            parts.append(LOSS_TITLES.get(value, value))
        else:
            parts.append(f"{key}={value}")
    if variant is not None:
        parts.append(", ".join(f"{k}={v}" for k, v in variant.items()) if variant else "base")
    prefix = "CE: " if method == "ce" else ""
    return prefix + (" + ".join(parts) if parts else ("cross-entropy" if method == "ce" else "SupCon"))


def write_tables(rows: list[dict[str, Any]], cells: dict[str, list[dict[str, Any]]], chosen: dict[str, Any],
                 out: Path) -> None:
    """``sweep.md`` (the table, the notes and, once they are known, the best cells and their verdict),
    ``sweep.csv`` and ``sweep.png``, from the table's ``rows``, each cell's finished runs and ``chosen``, the
    best cells (``sweep.json``)."""
    text = sweep_markdown(rows)
    stalled = [f"{r['setting']} ({r['stage1_progress']:.0%})" for r in rows
               if r["stage1_progress"] is not None and r["stage1_progress"] < 0.5]
    if stalled:
        text += ("\n\nStage 1 did not converge (its loss covered less than half the way from its start to its floor) "
                 "in: " + "; ".join(stalled) + ". Their accuracies say more about the budget than about SupCon.")
    for row in rows:
        runs = cells.get(row["cell"]) or [{}]
        note = knn_note(runs[0]) or ce_note(runs[0])
        if note:
            text += f"\n\n{row['setting']}: {note}"
    text += best_text(chosen, rows)
    atomic_write_text(out / "sweep.md", text + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "sweep.csv", buffer.getvalue())
    if any(r["val_acc"] is not None for r in rows):
        plot_sweep(rows, out / "sweep.png")


def best_text(chosen: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The cells ``chosen`` on validation accuracy and, on test, how the best SupCon cell compares with the best
    CE cell; empty until both are known."""
    if "difference" not in chosen:
        return ""
    setting = {r["cell"]: r["setting"] for r in rows}
    best = chosen["best"]
    return ("\n\nChosen on validation accuracy (the test split played no part): SupCon "
            f"{setting[best['supcon']['cell']]}, cross-entropy {setting[best['ce']['cell']]}. On test: "
            + verdict_line(chosen) + ".")


def sweep_markdown(rows: list[dict[str, Any]]) -> str:
    """The study's table, ``Optimizer + lr strategy + augmentation | stage-1 loss | train acc | val acc`` (the
    study's "Supervised Contrastive Loss" column holds whichever loss stage 1 trained with), plus the kNN
    accuracy of the encoder's features, the test accuracy (with its 95 % interval over seeds) and the time."""
    lines = ["| Optimizer + lr strategy + augmentation | stage-1 loss | kNN acc | train acc | val acc | test acc | "
             "time |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        seconds = "not run yet" if r["seconds"] is None else f"{r['seconds']:.0f} s"
        if r["error"]:
            seconds = "failed: " + r["error"].split(";")[0]
        lines.append(f"| {r['setting']} | {num(r['stage1_loss'])} | {num(r.get('knn_acc'))} | {num(r['train_acc'])} "
                     f"| {num(r['val_acc'])} | {with_interval(r['test_acc'], r['test_acc_ci'])} | {seconds} |")
    return "\n".join(lines)


def plot_sweep(rows: list[dict[str, Any]], path: Path) -> None:
    """Validation accuracy per cell as horizontal bars, SupCon and cross-entropy in two colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["val_acc"] is not None]
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.2))
    colours = ["tab:blue" if r["method"] == "supcon" else "tab:orange" for r in rows]
    ax.barh(range(len(rows)), [r["val_acc"] for r in rows], color=colours)
    for i, r in enumerate(rows):
        ax.text(r["val_acc"] + 0.005, i, f"{r['val_acc']:.3f}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["setting"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("validation accuracy")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("tab:blue", "tab:orange")]
    # above the axes: inside them it would hide the value of a long bar
    ax.legend(handles, ["SupCon + linear probe", "cross-entropy"], loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
