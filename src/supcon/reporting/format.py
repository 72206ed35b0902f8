"""The one set of formatters of the terminal, Markdown and HTML outputs: numbers, run names and the results
table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from supcon.methods import run_title, verdict_name

COLUMNS = ("method", "test acc", "val acc", "stage-1 loss", "kNN acc", "train acc", "optimizer steps", "time")
COMPARISON_COLUMNS = ("method", "test acc (95% CI)", "val acc", "stage-1 loss", "kNN acc", "train acc",
                      "optimizer steps", "time per seed")
VERDICTS = {"supcon_better": "SupCon better at this budget", "ce_better": "cross-entropy better at this budget",
            "no_significant_difference": "no significant difference at this budget"}
MISSING = "–"
OPTIMIZER_TITLES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}


def num(value: float | None, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals; a dash for a value that is not there."""
    return MISSING if value is None else f"{value:.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    """A share as a percentage, without the sign; a dash for a value that is not there."""
    return MISSING if value is None else f"{100 * value:.{digits}f}"


def seconds(value: float | None) -> str:
    return MISSING if value is None else f"{value:.0f} s"


def optimizer_steps(runs: list[dict[str, Any]]) -> str:
    """The optimizer steps the runs' stages took (their mean over seeds): ``1,200 + 310`` for stage 1 and stage 2,
    ``540`` for a single stage; a dash for runs written before steps were recorded."""
    parts = [_mean(runs, key) for key in ("pretrain_steps", "linear_steps", "steps")]
    taken = [f"{value:,.0f}" for value in parts if value is not None]
    return " + ".join(taken) if taken else MISSING


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def results_rows(runs: list[dict[str, Any]], names: list[str] | None = None) -> tuple[tuple[str, ...], list[list[str]]]:
    """The results table's column names and one row of formatted cells per run (``names`` adds a first column)."""
    columns = (("run",) if names is not None else ()) + COLUMNS
    rows = []
    for i, run in enumerate(runs):
        rows.append(([names[i]] if names is not None else []) + [
            run_title(run), num(run.get("test_acc")), num(run.get("val_acc")), num(run.get("stage1_loss")),
            num(run.get("knn_acc")), num(run.get("train_acc")), optimizer_steps([run]), seconds(run.get("seconds"))])
    return columns, rows


def results_table(runs: list[dict[str, Any]], names: list[str] | None = None) -> str:
    """The runs as a Markdown table (one row per run; ``names`` adds a first column naming each run)."""
    return markdown_table(*results_rows(runs, names))


def _mean(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def with_interval(mean: float | None, interval: list[float] | None) -> str:
    """``0.9741 ± 0.0091`` (half the width of a symmetric interval), or the mean alone without one."""
    if interval is None:
        return num(mean)
    return f"{num(mean)} ± {(interval[1] - interval[0]) / 2:.4f}"


def comparison_rows(results: dict[str, Any]) -> tuple[tuple[str, ...], list[list[str]]]:
    """A comparison's table, one row per method: test accuracy (mean over seeds, with its 95 % t-interval),
    validation accuracy and the rest as means over seeds."""
    rows = []
    for method, line in results["methods"].items():
        runs = [r for r in results["runs"] if r["method"] == method]
        rows.append([run_title(runs[0]), with_interval(line["test_acc"], line["test_acc_ci"]),
                     num(line["val_acc"]), num(_mean(runs, "stage1_loss")), num(_mean(runs, "knn_acc")),
                     num(_mean(runs, "train_acc")), optimizer_steps(runs), seconds(_mean(runs, "seconds"))])
    return COMPARISON_COLUMNS, rows


def verdict_line(results: dict[str, Any], method: str = "supcon") -> str:
    """A comparison's answer in one line: the verdict, SupCon's (or another ``method``'s) difference from CE and
    its interval, in points; with one seed, the interval of that pair of trained models and no verdict."""
    d = results["difference"] if method == "supcon" and "difference" in results else results["differences"][method]
    low, high = d["ci"]
    name = verdict_name(method)
    interval = (f"{name} − CE = {points(d['supcon_minus_ce'])} points, {round(100 * d.get('confidence', 0.95))} % "
                f"CI [{points(low)}, {points(high)}]")
    if d["verdict"] == "needs_seeds":
        return (f"one seed, so no verdict on the methods (that needs --seeds 3 or more); this pair of trained "
                f"models: {interval} (paired bootstrap over {d['test_images']} test images)")
    seeds = d.get("seeds") or len(results.get("seeds") or [])
    if d.get("method", "").startswith("two-level"):
        what = f"two-level t-interval over {seeds} seeds and {d['test_images']} test images"
    else:  # results written before the two-level interval
        what = (f"paired bootstrap over {seeds} seeds x {d['test_images']} test images" if seeds > 1
                else f"paired bootstrap over {d['test_images']} test images, one seed")
    return f"{VERDICTS[d['verdict']].replace('SupCon', name)}: {interval} ({what})"


def points(share: float) -> str:
    """A difference of accuracies in percentage points, signed, with a true minus: ``−3.2``, ``+1.5``."""
    return f"{100 * share:+.1f}".replace("-", "−")


def verdict_lines(results: dict[str, Any]) -> list[str]:
    """One :func:`verdict_line` per method the comparison trained beside CE."""
    methods = list(results.get("differences") or ({"supcon": None} if "difference" in results else {}))
    return [verdict_line(results, method) for method in methods]


def tuning_line(tuning: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    """``compare --tune``'s trials and choices in one line: each method's optimizers and rates tried, their
    validation accuracies, and the one chosen."""
    titles = {run["method"]: run_title(run) for run in runs}

    def setting(trial: dict[str, Any]) -> str:  # trials of a tuning written before the optimizer was tried have none
        optimizer = trial.get("optimizer")
        return f"{OPTIMIZER_TITLES.get(optimizer, optimizer)} {trial['lr']:g}" if optimizer else f"lr {trial['lr']:g}"

    parts = []
    for method, t in tuning.items():
        tried = ", ".join(f"{setting(trial)}: {trial['val_acc']:.4f}" for trial in t["trials"])
        parts.append(f"{titles.get(method, method)} {setting(t)} ({tried})")
    first = next(iter(tuning.values()))
    return f"tuned on val accuracy, seed {first['seed']}, {len(first['trials'])} trials each: " + "; ".join(parts)


def answer_lines(results: dict[str, Any]) -> list[str]:
    """What a comparison found, under its table: a :func:`verdict_line` per method beside CE, then, for
    ``compare --tune``, the :func:`tuning_line`."""
    lines = verdict_lines(results)
    if results.get("tuning"):
        lines.append(tuning_line(results["tuning"], results["runs"]))
    return lines
