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

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from supcon.config import TSNE_POINTS, Config
from supcon.data import DataSplits, describe
from supcon.engine import distributed
from supcon.engine.callbacks import Callback
from supcon.engine.tracking import open_tracker
from supcon.evaluate.tsne import MIN_POINTS, plot_embeddings, tsne_subset
from supcon.experiments.statistics import difference, method_summary
from supcon.io import atomic_write_text
from supcon.methods import COMPARABLE, LOSS_TITLES, METHODS
from supcon.reporting.notes import comparison_text
from supcon.runs import RunDir
from supcon.runs.rundir import SEED_PREFIX
from supcon.stages import RunResult, load_data, train_run
from supcon.stages.pictures import tsne_points
from supcon.stages.run import data_facts

TUNE_DIR = "tune"  # compare --tune's trials, beside the comparison's runs
TUNE_FACTORS = (1 / 3, 1.0, 3.0)  # of each method's default learning rate: the same number of trials for each


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
            kept = cfg.resume is not None and RunDir(home / method).is_run()
            log(f"{n}/{len(methods)} {METHODS[method].describe(cfg.loss)}{where}"
                + (": finished before, kept" if kept else ""))
            chosen = {"lr": tuning[method]["lr"]} if method in tuning else {}
            trained[method].append(_method_run(method, cfg.replace(seed=seed, **chosen), data, home, run.path.name,
                                               "supcon" in methods, callbacks))
    results = comparison_results(data, {m: [r.summary for r in runs] for m, runs in trained.items()})
    if tuning:
        results["tuning"] = tuning
    if not distributed.is_main():
        return results
    run.write_results(results, data.skipped)
    atomic_write_text(run.file("results.md"), comparison_text(results) + "\n")
    redraw = cfg.resume is not None and len(data.val) >= MIN_POINTS
    firsts = [trained[m][0] for m in methods]
    if cfg.tsne and all(r.tsne_xy is not None or redraw for r in firsts):
        _draw_side_by_side(cfg.replace(seed=seeds[0]), data, methods, firsts, run.file("tsne.png"))
    return results


def tune(cfg: Config, data: DataSplits, out: Path, methods: list[str], log: Callable[[str], None],
         callbacks: Sequence[Callback] = ()) -> dict[str, dict[str, Any]]:
    """``compare --tune``: every method gets the same trials, on ``cfg.seed`` alone, each a whole run in
    ``out/<method>-lr<rate>/``: its learning rate (stage 1's, or CE's) at each of :data:`TUNE_FACTORS` times its
    default. Each method keeps the rate of its best validation accuracy (the default on a tie; the test split plays
    no part). Returns, per method, its trials and the rate chosen. A fine-tuned SupCon beside the linear one is
    tuned on a stage 1 of its own; in the comparison it then continues the linear one's, as without tuning."""
    chosen = {}
    for method in methods:
        # the rate before --lr-scale, which the trial's own config applies again
        default = cfg.resolved_lr("ce" if method == "ce" else "supcon") / cfg.lr_factor()
        trials = []
        for factor in TUNE_FACTORS:
            lr = float(f"{default * factor:.3g}")
            where = out / f"{method}-lr{lr:g}"
            result = train_run(method, cfg.replace(lr=lr, tsne=False, out=str(where)), data, where,
                               keep_finished=True, callbacks=callbacks)
            trials.append({"lr": lr, "val_acc": result.summary["val_acc"]})
            log(f"  tuning {METHODS[method].title}: lr {lr:g}, val acc {result.summary['val_acc']:.4f}")
        best, _ = max(zip(trials, TUNE_FACTORS, strict=True), key=lambda tried: (tried[0]["val_acc"], tried[1] == 1.0))
        chosen[method] = {"trials": trials, "lr": best["lr"], "default_lr": default, "chosen_on": "val_acc",
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
