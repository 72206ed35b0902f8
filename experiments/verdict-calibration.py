"""How often `compare`'s verdict calls a side, simulated: under the null (two methods that differ only by chance)
and with a true difference of 8 points, for 3 and 5 seeds, seeds' SD of accuracy 2-8 points, 250 and 1,000 test
images (the model of `supcon.experiments.statistics.simulated_hits`). docs/usage.md's table.

    python experiments/verdict-calibration.py > docs/runs/verdict-calibration/printed.txt   # a minute on 2 cores
"""

from __future__ import annotations

import sys

import numpy as np

from supcon.experiments.statistics import simulated_verdicts

REPLICATIONS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000


def share(verdicts: list[str], called: tuple[str, ...]) -> str:
    return f"{100 * sum(v in called for v in verdicts) / len(verdicts):.1f} %"


print(f"{REPLICATIONS} simulated comparisons per cell; seed 0 of numpy's default generator per cell")
print("| seeds | test images | seeds' SD | false calls (no true difference) | power (SupCon 8 points better) |")
print("|---|---|---|---|---|")
for seeds in (3, 5):
    for images in (250, 1000):
        for sd in (0.02, 0.04, 0.06, 0.08):
            null = simulated_verdicts(seeds, images, sd, 0.0, REPLICATIONS, np.random.default_rng(0))
            true = simulated_verdicts(seeds, images, sd, 0.08, REPLICATIONS, np.random.default_rng(0))
            print(f"| {seeds} | {images:,} | {100 * sd:.0f} points | {share(null, ('supcon_better', 'ce_better'))} "
                  f"| {share(true, ('supcon_better',))} |", flush=True)
