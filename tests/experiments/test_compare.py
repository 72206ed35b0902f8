"""compare: both methods on the same data, each of its files written once."""

from __future__ import annotations

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
