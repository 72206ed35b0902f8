#!/usr/bin/env bash
# The device measurement of issue 19, in one run of under 8 minutes on a machine with one NVIDIA GPU:
#
#   bash benchmarks/gpu.sh                  # from the repository root; tables in $OUT (default ./gpu-out)
#   OUT=/tmp/g SMOKE=1 bash benchmarks/gpu.sh   # every part on tiny sizes with --device cpu: checks the script
#
# Parts, each under its own timeout (and all under one deadline), each writing its table to $OUT/<part>.txt and
# its log to $OUT/<part>.log; $OUT/summary.txt says which finished:
#   env      nvidia-smi, torch, the CPU, the commit                                  -> env.txt
#   loss     bench_loss.py on CUDA, N = 4,096 ... 262,144 views, 10 classes: the automatic path, the dense and the
#            blocked path forced, the floor and the plain GEMM + logsumexp floor; exactness -> loss.txt
#   train    bench_train.py, bf16 autocast (the training default on CUDA): the bare loop, the real step (batched
#            augmentation on the device) and the anchor row (DataLoader, one worker per core, per-image
#            transforms.v2), for ResNet-18 at 64 px and ResNet-50 at 128 px  -> train-resnet18-64.txt, train-resnet50-128.txt
#   compare  `supcon compare` on a CIFAR-10-sized set (50,000 train, 10,000 test, 32 px; see make_data below),
#            bf16 and again with --amp none: both test accuracies             -> compare.txt
#
# Data: the study's shared copies where they are (SHARED_DATA, else shared/data or ../shared/data): ImageNet-5 at
# 64 px (npz) and at 128 px (folder). Where they are not, stand-ins of the same shapes are generated into
# $OUT/data: random uint8 images (for speed only: the training-step tables do not depend on the pixels).
set -u

cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-./gpu-out}
SMOKE=${SMOKE:-0}
PY=${PYTHON:-python}
mkdir -p "$OUT/data"
START=$SECONDS
if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu
  DEADLINE=$((START + 1500))  # a loaded 2-core machine; the parts are tiny
else
  DEVICE=cuda
  DEADLINE=$((START + 465))   # 7 min 45 s: the whole script stays under 8 minutes
fi
: >"$OUT/summary.txt"

log() { echo "[gpu.sh $(date -u +%H:%M:%S) +$((SECONDS - START))s] $*" | tee -a "$OUT/summary.txt"; }

# run PART CAP_SECONDS COMMAND...: the command under `timeout`, capped by what is left before the deadline;
# stdout to $OUT/PART.txt (the table), stderr to $OUT/PART.log.
run() {
  local part=$1 cap=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 10 ]; then
    log "$part: skipped, ${left}s left before the deadline"
    return 124
  fi
  log "$part: start (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$part.txt" 2>"$OUT/$part.log"
  local rc=$?
  case $rc in
    0) log "$part: done in $((SECONDS - t0))s" ;;
    124 | 137) log "$part: TIMED OUT after $((SECONDS - t0))s (partial table kept)" ;;
    *) log "$part: FAILED (exit $rc) after $((SECONDS - t0))s; see $OUT/$part.log" ;;
  esac
  return $rc
}

# ---------------------------------------------------------------------------------------------- install, env

if ! $PY -c "import supcon.cli" 2>/dev/null; then
  log "supcon is not importable: pip install -e . (no dependencies: torch and the rest are expected here)"
  timeout 60 $PY -m pip install --quiet --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
    || log "pip install failed (see install.log); using PYTHONPATH=src"
  $PY -c "import supcon.cli" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  if ! $PY -c "import supcon.cli" 2>>"$OUT/install.log"; then
    log "supcon still not importable (a dependency missing?): trying pip install -e . with its dependencies"
    timeout 120 $PY -m pip install --quiet -e . >>"$OUT/install.log" 2>&1
    $PY -c "import supcon.cli" || { log "cannot import supcon; see install.log"; exit 1; }
  fi
fi

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown) $(git status --porcelain 2>/dev/null | wc -l) changed file(s)"
  echo "host: $(hostname), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB, " $7 " GiB available"}')"
  echo "smoke: $SMOKE, device: $DEVICE"
  $PY - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, capability "
          f"{p.major}.{p.minor}; bf16 supported: {torch.cuda.is_bf16_supported()}; TF32 matmul: "
          f"{torch.backends.cuda.matmul.allow_tf32}")
else:
    print("GPU: none visible to torch")
EOF
  echo
  if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
} >"$OUT/env.txt" 2>&1
log "env: $(grep -m1 '^GPU' "$OUT/env.txt")"

# ---------------------------------------------------------------------------------------------- data

SHARED=""
for dir in ${SHARED_DATA:-} shared/data ../shared/data; do
  if [ -f "$dir/imagenet5_64.npz" ]; then SHARED=$dir; break; fi
done

# make_data KIND PATH: KIND = random64 (1,250 + 250 random uint8 64 px images, 5 classes: imagenet5_64's shape),
# random128 (the same at 128 px), cifar (50,000 + 10,000 images at 32 px, 10 classes, CIFAR-10's shape; see below).
make_data() {
  SMOKE=$SMOKE SHARED=$SHARED $PY - "$1" "$2" <<'EOF'
import os, sys
import numpy as np
import torch

kind, path = sys.argv[1], sys.argv[2]
smoke = os.environ["SMOKE"] == "1"
rng = np.random.default_rng(0)


def save(x_train, y_train, x_test, y_test, names):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, class_names=np.array(names))


if kind in ("random64", "random128"):
    size = 64 if kind == "random64" else 128
    n_train, n_test = (1250, 250) if not smoke else (320, 80)
    save(rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8), np.arange(n_train) % 5,
         rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8), np.arange(n_test) % 5,
         [f"class{i}" for i in range(5)])
    sys.exit(0)

# cifar: CIFAR-10's shape (50,000 train and 10,000 test images, 32 px RGB). From ImageNet-5 at 64 px where it is:
# every photo 40 times (train photos into train, test photos into test), each copy a random crop of 60-100 % of
# its area with a random flip, resized to 32 px (antialiased), so that copies differ as CIFAR's photos do; 5
# classes, learnable as the originals are. Without it: 10 classes of oriented sine gratings (orientation and
# frequency by class; random phase, colour and noise), learnable but synthetic.
copies = 40 if not smoke else 2
shared = os.environ.get("SHARED", "")
if shared:
    from supcon.augment import BatchedView

    with np.load(os.path.join(shared, "imagenet5_64.npz")) as d:
        parts = {k: d[k] for k in ("x_train", "y_train", "x_test", "y_test", "class_names")}
    torch.manual_seed(0)
    crop = BatchedView("crop", 32, crop_scale=0.6)

    def tiled(x, y):
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        views = torch.cat([crop(x) for _ in range(copies)])  # float in [0, 1]
        views = views.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return views, np.tile(y, copies)

    x_train, y_train = tiled(parts["x_train"], parts["y_train"])
    x_test, y_test = tiled(parts["x_test"], parts["y_test"])
    save(x_train, y_train, x_test, y_test, parts["class_names"])
else:
    def gratings(n):
        y = np.arange(n) % 10
        t = np.linspace(0, 1, 32)
        angle = y * np.pi / 10
        freq = 2 + (y % 3) * 2
        phase = rng.uniform(0, 2 * np.pi, n)
        u = np.cos(angle)[:, None, None] * t[None, :, None] + np.sin(angle)[:, None, None] * t[None, None, :]
        wave = np.sin(2 * np.pi * freq[:, None, None] * u + phase[:, None, None])
        colour = rng.uniform(0.3, 1.0, (n, 1, 1, 3))
        x = 0.5 + 0.4 * wave[..., None] * colour + rng.normal(0, 0.1, (n, 32, 32, 3))
        return (x.clip(0, 1) * 255).astype(np.uint8), y

    n_train, n_test = (50000, 10000) if not smoke else (2000, 400)
    save(*gratings(n_train), *gratings(n_test), [f"grating{i}" for i in range(10)])
EOF
}

if [ -n "$SHARED" ]; then
  DATA64="npz:$SHARED/imagenet5_64.npz"
  log "data: ImageNet-5 from $SHARED"
else
  make_data random64 "$OUT/data/random64.npz" && DATA64="npz:$OUT/data/random64.npz"
  log "data: no shared data sets here; random stand-ins of their shapes in $OUT/data"
fi
if [ -n "$SHARED" ] && [ -d "$SHARED/imagenet5_128" ]; then
  DATA128="folder:$SHARED/imagenet5_128"
else
  make_data random128 "$OUT/data/random128.npz" && DATA128="npz:$OUT/data/random128.npz"
fi
make_data cifar "$OUT/data/cifar_sized.npz" || log "could not make the CIFAR-sized data set"
log "data: $DATA64, $DATA128, npz:$OUT/data/cifar_sized.npz"

# ---------------------------------------------------------------------------------------------- (a) the loss

if [ "$SMOKE" = 1 ]; then
  run loss 300 $PY benchmarks/bench_loss.py --device cpu --paths --n 512 1024 --classes 10 --repeats 2
else
  run loss 85 $PY benchmarks/bench_loss.py --device cuda --paths --n 4096 16384 65536 262144 --classes 10
fi

# ---------------------------------------------------------------------------------------------- (b) the step

# bf16 autocast, the training default on CUDA (--amp auto); the bare loop runs under the same autocast.
if [ "$SMOKE" = 1 ]; then
  TRAIN="--device cpu --rounds 1 --no-grad-cache --no-per-image --no-nchw --anchor-workers 2"
  run train-resnet18-64 300 $PY benchmarks/bench_train.py $TRAIN --data "$DATA64" --images 128 --batch-size 64
  run train-resnet50-128 400 $PY benchmarks/bench_train.py $TRAIN --data "$DATA128" --encoder resnet50 \
    --images 32 --batch-size 16
else
  TRAIN="--device cuda --amp auto --rounds 3 --no-grad-cache --no-per-image --no-nchw"
  run train-resnet18-64 75 $PY benchmarks/bench_train.py $TRAIN --data "$DATA64" --images 1024 --batch-size 256
  run train-resnet50-128 85 $PY benchmarks/bench_train.py $TRAIN --data "$DATA128" --encoder resnet50 \
    --images 1024 --batch-size 256
fi

# ---------------------------------------------------------------------------------------------- (c) compare

# The same short comparison twice, bf16 autocast and fp32 (--amp none): on a run this short the two test
# accuracies should agree to within the seed-to-seed spread of a few points.
if [ "$SMOKE" = 1 ]; then
  COMPARE="--device cpu --epochs 1 --linear-epochs 1 --batch-size 64 --max-train 256 --max-val 128 --max-test 128"
  CAPS=(300 300)
else
  COMPARE="--device cuda --epochs 2 --linear-epochs 2 --batch-size 512"
  CAPS=(80 110)
fi
i=0
for amp in auto none; do
  run "compare-amp-$amp" "${CAPS[$i]}" $PY -m supcon compare --dataset "npz:$OUT/data/cifar_sized.npz" $COMPARE \
    --amp $amp --knn-every 0 --no-tsne --quiet --out "$OUT/compare-amp-$amp"
  i=$((i + 1))
done

$PY - "$OUT" "$SMOKE" >"$OUT/compare.txt" 2>>"$OUT/compare.log" <<'EOF'
import json, sys
from pathlib import Path

out, smoke = Path(sys.argv[1]), sys.argv[2] == "1"
print("`supcon compare` on the CIFAR-10-sized set (cifar_sized.npz: 50,000 train / 10,000 test at 32 px; see "
      "benchmarks/gpu.sh), one seed, the same options but --amp" + (" (SMOKE: tiny, on the CPU)" if smoke else ""))
print()
print("| --amp | SupCon + linear test acc | CE test acc | run directory |")
print("|---|---:|---:|---|")
for amp, name in (("auto", "auto (bf16 on CUDA)"), ("none", "none (fp32)")):
    path = out / f"compare-amp-{amp}" / "results.json"
    if not path.is_file():
        print(f"| {name} | not finished | not finished | {path.parent} |")
        continue
    methods = json.loads(path.read_text())["methods"]
    print(f"| {name} | {methods['supcon']['test_acc']:.4f} | {methods['ce']['test_acc']:.4f} | {path.parent} |")
EOF
cat "$OUT/compare.txt" >>"$OUT/summary.txt"
log "finished in $((SECONDS - START))s; tables: $(cd "$OUT" && ls ./*.txt | tr '\n' ' ')"
