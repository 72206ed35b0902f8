#!/usr/bin/env bash
# Did the stopping policy cost SupCon its seeds 3 and 4 in the ImageNet-5 protocol run? Those seeds' stage 1 never
# started (its loss within 1 % of its start) and the policy (patience 10 on the kNN accuracy) ended it at epochs
# 15 and 14. The same two seeds with stage 1 on its whole budget, keeping its last epoch (`--patience 0`, as before
# the protocol), then the linear probe under the protocol's policy (`--patience 10`), every other option as in
# the protocol run (SGD at 0.1 was SupCon's tuned choice, its default).
#
#   bash experiments/stage1-budget-imagenet5.sh      # about 16 minutes on 2 CPU cores
set -eu
py=${PYTHON:-python3}
docs=docs/runs/stage1-budget-imagenet5-64
for seed in 3 4; do
  out="runs/stage1-budget-imagenet5-64/seed-$seed"
  if [ ! -f "$out/results.json" ]; then
    rm -rf "$out"
    $py -m supcon pretrain --dataset npz:../shared/data/imagenet5_64.npz --seed "$seed" --patience 0 --no-tsne \
      --out "$out" --quiet
    $py -m supcon linear --run "$out" --patience 10 --quiet
  fi
done
$py experiments/collect.py runs/stage1-budget-imagenet5-64 "$docs"
$py - <<'PY'
import json
for seed in (3, 4):
    new = json.load(open(f"docs/runs/stage1-budget-imagenet5-64/seed-{seed}/results.json"))["runs"][0]
    old = json.load(open(f"docs/runs/protocol-imagenet5-64-seeds5/seed-{seed}/supcon/results.json"))["runs"][0]
    for name, run in (("protocol, stopped", old), ("whole budget", new)):
        print(f"seed {seed}, stage 1 {name}: epochs {run['epochs']}, kept {run.get('pretrain_best_epoch')}, "
              f"stage-1 progress {run['stage1_progress']:.3f}, kNN {run['knn_acc']:.3f}, "
              f"val {run['val_acc']:.4f}, test {run['test_acc']:.4f}")
PY
