#!/usr/bin/env bash
# docs/robustness.md's measured answer: `supcon robustness` on the three `compare` runs of
# experiments/compare-three-datasets.sh (run that first): each seed's SupCon and CE classifiers on a seeded,
# class-balanced 250 images of their test split (ImageNet-5's whole test split), under the nine corruptions at
# five severities, FGSM and PGD at eps 1, 2, 4 and 8/255, with their margins and calibration; SupCon minus CE
# paired by seed, with t-intervals over the seeds.
#
#   bash experiments/robustness-three-datasets.sh [NAME...]   # from the repository root; default: all three
#
# Raw results (robustness.json, .md, .csv) and its three pictures go to docs/runs/robustness-<name>-64-seeds3/.
set -eu
py=${PYTHON:-python3}
for name in ${@:-imagenet5 flowers5 cats_vs_dogs}; do
  out="runs/robustness-${name}-64-seeds3"
  if [ -f "$out/robustness.json" ]; then
    echo "$out finished before"
  else
    $py -m supcon robustness "runs/compare-${name}-64-seeds3" --max-images 250 --out "$out" --quiet
  fi
  $py experiments/collect.py "$out" "docs/runs/robustness-${name}-64-seeds3"
  cp "$out"/robustness.png "$out"/reliability.png "$out"/margins.png "docs/runs/robustness-${name}-64-seeds3/"  # robustness.md shows them
done
