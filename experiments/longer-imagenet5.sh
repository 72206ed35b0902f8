#!/usr/bin/env bash
# docs/results.md's "A longer budget on ImageNet-5": does SupCon close its gap to CE when both train longer?
# `compare`'s defaults with --epochs 100, and again with the default 30, on one machine (every other option, the
# splits and the 3 seeds the same as the headline run): stage 1 and CE get 3.3x the epochs, each under the same
# cosine schedule and early stopping on val; the linear probe keeps its own budget. Then each 100-epoch method
# against its 30-epoch self and against CE at 30 epochs, paired by seed and test image.
# A run directory resumes: run the script again after an interruption and it continues where it stopped.
#
#   bash experiments/longer-imagenet5.sh        # from the repository root; data in ../shared/data
#
# Raw results (no weights) go to docs/runs/longer-imagenet5-64-e{100,30}-seeds3/, the pairings to
# docs/runs/longer-imagenet5-64-e100-seeds3/paired.md.
set -eu
py=${PYTHON:-python3}
for epochs in 100 30; do
  name=longer-imagenet5-64-e${epochs}-seeds3
  out=runs/$name
  if [ -f "$out/config.yaml" ]; then
    $py -m supcon compare --resume "$out" --quiet
  else
    $py -m supcon compare --dataset npz:../shared/data/imagenet5_64.npz --seeds 3 --epochs "$epochs" --out "$out" \
      --quiet
  fi
  $py experiments/collect.py "$out" "docs/runs/$name"
done
bash experiments/paired-tables.sh longer
