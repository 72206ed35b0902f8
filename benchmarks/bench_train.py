"""Benchmark of the stage-1 training step (what `supcon pretrain` does per batch) against the bare model loop,
and of the gradient-cache step (`--chunk-size`) against the plain one.

    python benchmarks/bench_train.py                          # both tables: ~5 minutes on 2 quiet cores
    python benchmarks/bench_train.py --rounds 1 --no-grad-cache
    python benchmarks/bench_train.py --device cuda            # on a GPU (fp32; peak memory from torch.cuda)
    python benchmarks/bench_train.py --device cuda --amp bf16 --encoder resnet50 \
        --data folder:../shared/data/imagenet5_128            # ResNet-50 at 128 px, bf16 autocast

The real step is `supcon.stages.pretrain.build_stage1` run by `supcon.engine.loop.fit`, the objects `pretrain`
runs: uint8 images from memory, a seeded shuffle, two views with the default `simclr` policy, the forward pass,
the SupCon loss, the backward pass, the optimizer step (stage 1's, SGD by default), the schedule and the
bookkeeping (loss.item(), the metrics record). The bare loop runs the same model (ResNet-18 or `--encoder`,
ImageNet stem, with its projection head, prepared as training prepares it) and the same optimizer on float tensors
already in memory, of the same shape, with a trivial loss (the mean of the outputs): forward, backward and the
optimizer step, nothing else, under the same autocast (`--amp`; default none, fp32).

The anchor row is what the reference implementations (HobbitLong/SupContrast and others) do: the same model, loss,
optimizer and step, fed by a `torch.utils.data.DataLoader` with `--anchor-workers` worker processes (default: one
per CPU core), each making one image's views with the per-image transforms.v2 pipeline, batches pinned and copied to
the device. Its workers persist across epochs and its second epoch is timed, so that starting them is not counted.

Each round times, in this order and in one process, the bare loop, the real step (batched augmentation, the
default), the real step with torchvision's per-image transforms (`--no-batch-augment`), the anchor row
(`--no-anchor` skips it), and the loss alone,
each on the same number of images (one epoch of `--images` training images; the first round is a warm-up and
not reported, unless `--rounds 1`). The table gives medians over the rounds; the ratios are taken within each
round, so that load from elsewhere on the machine hits both sides alike. The shares split the real step's time:
data + augmentation (time spent producing the batches, measured inside the real run), the loss (forward and
backward, timed alone on embeddings of the same shape), the model and optimizer (the bare loop's time per
image), and the rest.

The gradient-cache table times one epoch of the real step per configuration (plain, then each --chunk-sizes)
in each round, interleaved in this process, and reports medians of the speeds and of the ratios to the plain
step within each round. For memory, every configuration then runs two epochs in a fresh subprocess, so that its
peak is its own: "peak RSS" is that process's resident-set high-water mark (VmHWM, reset once the data, model
and optimizer exist, where the kernel allows it; else ru_maxrss) and "peak extra" its growth over the resident
size at that point.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loss import _device_name, _peak_kib, _reset_peak, _rss_kib, _synced  # noqa: E402

from supcon.augment import multiview_transform  # noqa: E402
from supcon.config import Config  # noqa: E402
from supcon.device import amp_dtype, as_model_input, autocast  # noqa: E402
from supcon.engine.loop import FitOptions, fit  # noqa: E402
from supcon.stages import load_data  # noqa: E402
from supcon.stages.common import policy_options  # noqa: E402
from supcon.stages.pretrain import build_stage1  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "npz:../shared/data/imagenet5_64.npz"


def _config(args, **changes) -> Config:
    return Config(dataset=args.data, encoder=args.encoder, stem="imagenet", batch_size=args.batch_size, epochs=1,
                  max_train=args.images, quiet=True, device=args.device, amp=args.amp, **changes)


def _load(args):
    os.chdir(REPO)  # the data spec is relative to the repository root, as in the docs
    return load_data(_config(args))


def _dtype(cfg: Config) -> torch.dtype | None:
    """The autocast dtype of ``cfg.amp`` (None: fp32), as training resolves it."""
    return amp_dtype(cfg.amp, torch.device(cfg.device))


def _stage(cfg: Config, data):
    torch.manual_seed(cfg.seed)
    return build_stage1(cfg, data, torch.device(cfg.device), _dtype(cfg))


def _fit(stage, cfg: Config, batches=None):
    """Stage 1's loop, as ``pretrain`` runs it (``batches`` replaces its epoch batches)."""
    task = dataclasses.replace(stage.trainable, batches=batches) if batches is not None else stage.trainable
    return fit(task, FitOptions(epochs=cfg.epochs, stage="pretrain", progress=False))


def time_bare(cfg: Config, data, steps: int, channels_last: bool = True) -> float:
    """Seconds of ``steps`` bare steps (forward, trivial loss, backward, optimizer step) on in-memory floats, with
    the model and inputs channels-last, as training prepares them, or in the default (NCHW) layout."""
    stage = _stage(cfg, data)
    model, optimizer = stage.model, stage.trainable.optimizer
    model.train()
    shape = (cfg.batch_size * cfg.views, data.channels, data.image_size, data.image_size)
    device = torch.device(cfg.device)
    x = as_model_input(torch.rand(shape, device=device), device)
    if not channels_last:
        model.to(memory_format=torch.contiguous_format)
        x = x.contiguous()

    dtype = _dtype(cfg)

    def step():
        with autocast(device, dtype):
            loss = model(x).float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step = _synced(step, device)  # a CUDA step has only been queued when the call returns
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def time_real(cfg: Config, data) -> tuple[float, float, int]:
    """Seconds of the last epoch of the real stage-1 step, the seconds spent producing its batches, and its
    images."""
    stage = _stage(cfg, data)
    spent = [0.0]
    images = [0]

    def timed(epoch: int):
        spent[0], images[0] = 0.0, 0
        batches = stage.trainable.batches(epoch)
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            spent[0] += time.perf_counter() - t0
            if batch is None:
                return
            images[0] += len(batch[-1])
            yield batch

    result = _fit(stage, cfg, timed)
    return result.history[-1]["seconds"], spent[0], images[0]


class PerImageViews(torch.utils.data.Dataset):
    """The training images as a data set whose items are one image's views, made by the per-image transforms.v2
    pipeline, and its label: what a DataLoader worker runs in the reference implementations."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, views):
        self.images, self.labels, self.views = images, labels, views

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self.views(self.images[i])), self.labels[i]


def time_anchor(cfg: Config, data, workers: int) -> tuple[float, float, int]:
    """:func:`time_real` for the anchor row: the same stage, its batches from a DataLoader with ``workers``
    processes applying the per-image transforms.v2 views, pinned and copied to the device; the second of two
    epochs timed, with the workers kept across them."""
    cfg = cfg.replace(epochs=2)
    stage = _stage(cfg, data)
    device = torch.device(cfg.device)
    options = {**policy_options(cfg), "batched": False}
    views = multiview_transform(cfg.augment, data.image_size, cfg.views, first_view=cfg.first_view,
                                mean=stage.inputs.mean, std=stage.inputs.std, **options)
    train = data.train
    loader = torch.utils.data.DataLoader(
        PerImageViews(train.images, train.labels, views), batch_size=cfg.batch_size, shuffle=True,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        drop_last=len(train) % cfg.batch_size == 1,  # as the real step's batches: BatchNorm needs two images
        generator=torch.Generator().manual_seed(cfg.seed))
    spent = [0.0]
    images = [0]

    def timed(epoch: int):
        spent[0], images[0] = 0.0, 0
        batches = iter(loader)
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is not None:
                batch = [t.to(device, non_blocking=True) for t in batch]
            spent[0] += time.perf_counter() - t0
            if batch is None:
                return
            images[0] += len(batch[-1])
            yield batch

    result = _fit(stage, cfg, timed)  # the persistent workers end with the loader, on return
    return result.history[-1]["seconds"], spent[0], images[0]


def time_loss(cfg: Config, data, steps: int) -> float:
    """Seconds of ``steps`` loss forward + backward passes on unit embeddings of the step's shape."""
    stage = _stage(cfg, data)
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(0)
    labels = data.train.labels[:cfg.batch_size].to(device)
    z = torch.nn.functional.normalize(torch.randn(len(labels), cfg.views, cfg.proj_dim, generator=g), dim=-1)
    z = z.to(device).requires_grad_()
    step = _synced(lambda: stage.criterion(z, labels).backward(), device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def step_table(args, data) -> None:
    cfg = _config(args)
    steps = -(-len(data.train) // cfg.batch_size)
    rows: dict[str, list[dict]] = {"batched": [], "per-image": [], "compile": [], "anchor": []}
    bare_rates, loss_per_image, nchw = [], [], []
    rounds = args.rounds + (1 if args.rounds > 1 else 0)
    for r in range(rounds):
        bare = time_bare(cfg, data, steps) / (steps * cfg.batch_size)  # seconds per image
        measured = {}
        for name in ("batched", "per-image", "compile"):
            if (name == "per-image" and not args.per_image) or (name == "compile" and not args.compile):
                continue
            # compile: two epochs, the second timed, so that compiling (once per new model) is not counted
            run = cfg.replace(batch_augment=name != "per-image", compile=name == "compile",
                              epochs=2 if name == "compile" else 1)
            seconds, data_s, images = time_real(run, data)
            measured[name] = (seconds / images, data_s / images)
        if args.anchor:
            seconds, data_s, images = time_anchor(cfg, data, args.anchor_workers)
            measured["anchor"] = (seconds / images, data_s / images)
        loss = time_loss(cfg, data, steps) / (steps * cfg.batch_size)
        bare_nchw = time_bare(cfg, data, steps, channels_last=False) / (steps * cfg.batch_size) if args.nchw else None
        if r == 0 and rounds > 1:
            continue  # warm-up
        bare_rates.append(1 / bare)
        if bare_nchw is not None:
            nchw.append(bare / bare_nchw)
        loss_per_image.append(loss)
        for name, (real, data_share) in measured.items():
            rows[name].append({"rate": 1 / real, "ratio": bare / real, "data": data_share / real,
                               "loss": loss / real, "model": bare / real})
        print(f"round {r}: bare {1 / bare:.1f} img/s; " + "; ".join(
            f"{k} {1 / v[0]:.1f} img/s ({bare / v[0]:.3f} of bare)" for k, v in measured.items()), flush=True)

    med = statistics.median
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[_dtype(cfg)]
    print(f"\nStage-1 step, {cfg.encoder} (ImageNet stem) at {data.image_size} px, batch {cfg.batch_size} x "
          f"{cfg.views} views, {cfg.resolved_optimizer('supcon')}, {precision}; {len(data.train)} images per epoch; "
          f"medians of {len(bare_rates)} round(s). Images/s count source images (each gives {cfg.views} views).\n")
    print("| step | images/s | real ÷ bare | data + augmentation | loss | model + optimizer | other |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| bare loop (forward, backward, optimizer step on in-memory floats) | {med(bare_rates):.1f} | 1 | | | | |")
    if nchw:
        print(f"| bare loop, model and inputs in the default NCHW layout instead of channels-last | "
              f"{med(bare_rates) * med(nchw):.1f} | {med(nchw):.3f} | | | | |")
    names = {"batched": "real, batched augmentation (default)",
             "per-image": "real, per-image transforms.v2 (`--no-batch-augment`)",
             "compile": "real, batched augmentation, `--compile` (second epoch)",
             "anchor": f"anchor: DataLoader, {args.anchor_workers} workers, per-image transforms.v2 (second epoch)"}
    for name, runs in rows.items():
        if not runs:
            continue
        shares = {k: med([run[k] for run in runs]) for k in ("data", "loss", "model")}
        other = 1 - sum(shares.values())
        print(f"| {names[name]} | {med([run['rate'] for run in runs]):.1f} | {med([run['ratio'] for run in runs]):.3f} "
              f"| {shares['data']:.1%} | {shares['loss']:.1%} | {shares['model']:.1%} | {other:.1%} |", flush=True)


# ---------------------------------------------------------------------------------------------- gradient cache


def worker(args) -> dict:
    data = _load(args)
    cfg = _config(args, chunk_size=args.chunk_size).replace(epochs=2)
    stage = _stage(cfg, data)
    device = torch.device(cfg.device)
    if device.type == "cuda":  # the GPU's memory is what the gradient cache saves there
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 1024
        _fit(stage, cfg)
        peak = torch.cuda.max_memory_allocated(device) / 1024
        return {"peak_mib": peak / 1024, "extra_mib": (peak - base) / 1024}
    _reset_peak()
    base = _rss_kib()
    _fit(stage, cfg)
    return {"peak_mib": _peak_kib() / 1024, "extra_mib": (_peak_kib() - base) / 1024}


def _run_worker(args, chunk: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--data", args.data, "--batch-size", str(args.batch_size),
           "--threads", str(torch.get_num_threads()), "--device", args.device, "--encoder", args.encoder,
           "--amp", args.amp]
    if args.images:
        cmd += ["--images", str(args.images)]
    if chunk is not None:
        cmd += ["--chunk-size", str(chunk)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.returncode, "stderr": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def grad_cache_table(args, data) -> None:
    cfg = _config(args)
    chunks = [None, *args.chunk_sizes]
    rates: dict[int | None, list[float]] = {c: [] for c in chunks}
    ratios: dict[int | None, list[float]] = {c: [] for c in chunks}
    rounds = args.gc_rounds + (1 if args.no_step and args.gc_rounds > 1 else 0)
    for r in range(rounds):
        measured = {}
        for chunk in chunks:
            seconds, _, images = time_real(cfg.replace(chunk_size=chunk), data)
            measured[chunk] = images / seconds
        if r == 0 and rounds > args.gc_rounds:
            continue  # warm-up
        for chunk in chunks:
            rates[chunk].append(measured[chunk])
            ratios[chunk].append(measured[chunk] / measured[None])
        print(f"gradient cache round {r}: " + "; ".join(f"{c or 'plain'} {v:.1f} img/s" for c, v in measured.items()),
              flush=True)
    memory = {chunk: _run_worker(args, chunk) for chunk in chunks}

    med = statistics.median
    print(f"\nGradient cache (`--chunk-size`), the same real step, batch {cfg.batch_size} x {cfg.views} views. Speed: "
          f"one epoch of each configuration per round, interleaved, medians of {args.gc_rounds} round(s). Memory: "
          "each configuration in a fresh process (two epochs).\n")
    peak = "peak GPU memory MiB" if torch.device(args.device).type == "cuda" else "peak RSS MiB"
    print(f"| step | chunk (views) | images/s | ÷ plain | {peak} | peak extra MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for chunk in chunks:
        mem = memory[chunk]
        if "error" in mem:
            print(mem["stderr"], file=sys.stderr)
        peak = "failed" if "error" in mem else f"{mem['peak_mib']:.0f}"
        extra = "" if "error" in mem else f"{mem['extra_mib']:.0f}"
        name = "plain" if chunk is None else "gradient cache"
        print(f"| {name} | {chunk or cfg.batch_size * cfg.views} | {med(rates[chunk]):.1f} | "
              f"{med(ratios[chunk]):.2f} | {peak} | {extra} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="data set spec, relative to the repository root")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=1024, help="training images per epoch (stratified subset)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (plus one warm-up round if > 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-per-image", dest="per_image", action="store_false",
                        help="skip the real step with per-image transforms")
    parser.add_argument("--compile", action="store_true",
                        help="also the real step with --compile (its second epoch; compiling takes a minute or more)")
    parser.add_argument("--no-nchw", dest="nchw", action="store_false",
                        help="skip the bare loop in the NCHW layout (the channels-last check)")
    parser.add_argument("--no-anchor", dest="anchor", action="store_false",
                        help="skip the anchor row (a DataLoader with per-image transforms.v2 in worker processes)")
    parser.add_argument("--anchor-workers", type=int, default=os.cpu_count(),
                        help="DataLoader workers of the anchor row (default: one per CPU core)")
    parser.add_argument("--encoder", default="resnet18", help="encoder of the stage-1 model (default resnet18)")
    parser.add_argument("--amp", default="none", choices=["none", "auto", "bf16", "fp16"],
                        help="mixed precision of the model on CUDA, for the bare loop and the steps alike "
                             "(default none: fp32)")
    parser.add_argument("--chunk-sizes", type=int, nargs="*", default=[128, 32])
    parser.add_argument("--gc-rounds", type=int, default=2, help="measured rounds of the gradient-cache table")
    parser.add_argument("--no-grad-cache", action="store_true")
    parser.add_argument("--no-step", action="store_true", help="only the gradient-cache table")
    parser.add_argument("--device", default="cpu", help="where the model trains: cpu (default), cuda or cuda:N")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print(f"{_device_name(torch.device(args.device))}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, "
          f"python {platform.python_version()}", flush=True)
    data = _load(args)
    if not args.no_step:
        step_table(args, data)
    if not args.no_grad_cache:
        grad_cache_table(args, data)


if __name__ == "__main__":
    main()
