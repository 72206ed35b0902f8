"""Copy what a table in the docs is computed from out of a run directory into docs/runs/: every results.json,
metrics.jsonl, config.yaml and the tables (results.md, sweep.md, sweep.csv, sweep.json, sweep.yaml), keeping the
tree; never weights, checkpoints or pictures.

    python experiments/collect.py runs/compare-imagenet5-64 docs/runs/compare-imagenet5-64
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

KEPT = {"results.json", "metrics.jsonl", "config.yaml", "results.md", "sweep.md", "sweep.csv", "sweep.json",
        "sweep.yaml", "failed.json", "robustness.json", "robustness.md", "robustness.csv"}


def collect(source: Path, target: Path) -> int:
    copied = 0
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.name in KEPT and "checkpoints" not in path.parts:
            dest = target / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            copied += 1
    return copied


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    count = collect(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{count} files copied to {sys.argv[2]}")
