#!/usr/bin/env bash
# docs/results.md's joint objective with the stop-gradient: SupCon + CE in one stage (`--loss supcon+ce`, the
# default weight 0.1) with `--ce-stop-grad`, the SupCon paper's variant in which the classifier learns on the
# encoder's features without changing them, on ImageNet-5 under `compare`'s defaults, 3 seeds, the same splits as
# experiments/forms-three-datasets.sh, paired with that script's runs (run it first).
#
#   bash experiments/joint-stopgrad-imagenet5.sh     # from the repository root; data in ../shared/data; resumable
set -eu
py=${PYTHON:-python3}
out=runs/joint-stopgrad-imagenet5-64-seeds3
docs=docs/runs/joint-stopgrad-imagenet5-64-seeds3
$py -m supcon sweep --dataset npz:../shared/data/imagenet5_64.npz --loss supcon+ce --grid ce_stop_grad=true \
  --no-ce --seeds 3 --out "$out" --quiet
$py experiments/collect.py "$out" "$docs"
bash experiments/paired-tables.sh joint
