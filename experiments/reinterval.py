"""Every committed comparison's differences recomputed with today's interval (two-level, seeds and test images;
no method verdict from one seed), beside the paired bootstrap they were published with. The runs are not
retrained: each comparison's results.json holds every run's per-image test hits.

    python experiments/reinterval.py docs/runs > docs/runs/reinterval/printed.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

from supcon.experiments.statistics import difference
from supcon.reporting.format import points
from supcon.runs import RunDir


def main(root: str) -> None:
    print("| comparison | method − CE | seeds | published (paired bootstrap) | today's interval | verdict today |")
    print("|---|---|---|---|---|---|")
    for path in sorted(Path(root).glob("*/results.json")):
        results = RunDir(path.parent).results()
        old = results.get("differences") or ({"supcon": results["difference"]} if "difference" in results else {})
        for method, published in old.items():
            mine = [r for r in results["runs"] if r["method"] == method]
            ce = [r for r in results["runs"] if r["method"] == "ce"]
            if not mine or len(mine) != len(ce) or not all(r.get("test_correct") for r in mine + ce):
                continue
            d = difference(mine, ce)
            low, high = d["ci"]
            print(f"| {path.parent.name} | {method} | {d['seeds']} | {points(published['supcon_minus_ce'])} "
                  f"[{points(published['ci'][0])}, {points(published['ci'][1])}], {published['verdict']} "
                  f"| {points(d['supcon_minus_ce'])} [{points(low)}, {points(high)}] | {d['verdict']} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/runs")
