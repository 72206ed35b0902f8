#!/usr/bin/env bash
# The stage-1 loss comparison of docs/results.md: the study's notebooks trained stage 1 with a pairwise max-margin
# loss, not SupCon. Max-margin under `compare`'s defaults (ResNet-18 from scratch at 64 px, 30 epochs, batch 64,
# the same linear probe) on ImageNet-5 with the same 3 training seeds and the same held-out test split as
# experiments/compare-three-datasets.sh, whose SupCon and CE runs it is paired with (run that script first).
#
#   bash experiments/losses-imagenet5.sh        # from the repository root; data in ../shared/data; resumable
#
# Raw results go to docs/runs/losses-imagenet5-64-seeds3/, the paired table to its paired.md.
set -eu
py=${PYTHON:-python3}
out=runs/losses-imagenet5-64-seeds3
docs=docs/runs/losses-imagenet5-64-seeds3
$py -m supcon sweep --dataset npz:../shared/data/imagenet5_64.npz --grid loss=maxmargin --no-ce --seeds 3 \
  --out "$out" --quiet
$py experiments/collect.py "$out" "$docs"
bash experiments/paired-tables.sh losses
