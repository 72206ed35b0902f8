#!/usr/bin/env bash
# The README's and docs/results.md's digits example: `supcon compare` with every default on the bundled digits,
# one training seed (the README's first command), its printed output kept beside its raw results.
#
#   bash experiments/compare-digits.sh          # from the repository root; under a minute on 2 quiet CPU cores
#   NAME=compare-digits-seeds1-epyc bash experiments/compare-digits.sh   # the same on another CPU, kept apart
set -eu
py=${PYTHON:-python3}
name=${NAME:-compare-digits-seeds1}
out=runs/$name
rm -rf "$out"
mkdir -p runs
$py -m supcon compare --out "$out" | tee "runs/$name.txt"
rm -rf "docs/runs/$name"
$py experiments/collect.py "$out" "docs/runs/$name"
cp "runs/$name.txt" "docs/runs/$name/printed.txt"
