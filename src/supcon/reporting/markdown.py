"""``report``: run directories gathered into one Markdown file: the results, the options each run changed from
the defaults, and its pictures.

A directory with a ``results.json`` is a run (a ``compare`` directory is one run whose ``ce/`` and ``supcon/``
are shown as its parts); any other directory is searched for runs below it.

>>> from supcon.reporting.markdown import write_report
>>> write_report(["runs/"], "report.md")
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from supcon.config import COMMANDS, Config, fields_for, result_neutral_options
from supcon.io import atomic_write_text
from supcon.reporting.format import MISSING, answer_lines, comparison_rows, markdown_table, results_table
from supcon.runs import FoundRun, RunDir, find_runs

PICTURES = (("curves.png", "training curves"), ("tsne.png", "t-SNE of the validation embeddings"),
            ("tsne_projection.png", "t-SNE of the projection head's output"))


def commands_of(run: RunDir) -> tuple[str, ...]:
    """The commands that made a run: their options are the ones that mattered (all of them, where it is not known)."""
    return run.commands() or COMMANDS


def config_changes(run_dir: str | Path, commands: Iterable[str] = COMMANDS) -> list[tuple[str, Any, Any]]:
    """``(option, value, default)`` for each option of ``commands`` in the run's ``config.yaml`` not at its default.

    ``config.yaml`` holds every option; those of other commands (``linear_epochs`` of a ce run) and those that do
    not change a result (where it ran, what it printed) are left out. It is read as plain YAML, so that a
    config.yaml of an older or newer version still reports, unknown keys included.
    """
    values = RunDir(run_dir).config_values()
    defaults = Config().to_dict()
    used = {f.name for command in commands for f in fields_for(command)}
    neutral = result_neutral_options()
    return [(k, v, defaults.get(k, MISSING)) for k, v in values.items()
            if k not in neutral and (k not in defaults or (k in used and defaults[k] != v))]


def run_link(path: Path, base: Path) -> str:
    target = Path(os.path.relpath(path, base)).as_posix()
    return f"<{target}>" if " " in target else target


def _pictures(run_dir: Path, base: Path) -> list[str]:
    return [f"![{what}]({run_link(run_dir / name, base)})" for name, what in PICTURES if (run_dir / name).is_file()]


def _value(value: Any) -> str:
    return MISSING if value is None else f"`{value}`"


def facts_sentence(results: dict[str, Any], code=lambda text: f"`{text}`") -> str:
    """The sentence under a run's heading: its data set, where a probe's encoder came from, skipped images."""
    facts = [f"data set {code(results.get('dataset', '?'))}"]
    if results.get("splits"):
        splits = results["splits"]
        facts.append(f"{splits['train']:,} train / {splits['val']:,} val / {splits['test']:,} test images")
    if len(results.get("seeds") or []) > 1:
        facts.append(f"{len(results['seeds'])} seeds ({', '.join(map(str, results['seeds']))})")
    for entry in results.get("runs", []):
        if entry.get("encoder_from"):
            facts.append(f"linear probe on the encoder of {code(entry['encoder_from'])} "
                         f"(trained on {code(entry.get('encoder_dataset', '?'))})")
    if results.get("skipped_images"):
        facts.append(f"{results['skipped_images']} unreadable images skipped")
    return "; ".join(facts) + "."


def _section(run: FoundRun, base: Path) -> list[str]:
    results = run.results
    lines = [f"## {run_link(run.path, base)}", "", facts_sentence(results), ""]
    if "methods" in results:  # a comparison: its methods over the seeds, on test, and the verdict
        lines += [markdown_table(*comparison_rows(results)), ""]
        lines += [line for verdict in answer_lines(results) for line in (verdict, "")]
    changes = config_changes(run.path, commands_of(run.run))
    if changes:
        lines += ["| option | value | default |", "|---|---|---|"]
        lines += [f"| {k} | {_value(v)} | {_value(d)} |" for k, v, d in changes]
    elif (run.path / "config.yaml").is_file():
        lines.append("Every option at its default.")
    else:
        lines.append("No config.yaml.")
    lines.append("")
    pictures = _pictures(run.path, base)
    if pictures:
        lines += [" ".join(pictures), ""]
    for part in run.parts:
        pictures = _pictures(part.path, base)
        if pictures:
            lines += [f"### {run_link(part.path, base)}", "", " ".join(pictures), ""]
    return lines


def _rows(run: FoundRun, base: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The table rows of a run: one per run it holds (a comparison's methods and seeds), each named after its own
    directory where it has one."""
    by_key = {(part.results["runs"][0]["method"], part.results["runs"][0].get("seed")): part.path
              for part in run.parts if part.results.get("runs")}
    entries = run.results.get("runs", [])
    names = []
    for entry in entries:
        key = (entry["method"], entry.get("seed"))
        names.append(run_link(by_key[key] if len(entries) > 1 and key in by_key else run.path, base))
    return entries, names


def table_entries(runs, base: Path) -> tuple[list, list[str]]:
    entries, names = [], []
    for run in runs:
        more, labels = _rows(run, base)
        entries += more
        names += labels
    return entries, names


def write_report(dirs: Iterable[str | Path], out: str | Path = "report.md") -> Path:
    """Write one Markdown report of the runs in ``dirs``; pictures are linked relative to the report."""
    out = Path(out)
    runs = find_runs(dirs)
    base = out.resolve().parent
    entries, names = table_entries(runs, base)
    lines = ["# supcon report", "",
             f"{len(runs)} run director{'y' if len(runs) == 1 else 'ies'}, written {time.strftime('%Y-%m-%d %H:%M')}.",
             "", "## Results", "", results_table(entries, names), "",
             "Options are listed where they differ from the defaults.", ""]
    for run in runs:
        lines += _section(run, base)
    atomic_write_text(out, "\n".join(lines).rstrip() + "\n")
    return out
