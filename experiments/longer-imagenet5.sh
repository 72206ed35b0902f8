#!/usr/bin/env bash
# docs/results.md's "A longer budget on ImageNet-5": does SupCon close its gap to CE when both train longer?
# `compare`'s defaults with --epochs 100 instead of 30 (every other option, the splits and the 3 seeds the same as
# the headline run), so stage 1 and CE both get 3.3x the optimizer steps; the linear probe keeps its own budget.
# A run directory resumes: run the script again after an interruption and it continues where it stopped.
#
#   bash experiments/longer-imagenet5.sh        # from the repository root; data in ../shared/data
#
# Raw results (no weights) go to docs/runs/longer-imagenet5-64-e100-seeds3/.
set -eu
py=${PYTHON:-python3}
out=runs/longer-imagenet5-64-e100-seeds3
if [ -f "$out/config.yaml" ]; then
  $py -m supcon compare --resume "$out" --quiet
else
  $py -m supcon compare --dataset npz:../shared/data/imagenet5_64.npz --seeds 3 --epochs 100 --out "$out" --quiet
fi
$py experiments/collect.py "$out" "docs/runs/longer-imagenet5-64-e100-seeds3"
