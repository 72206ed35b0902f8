#!/usr/bin/env bash
# The comparison under the one protocol (issue 33), for one shared data set: `supcon compare --tune --seeds 5`
# with every other default (ResNet-18 from scratch at 64 px, 30 epochs, batch 64, every stage stopping on val and
# restoring its best epoch), four trials per method on seed 0 chosen on val, then five seeds, the verdict from
# the two-level t-interval on the held-out test split.
#
#   bash experiments/protocol.sh imagenet5        # or flowers5, cats_vs_dogs; from the repository root
#
# It takes hours on 2 CPU cores (ImageNet-5: about 16 runs of 10-22 minutes), more than a session, so it
# continues from what is committed: each finished run's record (results.json, metrics.jsonl, config.yaml; no
# weights) is in docs/runs/protocol-NAME-64-seeds5/, copied back into runs/ when runs/ lacks it, read back as it
# was, and only what is missing is trained. Stop it at any time (Ctrl-C or kill): it collects what finished, and
# the next call goes on from there.
set -eu
name=${1:?give a data set: imagenet5, flowers5 or cats_vs_dogs}
py=${PYTHON:-python3}
out="runs/protocol-${name}-64-seeds5"
docs="docs/runs/protocol-${name}-64-seeds5"
if [ ! -d "$out" ] && [ -d "$docs" ]; then
  mkdir -p "$out" && cp -R "$docs"/. "$out"/
fi
trap '$py experiments/collect.py "$out" "$docs"' EXIT
trap 'exit 130' INT TERM
if [ -f "$out/config.yaml" ]; then
  $py -m supcon compare --resume "$out" --quiet
else
  $py -m supcon compare --dataset "npz:../shared/data/${name}_64.npz" --tune --seeds 5 --out "$out" --quiet
fi
if [ -f "$out/tsne.png" ]; then
  cp "$out/tsne.png" "docs/images/tsne-protocol-${name}.png"
fi
