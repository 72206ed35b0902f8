#!/usr/bin/env bash
# docs/results.md's forms of SupCon: fine-tuning (stage 2 trains the whole network from stage 1's encoder) and
# the joint objective (SupCon + CE in one stage), beside SupCon + linear probe and CE, under `compare`'s defaults
# with the same 3 seeds and splits. Each data set's comparison of experiments/compare-three-datasets.sh (run it
# first) is copied and resumed with the two new methods, so its SupCon and CE runs are kept, not trained again.
#
#   bash experiments/forms-three-datasets.sh [NAME ...]    # default: imagenet5 flowers5 cats_vs_dogs; resumable
#
# Raw results go to docs/runs/forms-<name>-64-seeds3/.
set -eu
py=${PYTHON:-python3}
for name in "${@:-imagenet5 flowers5 cats_vs_dogs}"; do
  for one in $name; do
    source="runs/compare-${one}-64-seeds3"
    out="runs/forms-${one}-64-seeds3"
    [ -f "$source/results.json" ] || { echo "run experiments/compare-three-datasets.sh first: no $source"; exit 2; }
    [ -d "$out" ] || cp -r "$source" "$out"
    $py -m supcon compare --resume "$out" --methods ce,supcon,supcon-finetune,supcon+ce --quiet
    $py experiments/collect.py "$out" "docs/runs/forms-${one}-64-seeds3"
  done
done
