#!/usr/bin/env bash
# Every paired table of docs/results.md recomputed with today's interval (the two-level t-interval of
# supcon.experiments.statistics.difference) from the committed runs, without retraining: the same
# experiments/paired.py calls that the studies' scripts end with, writing the same paired*.md files.
#
#   bash experiments/reinterval-pairs.sh        # seconds
set -eu
py=${PYTHON:-python3}
for one in imagenet5 flowers5 cats_vs_dogs; do
  docs="docs/runs/forms-${one}-64-seeds3"
  $py experiments/paired.py "SupCon + linear=$docs/seed-*/supcon" \
    "SupCon + fine-tuning=$docs/seed-*/supcon-finetune" "SupCon + CE, joint=$docs/seed-*/supcon+ce" \
    "CE=$docs/seed-*/ce" > "$docs/paired.md"
done
docs=docs/runs/crop-imagenet5-64-seeds3
$py experiments/paired.py "stored at 64 px=$docs/cells/supcon-64/seed-*" \
  "stored at 128 px=$docs/cells/supcon-128/seed-*" > "$docs/paired.md"
$py experiments/paired.py "stored at 64 px=$docs/cells/ce-64/seed-*" "stored at 128 px=$docs/cells/ce-128/seed-*" \
  > "$docs/paired-ce.md"
for size in 64 128; do
  echo; echo "stored at $size px:"; echo
  $py experiments/paired.py "CE=$docs/cells/ce-$size/seed-*" "SupCon=$docs/cells/supcon-$size/seed-*"
done > "$docs/paired-supcon-ce.md"
docs=docs/runs/joint-stopgrad-imagenet5-64-seeds3
forms=docs/runs/forms-imagenet5-64-seeds3
$py experiments/paired.py "joint=$forms/seed-*/supcon+ce" "joint, stop-gradient=$docs/cells/*/seed-*" \
  "SupCon + linear=$forms/seed-*/supcon" "CE=$forms/seed-*/ce" > "$docs/paired.md"
docs=docs/runs/losses-imagenet5-64-seeds3
compare=docs/runs/compare-imagenet5-64-seeds3
$py experiments/paired.py "SupCon=$compare/seed-*/supcon" "max-margin=$docs/cells/*/seed-*" "CE=$compare/seed-*/ce" \
  > "$docs/paired.md"
long=docs/runs/longer-imagenet5-64-e100-seeds3
short=docs/runs/longer-imagenet5-64-e30-seeds3
{
  $py experiments/paired.py "SupCon, 30 epochs=$short/seed-*/supcon" "SupCon, 100 epochs=$long/seed-*/supcon"
  echo
  $py experiments/paired.py "CE, 30 epochs=$short/seed-*/ce" "CE, 100 epochs=$long/seed-*/ce" \
    "SupCon, 100 epochs=$long/seed-*/supcon" "SupCon, 30 epochs=$short/seed-*/supcon"
} > "$long/paired.md"

# robustness: each committed robustness.md re-rendered with its SupCon − CE differences recomputed from the runs
# in its robustness.json (whose own "differences" stay as they were written)
$py - <<'PY'
import json
from pathlib import Path

from supcon.experiments.robustness import seed_differences
from supcon.reporting.robustness import markdown

for path in sorted(Path("docs/runs").glob("robustness-*/robustness.json")):
    report = json.loads(path.read_text())
    report["differences"] = seed_differences(report["runs"], report["eps_255"] if report["attacks"] else [])
    text = markdown(report)
    path.with_name("robustness.md").write_text(text if text.endswith("\n") else text + "\n")
PY
git --no-pager diff --stat -- docs/runs 2>/dev/null || true
