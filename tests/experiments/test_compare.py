"""compare: both methods on the same data, each of its files written once."""

from __future__ import annotations

import importlib.util
import shutil
from collections import Counter
from pathlib import Path

from conftest import QUICK

import supcon.io
from supcon.config import Config
from supcon.experiments.compare import compare


def test_one_compare_writes_each_file_once(digits, tmp_path, monkeypatch):
    written: Counter = Counter()
    atomic = supcon.io._atomic

    def counting(path, write):
        written[Path(path).relative_to(tmp_path).as_posix()] += 1
        return atomic(path, write)

    monkeypatch.setattr(supcon.io, "_atomic", counting)
    cfg = Config(**{**QUICK, "epochs": 1, "linear_epochs": 2, "tsne": True, "keep_checkpoints": 0})
    results = compare(cfg, tmp_path, digits, log=lambda line: None)
    assert [r["method"] for r in results["runs"]] == ["supcon", "ce"]
    expected = {"config.yaml", "results.json", "results.md", "tsne.png"}
    for method, weights in (("supcon", ("encoder", "projection", "linear")), ("ce", ("encoder", "linear"))):
        expected |= {f"{method}/{name}" for name in ("config.yaml", "results.json", "curves.png", "tsne.png")}
        expected |= {f"{method}/{name}.safetensors" for name in weights}
    assert set(written) == expected
    assert {path: n for path, n in written.items() if n != 1} == {}


def _collect():
    """experiments/collect.py's collect(): what a study commits to docs/runs."""
    path = Path(__file__).resolve().parents[2] / "experiments" / "collect.py"
    spec = importlib.util.spec_from_file_location("collect", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.collect


def test_a_comparison_continues_from_its_committed_records(digits, tmp_path):
    """What a study commits (results.json, metrics.jsonl, config.yaml; no weights) is enough to continue it in
    another session: the finished runs are read back as they were, the missing one is trained."""
    cfg = Config(**{**QUICK, "epochs": 1, "linear_epochs": 2, "seeds": 2})
    first = compare(cfg, tmp_path / "full", digits, log=lambda line: None)
    _collect()(tmp_path / "full", tmp_path / "committed")
    assert not list((tmp_path / "committed").rglob("*.safetensors"))
    shutil.rmtree(tmp_path / "committed" / "seed-1" / "ce")
    lines: list[str] = []
    again = compare(cfg.replace(resume=str(tmp_path / "committed")), tmp_path / "committed", digits, log=lines.append)
    assert sum("finished before, kept" in line for line in lines) == 3
    assert not (tmp_path / "committed" / "seed-0" / "supcon" / "encoder.safetensors").exists()
    assert (tmp_path / "committed" / "seed-1" / "ce" / "encoder.safetensors").exists()

    def timeless(runs):
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in runs]
    assert timeless(again["runs"]) == timeless(first["runs"])  # the retrained run too: training is deterministic
    assert again["difference"] == first["difference"]
