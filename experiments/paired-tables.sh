#!/usr/bin/env bash
# The paired tables of docs/results.md, computed from a study's committed runs with experiments/paired.py (whose
# interval is compare's: two-level, over seeds and test images), each written to that study's paired*.md. The
# studies' scripts end by calling it; `all` recomputes every table without retraining, as after a change of the
# interval, and re-renders each committed robustness.md from its robustness.json.
#
#   bash experiments/paired-tables.sh all        # seconds; or one of: forms NAME, crop, joint, losses, longer
set -eu
py=${PYTHON:-python3}
runs=docs/runs

forms() {  # each form against the plain two-stage SupCon (compare's own table pairs each form with CE)
  local docs="$runs/forms-$1-64-seeds3"
  $py experiments/paired.py "SupCon + linear=$docs/seed-*/supcon" \
    "SupCon + fine-tuning=$docs/seed-*/supcon-finetune" "SupCon + CE, joint=$docs/seed-*/supcon+ce" \
    "CE=$docs/seed-*/ce" | tee "$docs/paired.md"
}

crop() {
  local docs="$runs/crop-imagenet5-64-seeds3"
  $py experiments/paired.py "stored at 64 px=$docs/cells/supcon-64/seed-*" \
    "stored at 128 px=$docs/cells/supcon-128/seed-*" | tee "$docs/paired.md"
  $py experiments/paired.py "stored at 64 px=$docs/cells/ce-64/seed-*" "stored at 128 px=$docs/cells/ce-128/seed-*" \
    | tee "$docs/paired-ce.md"
  for size in 64 128; do  # SupCon against CE under each way of storing
    echo; echo "stored at $size px:"; echo
    $py experiments/paired.py "CE=$docs/cells/ce-$size/seed-*" "SupCon=$docs/cells/supcon-$size/seed-*"
  done | tee "$docs/paired-supcon-ce.md"
}

joint() {
  local docs="$runs/joint-stopgrad-imagenet5-64-seeds3" forms="$runs/forms-imagenet5-64-seeds3"
  $py experiments/paired.py "joint=$forms/seed-*/supcon+ce" "joint, stop-gradient=$docs/cells/*/seed-*" \
    "SupCon + linear=$forms/seed-*/supcon" "CE=$forms/seed-*/ce" | tee "$docs/paired.md"
}

losses() {
  local docs="$runs/losses-imagenet5-64-seeds3" compare="$runs/compare-imagenet5-64-seeds3"
  $py experiments/paired.py "SupCon=$compare/seed-*/supcon" "max-margin=$docs/cells/*/seed-*" "CE=$compare/seed-*/ce" \
    | tee "$docs/paired.md"
}

longer() {
  local long="$runs/longer-imagenet5-64-e100-seeds3" short="$runs/longer-imagenet5-64-e30-seeds3"
  {
    $py experiments/paired.py "SupCon, 30 epochs=$short/seed-*/supcon" "SupCon, 100 epochs=$long/seed-*/supcon"
    echo
    $py experiments/paired.py "CE, 30 epochs=$short/seed-*/ce" "CE, 100 epochs=$long/seed-*/ce" \
      "SupCon, 100 epochs=$long/seed-*/supcon" "SupCon, 30 epochs=$short/seed-*/supcon"
  } | tee "$long/paired.md"
}

robustness() {  # each robustness.md re-rendered with its differences recomputed from the runs it holds
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
}

case "${1:?give a study (forms NAME, crop, joint, losses, longer, robustness) or all}" in
  all)
    for name in imagenet5 flowers5 cats_vs_dogs; do forms "$name" > /dev/null; done
    for study in crop joint losses longer robustness; do "$study" > /dev/null; done
    git --no-pager diff --stat -- "$runs" 2>/dev/null || true ;;
  forms) forms "${2:?forms needs a data set}" ;;
  crop|joint|losses|longer|robustness) "$1" ;;
  *) echo "unknown study $1" >&2; exit 2 ;;
esac
