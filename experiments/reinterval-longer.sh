#!/usr/bin/env bash
# The longer-budget study's paired differences (experiments/longer-imagenet5.sh) recomputed with today's interval
# from its committed runs, without retraining; the README quotes the first table.
#
#   bash experiments/reinterval-longer.sh        # seconds; writes docs/runs/reinterval/longer-imagenet5-paired.md
set -eu
py=${PYTHON:-python3}
short=docs/runs/longer-imagenet5-64-e30-seeds3
long=docs/runs/longer-imagenet5-64-e100-seeds3
mkdir -p docs/runs/reinterval
{
  $py experiments/paired.py "SupCon, 30 epochs=$short/seed-*/supcon" "SupCon, 100 epochs=$long/seed-*/supcon"
  echo
  $py experiments/paired.py "CE, 30 epochs=$short/seed-*/ce" "CE, 100 epochs=$long/seed-*/ce" \
    "SupCon, 100 epochs=$long/seed-*/supcon" "SupCon, 30 epochs=$short/seed-*/supcon"
} | tee docs/runs/reinterval/longer-imagenet5-paired.md
