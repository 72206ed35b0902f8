#!/usr/bin/env bash
# docs/results.md's forms of SupCon: fine-tuning (stage 2 trains the whole network from stage 1's encoder) and
# the joint objective (SupCon + CE in one stage), beside SupCon + linear probe and CE, under `compare`'s defaults
# with the same 3 seeds and splits. Where experiments/compare-three-datasets.sh's run of a data set is still on
# disk, it is copied and resumed with the two new methods, so its SupCon and CE runs are kept, not trained again;
# otherwise all four methods are trained from scratch (the same data, seeds and splits).
#
#   bash experiments/forms-three-datasets.sh [NAME ...]    # default: imagenet5 flowers5 cats_vs_dogs; resumable
#
# Raw results go to docs/runs/forms-<name>-64-seeds3/.
set -eu
py=${PYTHON:-python3}
methods=ce,supcon,supcon-finetune,supcon+ce
for name in "${@:-imagenet5 flowers5 cats_vs_dogs}"; do
  for one in $name; do
    source="runs/compare-${one}-64-seeds3"
    out="runs/forms-${one}-64-seeds3"
    if [ ! -d "$out" ] && [ -f "$source/results.json" ]; then cp -r "$source" "$out"; fi
    if [ -f "$out/config.yaml" ]; then
      $py -m supcon compare --resume "$out" --methods "$methods" --quiet
    else
      $py -m supcon compare --dataset "npz:../shared/data/${one}_64.npz" --seeds 3 --methods "$methods" \
        --out "$out" --quiet
    fi
    docs="docs/runs/forms-${one}-64-seeds3"
    $py experiments/collect.py "$out" "$docs"
    bash experiments/paired-tables.sh forms "$one"
  done
done
