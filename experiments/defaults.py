"""The evidence for each method's default optimizer and learning rate, from the tuning trials of the protocol
runs (`experiments/protocol.sh`): every trial's val accuracy on each data set, and whether a setting beat the
current default on the val split of every set measured. Only val is read; the test split plays no part.

    python experiments/defaults.py docs/runs/protocol-*-64-seeds5

A default changes only where another setting beat it on every one of the three shared sets; with fewer sets
measured the table says which are missing, and nothing is decided.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SETS = ("imagenet5", "flowers5", "cats_vs_dogs")


def trials_of(study: Path) -> dict[str, dict[tuple[str, float], float]]:
    """Per method, each finished trial's (optimizer, rate), as its summary records them, and its val accuracy, from
    its own results.json (so a study still running gives the trials it has)."""
    found: dict[str, dict[tuple[str, float], float]] = {}
    for path in sorted((study / "tune").glob("*/results.json")):
        (run,) = json.loads(path.read_text())["runs"]
        found.setdefault(run["method"], {})[(run["optimizer"], float(run["lr"]))] = run["val_acc"]
    return found


def main(paths: list[str]) -> None:
    if not paths:
        raise SystemExit(__doc__)
    studies = {}
    for path in paths:
        name = next((s for s in SETS if f"-{s}-" in Path(path).name), Path(path).name)
        studies[name] = trials_of(Path(path))
    methods = sorted({m for trials in studies.values() for m in trials})
    names = list(studies)
    print("| method | optimizer, lr | " + " | ".join(f"{n} val acc" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for method in methods:
        settings = sorted({s for trials in studies.values() for s in trials.get(method, {})})
        for setting in settings:
            cells = []
            for n in names:
                trials = studies[n].get(method, {})
                value = trials.get(setting)
                best = value is not None and value == max(trials.values())
                cells.append("–" if value is None else f"**{value:.4f}**" if best else f"{value:.4f}")
            print(f"| {method} | {setting[0]} {setting[1]:g} | " + " | ".join(cells) + " |")
    missing = [s for s in SETS if s not in studies]
    print()
    if missing:
        print(f"Sets not yet measured: {', '.join(missing)}; no default is decided from fewer than all three.")
        return
    for method in methods:
        settings = {s for trials in studies.values() for s in trials.get(method, {})}
        winners = [s for s in settings if all(studies[n][method].get(s) == max(studies[n][method].values())
                                              for n in names)]
        print(f"{method}: " + (f"{winners[0][0]} at {winners[0][1]:g} was best on val on every set" if winners
                               else "no setting was best on val on every set; the default stays"))


if __name__ == "__main__":
    main(sys.argv[1:])
