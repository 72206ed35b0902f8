#!/usr/bin/env bash
# The README's and docs/results.md's digits example: `supcon compare` with every default on the bundled digits,
# one training seed (the README's first command), its printed output kept beside its raw results.
#
#   bash experiments/compare-digits.sh          # from the repository root; under a minute on 2 quiet CPU cores
set -eu
py=${PYTHON:-python3}
out=runs/compare-digits-seeds1
rm -rf "$out"
$py -m supcon compare --out "$out" | tee "runs/compare-digits-seeds1.txt"
rm -rf docs/runs/compare-digits-seeds1
$py experiments/collect.py "$out" docs/runs/compare-digits-seeds1
cp runs/compare-digits-seeds1.txt docs/runs/compare-digits-seeds1/printed.txt
