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

import shutil
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from supcon.config import DEFAULT_LR, TSNE_POINTS, Config
from supcon.data import DataSplits, describe
from supcon.engine import distributed
from supcon.engine.callbacks import Callback
from supcon.engine.checkpoint import DIRNAME as CHECKPOINTS
from supcon.engine.tracking import open_tracker
from supcon.evaluate.tsne import MIN_POINTS, plot_embeddings, tsne_subset
from supcon.experiments.statistics import difference, method_summary
from supcon.io import atomic_write_text
from supcon.methods import COMPARABLE, LOSS_TITLES, METHODS
from supcon.reporting.format import OPTIMIZER_TITLES
from supcon.reporting.notes import comparison_text
from supcon.runs import RunDir
from supcon.runs.rundir import SEED_PREFIX
from supcon.stages import RunResult, load_data, train_run
from supcon.stages.pictures import tsne_points
from supcon.stages.run import data_facts

TUNE_DIR = "tune"  # compare --tune's trials, beside the comparison's runs
TUNE_FACTORS = (1 / 3, 1.0, 3.0)  # of each method's default learning rate: the same number of trials for each
# compare --tune's other optimizer for a method, at its usual rate: the family the literature or the reference study
# trained that method with where ours does not (CE: SGD, as Khosla et al. and torchvision; SupCon: Adam's, the
# study's best)
OTHER_OPTIMIZER = {"sgd": "adamw", "adam": "sgd", "adamw": "sgd", "rmsprop": "sgd"}


def seeds_of(cfg: Config) -> list[int]:
    """The training seeds of a comparison or sweep: ``cfg.seed`` and the ``cfg.seeds - 1`` after it."""
    return [cfg.seed + i for i in range(cfg.seeds)]


def compare(cfg: Config, out: str | Path, data: DataSplits | None = None,
            log: Callable[[str], None] = print, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train the CE baseline and SupCon with the same encoder, epochs, augmentation and splits, once per seed;
    return the results (``results.json``'s). With ``cfg.resume`` a run that finished before is kept and the one
    that was killed continues where it stopped. ``callbacks`` join every stage's loop."""
    run = RunDir(out)
    if distributed.is_main():  # in a distributed run the other processes train and write nothing
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.file("config.yaml"))
    if data is None:
        data = load_data(cfg)
    log(describe(data))
    seeds = seeds_of(cfg)
    methods = ordered_methods(cfg)
    tuning = tune(cfg.replace(seed=seeds[0]), data, run.path / TUNE_DIR, methods, log, callbacks) if cfg.tune \
        else {}
    trained: dict[str, list[RunResult]] = {method: [] for method in methods}
    for i, seed in enumerate(seeds):
        home = run.path if len(seeds) == 1 else run.path / f"{SEED_PREFIX}{seed}"
        where = f" (seed {seed}, {i + 1} of {len(seeds)})" if len(seeds) > 1 else ""
        for n, method in enumerate(methods, 1):
            sub = cfg.replace(seed=seed, **({k: tuning[method][k] for k in ("optimizer", "lr")} if method in tuning
                                            else {}))
            reused = i == 0 and _reuses_trial(method, methods, tuning)
            if reused:  # the first seed at the chosen rate is the trial that chose it: trained once
                distributed.from_main(partial(_copy_trial, run.path / tuning[method]["run"], home / method))
                sub = sub.replace(resume=str(run.path))
            kept = sub.resume is not None and RunDir(home / method).is_run()
            log(f"{n}/{len(methods)} {METHODS[method].describe(cfg.loss)}{where}"
                + (": the chosen tuning trial, kept" if reused else ": finished before, kept" if kept else ""))
            trained[method].append(_method_run(method, sub, data, home, run.path.name, "supcon" in methods,
                                               callbacks))
    results = comparison_results(data, {m: [r.summary for r in runs] for m, runs in trained.items()})
    if tuning:
        results["tuning"] = tuning
    if not distributed.is_main():
        return results
    run.write_results(results, data.skipped)
    atomic_write_text(run.file("results.md"), comparison_text(results) + "\n")
    firsts = [trained[m][0] for m in methods]
    if cfg.tsne and len(data.val) >= MIN_POINTS:
        if all(r.tsne_xy is not None or r.encoder is not None for r in firsts):
            _draw_side_by_side(cfg.replace(seed=seeds[0]), data, methods, firsts, run.file("tsne.png"))
        else:
            log(f"tsne.png not drawn: seed {seeds[0]}'s weights are not here (a run kept as its record alone)")
    return results


def _reuses_trial(method: str, methods: list[str], tuning: dict[str, dict[str, Any]]) -> bool:
    """Whether ``method``'s first seed is its chosen tuning trial: the same options and seed, so the same run. Not
    a fine-tuned SupCon beside the linear one, which continues the linear one's stage 1, not its trial's own."""
    return method in tuning and not (method == "supcon-finetune" and "supcon" in methods)


def _copy_trial(trial: Path, home: Path) -> None:
    if not home.exists():
        shutil.copytree(trial, home, ignore=shutil.ignore_patterns(CHECKPOINTS))


def tune_grid(cfg: Config, method: str) -> list[tuple[str, float]]:
    """``method``'s trials as (optimizer, learning rate) pairs: its optimizer at each of :data:`TUNE_FACTORS` times
    its default rate (before ``--lr-scale``, which each trial's config applies again) and, where ``--optimizer``
    is left to ``auto``, the other family (:data:`OTHER_OPTIMIZER`) at its usual rate: as many for every method."""
    kind = "ce" if method == "ce" else "supcon"
    optimizer, default = cfg.resolved_optimizer(kind), cfg.resolved_lr(kind) / cfg.lr_factor()
    grid = [(optimizer, float(f"{default * factor:.3g}")) for factor in TUNE_FACTORS]
    if cfg.optimizer == "auto":
        other = OTHER_OPTIMIZER[optimizer]
        grid.append((other, DEFAULT_LR[other]))
    return grid


def tune(cfg: Config, data: DataSplits, out: Path, methods: list[str], log: Callable[[str], None],
         callbacks: Sequence[Callback] = ()) -> dict[str, dict[str, Any]]:
    """``compare --tune``: every method gets the same number of trials (:func:`tune_grid`), on ``cfg.seed`` alone,
    each a whole run in ``out/<method>-<optimizer>-lr<rate>/``. Each method keeps the trial of its best validation
    accuracy (its default on a tie; the test split plays no part). Returns, per method, its trials, the optimizer
    and rate chosen and the chosen trial's folder (relative to the comparison's), which then serves as the first
    seed's run. A fine-tuned SupCon beside the linear one is tuned on a stage 1 of its own; in the comparison it
    then continues the linear one's, as without tuning."""
    chosen = {}
    for method in methods:
        grid = tune_grid(cfg, method)
        trials = []
        for optimizer, lr in grid:
            where = out / f"{method}-{optimizer}-lr{lr:g}"
            result = train_run(method, cfg.replace(optimizer=optimizer, lr=lr, out=str(where)), data, where,
                               keep_finished=True, callbacks=callbacks)
            trials.append({"optimizer": optimizer, "lr": lr, "val_acc": result.summary["val_acc"],
                           "run": str(where.relative_to(out.parent))})
            log(f"  tuning {METHODS[method].title}: {OPTIMIZER_TITLES.get(optimizer, optimizer)} lr {lr:g}, "
                f"val acc {result.summary['val_acc']:.4f}")
        default = grid[TUNE_FACTORS.index(1.0)]
        best = max(trials, key=lambda t: (t["val_acc"], (t["optimizer"], t["lr"]) == default))
        chosen[method] = {"trials": trials, "optimizer": best["optimizer"], "lr": best["lr"], "run": best["run"],
                          "default_optimizer": default[0], "default_lr": default[1], "chosen_on": "val_acc",
                          "seed": cfg.seed}
    return chosen


def ordered_methods(cfg: Config) -> list[str]:
    """The methods of ``cfg.methods`` in the order they train and are shown: SupCon's forms first (a fine-tuned
    SupCon starts from the linear one's stage 1), cross-entropy last, as in the tables."""
    chosen = cfg.method_list()
    return [m for m in COMPARABLE if m in chosen]


def comparison_results(data: DataSplits, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``results.json`` of a comparison: the data, every run (each seed's runs in turn, each with the ``method``
    of ``--methods`` it trained), each method's test accuracy over the seeds, and each SupCon form's difference
    from CE (``differences``; SupCon + linear's is ``difference`` too)."""
    methods = list(runs)
    seeds = [r.get("seed") for r in runs[methods[0]]]
    results = {"dataset": data.name, "class_names": data.train.class_names, **data_facts(data), "seeds": seeds,
               "runs": [runs[m][i] for i in range(len(seeds)) for m in methods],
               "methods": {m: method_summary(runs[m]) for m in methods}}
    if "ce" in runs:
        results["differences"] = {m: difference(runs[m], runs["ce"]) for m in methods if m != "ce"}
        if "supcon" in results["differences"]:
            results["difference"] = results["differences"]["supcon"]
    return results


def _method_run(method: str, cfg: Config, data: DataSplits, home: Path, name: str, with_linear: bool,
                callbacks: Sequence[Callback]) -> RunResult:
    """One method's run in ``home/<method>/``, tracked under the comparison's name (wandb would call every sub-run
    just "ce" or "supcon"), in one group; resumed, a finished one is kept. A fine-tuned SupCon continues the
    linear one's stage 1 where the comparison trains both (``with_linear``), else trains its own."""
    label = f"{name}/{home.name}/{method}" if home.name.startswith(SEED_PREFIX) else f"{name}/{method}"
    out = home / method
    cfg = METHODS[method].configure(cfg)
    if method == "supcon-finetune" and with_linear:
        cfg = cfg.replace(encoder_from=str(home / "supcon"))
    with open_tracker(cfg, out, label, name) as track:
        result = train_run(method, cfg, data, out, track, keep_finished=True, callbacks=callbacks)
        track.log_summary(result.summary)
    return result


def _draw_side_by_side(cfg: Config, data: DataSplits, methods: list[str], results: list[RunResult], path: Path
                       ) -> None:
    """Every method's encoder t-SNE, side by side, on the points their own ``tsne.png`` drew (same subset and
    seed); a run kept from before a resume has none in memory, and its encoder gives the same points again."""
    def points(result: RunResult):
        if result.tsne_xy is not None:
            return result.tsne_xy
        return tsne_points(result.encoder, data, result.inputs, cfg.seed, cfg.eval_batch_size)

    labels = data.val.labels.numpy()[tsne_subset(data.val.labels, TSNE_POINTS, cfg.seed)]
    titles = {"supcon": f"{LOSS_TITLES[cfg.loss]} encoder"}  # the linear probe's encoder is stage 1's
    panels = [(f"{titles.get(m) or METHODS[m].encoder_title} (val acc {r.summary['val_acc']:.3f})", points(r))
              for m, r in zip(methods, results, strict=True)]
    plot_embeddings(panels, labels, data.val.class_names, path)
