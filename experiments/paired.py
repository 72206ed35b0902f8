"""Paired differences on the test split between runs that share their splits and training seeds, e.g. a sweep's
max-margin cell against `compare`'s SupCon and CE runs of the same data set: the mean difference of test accuracy,
its 95 % interval over seeds and test images (`supcon.experiments.statistics.difference`), and the verdict, as
`compare` computes its own.

    python experiments/paired.py NAME=PATTERN NAME=PATTERN ...

Each PATTERN is a glob of run directories, one per seed (`docs/runs/compare-imagenet5-64-seeds3/seed-*/supcon`).
The first set is compared with each of the others; a table in Markdown goes to stdout.
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

from supcon.experiments.statistics import difference, method_summary
from supcon.reporting.format import points


def runs_of(pattern: str) -> list[dict]:
    """One summary per seed, in seed order, from each matching directory's results.json."""
    dirs = sorted(glob.glob(pattern))
    if not dirs:
        raise SystemExit(f"no run directory matches {pattern}")
    summaries = []
    for d in dirs:
        (summary,) = json.loads((Path(d) / "results.json").read_text())["runs"]
        summaries.append(summary)
    return sorted(summaries, key=lambda s: s["seed"])


def main(args: list[str]) -> None:
    if len(args) < 2 or any("=" not in a for a in args):
        raise SystemExit(__doc__)
    named = [a.split("=", 1) for a in args]
    sets = {name: runs_of(pattern) for name, pattern in named}
    (first, runs), *others = sets.items()
    print(f"| run | test acc (95% CI over seeds) | seeds | difference to {first}, points (95% CI, paired) "
          "| verdict |")
    print("|---|---|---|---|---|")
    summary = method_summary(runs)
    print(f"| {first} | {summary['test_acc']:.4f} [{summary['test_acc_ci'][0]:.4f}, {summary['test_acc_ci'][1]:.4f}]"
          f" | {len(runs)} | – | – |")
    for name, other in others:
        s = method_summary(other)
        d = difference(other, runs)
        low, high = d["ci"]
        print(f"| {name} | {s['test_acc']:.4f} [{s['test_acc_ci'][0]:.4f}, {s['test_acc_ci'][1]:.4f}] | {len(other)} "
              f"| {points(d['supcon_minus_ce'])} [{points(low)}, {points(high)}] "
              f"| {verdict(d['verdict'], name, first)} |")


def verdict(code: str, name: str, first: str) -> str:
    """`difference` names its sides SupCon and CE; here they are the other set and the first."""
    return {"supcon_better": f"{name} better", "ce_better": f"{first} better",
            "no_significant_difference": "no significant difference",
            "needs_seeds": "one seed: no verdict"}[code]


if __name__ == "__main__":
    main(sys.argv[1:])
