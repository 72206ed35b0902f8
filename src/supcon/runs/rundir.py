"""``RunDir``: the one place that knows what a run directory holds, which method it ran and how far it got.

A run directory holds ``config.yaml`` (every option, resolved; written when the run starts, so that
``--resume`` can read it), ``metrics.jsonl`` (one line per epoch and stage), ``results.json`` (written once, when
the run finishes: the data set, the run summaries, the input scaling, the class names), the weights as
``encoder``/``projection``/``linear.safetensors``, ``curves.png``, ``tsne.png``, ``skipped_images.txt`` and,
while a stage trains, ``checkpoints/``. A ``compare`` directory holds the same top-level files and one run
directory per method (``supcon/``, ``ce/``); a sweep cell that failed holds ``failed.json`` instead of results.

>>> run = RunDir("runs/compare-digits")
>>> run.method(), [part.path.name for part in run.parts()]
('compare', ['supcon', 'ce'])
>>> run.parts()[0].summary()["val_acc"]
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from supcon.config import Config
from supcon.device import machine
from supcon.engine.checkpoint import DIRNAME, Checkpoints
from supcon.io import atomic_write_text, read_json, save_weights, write_json
from supcon.methods import COMPARABLE, METHODS, method_for, upgrade_method

CONFIG, RESULTS, METRICS, SKIPPED, FAILED = "config.yaml", "results.json", "metrics.jsonl", "skipped_images.txt", \
    "failed.json"
PARTS = COMPARABLE  # a comparison's runs, one folder per method, in the order its tables show them
SEED_PREFIX = "seed-"  # a comparison of several seeds keeps each seed's runs in seed-S/
STAGES = ("pretrain", "linear", "finetune", "ce")
# Summary keys renamed since: a run written before still reads as one written now.
RENAMED = {"supcon_loss": "stage1_loss", "supcon_loss_start": "stage1_loss_start",
           "supcon_loss_floor": "stage1_loss_floor"}
FINISHED_SUFFIX = "-finished.json"  # a finished stage's summary, kept until the run's results.json is written
STAGE1_ENCODER = "pretrain-encoder.safetensors"  # stage 1's encoder while fine-tuning changes the run's own


def upgrade_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """A run summary with the keys of older versions renamed to today's, and its method named by the registry."""
    return upgrade_method({RENAMED.get(k, k): v for k, v in summary.items()
                           if not (k in RENAMED and RENAMED[k] in summary)})


class RunDir:
    """A run directory: its files, its method, its finished stages and its checkpoints."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    def file(self, name: str) -> Path:
        """The path of one of the run's files (``results.md``, ``tsne.png``, ...)."""
        return self.path / name

    def weights(self, name: str) -> Path:
        """``encoder``, ``projection`` or ``linear``: the path of that module's safetensors."""
        return self.path / f"{name}.safetensors"

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``: one line per epoch and stage."""
        return self.path / METRICS

    # ------------------------------------------------------------------------------------------ reading
    def is_run(self) -> bool:
        """Whether the run finished: its ``results.json`` is there."""
        return (self.path / RESULTS).is_file()

    def is_record_only(self) -> bool:
        """Whether this is a finished run's record without its weights: ``results.json``, ``config.yaml`` and
        ``metrics.jsonl`` as ``experiments/collect.py`` commits them to docs/runs, so that a study continues from
        what is committed. A run killed while writing its outputs still has its checkpoints, and is not one."""
        return (self.is_run() and not any(self.weights(n).is_file() for n in ("encoder", "linear"))
                and not (self.path / DIRNAME).is_dir())

    def require(self) -> RunDir:
        """This run directory, or a one-line ValueError when it holds no finished run."""
        if not self.is_run():
            raise ValueError(f"{self.path} is not a run directory (no results.json)")
        return self

    def results(self) -> dict[str, Any]:
        """``results.json``, its summaries in today's keys."""
        results = read_json(self.path / RESULTS)
        if isinstance(results, dict) and isinstance(results.get("runs"), list):
            results["runs"] = [self._upgraded(r) if isinstance(r, dict) else r for r in results["runs"]]
        return results

    def _upgraded(self, summary: dict[str, Any]) -> dict[str, Any]:
        """:func:`upgrade_summary`, and a comparison's fine-tuned SupCon of before the registry told apart from a
        transfer, which its summary alone does not: it is a ``supcon-finetune/`` run on a ``supcon/`` run's encoder."""
        upgraded = upgrade_summary(summary)
        source = summary.get("encoder_from")
        if (upgraded.get("method") == "transfer" and "encoder_method" not in summary and source
                and self.path.name == "supcon-finetune" and Path(source).name == "supcon"):
            upgraded["method"] = "supcon-finetune"
        return upgraded

    def summary(self) -> dict[str, Any]:
        """The summary of the run (a comparison holds several: read its parts)."""
        runs = self.results().get("runs") or []
        if len(runs) != 1:
            raise ValueError(f"{self.path} holds a comparison, not one run; give one of its runs: "
                             f"{', '.join(str(p.path) for p in self.parts())}")
        return runs[0]

    def config(self) -> Config:
        """The run's options (``config.yaml``)."""
        if not (self.path / CONFIG).is_file():
            raise ValueError(f"{self.path} is not a run directory (no config.yaml)")
        return Config.from_yaml(self.path / CONFIG)

    def config_values(self) -> dict[str, Any]:
        """``config.yaml`` read as plain YAML, so that a file of another version still reads (unknown keys too)."""
        path = self.path / CONFIG
        return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}

    def seed_dirs(self) -> list[Path]:
        """A comparison of several seeds: its ``seed-S/`` folders, by seed; empty otherwise."""
        found = [p for p in self.path.glob(f"{SEED_PREFIX}*") if p.is_dir() and p.name[len(SEED_PREFIX):].isdigit()]
        return sorted(found, key=lambda p: int(p.name[len(SEED_PREFIX):]))

    def parts(self) -> list[RunDir]:
        """A comparison's runs that have results (``supcon/``, ``ce/``, or those of each ``seed-S/``); empty for a
        single run."""
        homes = self.seed_dirs() or [self.path]
        return [RunDir(home / name) for home in homes for name in PARTS if (home / name / RESULTS).is_file()]

    def is_compare(self) -> bool:
        """Whether this is a comparison's directory (it has a ``supcon/`` or ``ce/`` run, or ``seed-S/`` folders)."""
        return any((self.path / name).is_dir() for name in PARTS) or bool(self.seed_dirs())

    def checkpoint_stages(self) -> set[str]:
        """The stages that have checkpoints here."""
        return {p.name.split("-epoch")[0] for p in (self.path / DIRNAME).glob("*-epoch*.pt")}

    def method(self) -> str | None:
        """The method of the run (a name of :data:`supcon.methods.METHODS`), or ``compare`` for a comparison;
        None before anything was written. A run still training is known by its checkpoints and options."""
        if self.is_compare():
            return "compare"
        try:
            if self.is_run():
                return self.summary().get("method")
        except (ValueError, AttributeError):
            return None
        stages = self.checkpoint_stages()
        if "ce" in stages:
            return "ce"
        if stages or (self.path / DIRNAME / f"pretrain{FINISHED_SUFFIX}").is_file():
            values = self.config_values()  # plain YAML: a config of another version still reads
            return method_for(SimpleNamespace(**{k: values.get(k) for k in ("loss", "stage2", "encoder_from")})).name
        return None

    def commands(self) -> tuple[str, ...]:
        """The ``supcon`` commands that made this run and resume it (empty before anything was written)."""
        method = self.method()
        if method == "compare":
            return ("compare",)
        return METHODS[method].commands if method in METHODS else ()

    def resolve(self, method: str | None = None) -> RunDir:
        """The one finished run that a command reading a trained model uses: this run, or in a comparison (or one
        seed's folder of it) its ``method``'s run, by default SupCon's (its first seed's, where there are
        several). A one-line ValueError names the methods there when ``method`` is not among them."""
        if not self.path.is_dir() or not (self.is_run() or (self.path / CONFIG).is_file()):
            raise ValueError(f"{self.path} is not a run directory (no results.json)")
        if not self.is_compare():
            run = self.require()
            if method is not None and run.method() != method:
                raise ValueError(f"{self.path} is a {run.method()} run, not {method}; --method chooses among the "
                                 "runs of a compare directory")
            return run
        home = (self.seed_dirs() or [self.path])[0]
        present = {part.path.name: part for part in self.parts() if part.path.parent == home}
        if not present:
            raise ValueError(f"{self.path} holds no finished run yet (no results.json in its method folders)")
        chosen = method or next((name for name in present if name != "ce"), next(iter(present)))
        if chosen not in present:
            raise ValueError(f"{self.path} has no {chosen} run; --method must be one of {', '.join(present)}")
        return present[chosen]

    def failure(self) -> dict[str, Any] | None:
        """The failure a sweep recorded for this cell (``failed.json``), or None."""
        return read_json(self.path / FAILED) if (self.path / FAILED).is_file() else None

    # ------------------------------------------------------------------------------------------ stages
    def checkpoints(self, stage: str, keep: int = 2, every: int = 0, config: dict[str, Any] | None = None
                    ) -> Checkpoints:
        """``stage``'s checkpoints in this run (see :class:`~supcon.engine.checkpoint.Checkpoints`)."""
        return Checkpoints(self.path, stage, keep, every, config)

    def stage_finished(self, stage: str) -> dict[str, Any] | None:
        """The run summary if ``stage`` (``pretrain``, ``linear`` or ``ce``) finished here, else None.

        A stage has finished when its weights and summary are written and its checkpoints are gone: a stage
        deletes them as its very last act, so one killed while writing its outputs still has them and is resumed
        instead. A first stage followed by another in the same run keeps its summary in ``checkpoints/`` until
        the run writes ``results.json``.
        """
        if Checkpoints(self.path, stage).has_any():
            return None
        marker = self.path / DIRNAME / f"{stage}{FINISHED_SUFFIX}"
        if marker.is_file():
            return upgrade_summary(read_json(marker)["runs"][0])
        try:
            run = self.summary()
        except (ValueError, KeyError, IndexError, TypeError, OSError, AttributeError):
            return None
        method = METHODS.get(run.get("method"))
        if method is None:
            return None
        if stage == "ce":
            done = method.name == "ce"
        elif stage == "pretrain":  # stage 1 of the run's own, not another run's encoder
            done = method.trains_stage1 and not run.get("encoder_from") and self.weights("encoder").is_file()
        else:
            done = run.get("val_acc") is not None and self.weights("linear").is_file() and method.name != "ce"
        return run if done else None

    def mark_stage_finished(self, stage: str, record: dict[str, Any]) -> None:
        """Keep a finished first stage's record (``results.json``'s form: its summary in ``runs``, its ``input``)
        until the run's own ``results.json`` is written."""
        write_json(self.path / DIRNAME / f"{stage}{FINISHED_SUFFIX}", record)

    def record(self) -> dict[str, Any]:
        """``results.json`` or, in a run whose first stage alone has finished, that stage's record."""
        if self.is_run():
            return self.results()
        for stage in STAGES:
            marker = self.path / DIRNAME / f"{stage}{FINISHED_SUFFIX}"
            if marker.is_file():
                record = read_json(marker)
                record["runs"] = [upgrade_summary(r) for r in record["runs"]]
                return record
        raise ValueError(f"{self.path} is not a run directory (no results.json)")

    def stage1_encoder(self) -> Path:
        """Where a run that fine-tunes keeps its stage-1 encoder until it finishes (a resumed stage 2 starts there)."""
        return self.path / DIRNAME / STAGE1_ENCODER

    def refuse_finished(self, stage: str) -> None:
        """A one-line error: ``--resume`` of a stage that has finished has nothing to do."""
        if self.stage_finished(stage) is not None:
            raise ValueError(f"nothing to resume: the {stage} stage in {self.path} has finished (results.json)")

    # ------------------------------------------------------------------------------------------ writing
    def start(self, cfg: Config, fresh: bool = True) -> None:
        """Create the directory and write ``config.yaml`` (what ``--resume`` reads back). A fresh run deletes an
        earlier run's metrics and results: a results.json beside a new config would make a run killed now look
        finished."""
        self.path.mkdir(parents=True, exist_ok=True)
        if fresh:
            for name in (METRICS, RESULTS, FAILED):
                (self.path / name).unlink(missing_ok=True)
            for marker in (*(self.path / DIRNAME).glob(f"*{FINISHED_SUFFIX}"), self.stage1_encoder()):
                marker.unlink(missing_ok=True)
        cfg.save(self.path / CONFIG)

    def drop_stage_metrics(self, stage: str) -> None:
        """``metrics.jsonl`` without ``stage``'s lines (a repeated probe replaces the last one)."""
        path = self.path / METRICS
        if path.is_file():
            lines = path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if line.strip() and json.loads(line).get("stage") != stage]
            if len(kept) != len(lines):
                atomic_write_text(path, "".join(kept))

    def save_weights(self, modules: dict[str, Any]) -> None:
        """Each module's weights as ``NAME.safetensors`` (``encoder``, ``projection``, ``linear``), atomically."""
        for name, module in modules.items():
            save_weights(self.weights(name), module)

    def write_results(self, results: dict[str, Any], skipped: list[tuple[str, str]] = ()) -> None:
        """``results.json`` (with the ``machine`` it ran on) and, where images were skipped,
        ``skipped_images.txt`` (``path<TAB>reason``)."""
        write_json(self.path / RESULTS, {**results, "machine": machine()})
        if skipped:
            atomic_write_text(self.path / SKIPPED, "".join(f"{p}\t{why}\n" for p, why in skipped))

    def record_failure(self, cfg: Config, failure: dict[str, Any]) -> None:
        """A sweep cell that failed the way training can fail: its options and error; never resumed."""
        import shutil

        cfg.save(self.path / CONFIG)
        write_json(self.path / FAILED, failure)
        shutil.rmtree(self.path / DIRNAME, ignore_errors=True)

    def finish(self) -> None:
        """The run's last act: its checkpoints and finished-stage summaries go."""
        directory = self.path / DIRNAME
        if directory.is_dir():
            for p in directory.iterdir():
                if p.is_file() and (p.name.endswith(FINISHED_SUFFIX) or "-epoch" in p.name or p.name == STAGE1_ENCODER):
                    p.unlink(missing_ok=True)
            try:
                directory.rmdir()
            except OSError:  # something else in it: leave it
                pass


@dataclass
class FoundRun:
    """A run found by :func:`find_runs`, with a comparison's own runs as its ``parts``."""

    run: RunDir
    results: dict[str, Any]
    parts: list[FoundRun] = field(default_factory=list)

    @property
    def path(self) -> Path:
        """The run's directory."""
        return self.run.path


def find_runs(dirs: Iterable[str | Path]) -> list[FoundRun]:
    """The runs in ``dirs``, in the order given (runs found below a directory sorted by path); a run inside
    another (a comparison's ``ce/`` and ``supcon/``) is a part of the outer one."""
    runs: list[FoundRun] = []
    seen: set[Path] = set()
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ValueError(f"{d} is not a run directory (no results.json)")
        tops = sorted({p.parent for p in d.rglob(RESULTS)})
        if not tops:
            raise ValueError(f"{d} is not a run directory (no results.json), and none is below it")
        outer = [p for p in tops if not any(q in p.parents for q in tops)]
        for path in outer:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            parts = [FoundRun(RunDir(p), RunDir(p).results()) for p in tops if path in p.parents]
            runs.append(FoundRun(RunDir(path), RunDir(path).results(), parts))
    return runs


def expand_runs(dirs: Iterable[str | Path]) -> list[tuple[str, RunDir]]:
    """``(name, run)`` for each run to evaluate, in the order given, a comparison as its ``supcon/`` then ``ce/``
    run; each run once; a one-line ValueError for a directory that is not a run."""
    named: list[tuple[str, RunDir]] = []
    for given in map(Path, dirs):
        parts = RunDir(given).parts()
        if parts:
            named += [(f"{given.name}/{p.path.relative_to(given).as_posix()}", p) for p in parts]
        elif RunDir(given).is_run():
            named.append((given.name, RunDir(given)))
        else:
            raise ValueError(f"{given} is not a run directory (no results.json, and no supcon/ or ce/ run in it)")
    names = [name for name, _ in named]
    if len(set(names)) < len(names):  # same-named directories in different places: name them by path
        named = [(str(run.path), run) for _, run in named]
    unique, seen = [], set()
    for name, run in named:
        if run not in seen:
            seen.add(run)
            unique.append((name, run))
    return unique
