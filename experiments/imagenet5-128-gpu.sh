#!/usr/bin/env bash
# One GPU session's work, in one command: the study's own setting (ImageNet-5 at 128 px, ResNet-50 from
# scratch) as the study's grid (15 cells, all at once on one GPU) and as `supcon compare` under the defaults,
# then the loss and training-step benchmarks on the same GPU once it is quiet again.
#
#   bash experiments/imagenet5-128-gpu.sh OUT_DIR        # from the repository root; data in ../shared/data
#
# Environment: SWEEP_TIMEOUT / BENCH_TIMEOUT (seconds, 0 = none) bound each part on a lent machine whose minutes
# are counted; EXTRA adds flags to both training commands (a smoke test on a CPU: EXTRA="--device cpu
# --epochs 1 --max-train 30 --encoder resnet18 --image-size 32"); SKIP_BENCH=1 skips the benchmarks.
set -u
out=${1:?usage: bash experiments/imagenet5-128-gpu.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}
extra=${EXTRA:-}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $py -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
  nproc
} > "$out/env.txt" 2>&1

# The grid's cells and the compare run share the GPU: each alone leaves it idle between small kernels.
# shellcheck disable=SC2086
timeout "${SWEEP_TIMEOUT:-0}" $py -m supcon sweep --config experiments/imagenet5-128-gpu.yaml --jobs 15 \
  --out "$out/sweep-imagenet5-128-resnet50" --quiet $extra > "$out/sweep.log" 2>&1 &
# shellcheck disable=SC2086
timeout "${SWEEP_TIMEOUT:-0}" $py -m supcon compare --dataset folder:../shared/data/imagenet5_128 \
  --encoder resnet50 --epochs 30 --out "$out/compare-imagenet5-128-resnet50" --quiet $extra > "$out/compare.log" 2>&1 &
wait
date -u >> "$out/env.txt"

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  timeout "${BENCH_TIMEOUT:-0}" $py benchmarks/bench_loss.py --device cuda --n 4096 16384 65536 262144 --classes 10 \
    --variants > "$out/bench_loss.txt" 2>&1
  timeout "${BENCH_TIMEOUT:-0}" $py benchmarks/bench_train.py --device cuda > "$out/bench_train.txt" 2>&1
  date -u >> "$out/env.txt"
fi
