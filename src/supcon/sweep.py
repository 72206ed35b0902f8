"""``sweep``: a grid of runs, the reference study's table and a bar chart; resumable cell by cell.

A grid is a base :class:`~supcon.config.Config` and two sets of axes: the SupCon cells are the product of
``grid`` (by default the study's optimizer x learning-rate strategy x augmentation), the cross-entropy cells the
product of ``ce_grid`` (by default each optimizer). ``variants`` (optional) is a list of option sets, each
applied on top of every SupCon combination: a one-factor-at-a-time study, where a full product would waste cells.
Every cell is a complete run directory under
``OUT/cells/``; a cell counts as finished when its ``results.json`` holds a validation accuracy and its
``config.yaml`` matches the cell's configuration, so a sweep killed at any point and started again redoes only
unfinished cells. ``OUT/sweep.md``, ``sweep.csv`` and ``sweep.png`` are rewritten after every cell.

>>> from supcon.sweep import Sweep, run_sweep
>>> sweep = Sweep(Config(dataset="digits", epochs=5))      # the study's grid on digits
>>> rows = run_sweep(sweep, "runs/sweep-digits", jobs=1)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import os
import shutil
import typing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supcon.config import LOSS_NAMES, Config
from supcon.io import atomic_write_text, read_json, save_figure, write_json

STUDY_GRID = {"optimizer": ["sgd", "adam", "rmsprop"], "schedule": ["fixed", "cosine"], "augment": ["none", None]}
STUDY_CE_GRID = {"optimizer": ["sgd", "adam", "rmsprop"]}
# Options that do not change what a cell computes: a cell finished under other values still counts.
IGNORED = {"out", "quiet", "run", "device", "eval_batch_size", "tsne", "logger", "data_dir", "ckpt_every",
           "keep_checkpoints", "resume", "detect_anomaly"}


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
    return {k: v for k, v in cfg.to_dict().items() if k not in IGNORED}


def cell_finished(run_dir: Path, cfg: Config) -> dict[str, Any] | None:
    """The finished cell's run summary (or its recorded failure), or None when it must be (re)done."""
    try:
        saved = Config.from_yaml(run_dir / "config.yaml")
        if (run_dir / FAILED).is_file():
            run = read_json(run_dir / FAILED)
        else:
            run = (read_json(run_dir / "results.json").get("runs") or [{}])[0]
    except (ValueError, OSError, KeyError, AttributeError):
        return None
    if _comparable(saved) != _comparable(cfg) or (run.get("val_acc") is None and "error" not in run):
        return None
    return run


FAILED = "failed.json"


def stale_options(run_dir: Path, cfg: Config) -> list[str]:
    """The options (``name: saved -> wanted``) in which a finished cell differs from ``cfg``; empty when the cell
    is unfinished or the same. Redoing such a cell would throw its result away."""
    try:
        saved = Config.from_yaml(run_dir / "config.yaml")
        finished = FAILED if (run_dir / FAILED).is_file() else "results.json"
        run = (read_json(run_dir / finished).get("runs") or [{}])[0] if finished == "results.json" else {}
    except (ValueError, OSError, KeyError, AttributeError):
        return []
    if finished == "results.json" and run.get("val_acc") is None:
        return []
    old, new = _comparable(saved), _comparable(cfg)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def run_cell(method: str, cfg: Config, run_dir: str | Path, threads: int | None = None) -> dict[str, Any]:
    """Train one cell into ``run_dir`` (from scratch) and return its run summary.

    A cell that fails the way training can fail (a diverging loss, for instance SGD at a fixed large rate) is a
    result, not a crash: its error is recorded in ``failed.json`` and the sweep goes on.
    """
    import torch

    from supcon import train

    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    (run_dir / FAILED).unlink(missing_ok=True)
    data = train.load_data(cfg)
    try:
        result = train.train_ce(cfg, data, run_dir) if method == "ce" else train.supcon(cfg, data, run_dir)
    except FloatingPointError as err:
        failure = {"method": method, "loss": "ce" if method == "ce" else cfg.loss, "error": str(err),
                   "val_acc": None, "train_acc": None, "supcon_loss": None, "seconds": None}
        cfg.save(run_dir / "config.yaml")
        write_json(run_dir / FAILED, failure)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # a failed cell is a result, never resumed
        return failure
    return result.summary


def run_sweep(sweep: Sweep, out: str | Path, jobs: int = 1, log: Callable[[str], None] = print,
              redo: bool = False) -> list[dict[str, Any]]:
    """Run every unfinished cell (``jobs`` at a time, each in its own process when ``jobs > 1``), then write
    ``sweep.md``, ``sweep.csv`` and ``sweep.png``; return one row per cell.

    A cell that finished under other options (the sweep was started again with a changed flag, say) is an error
    rather than silently redone, since redoing it deletes its result; ``redo=True`` redoes such cells.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1; got {jobs}")
    out = Path(out)
    if not redo:
        for name, _, cfg in sweep.cells():
            changed = stale_options(out / "cells" / name, cfg.replace(out=str(out / "cells" / name)))
            if changed:
                raise ValueError(f"cell {name} in {out} finished with other options ({'; '.join(changed[:3])}); "
                                 "keep them, choose another --out, or pass --redo to redo such cells")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    _save_sweep(sweep, out / "sweep.yaml")
    cells = sweep.cells()
    summaries: dict[str, dict[str, Any]] = {}
    todo = []
    for name, method, cfg in cells:
        run_dir = out / "cells" / name
        cfg = cfg.replace(out=str(run_dir), quiet=cfg.quiet or jobs > 1)
        done = cell_finished(run_dir, cfg)
        if done is not None:
            summaries[name] = done
        else:
            todo.append((name, method, cfg, run_dir))
    log(f"sweep: {len(cells)} cells, {len(summaries)} already finished, {len(todo)} to run")

    def finished(name: str, summary: dict[str, Any]) -> None:
        summaries[name] = summary
        write_tables(sweep, summaries, out)
        outcome = (f"failed: {summary['error']}" if "error" in summary
                   else f"val acc {summary['val_acc']:.4f} ({summary['seconds']:.0f} s)")
        log(f"  {len(summaries)}/{len(cells)} {name}: {outcome}")

    if jobs == 1:
        for name, method, cfg, run_dir in todo:
            log(f"  running {name}")
            finished(name, run_cell(method, cfg, run_dir))
    elif todo:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        import multiprocessing

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_cell, method, cfg, run_dir, threads): name
                       for name, method, cfg, run_dir in todo}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    write_tables(sweep, summaries, out)
    if sweep.base.tsne:
        plot_best_tsne(sweep, summaries, out / "tsne.png")
    return table_rows(sweep, summaries)


def plot_best_tsne(sweep: Sweep, summaries: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """``tsne.png``: the best SupCon cell's encoder beside the best cross-entropy cell's, on the same points."""
    import torch

    from supcon import train
    from supcon.config import TSNE_POINTS
    from supcon.evaluate.tsne import draw_tsne, tsne_subset

    best = {}
    for name, method, _ in sweep.cells():
        acc = (summaries.get(name) or {}).get("val_acc")
        if acc is not None and (method not in best or acc > best[method][1]):
            best[method] = (name, acc)
    if len(best) < 2:
        return None
    panels, data = [], None
    for method, title in (("supcon", "best SupCon cell"), ("ce", "best cross-entropy cell")):
        name, acc = best[method]
        encoder, cfg, inputs = train.load_encoder(path.parent / "cells" / name)
        data = data or train.load_data(cfg.replace(quiet=True))
        idx = torch.from_numpy(tsne_subset(data.val.labels, TSNE_POINTS, cfg.seed))
        features = train.predict(encoder, data.val.images[idx], inputs.plain(), torch.device("cpu"))
        panels.append((f"{title}: {name} (val acc {acc:.3f})", features))
    drawn, _ = draw_tsne(panels, data.val.labels[idx], data.val.class_names, path, sweep.base.seed)
    return drawn


def _save_sweep(sweep: Sweep, path: Path) -> None:
    import yaml

    values = {**sweep.base.to_dict(), "grid": sweep.grid, "ce_grid": sweep.ce_grid, "variants": sweep.variants}
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))


# ---------------------------------------------------------------------------------------------- tables

LABELS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}


def describe_cell(method: str, cfg: Config, axes: list[str], variant: dict[str, Any] | None = None) -> str:
    """The study's row label, e.g. ``RMSprop + lr decayed + without augmentation``; other axes as ``key=value``,
    and a variant's changes as ``key=value, ...`` (``base`` for the empty variant)."""
    parts = []
    for key in axes:
        value = getattr(cfg, key)
        if key == "optimizer":
            parts.append(LABELS.get(cfg.resolved_optimizer(method), value))
        elif key == "schedule":
            parts.append({"fixed": "fixed lr", "cosine": "lr decayed (cosine)", "step": "lr decayed (step)"}[value])
        elif key == "augment":
            parts.append("without augmentation" if value == "none" else f"with augmentation ({value})")
        elif key == "loss":
            parts.append(LOSS_NAMES.get(value, value))
        else:
            parts.append(f"{key}={value}")
    if variant is not None:
        parts.append(", ".join(f"{k}={v}" for k, v in variant.items()) if variant else "base")
    prefix = "CE: " if method == "ce" else ""
    return prefix + (" + ".join(parts) if parts else ("cross-entropy" if method == "ce" else "SupCon"))


def table_rows(sweep: Sweep, summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell, in grid order; cells not run yet have empty results."""
    rows = []
    for name, method, cfg, variant in sweep.cells_with_variants():
        run = summaries.get(name) or {}
        axes = list(sweep.grid if method == "supcon" else sweep.ce_grid)
        rows.append({"cell": name, "method": method, "setting": describe_cell(method, cfg, axes, variant),
                     "loss": cfg.loss if method == "supcon" else "ce", "optimizer": cfg.resolved_optimizer(method),
                     "lr": cfg.resolved_lr(method), "schedule": cfg.schedule, "augment": cfg.augment,
                     "epochs": cfg.epochs,
                     "supcon_loss": run.get("supcon_loss"), "stage1_progress": run.get("stage1_progress"),
                     "knn_acc": run.get("knn_acc"), "train_acc": run.get("train_acc"), "val_acc": run.get("val_acc"),
                     "seconds": run.get("seconds"), "error": run.get("error")})
    return rows


def write_tables(sweep: Sweep, summaries: dict[str, dict[str, Any]], out: Path) -> None:
    rows = table_rows(sweep, summaries)
    text = sweep_markdown(rows)
    stalled = [f"{r['setting']} ({r['stage1_progress']:.0%})" for r in rows
               if r["stage1_progress"] is not None and r["stage1_progress"] < 0.5]
    if stalled:
        text += ("\n\nStage 1 did not converge (its loss covered less than half the way from its start to its floor) "
                 "in: " + "; ".join(stalled) + ". Their accuracies say more about the budget than about SupCon.")
    from supcon.compare import ce_note, knn_note

    for row in rows:
        run = summaries.get(row["cell"]) or {}
        note = knn_note(run) or ce_note(run)
        if note:
            text += f"\n\n{row['setting']}: {note}"
    atomic_write_text(out / "sweep.md", text + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "sweep.csv", buffer.getvalue())
    if any(r["val_acc"] is not None for r in rows):
        plot_sweep(rows, out / "sweep.png")


def sweep_markdown(rows: list[dict[str, Any]]) -> str:
    """The study's table, ``Optimizer + lr strategy + augmentation | stage-1 loss | train acc | val acc`` (the
    study's "Supervised Contrastive Loss" column holds whichever loss stage 1 trained with), plus the kNN
    accuracy of the encoder's features and the time."""

    def num(value, digits=4):
        return "–" if value is None else f"{value:.{digits}f}"

    lines = ["| Optimizer + lr strategy + augmentation | stage-1 loss | kNN acc | train acc | val acc | time |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        seconds = "not run yet" if r["seconds"] is None else f"{r['seconds']:.0f} s"
        if r["error"]:
            seconds = "failed: " + r["error"].split(";")[0]
        lines.append(f"| {r['setting']} | {num(r['supcon_loss'])} | {num(r.get('knn_acc'))} | {num(r['train_acc'])} "
                     f"| {num(r['val_acc'])} | {seconds} |")
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
