"""The one set of formatters of the terminal, Markdown and HTML outputs: numbers, run names and the results
table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from supcon.config import LOSS_NAMES, METHOD_NAMES

COLUMNS = ("method", "stage-1 loss", "kNN acc", "train acc", "val acc", "time")
TRANSFERRED = {"supcon": "SupCon encoder + linear", "simclr": "SimCLR encoder + linear",
               "ce": "cross-entropy encoder + linear"}
MISSING = "–"


def num(value: float | None, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals; a dash for a value that is not there."""
    return MISSING if value is None else f"{value:.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    """A share as a percentage, without the sign; a dash for a value that is not there."""
    return MISSING if value is None else f"{100 * value:.{digits}f}"


def seconds(value: float | None) -> str:
    return MISSING if value is None else f"{value:.0f} s"


def method_name(run: dict[str, Any]) -> str:
    """How a table names a run: its method (``SupCon + linear``), its stage-1 loss where that is not SupCon's, and
    ``encoder + linear`` for a probe on an encoder trained elsewhere."""
    name = (TRANSFERRED if run.get("encoder_from") else METHOD_NAMES).get(run["method"], run["method"])
    if run["method"] == "supcon" and run.get("loss") not in (None, "supcon"):
        name = name.replace("SupCon", LOSS_NAMES.get(run["loss"], run["loss"]), 1)
    return name


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def results_rows(runs: list[dict[str, Any]], names: list[str] | None = None) -> tuple[tuple[str, ...], list[list[str]]]:
    """The results table's column names and one row of formatted cells per run (``names`` adds a first column)."""
    columns = (("run",) if names is not None else ()) + COLUMNS
    rows = []
    for i, run in enumerate(runs):
        rows.append(([names[i]] if names is not None else []) + [
            method_name(run), num(run.get("stage1_loss")), num(run.get("knn_acc")), num(run.get("train_acc")),
            num(run.get("val_acc")), seconds(run.get("seconds"))])
    return columns, rows


def results_table(runs: list[dict[str, Any]], names: list[str] | None = None) -> str:
    """The runs as a Markdown table (one row per run; ``names`` adds a first column naming each run)."""
    return markdown_table(*results_rows(runs, names))
