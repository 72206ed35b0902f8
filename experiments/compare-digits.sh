#!/usr/bin/env bash
# The README's and docs/usage.md's example output: `supcon compare` on the bundled digits with every default, one
# training seed (the README's first command) and three (--seeds 3, with the interval and the verdict).
#
#   bash experiments/compare-digits.sh          # from the repository root; a few minutes on 2 CPU cores
set -eu
py=${PYTHON:-python3}
for seeds in 1 3; do
  out="runs/compare-digits-seeds${seeds}"
  rm -rf "$out"
  $py -m supcon compare --seeds "$seeds" --out "$out" | tee "runs/compare-digits-seeds${seeds}.txt"
  $py experiments/collect.py "$out" "docs/runs/compare-digits-seeds${seeds}"
  cp "runs/compare-digits-seeds${seeds}.txt" "docs/runs/compare-digits-seeds${seeds}/printed.txt"
done
