"""``sweep``: a grid of runs, the reference study's table and a bar chart; resumable cell by cell.

A grid is a base :class:`~supcon.config.Config` and two sets of axes: the SupCon cells are the product of
``grid`` (by default the study's optimizer x learning-rate strategy x augmentation), the cross-entropy cells the
product of ``ce_grid`` (by default each optimizer). ``variants`` (optional) is a list of option sets, each
applied on top of every SupCon combination: a one-factor-at-a-time study, where a full product would waste cells.
Every cell is a complete run directory under
``OUT/cells/``; a cell counts as finished when its ``results.json`` holds a validation accuracy and its
``config.yaml`` matches the cell's configuration, so a sweep killed at any point and started again redoes only
unfinished cells. ``OUT/sweep.md``, ``sweep.csv`` and ``sweep.png`` are rewritten after every cell.

>>> from supcon.experiments.sweep import Sweep, run_sweep
>>> sweep = Sweep(Config(dataset="digits", epochs=5))      # the study's grid on digits
>>> rows = run_sweep(sweep, "runs/sweep-digits", jobs=1)
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import typing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from supcon.config import TSNE_POINTS, Config, load_yaml, result_neutral_options
from supcon.engine.callbacks import Callback
from supcon.evaluate.inference import outputs
from supcon.evaluate.tsne import draw_tsne, tsne_subset
from supcon.experiments.compare import seeds_of
from supcon.experiments.statistics import difference, method_summary, t_interval
from supcon.io import atomic_write_text, write_json
from supcon.methods import method_for
from supcon.reporting.sweep import describe_cell, write_tables
from supcon.runs import RunDir
from supcon.runs.load import data_for_run, load_encoder
from supcon.runs.rundir import SEED_PREFIX
from supcon.stages import load_data, train_run

STUDY_GRID = {"optimizer": ["sgd", "adam", "rmsprop"], "schedule": ["fixed", "cosine"], "augment": ["none", None]}
STUDY_CE_GRID = {"optimizer": ["sgd", "adam", "rmsprop"]}


@dataclass
class Sweep:
    """The base configuration and the axes of the SupCon and cross-entropy cells.

    An axis value ``None`` in the default grid stands for the base configuration's value (the study's
    "with augmentation" is the base ``augment`` policy).
    """

    base: Config
    grid: dict[str, list[Any]] = field(default_factory=lambda: dict(STUDY_GRID))
    ce_grid: dict[str, list[Any]] = field(default_factory=lambda: dict(STUDY_CE_GRID))
    variants: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = {f.name for f in dataclasses.fields(Config)}
        for variant in self.variants:
            if not isinstance(variant, dict):
                raise ValueError(f"a sweep variant is a mapping of option: value; got {variant!r}")
            unknown = sorted(set(variant) - names)
            if unknown:
                raise ValueError(f"unknown option {unknown[0]!r} in sweep variant {variant!r}")
            self.base.replace(**variant)  # validates the values now rather than when the cell starts
        for axes in (self.grid, self.ce_grid):
            for key, values in axes.items():
                if key not in names:
                    raise ValueError(f"unknown sweep axis {key!r}; axes are Config options: {', '.join(sorted(names))}")
                if not isinstance(values, list) or not values:
                    raise ValueError(f"sweep axis {key!r} needs a non-empty list of values; got {values!r}")

    @classmethod
    def from_options(cls, base: Config, config_file: str | Path | None = None, grid: list[str] | None = None,
                     ce_grid: list[str] | None = None, variants: list[str] | None = None, no_ce: bool = False
                     ) -> Sweep:
        """The sweep a command line describes: the sweep file's ``grid``, ``ce_grid`` and ``variants`` (else the
        study's grid), each replaced by its flags (``KEY=V1,V2`` axes, ``KEY=V,KEY=V`` variants); ``no_ce``
        drops the cross-entropy cells."""
        axes, ce_axes, chosen = dict(STUDY_GRID), dict(STUDY_CE_GRID), []
        if config_file:
            values = load_yaml(config_file)
            for key in ("grid", "ce_grid"):
                if key in values and not isinstance(values[key], dict):
                    raise ValueError(f"{config_file}: {key} must be a mapping of option: [values]")
            if "variants" in values and not isinstance(values["variants"], list):
                raise ValueError(f"{config_file}: variants must be a list of option mappings")
            axes, ce_axes = values.get("grid", axes), values.get("ce_grid", ce_axes)
            chosen = [{k.replace("-", "_"): v for k, v in (variant or {}).items()} if isinstance(variant, dict)
                      else variant for variant in values.get("variants", [])]
        if variants:
            chosen = [parse_variant(text) for text in variants]
        if grid:
            axes = dict(parse_axis(text) for text in grid)
        if ce_grid:
            ce_axes = dict(parse_axis(text) for text in ce_grid)
        return cls(base, axes, {} if no_ce else ce_axes, chosen)

    def cells(self) -> list[tuple[str, str, Config]]:
        """``(name, method, config)`` for every cell, SupCon cells first, in grid order."""
        return [(name, method, cfg) for name, method, cfg, _ in self.cells_with_variants()]

    def cells_with_variants(self) -> list[tuple[str, str, Config, dict[str, Any] | None]]:
        """:meth:`cells`, each with the variant it applied (None where the sweep has no variants, and for CE)."""
        cells = []
        for method, axes in (("supcon", self.grid), ("ce", self.ce_grid)):
            keys = list(axes)
            variants = self.variants if method == "supcon" and self.variants else [{}]
            if not keys and variants == [{}]:
                continue
            for combo in itertools.product(*(axes[k] for k in keys)):
                changes = {k: (getattr(self.base, k) if v is None else v) for k, v in zip(keys, combo, strict=True)}
                for variant in variants:
                    cfg = self.base.replace(**{**changes, **variant})
                    slugs = [_slug(changes[k]) for k in keys] + ([variant_slug(variant)] if variants != [{}] else [])
                    cells.append(("-".join([method, *slugs]), method, cfg,
                                  variant if method == "supcon" and self.variants else None))
        names = [c[0] for c in cells]
        if len(set(names)) != len(names):
            raise ValueError("two sweep cells have the same name; make the axes' values distinct")
        return cells


def variant_slug(variant: dict[str, Any]) -> str:
    """A variant's part of a cell name: ``base`` for no change, else ``temperature_0.2_lr_0.3``."""
    return "_".join(f"{k}_{_slug(v)}" for k, v in variant.items()) if variant else "base"


def _slug(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return "".join(c if c.isalnum() or c == "." else "_" for c in text)


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """``KEY=V1,V2,...`` from the command line, each value converted to the Config option's type."""
    key, sep, values = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not values:
        raise ValueError(f"a sweep axis is written KEY=VALUE1,VALUE2,...; got {text!r}")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if key not in fields:
        raise ValueError(f"unknown sweep axis {key!r}; axes are Config options")
    hint = typing.get_type_hints(Config)[key]
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    kind = kinds[0]

    def convert(v: str):
        v = v.strip()
        if v.lower() in ("none", "null") and type(None) in typing.get_args(hint):
            return None
        if kind is bool:
            if v.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError(f"sweep axis {key!r} takes true/false; got {v!r}")
            return v.lower() in ("true", "yes", "1")
        try:
            return kind(v)
        except ValueError:
            raise ValueError(f"sweep axis {key!r} takes {kind.__name__} values; got {v!r}") from None

    return key, [convert(v) for v in values.split(",")]


def parse_variant(text: str) -> dict[str, Any]:
    """``KEY=V,KEY=V`` (or ``base``, no change) from the command line, each value of its option's type."""
    if text.strip() == "base":
        return {}
    variant = {}
    for pair in text.split(","):
        key, values = parse_axis(pair)
        variant[key] = values[0]
    return variant


# ---------------------------------------------------------------------------------------------- running


def _comparable(cfg: Config) -> dict[str, Any]:
    neutral = result_neutral_options()
    return {k: v for k, v in cfg.to_dict().items() if k not in neutral}


def cell_finished(run: RunDir, cfg: Config) -> dict[str, Any] | None:
    """The finished cell's run summary (or its recorded failure), or None when it must be (re)done."""
    try:
        saved = run.config()
        done = run.failure() or run.summary()
    except (ValueError, OSError, KeyError, AttributeError):
        return None
    if _comparable(saved) != _comparable(cfg) or (done.get("val_acc") is None and "error" not in done):
        return None
    return done


def stale_options(run: RunDir, cfg: Config) -> list[str]:
    """The options (``name: saved -> wanted``) in which a finished cell differs from ``cfg``; empty when the cell
    is unfinished or the same. Redoing such a cell would throw its result away."""
    try:
        saved = run.config()
        done = run.failure() or run.summary()
    except (ValueError, OSError, KeyError, AttributeError):
        return []
    if done.get("val_acc") is None and "error" not in done:
        return []
    old, new = _comparable(saved), _comparable(cfg)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def run_cell(method: str, cfg: Config, run_dir: str | Path, threads: int | None = None, data=None,
             callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train one cell into ``run_dir`` (from scratch) and return its run summary; ``method`` is ``ce`` or
    ``supcon`` (the cell's stage-1 loss and stage 2 say which contrastive method it trains).

    A cell that fails the way training can fail (a diverging loss, for instance SGD at a fixed large rate) is a
    result, not a crash: its error is recorded in ``failed.json`` and the sweep goes on.
    """
    if threads:
        torch.set_num_threads(threads)
    run = RunDir(run_dir)
    data = data if data is not None else load_data(cfg)
    try:
        trained = "ce" if method == "ce" else method_for(cfg)
        return train_run(trained, cfg, data, run.path, callbacks=callbacks).summary
    except FloatingPointError as err:
        failure = {"method": method, "loss": "ce" if method == "ce" else cfg.loss, "error": str(err),
                   "val_acc": None, "train_acc": None, "stage1_loss": None, "seconds": None}
        run.record_failure(cfg, failure)
        return failure


def cell_units(sweep: Sweep, out: Path, quiet: bool) -> list[tuple[str, str, Config, Path]]:
    """``(cell, method, config, run directory)`` for every cell and seed: ``cells/NAME/`` for one seed,
    ``cells/NAME/seed-S/`` for several."""
    seeds = seeds_of(sweep.base)
    units = []
    for name, method, cfg in sweep.cells():
        for seed in seeds:
            run_dir = out / "cells" / name / (f"{SEED_PREFIX}{seed}" if len(seeds) > 1 else "")
            units.append((name, method, cfg.replace(seed=seed, out=str(run_dir), quiet=cfg.quiet or quiet), run_dir))
    return units


def run_sweep(sweep: Sweep, out: str | Path, jobs: int = 1, log: Callable[[str], None] = print,
              redo: bool = False, data=None, callbacks: Sequence[Callback] = ()) -> list[dict[str, Any]]:
    """Run every unfinished cell and seed (``jobs`` at a time, each in its own process when ``jobs > 1``), then
    write ``sweep.md``, ``sweep.csv``, ``sweep.png`` and ``sweep.json`` (the best cell of each method, chosen on
    validation accuracy, and their difference on test); return one row per cell.

    A cell that finished under other options (the sweep was started again with a changed flag, say) is an error
    rather than silently redone, since redoing it deletes its result; ``redo=True`` redoes such cells. ``data``
    (one process only) trains every cell on data already loaded; ``callbacks`` join every stage's loop.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1; got {jobs}")
    if data is not None and jobs > 1:
        raise ValueError("data already loaded is for a sweep in one process (jobs=1)")
    out = Path(out)
    units = cell_units(sweep, out, quiet=jobs > 1)
    if not redo:
        for name, _, cfg, run_dir in units:
            changed = stale_options(RunDir(run_dir), cfg)
            if changed:
                raise ValueError(f"cell {name} in {out} finished with other options ({'; '.join(changed[:3])}); "
                                 "keep them, choose another --out, or pass --redo to redo such cells")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    _save_sweep(sweep, out / "sweep.yaml")
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for name, method, cfg, run_dir in units:
        done = cell_finished(RunDir(run_dir), cfg)
        if done is not None:
            summaries[(name, cfg.seed)] = done
        else:
            todo.append((name, method, cfg, run_dir))
    seeds = f" x {sweep.base.seeds} seeds = {len(units)} runs" if sweep.base.seeds > 1 else ""
    log(f"sweep: {len(sweep.cells())} cells{seeds}, {len(summaries)} already finished, {len(todo)} to run")

    def finished(name: str, seed: int, summary: dict[str, Any]) -> None:
        summaries[(name, seed)] = summary
        _write_tables(sweep, by_cell(sweep, summaries), out)
        outcome = (f"failed: {summary['error']}" if "error" in summary
                   else f"val acc {summary['val_acc']:.4f} ({summary['seconds']:.0f} s)")
        log(f"  {len(summaries)}/{len(units)} {name} (seed {seed}): {outcome}")

    _run_units(todo, jobs, data, log, finished, callbacks)
    cells = by_cell(sweep, summaries)
    _write_tables(sweep, cells, out)
    write_json(out / "sweep.json", best_cells(sweep, cells))
    if sweep.base.tsne:
        plot_best_tsne(sweep, cells, out / "tsne.png", log)
    return table_rows(sweep, cells)


def _run_units(todo, jobs: int, data, log, finished, callbacks: Sequence[Callback]) -> None:
    if jobs == 1:
        for name, method, cfg, run_dir in todo:
            log(f"  running {name} (seed {cfg.seed})")
            finished(name, cfg.seed, run_cell(method, cfg, run_dir, data=data, callbacks=callbacks))
    elif todo:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        import multiprocessing

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_cell, method, cfg, run_dir, threads, callbacks=callbacks): (name, cfg.seed)
                       for name, method, cfg, run_dir in todo}
            for future in as_completed(futures):
                finished(*futures[future], future.result())


def by_cell(sweep: Sweep, summaries: dict[tuple[str, int], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each cell's finished runs, in seed order."""
    seeds = seeds_of(sweep.base)
    return {name: [summaries[(name, s)] for s in seeds if (name, s) in summaries] for name, _, _ in sweep.cells()}


def _mean(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def table_rows(sweep: Sweep, cells: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per cell, in grid order: its settings and, over its seeds, the mean of each result and the test
    accuracy's 95 % t-interval; cells not run yet have empty results."""
    rows = []
    for name, method, cfg, variant in sweep.cells_with_variants():
        runs = cells.get(name) or []
        done = [r for r in runs if r.get("val_acc") is not None]
        axes = list(sweep.grid if method == "supcon" else sweep.ce_grid)
        tests = [r["test_acc"] for r in done if r.get("test_acc") is not None]
        rows.append({"cell": name, "method": method, "setting": describe_cell(method, cfg, axes, variant),
                     "loss": cfg.loss if method == "supcon" else "ce", "optimizer": cfg.resolved_optimizer(method),
                     "lr": cfg.resolved_lr(method), "schedule": cfg.schedule, "augment": cfg.augment,
                     "epochs": cfg.epochs, "seeds": len(done),
                     "stage1_loss": _mean(done, "stage1_loss"), "stage1_progress": _mean(done, "stage1_progress"),
                     "knn_acc": _mean(done, "knn_acc"), "train_acc": _mean(done, "train_acc"),
                     "val_acc": _mean(done, "val_acc"), "test_acc": _mean(done, "test_acc"),
                     "test_acc_ci": t_interval(tests), "seconds": _mean(done, "seconds"),
                     "error": next((r["error"] for r in runs if r.get("error")), None)})
    return rows


def _write_tables(sweep: Sweep, cells: dict[str, list[dict[str, Any]]], out: Path) -> None:
    write_tables(table_rows(sweep, cells), cells, best_cells(sweep, cells), out)


def best_cells(sweep: Sweep, cells: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``sweep.json``: each method's best cell, chosen on its mean validation accuracy over the seeds (the test split
    plays no part), its test accuracy with the interval over seeds, and the two best cells' difference on test."""
    seeds = sweep.base.seeds
    best: dict[str, tuple[str, float]] = {}
    for name, method, _ in sweep.cells():
        runs = cells.get(name) or []
        if len(runs) < seeds or any(r.get("val_acc") is None for r in runs):
            continue  # unfinished or failed: not a candidate
        mean = sum(r["val_acc"] for r in runs) / len(runs)
        if method not in best or mean > best[method][1]:
            best[method] = (name, mean)
    chosen = {method: {"cell": name, **method_summary(cells[name])} for method, (name, _) in best.items()}
    result: dict[str, Any] = {"seeds": seeds_of(sweep.base), "chosen_on": "val_acc", "best": chosen}
    if len(chosen) == 2 and all(r.get("test_correct") for m in chosen.values() for r in cells[m["cell"]]):
        result["difference"] = difference(cells[chosen["supcon"]["cell"]], cells[chosen["ce"]["cell"]])
    return result


def plot_best_tsne(sweep: Sweep, cells: dict[str, list[dict[str, Any]]], path: Path,
                   log: Callable[[str], None] = print) -> Path | None:
    """``tsne.png``: the best SupCon cell's encoder beside the best cross-entropy cell's (chosen on validation
    accuracy; their first seed's runs), on the same points; none, said in ``log``, where a cell's weights are gone."""
    best = best_cells(sweep, cells)["best"]
    if len(best) < 2:
        return None
    panels, data = [], None
    for method, title in (("supcon", "best SupCon cell"), ("ce", "best cross-entropy cell")):
        name, acc = best[method]["cell"], best[method]["val_acc"]
        run_dir = path.parent / "cells" / name / (f"{SEED_PREFIX}{sweep.base.seed}" if sweep.base.seeds > 1 else "")
        try:
            encoder, cfg, inputs = load_encoder(run_dir)
        except ValueError as error:  # weights deleted or damaged after the cell finished: its results still stand
            log(f"tsne.png not drawn: {error}")
            return None
        data = data or data_for_run(run_dir, cfg, inputs)
        idx = torch.from_numpy(tsne_subset(data.val.labels, TSNE_POINTS, cfg.seed))
        panels.append((f"{title}: {name} (val acc {acc:.3f})",
                       outputs(encoder, data.val.images[idx], transform=inputs.plain())))
    drawn, _ = draw_tsne(panels, data.val.labels[idx], data.val.class_names, path, sweep.base.seed)
    return drawn


def _save_sweep(sweep: Sweep, path: Path) -> None:
    import yaml

    values = {**sweep.base.to_dict(), "grid": sweep.grid, "ce_grid": sweep.ce_grid, "variants": sweep.variants}
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))
