"""``compare``: SupCon (both stages) against the cross-entropy baseline on one data set, same budget.

Writes ``OUT/ce/`` and ``OUT/supcon/`` (each a complete run directory, with its own ``curves.png`` and
``tsne.png``), and in ``OUT/`` the resolved ``config.yaml``, the combined ``results.json``, ``results.md`` (the
table) and ``tsne.png`` (both encoders side by side).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from supcon import distributed, train
from supcon.config import LOSS_NAMES, Config
from supcon.data import DataSplits, describe
from supcon.io import atomic_write_text, write_json
from supcon.tracking import open_tracker

COLUMNS = ("method", "stage-1 loss", "kNN acc", "train acc", "val acc", "time")
METHODS = {"supcon": "SupCon + linear", "simclr": "SimCLR + linear", "ce": "cross-entropy"}
TRANSFERRED = {"supcon": "SupCon encoder + linear", "simclr": "SimCLR encoder + linear",
               "ce": "cross-entropy encoder + linear"}


def results_rows(runs: list[dict[str, Any]], names: list[str] | None = None) -> tuple[tuple[str, ...], list[list[str]]]:
    """The comparison's column names and one row of formatted cells per run (``names`` adds a first column)."""

    def num(value, digits=4):
        return "–" if value is None else f"{value:.{digits}f}"

    columns = (("run",) if names is not None else ()) + COLUMNS
    rows = []
    for i, run in enumerate(runs):
        # a transfer run probes an encoder trained elsewhere, whatever its method was
        name = (TRANSFERRED if run.get("encoder_from") else METHODS)[run["method"]]
        if run["method"] == "supcon" and run.get("loss") not in (None, "supcon"):
            name = name.replace("SupCon", LOSS_NAMES.get(run["loss"], run["loss"]), 1)
        rows.append(([names[i]] if names is not None else []) + [
            name, num(run["supcon_loss"]), num(run.get("knn_acc")), num(run["train_acc"]), num(run["val_acc"]),
            f"{run['seconds']:.0f} s"])
    return columns, rows


def results_table(runs: list[dict[str, Any]], names: list[str] | None = None) -> str:
    """The comparison as a Markdown table (one row per run; ``names`` adds a first column naming each run)."""
    columns, rows = results_rows(runs, names)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# What the kNN monitor must show before compare speaks. "No gain" is less than FLAT (5 images of a 250-image
# validation split) or, near the top, less than a tenth of the way left to 1 (an untrained CNN already scores 0.94
# on digits); an accuracy within AT_CHANCE of the way from chance to 1 is "at chance".
FLAT = 0.02
AT_CHANCE = 0.1


def _tolerance(accuracy: float) -> float:
    return min(FLAT, AT_CHANCE * (1 - accuracy))


def knn_note(run: dict[str, Any]) -> str | None:
    """A plain sentence when the kNN monitor shows that stage 1 never started or stopped improving early.

    Reads the run's ``knn_curve`` (``[epoch, accuracy]`` pairs, epoch 0 the untrained encoder) and
    ``knn_chance`` (what always guessing the largest class scores). Never started: the best accuracy stays
    near chance, or does not rise measurably (:func:`_tolerance`) above the untrained encoder's. Stopped
    early: the accuracy came that close to its best in the first half of the epochs and gained nothing after.
    """
    curve, chance = run.get("knn_curve") or [], run.get("knn_chance")
    if run.get("method") == "ce" or len(curve) < 2:
        return None
    epochs = [int(e) for e, _ in curve]
    accs = [a for _, a in curve]
    best, last, init = max(accs[1:]), accs[-1], accs[0] if epochs[0] == 0 else None
    span = f"epochs {epochs[1]}-{epochs[-1]}" if len(epochs) > 2 else f"epoch {epochs[-1]}"
    if chance is not None and best < chance + AT_CHANCE * (1 - chance):
        return (f"Stage 1 never started: the kNN accuracy of its encoder stayed at chance (best {best:.3f} over "
                f"{span}; always guessing the largest class scores {chance:.3f}), so the encoder learned nothing a "
                "classifier can use; lower --lr, or try another --loss, before reading the probe's accuracy.")
    if init is not None and best < init + _tolerance(init):
        return (f"Stage 1 never started: the kNN accuracy of its encoder never rose above the untrained encoder's "
                f"({init:.3f} before training, best {best:.3f} over {span}), so stage 1 did not improve the "
                "features; whatever the probe reaches, the random initialisation gave it.")
    tolerance = _tolerance(best)
    reached = next(e for e, a in zip(epochs, accs, strict=True) if e > 0 and a >= best - tolerance)
    if len(epochs) >= 4 and reached <= epochs[-1] / 2:
        return (f"Stage 1 stopped improving early: the kNN accuracy of its encoder came within {tolerance:.3f} of "
                f"its best ({best:.3f}) by epoch {reached} of {epochs[-1]} and ended at {last:.3f}, so the second "
                "half of the budget did not make the features better; more epochs of the same will not either.")
    return None


def ce_note(run: dict[str, Any]) -> str | None:
    """A plain sentence when the cross-entropy baseline never trained: its validation accuracy stayed at chance
    (``val_chance``, what always guessing the largest class scores), as the study's CE baseline did."""
    chance, acc = run.get("val_chance"), run.get("val_acc")
    if run.get("method") != "ce" or chance is None or acc is None or acc >= chance + AT_CHANCE * (1 - chance):
        return None
    return (f"Cross-entropy never trained: its validation accuracy ({acc:.3f}) stayed at chance (always guessing "
            f"the largest class scores {chance:.3f}), so it is no baseline to compare with; check --lr (too high "
            "diverges in the first epoch, as SGD at 0.1 can on a deep encoder trained from scratch; too low never "
            "moves), add --warmup-epochs, or leave --optimizer at auto, which trains CE with AdamW.")


def compare_notes(runs: list[dict[str, Any]]) -> str | None:
    """The notes of a comparison's runs (:func:`convergence_note` for SupCon, :func:`ce_note` for CE), or None."""
    notes = [convergence_note(run) if run.get("method") != "ce" else ce_note(run) for run in runs]
    return " ".join(n for n in notes if n) or None


def convergence_note(run: dict[str, Any], threshold: float = 0.5) -> str | None:
    """Plain sentences when stage 1 stopped far from converged, never started or stopped improving early, else
    None.

    Progress is how far the loss fell from its first batch towards its floor (the loss when each class has
    collapsed to one point): a SupCon encoder whose loss barely moved was not given the budget it needs, and
    its probe says little about the method. The kNN monitor (:func:`knn_note`) says what the features did
    meanwhile, which the loss alone does not.
    """
    notes = []
    progress = run.get("stage1_progress")
    knn = knn_note(run)
    if run.get("method") != "ce" and progress is not None and progress < threshold:
        name = LOSS_NAMES.get(run.get("loss"), "SupCon")
        # when the kNN monitor says the features stopped improving, more epochs is the wrong advice
        advice = ("" if knn and "stopped improving" in knn else
                  f", so this budget was too short for {name}; give it more --epochs (or a larger --lr) before "
                  "reading its accuracy against cross-entropy's")
        notes.append(f"Stage 1 did not converge: its loss went from {run['supcon_loss_start']:.3f} to "
                     f"{run['supcon_loss']:.3f}, only {progress:.0%} of the way to its floor of "
                     f"{run['supcon_loss_floor']:.3f}{advice}.")
    if knn:
        notes.append(knn)
    return " ".join(notes) or None


def compare(cfg: Config, out: str | Path, data: DataSplits | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the CE baseline and SupCon with the same encoder, epochs and augmentation; return the results."""
    out = Path(out)
    if distributed.is_main():  # in a distributed run the other processes train and write nothing
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
    log(f"2/2 {LOSS_NAMES[cfg.loss]}: stage 1 (contrastive) then stage 2 (linear probe)")
    with open_tracker(cfg, out / "supcon", f"{out.name}/supcon", out.name) as track:
        sup = train.supcon(cfg, data, out / "supcon", track)  # resumed, it keeps a finished stage 1 (or both)
        track.log_summary(sup.summary)
    runs = [sup.summary, ce.summary]
    results = {"dataset": data.name, "runs": runs, "skipped_images": len(data.skipped),
               "class_names": data.train.class_names, "noisy_labels": data.noisy_labels}
    if not distributed.is_main():
        return results
    write_json(out / "results.json", results)
    train.write_skipped(out, data)
    table = results_table(runs)
    note = compare_notes(runs)
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
                  for title, result in ((f"{LOSS_NAMES[cfg.loss]} encoder", sup), ("cross-entropy encoder", ce))]
        plot_embeddings(panels, labels, data.val.class_names, out / "tsne.png")
    return results
