"""``report``: run directories gathered into one Markdown file: results, changed options and pictures.

A directory with a ``results.json`` is a run (a ``compare`` directory is one run whose ``ce/`` and ``supcon/``
are shown as its parts); any other directory is searched for runs below it.

>>> from supcon.report import write_report
>>> write_report(["runs/"], "report.md")
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from supcon.compare import results_table
from supcon.config import COMMANDS, Config, fields_for
from supcon.io import atomic_write_text, read_json

PICTURES = (("curves.png", "training curves"), ("tsne.png", "t-SNE of the validation embeddings"),
            ("tsne_projection.png", "t-SNE of the projection head's output"))
NOT_SETTINGS = ("out", "quiet")  # where a run was written and whether bars were shown do not change its result


@dataclass
class Run:
    path: Path
    results: dict[str, Any]
    parts: list[Run] = field(default_factory=list)  # a comparison's own run directories


def find_runs(dirs: Iterable[str | Path]) -> list[Run]:
    """The runs in ``dirs``, in the order given (runs found below a directory sorted by path)."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ValueError(f"{d} is not a run directory (no results.json)")
        tops = sorted({p.parent for p in d.rglob("results.json")})
        if not tops:
            raise ValueError(f"{d} is not a run directory (no results.json), and none is below it")
        # a run inside another run (a comparison's ce/ and supcon/) is shown as part of the outer one
        outer = [p for p in tops if not any(q in p.parents for q in tops)]
        for path in outer:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            parts = [Run(p, read_json(p / "results.json")) for p in tops if path in p.parents]
            runs.append(Run(path, read_json(path / "results.json"), parts))
    return runs


def commands_of(results: dict[str, Any]) -> tuple[str, ...]:
    """The commands that made a run, from its ``results.json``: their options are the ones that mattered."""
    runs = results.get("runs", [])
    if len(runs) > 1:
        return ("compare",)
    if runs and runs[0].get("encoder_from"):
        return ("linear",)
    if runs and runs[0].get("method") == "ce":
        return ("ce",)
    return ("pretrain", "linear")


def config_changes(run_dir: str | Path, commands: Iterable[str] = COMMANDS) -> list[tuple[str, Any, Any]]:
    """``(option, value, default)`` for each option of ``commands`` in the run's ``config.yaml`` not at its default.

    ``config.yaml`` holds every option; those of other commands (``linear_epochs`` of a ce run) are left out.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return []
    values = yaml.safe_load(path.read_text()) or {}
    defaults = Config().to_dict()
    used = {f.name for command in commands for f in fields_for(command)}
    # read as plain YAML: a config.yaml of an older or newer version still reports, unknown keys included
    return [(k, v, defaults.get(k, "–")) for k, v in values.items()
            if k not in NOT_SETTINGS and (k not in defaults or (k in used and defaults[k] != v))]


def _link(path: Path, base: Path) -> str:
    target = Path(os.path.relpath(path, base)).as_posix()
    return f"<{target}>" if " " in target else target


def _pictures(run_dir: Path, base: Path) -> list[str]:
    return [f"![{what}]({_link(run_dir / name, base)})" for name, what in PICTURES if (run_dir / name).is_file()]


def _value(value: Any) -> str:
    return "–" if value is None else f"`{value}`"


def _section(run: Run, base: Path) -> list[str]:
    results = run.results
    lines = [f"## {_link(run.path, base)}", ""]
    facts = [f"data set `{results.get('dataset', '?')}`"]
    for entry in results.get("runs", []):
        if entry.get("encoder_from"):
            facts.append(f"linear probe on the encoder of `{entry['encoder_from']}` "
                         f"(trained on `{entry.get('encoder_dataset', '?')}`)")
    if results.get("skipped_images"):
        facts.append(f"{results['skipped_images']} unreadable images skipped")
    lines += ["; ".join(facts) + ".", ""]
    changes = config_changes(run.path, commands_of(results))
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
            lines += [f"### {_link(part.path, base)}", "", " ".join(pictures), ""]
    return lines


def _rows(run: Run, base: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The table rows of a run: one per method, named after the part's directory where there is one."""
    by_method = {part.results["runs"][0]["method"]: part.path for part in run.parts if part.results.get("runs")}
    entries = run.results.get("runs", [])
    names = []
    for entry in entries:
        if len(entries) > 1 and entry["method"] in by_method:
            names.append(_link(by_method[entry["method"]], base))
        else:
            names.append(_link(run.path, base))
    return entries, names


def write_report(dirs: Iterable[str | Path], out: str | Path = "report.md") -> Path:
    """Write one Markdown report of the runs in ``dirs``; pictures are linked relative to the report."""
    out = Path(out)
    runs = find_runs(dirs)
    base = out.resolve().parent
    entries, names = [], []
    for run in runs:
        more, labels = _rows(run, base)
        entries += more
        names += labels
    lines = ["# supcon report", "",
             f"{len(runs)} run director{'y' if len(runs) == 1 else 'ies'}, written {time.strftime('%Y-%m-%d %H:%M')}.",
             "", "## Results", "", results_table(entries, names), "",
             "Options are listed where they differ from the defaults.", ""]
    for run in runs:
        lines += _section(run, base)
    atomic_write_text(out, "\n".join(lines).rstrip() + "\n")
    return out
