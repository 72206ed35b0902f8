#!/usr/bin/env bash
# docs/results.md's crop comparison: do SupCon's random crops gain from being cut out of a larger stored image?
# ImageNet-5's 128 px JPEGs read as a folder, trained at 64 px, stored once at 64 px (crops cut from the
# downscaled image and upscaled: the way every earlier version trained) and once at 128 px (--store-size 128, the
# default for folders: the crop is cut from the larger image, then resized to 64). SupCon + linear probe and CE
# under `compare`'s defaults, 3 seeds each, the same splits, paired on the test split.
#
#   bash experiments/crop-imagenet5.sh          # from the repository root; data in ../shared/data; resumable
#
# Raw results go to docs/runs/crop-imagenet5-64-seeds3/; the paired tables to its paired.md (SupCon, 128 px against
# 64 px), paired-ce.md (the same for CE) and paired-supcon-ce.md (SupCon against CE at each size).
set -eu
py=${PYTHON:-python3}
out=runs/crop-imagenet5-64-seeds3
docs=docs/runs/crop-imagenet5-64-seeds3
$py -m supcon sweep --dataset folder:../shared/data/imagenet5_128 --image-size 64 --grid store_size=64,128 \
  --ce-grid store_size=64,128 --seeds 3 --out "$out" --quiet
$py experiments/collect.py "$out" "$docs"
bash experiments/paired-tables.sh crop
