"""``compare``: SupCon (both stages) against the cross-entropy baseline on one data set, same budget, same splits,
``cfg.seeds`` training seeds each, and a verdict on the held-out test split.

Writes ``OUT/ce/`` and ``OUT/supcon/`` (with several seeds, ``OUT/seed-S/ce/`` and ``OUT/seed-S/supcon/``), each a
complete run directory with its own ``curves.png`` and ``tsne.png``, and in ``OUT/`` the resolved ``config.yaml``,
the combined ``results.json`` (every run, each method's test accuracy with its interval over seeds, and SupCon's
difference from CE with its paired interval and verdict), ``results.md`` (the table) and ``tsne.png`` (both
encoders of the first seed side by side); each file once.

>>> from supcon.config import Config
>>> from supcon.experiments.compare import compare
>>> results = compare(Config(dataset="digits", seeds=3), "runs/compare-digits")
>>> results["methods"]["supcon"]["test_acc_ci"], results["difference"]["verdict"]
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
from supcon.experiments.statistics import difference, method_summary
from supcon.io import atomic_write_text
from supcon.reporting.notes import comparison_text
from supcon.runs import RunDir
from supcon.runs.rundir import SEED_PREFIX
from supcon.stages import RunResult, load_data, train_run
from supcon.stages.pictures import tsne_points
from supcon.stages.run import data_facts

METHODS = ("supcon", "ce")  # the order of results.json's runs and of the tables


def seeds_of(cfg: Config) -> list[int]:
    """The training seeds of a comparison or sweep: ``cfg.seed`` and the ``cfg.seeds - 1`` after it."""
    return [cfg.seed + i for i in range(cfg.seeds)]


def compare(cfg: Config, out: str | Path, data: DataSplits | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the CE baseline and SupCon with the same encoder, epochs, augmentation and splits, once per seed;
    return the results (``results.json``'s). With ``cfg.resume`` a run that finished before is kept and the one
    that was killed continues where it stopped."""
    run = RunDir(out)
    if distributed.is_main():  # in a distributed run the other processes train and write nothing
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.file("config.yaml"))
    if data is None:
        data = load_data(cfg)
    log(describe(data))
    seeds = seeds_of(cfg)
    trained: dict[str, list[RunResult]] = {method: [] for method in METHODS}
    for i, seed in enumerate(seeds):
        home = run.path if len(seeds) == 1 else run.path / f"{SEED_PREFIX}{seed}"
        where = f" (seed {seed}, {i + 1} of {len(seeds)})" if len(seeds) > 1 else ""
        seeded = cfg.replace(seed=seed)
        kept = cfg.resume is not None and RunDir(home / "ce").stage_finished("ce") is not None
        log(f"1/2 cross-entropy baseline{where}" + (": finished before, kept" if kept else ""))
        trained["ce"].append(_method_run("ce", seeded, data, home, run.path.name))
        log(f"2/2 {LOSS_NAMES[cfg.loss]}{where}: stage 1 (contrastive) then stage 2 (linear probe)")
        trained["supcon"].append(_method_run("supcon", seeded, data, home, run.path.name))
    results = comparison_results(data, {m: [r.summary for r in runs] for m, runs in trained.items()})
    if not distributed.is_main():
        return results
    run.write_results(results, data.skipped)
    atomic_write_text(run.file("results.md"), comparison_text(results) + "\n")
    redraw = cfg.resume is not None and len(data.val) >= MIN_POINTS
    sup, ce = trained["supcon"][0], trained["ce"][0]
    if cfg.tsne and (sup.tsne_xy is not None or redraw) and (ce.tsne_xy is not None or redraw):
        _draw_side_by_side(cfg.replace(seed=seeds[0]), data, sup, ce, run.file("tsne.png"))
    return results


def comparison_results(data: DataSplits, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``results.json`` of a comparison: the data, every run (SupCon's and CE's of each seed in turn), each method's
    test accuracy over the seeds, and SupCon's difference from CE."""
    seeds = [r.get("seed") for r in runs["supcon"]]
    return {"dataset": data.name, "class_names": data.train.class_names, **data_facts(data), "seeds": seeds,
            "runs": [runs[m][i] for i in range(len(seeds)) for m in METHODS],
            "methods": {m: method_summary(runs[m]) for m in METHODS},
            "difference": difference(runs["supcon"], runs["ce"])}


def _method_run(kind: str, cfg: Config, data: DataSplits, home: Path, name: str) -> RunResult:
    """One method's run in ``home/<kind>/``, tracked under the comparison's name (wandb would call every sub-run
    just "ce" or "supcon"), in one group; resumed, a finished one is kept."""
    label = f"{name}/{home.name}/{kind}" if home.name.startswith(SEED_PREFIX) else f"{name}/{kind}"
    with open_tracker(cfg, home / kind, label, name) as track:
        result = train_run(kind, cfg, data, home / kind, track, keep_finished=True)
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
