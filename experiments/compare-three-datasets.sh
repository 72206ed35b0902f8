#!/usr/bin/env bash
# The README's and docs/results.md's headline: `supcon compare` with every default (ResNet-18 from scratch at
# 64 px, 30 epochs, batch 64) on the three shared data sets, 3 training seeds each, on the held-out test split.
# A run directory resumes, so the script can be run again after an interruption and continues where it stopped.
#
#   bash experiments/compare-three-datasets.sh              # from the repository root; data in ../shared/data
#
# Raw results (results.json, metrics.jsonl, config.yaml of every run; no weights) go to docs/runs/, and seed 0's
# t-SNE picture to docs/images/tsne-<name>.png, which docs/results.md shows.
set -eu
py=${PYTHON:-python3}
for name in imagenet5 flowers5 cats_vs_dogs; do
  out="runs/compare-${name}-64-seeds3"
  if [ -f "$out/results.json" ]; then
    echo "$out finished before"
  elif [ -f "$out/config.yaml" ]; then
    $py -m supcon compare --resume "$out" --quiet
  else
    $py -m supcon compare --dataset "npz:../shared/data/${name}_64.npz" --seeds 3 --out "$out" --quiet
  fi
  $py experiments/collect.py "$out" "docs/runs/compare-${name}-64-seeds3"
  cp "$out/tsne.png" "docs/images/tsne-${name}.png"
done
