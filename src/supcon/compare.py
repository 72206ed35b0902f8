"""``compare``: SupCon (both stages) against the cross-entropy baseline on one data set, same budget.

Writes ``OUT/ce/`` and ``OUT/supcon/`` (each a complete run directory, with its own ``curves.png`` and
``tsne.png``), and in ``OUT/`` the resolved ``config.yaml``, the combined ``results.json``, ``results.md`` (the
table) and ``tsne.png`` (both encoders side by side).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from supcon import train
from supcon.config import Config
from supcon.data import DataSplits, describe
from supcon.io import atomic_write_text, write_json
from supcon.tracking import open_tracker

COLUMNS = ("method", "SupCon loss", "train acc", "val acc", "time")
METHODS = {"supcon": "SupCon + linear", "simclr": "SimCLR + linear", "ce": "cross-entropy"}
TRANSFERRED = {"supcon": "SupCon encoder + linear", "simclr": "SimCLR encoder + linear",
               "ce": "cross-entropy encoder + linear"}


def results_table(runs: list[dict[str, Any]], names: list[str] | None = None) -> str:
    """The comparison as a Markdown table (one row per run; ``names`` adds a first column naming each run)."""

    def num(value, digits=4):
        return "–" if value is None else f"{value:.{digits}f}"

    columns = (("run",) if names is not None else ()) + COLUMNS
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for i, run in enumerate(runs):
        # a transfer run probes an encoder trained elsewhere, whatever its method was
        name = (TRANSFERRED if run.get("encoder_from") else METHODS)[run["method"]]
        first = f"| {names[i]} " if names is not None else ""
        rows.append(f"{first}| {name} | {num(run['supcon_loss'])} | {num(run['train_acc'])} | "
                    f"{num(run['val_acc'])} | {run['seconds']:.0f} s |")
    return "\n".join(rows)


def convergence_note(run: dict[str, Any], threshold: float = 0.5) -> str | None:
    """A plain sentence when stage 1 stopped far from converged, else None.

    Progress is how far the loss fell from its first batch towards its floor (the loss when each class has
    collapsed to one point): a SupCon encoder whose loss barely moved was not given the budget it needs, and
    its probe says little about the method.
    """
    progress = run.get("stage1_progress")
    if run.get("method") == "ce" or progress is None or progress >= threshold:
        return None
    return (f"Stage 1 did not converge: its loss went from {run['supcon_loss_start']:.3f} to "
            f"{run['supcon_loss']:.3f}, only {progress:.0%} of the way to its floor of "
            f"{run['supcon_loss_floor']:.3f}, so this budget was too short for SupCon; give it more --epochs "
            "(or a larger --lr) before reading its accuracy against cross-entropy's.")


def compare(cfg: Config, out: str | Path, data: DataSplits | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the CE baseline and SupCon with the same encoder, epochs and augmentation; return the results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    if data is None:
        data = train.load_data(cfg)
    log(describe(data))
    resuming = cfg.resume is not None
    if resuming and train.stage_finished(out / "ce", "ce") is not None:
        log("1/2 cross-entropy baseline: finished before, kept")
        ce = train.load_finished(out / "ce", cfg)
    else:
        log("1/2 cross-entropy baseline")
        # Trackers named after the comparison (wandb would call both sub-runs just "ce" and "supcon"), in one group.
        with open_tracker(cfg, out / "ce", f"{out.name}/ce", out.name) as track:
            ce = train.train_ce(cfg, data, out / "ce", track)
            track.log_summary(ce.summary)
    log("2/2 SupCon: stage 1 (contrastive) then stage 2 (linear probe)")
    with open_tracker(cfg, out / "supcon", f"{out.name}/supcon", out.name) as track:
        sup = train.supcon(cfg, data, out / "supcon", track)  # resumed, it keeps a finished stage 1 (or both)
        track.log_summary(sup.summary)
    runs = [sup.summary, ce.summary]
    results = {"dataset": data.name, "runs": runs, "skipped_images": len(data.skipped),
               "class_names": data.train.class_names}
    write_json(out / "results.json", results)
    train.write_skipped(out, data)
    table = results_table(runs)
    note = convergence_note(sup.summary)
    if note:
        table += "\n\n" + note
    atomic_write_text(out / "results.md", table + "\n")
    from supcon.evaluate.tsne import MIN_POINTS

    redraw = resuming and len(data.val) >= MIN_POINTS
    if cfg.tsne and (sup.tsne_xy is not None or redraw) and (ce.tsne_xy is not None or redraw):
        from supcon.config import TSNE_POINTS
        from supcon.evaluate.tsne import plot_embeddings, tsne_subset

        # The sub-runs drew the same points (same subset and seed) into their own tsne.png: reuse them. A stage
        # kept from before a resume has none in memory; its encoder gives the same points again.
        def points(result):
            if result.tsne_xy is not None:
                return result.tsne_xy
            return train.tsne_points(result.encoder, data, result.inputs, cfg.seed, cfg.eval_batch_size)

        labels = data.val.labels.numpy()[tsne_subset(data.val.labels, TSNE_POINTS, cfg.seed)]
        panels = [(f"{title} (val acc {result.summary['val_acc']:.3f})", points(result))
                  for title, result in (("SupCon encoder", sup), ("cross-entropy encoder", ce))]
        plot_embeddings(panels, labels, data.val.class_names, out / "tsne.png")
    return results
