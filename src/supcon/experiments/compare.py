"""``compare``: SupCon (both stages) against the cross-entropy baseline on one data set, same budget.

Writes ``OUT/ce/`` and ``OUT/supcon/`` (each a complete run directory, with its own ``curves.png`` and
``tsne.png``), and in ``OUT/`` the resolved ``config.yaml``, the combined ``results.json``, ``results.md`` (the
table) and ``tsne.png`` (both encoders side by side); each file once.

>>> from supcon.config import Config
>>> from supcon.experiments.compare import compare
>>> results = compare(Config(dataset="digits"), "runs/compare-digits")
>>> [run["val_acc"] for run in results["runs"]]            # SupCon's, then CE's
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from supcon.config import LOSS_NAMES, TSNE_POINTS, Config
from supcon.data import DataSplits, describe
from supcon.engine import distributed
from supcon.engine.tracking import open_tracker
from supcon.evaluate.tsne import MIN_POINTS, plot_embeddings, tsne_subset
from supcon.io import atomic_write_text
from supcon.reporting.notes import comparison_text
from supcon.runs import RunDir
from supcon.stages import RunResult, load_data, train_run
from supcon.stages.pictures import tsne_points


def compare(cfg: Config, out: str | Path, data: DataSplits | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the CE baseline and SupCon with the same encoder, epochs and augmentation; return the results
    (``results.json``'s: the data set, SupCon's and CE's run summaries, the class names). With ``cfg.resume`` a
    method that finished before is kept and the other continues where it stopped."""
    run = RunDir(out)
    if distributed.is_main():  # in a distributed run the other processes train and write nothing
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.file("config.yaml"))
    if data is None:
        data = load_data(cfg)
    log(describe(data))
    resuming = cfg.resume is not None
    kept = resuming and RunDir(run.path / "ce").stage_finished("ce") is not None
    log("1/2 cross-entropy baseline" + (": finished before, kept" if kept else ""))
    ce = _method_run("ce", cfg, data, run)
    log(f"2/2 {LOSS_NAMES[cfg.loss]}: stage 1 (contrastive) then stage 2 (linear probe)")
    sup = _method_run("supcon", cfg, data, run)
    runs = [sup.summary, ce.summary]
    results = {"dataset": data.name, "runs": runs, "skipped_images": len(data.skipped),
               "class_names": data.train.class_names, "noisy_labels": data.noisy_labels}
    if not distributed.is_main():
        return results
    run.write_results(results, data.skipped)
    atomic_write_text(run.file("results.md"), comparison_text(runs) + "\n")
    redraw = resuming and len(data.val) >= MIN_POINTS
    if cfg.tsne and (sup.tsne_xy is not None or redraw) and (ce.tsne_xy is not None or redraw):
        _draw_side_by_side(cfg, data, sup, ce, run.file("tsne.png"))
    return results


def _method_run(kind: str, cfg: Config, data: DataSplits, run: RunDir) -> RunResult:
    """One method's run in ``OUT/<kind>/``, tracked under the comparison's name (wandb would call both sub-runs
    just "ce" and "supcon"), in one group; resumed, a finished one is kept."""
    with open_tracker(cfg, run.path / kind, f"{run.path.name}/{kind}", run.path.name) as track:
        result = train_run(kind, cfg, data, run.path / kind, track, keep_finished=True)
        track.log_summary(result.summary)
    return result


def _draw_side_by_side(cfg: Config, data: DataSplits, sup: RunResult, ce: RunResult, path: Path) -> None:
    """Both encoders' t-SNE, on the points their own ``tsne.png`` drew (same subset and seed); a run kept from
    before a resume has none in memory, and its encoder gives the same points again."""
    def points(result: RunResult):
        if result.tsne_xy is not None:
            return result.tsne_xy
        return tsne_points(result.encoder, data, result.inputs, cfg.seed, cfg.eval_batch_size)

    labels = data.val.labels.numpy()[tsne_subset(data.val.labels, TSNE_POINTS, cfg.seed)]
    panels = [(f"{title} (val acc {result.summary['val_acc']:.3f})", points(result))
              for title, result in ((f"{LOSS_NAMES[cfg.loss]} encoder", sup), ("cross-entropy encoder", ce))]
    plot_embeddings(panels, labels, data.val.class_names, path)
