"""Benchmark of `supcon.losses.SupConLoss` (forward + backward) against its floor, a dense formulation and
pytorch-metric-learning, plus an exactness check against a float64 dense reference.

    python benchmarks/bench_loss.py                       # the full table (N = 1k .. 65k, 10 and 100 classes)
    python benchmarks/bench_loss.py --n 1024 4096 --classes 10 --repeats 7
    python benchmarks/bench_loss.py --variants            # also L_in, SimCLR (no labels) and contrast_mode="one"
    python benchmarks/bench_loss.py --device cuda         # on a GPU: peak memory from torch.cuda, not the RSS
    python benchmarks/bench_loss.py --device cuda --paths --n 4096 16384 65536 262144 --classes 10
                                                          # the dense path against the blocked one and the floors

Every configuration runs in a fresh subprocess, so that its peak memory is its own: "peak extra" is the growth
of the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs where the kernel
allows it, else ru_maxrss) over the resident size after the inputs are allocated, across the warm-up calls of
our loss (two; one above N = 16k), which run first, before anything else in that process.

Our loss (forward + backward, fp32) and the floor are then timed in interleaved rounds (one call of each per
round; at least --repeats rounds and 2 s, at most 200; 2 rounds above 16k) and each reported as the median, so
that load from elsewhere on the machine hits both alike. The floor is the sum of the medians of three
operations at full size on the same inputs (preallocated outputs, no masks, no reductions):

1. the forward GEMM  S = Z Zᵀ,  [A, D] @ [D, N];
2. the backward GEMMs  E @ Z  ([A, N] @ [N, D], the anchor side of the gradient) and  Eᵀ @ Z_anchors
   ([N, A] @ [A, D], the contrast side);
3. the A·N exponentials  E = exp(S / τ − 1/τ).

A is the number of anchors (N, or N / views for contrast_mode="one"). Where the N×N matrices would not fit
(N = 65,536: 16 GiB each) the same operations are timed in [1024, N] row tiles instead and the table says so.

``--paths`` also times, in the same interleaved rounds, the loss forced onto each of its two paths
(``SupConLoss(path="dense")``, all anchors in one block with nothing read back, and ``path="blocked"``) and a
second, plainer floor: forward and backward through autograd of ``logsumexp(Z_anchors Zᵀ / τ)`` summed, the
least a dense softmax loss does (one GEMM, a log-sum-exp, its softmax and two GEMMs back). The dense path and the
plain floor are skipped where their N×N matrices would exceed the memory limit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from supcon.device import cpu_name

DEFAULT_N = (1024, 4096, 8192, 16384, 65536)
DEFAULT_CLASSES = (10, 100)
FULL_FLOOR_MAX_N = 16384  # above this the floor is timed in row tiles
TILE_ROWS = 1024
# Peak extra memory of the N x N formulations in N^2 fp32 matrices (fwd + bwd), measured at N = 4k and 8k
# (dense 7.2, PML 11.6-13.0) plus a margin.
DENSE_N2_MATRICES = 8
PML_N2_MATRICES = 14
# The dense path keeps the [A, N] logits (exponentiated in place) and, for L_in, the positives' exponentials; the
# plain GEMM + logsumexp floor through autograd: the logits, the exponentials inside logsumexp and the gradient.
DENSE_PATH_N2_MATRICES = {"out": 1.5, "in": 3}
PLAIN_FLOOR_N2_MATRICES = 4


# --------------------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_kib() -> int:
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _rss_kib() -> int:
    rss = _status_kib("VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CPU: {cpu_name()})"
    return cpu_name()


def _synced(fn, device: torch.device):
    """``fn`` that returns only once its kernels have run: CUDA launches them asynchronously."""
    if device.type != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize(device)

    return run


def _available_gib() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 8.0


# --------------------------------------------------------------------------------------------------------------
# Formulations
# --------------------------------------------------------------------------------------------------------------


def dense_supcon(features, labels, temperature, variant="out", contrast_mode="all", base_temperature=None):
    """The textbook dense formulation (HobbitLong/SupContrast style: N x N logits and masks), extended to L_in.

    Used for timing (fp32, L_out) and, in float64, as the exactness reference.
    """
    batch, views, _ = features.shape
    if labels is None:
        mask = torch.eye(batch, dtype=features.dtype, device=features.device)
    else:
        mask = torch.eq(labels[:, None], labels[None, :]).to(features.dtype)
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor, anchor_count = (features[:, 0], 1) if contrast_mode == "one" else (contrast, views)
    logits = anchor @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    mask = mask.repeat(anchor_count, views)
    rows = batch * anchor_count
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(rows, device=mask.device)[:, None], 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    pos_count = mask.sum(1)
    if variant == "out":
        mean_log_prob_pos = (mask * log_prob).sum(1) / pos_count.clamp(min=1)
    else:
        pos_lse = torch.logsumexp(log_prob.masked_fill(mask == 0, -math.inf), dim=1)
        mean_log_prob_pos = pos_lse - pos_count.clamp(min=1).log()
    loss = -(temperature / (base_temperature or temperature)) * mean_log_prob_pos
    return loss[pos_count > 0].mean()


def _median_ms(fn, repeats: int, warmup: int, min_seconds: float = 1.0) -> float:
    """Median of at least ``repeats`` timed calls after ``warmup`` untimed ones; fast calls are repeated until
    ``min_seconds`` have passed (at most 200 calls), which steadies the small sizes."""
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 200):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _fwd_bwd(loss_fn, features, labels):
    def run():
        x = features.detach().requires_grad_(True)
        loss_fn(x, labels).backward()

    return run


def _floor_ops(z, anchors, temperature):
    """The floor's three operations as callables (forward GEMM, backward GEMMs, exponentials) and whether they
    run in row tiles; their buffers are allocated here, outside the timing."""
    num_anchors, n = anchors.shape[0], z.shape[0]
    tiled = n > FULL_FLOOR_MAX_N
    rows = min(TILE_ROWS, num_anchors) if tiled else num_anchors
    s = torch.empty(rows, n, device=z.device)
    x = torch.empty(rows, n, device=z.device)
    e = torch.empty(rows, n, device=z.device)
    g_anchor = torch.empty(rows, z.shape[1], device=z.device)
    g_contrast = torch.empty(n, z.shape[1], device=z.device)
    starts = range(0, num_anchors, rows)
    # Realistic exponents: s / tau - 1 / tau lies in [-2 / tau, 0] for unit vectors (every tile reuses the first).
    torch.mm(anchors[:rows], z.T, out=x)
    x.div_(temperature).sub_(1 / temperature)
    torch.exp(x, out=e)

    def forward():
        for i in starts:
            torch.mm(anchors[i : i + rows], z.T, out=s[: min(rows, num_anchors - i)])

    def backward():
        for i in starts:
            r = min(rows, num_anchors - i)
            torch.mm(e[:r], z, out=g_anchor[:r])  # anchor side: softmax @ z
            torch.mm(e[:r].T, anchors[i : i + r], out=g_contrast)  # contrast side: softmax^T @ z_anchors

    def exps():
        for _ in starts:
            torch.exp(x, out=e)

    return forward, backward, exps, tiled


def _plain_floor(anchors, z, temperature, device):
    """Forward and backward through autograd of ``logsumexp(anchors @ z.T / tau).sum()``: a dense softmax loss at
    its plainest (no masks, no positives)."""

    def run():
        a = anchors.detach().requires_grad_(True)
        c = z.detach().requires_grad_(True)
        torch.logsumexp(a @ c.T / temperature, dim=1).sum().backward()

    return _synced(run, device)


def _interleaved_ms(fns: dict, repeats: int, min_seconds: float = 2.0) -> dict:
    """Median ms of each callable, timed in interleaved rounds (one call of each per round), so that load from
    elsewhere on the machine hits all of them alike; at least ``repeats`` rounds and ``min_seconds`` in all
    (at most 200 rounds)."""
    times = {name: [] for name in fns}
    elapsed, rounds = 0.0, 0
    while rounds < repeats or (elapsed < min_seconds and rounds < 200):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            elapsed += times[name][-1]
        rounds += 1
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


# --------------------------------------------------------------------------------------------------------------
# One configuration (runs in its own subprocess)
# --------------------------------------------------------------------------------------------------------------


def worker(args) -> dict:
    from supcon.losses import SupConLoss

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n, views, dim, classes = args.n[0], args.views, args.dim, args.classes[0]
    batch = n // views
    gen = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(batch, views, dim, generator=gen), dim=-1).to(device)
    labels = None if args.config == "simclr" else torch.randint(0, classes, (batch,), generator=gen).to(device)
    contrast_mode = "one" if args.config == "one" else "all"
    variant = "in" if args.config == "in" else "out"
    big = n > FULL_FLOOR_MAX_N
    repeats = min(args.repeats, 2) if big else args.repeats
    warmup = 0 if big else 2

    # 1. Ours first, so that the high-water mark is ours alone (warm-up calls, or one call above 16k).
    criterion = SupConLoss(temperature=args.temperature, variant=variant, contrast_mode=contrast_mode,
                           block_size=args.block_size)
    run_ours = _synced(_fwd_bwd(criterion, features, labels), device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        exact_peak, base = True, torch.cuda.memory_allocated(device) / 1024
    else:
        exact_peak = _reset_peak()
        base = _rss_kib() if exact_peak else _peak_kib()
    for _ in range(max(warmup, 1)):
        run_ours()
    peak = torch.cuda.max_memory_allocated(device) / 1024 if device.type == "cuda" else _peak_kib()
    peak_mib = (peak - base) / 1024

    # 2. Ours and the floor's three operations on the same inputs, timed in interleaved rounds.
    z = torch.cat(torch.unbind(features, dim=1))
    anchors = features[:, 0].contiguous() if contrast_mode == "one" else z
    forward, backward, exps, tiled = _floor_ops(z, anchors, args.temperature)
    forward, backward, exps = (_synced(fn, device) for fn in (forward, backward, exps))
    for fn in (forward, backward, exps):
        for _ in range(warmup):
            fn()
    timed = dict(ours=run_ours, fwd=forward, bwd=backward, exp=exps)
    skipped = {}
    if args.paths:
        # The two paths forced, and the plain dense floor, in the same rounds (each warmed up first).
        num_anchors = anchors.shape[0]
        for path in ("dense", "blocked"):
            need = DENSE_PATH_N2_MATRICES[variant] * num_anchors * n * 4 / 2**30 if path == "dense" else 0
            if need > args.mem_limit_gib:
                skipped[path] = need
                continue
            forced = SupConLoss(temperature=args.temperature, variant=variant, contrast_mode=contrast_mode,
                                block_size=args.block_size, path=path)
            timed[path] = _synced(_fwd_bwd(forced, features, labels), device)
        need = PLAIN_FLOOR_N2_MATRICES * num_anchors * n * 4 / 2**30
        if need > args.mem_limit_gib:
            skipped["lse"] = need
        else:
            timed["lse"] = _plain_floor(anchors, z, args.temperature, device)
        for name in ("dense", "blocked", "lse"):
            for _ in range(max(warmup, 1) if name in timed else 0):
                timed[name]()
    ms = _interleaved_ms(timed, repeats)
    out = dict(n=n, classes=classes, config=args.config, ours_ms=ms["ours"], peak_mib=peak_mib,
               peak_exact=exact_peak, threads=torch.get_num_threads(), repeats=repeats,
               floor_fwd_ms=ms["fwd"], floor_bwd_ms=ms["bwd"], floor_exp_ms=ms["exp"],
               floor_ms=ms["fwd"] + ms["bwd"] + ms["exp"], floor_tiled=tiled)
    if args.paths:
        from supcon.losses.supcon import _use_dense

        auto_dense = _use_dense("auto", args.block_size, anchors.shape[0], n, device)
        out["auto_path"] = "dense" if auto_dense else "blocked"
        for name in ("dense", "blocked", "lse"):
            if name in ms:
                out[name + "_ms"] = ms[name]
            else:
                out[name + "_skip_gib"] = skipped[name]

    # 3. The dense formulation and pytorch-metric-learning (L_out, all anchors, labels only).
    if args.config == "out":
        limit = args.mem_limit_gib
        need = DENSE_N2_MATRICES * n * n * 4 / 2**30
        if need > limit:
            out["dense_skip_gib"] = need
        else:
            def dense(x, y):
                return dense_supcon(x, y, args.temperature)

            out["dense_ms"] = _median_ms(_synced(_fwd_bwd(dense, features, labels), device), repeats, warmup)
        try:
            from pytorch_metric_learning import losses as pml_losses
        except ImportError:
            out["pml_missing"] = True
        else:
            need = PML_N2_MATRICES * n * n * 4 / 2**30
            if need > limit:
                out["pml_skip_gib"] = need
            else:
                pml = pml_losses.SupConLoss(temperature=args.temperature)
                y_all = labels.repeat(views)

                def pml_loss(x, _):
                    return pml(torch.cat(torch.unbind(x, dim=1)), y_all)

                out["pml_ms"] = _median_ms(_synced(_fwd_bwd(pml_loss, features, labels), device), repeats, warmup)
    return out


# --------------------------------------------------------------------------------------------------------------
# Exactness
# --------------------------------------------------------------------------------------------------------------


EXACTNESS_RUNS = (("auto", None), ("blocked", 100), ("blocked", 7), ("dense", None))


def exactness(temperature: float, runs=EXACTNESS_RUNS, device: str = "cpu") -> list[str]:
    """Ours in fp32 against the float64 dense formulation: max relative error of the loss and the gradient, the
    worst of ``runs`` (path, block size)."""
    from supcon.losses import supcon_loss

    rows = []
    gen = torch.Generator().manual_seed(1)
    batch, views, dim = 1000, 2, 128  # N = 2000: not a multiple of 7, 100 or the automatic block
    features = F.normalize(torch.randn(batch, views, dim, generator=gen, dtype=torch.float64), dim=-1).to(device)
    labels = torch.randint(-7, 93, (batch,), generator=gen).to(device)  # gaps and negative values
    for variant in ("out", "in"):
        for mode in ("all", "one"):
            for use_labels in (True, False):
                y = labels if use_labels else None
                x64 = features.clone().requires_grad_(True)
                ref = dense_supcon(x64, y, temperature, variant, mode)
                (ref_grad,) = torch.autograd.grad(ref, x64)
                worst_loss = worst_grad = 0.0
                for path, block_size in runs:
                    x = features.float().requires_grad_(True)
                    loss = supcon_loss(x, y, temperature=temperature, variant=variant, contrast_mode=mode,
                                       block_size=block_size, path=path)
                    (grad,) = torch.autograd.grad(loss, x)
                    worst_loss = max(worst_loss, abs(loss.double().item() - ref.item()) / abs(ref.item()))
                    err = (grad.double() - ref_grad).abs().max() / ref_grad.abs().max()
                    worst_grad = max(worst_grad, err.item())
                rows.append(f"| {variant} | {mode} | {'yes' if use_labels else 'no (SimCLR)'} | "
                            f"{worst_loss:.1e} | {worst_grad:.1e} |")
    return rows


# --------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------


def _run_config(args, n, classes, config) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--n", str(n), "--classes", str(classes),
           "--config", config, "--repeats", str(args.repeats), "--dim", str(args.dim), "--views", str(args.views),
           "--temperature", str(args.temperature), "--mem-limit-gib", str(args.mem_limit_gib),
           "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.block_size:
        cmd += ["--block-size", str(args.block_size)]
    if args.paths:
        cmd += ["--paths"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return dict(n=n, classes=classes, config=config, error=proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_ms(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}"


def _path_ms(r: dict, key: str) -> str:
    if key + "_ms" in r:
        return _fmt_ms(r[key + "_ms"])
    return f"skipped (~{r[key + '_skip_gib']:.0f} GiB)" if key + "_skip_gib" in r else "–"


def _path_ratio(r: dict, key: str, floor: str = "floor") -> str:
    return f"{r[key + '_ms'] / r[floor + '_ms']:.2f}" if key + "_ms" in r and floor + "_ms" in r else "–"


def _vs_ours(r: dict, key: str) -> str:
    if key + "_ms" in r:
        return f"{r[key + '_ms'] / r['ours_ms']:.1f}×"
    if key + "_skip_gib" in r:
        return f"skipped (would need ~{r[key + '_skip_gib']:.0f} GiB)"
    if r.get(key + "_missing"):
        return "not installed"
    return "–"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=list(DEFAULT_N), help="numbers of vectors N = B * V")
    parser.add_argument("--classes", type=int, nargs="+", default=list(DEFAULT_CLASSES))
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median; 2 above 16k)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--block-size", type=int, default=None, help="default: the loss's automatic choice")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--mem-limit-gib", type=float, default=None,
                        help="skip the N x N formulations above this estimated memory (default 60%% of the "
                             "available memory, the GPU's with --device cuda)")
    parser.add_argument("--device", default="cpu", help="where the losses run: cpu (default), cuda or cuda:N")
    parser.add_argument("--variants", action="store_true",
                        help="also time L_in, SimCLR (no labels) and contrast_mode='one' (10 classes, N <= 16k)")
    parser.add_argument("--paths", action="store_true",
                        help="also time the loss forced onto its dense and its blocked path, and the plain "
                             "GEMM + logsumexp floor (a third table)")
    parser.add_argument("--no-exactness", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    if args.mem_limit_gib is None:
        free = torch.cuda.mem_get_info(device)[0] / 2**30 if device.type == "cuda" else _available_gib()
        args.mem_limit_gib = round(0.6 * free, 1)

    if args.worker:
        print(json.dumps(worker(args)))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{_device_name(device)}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, "
          f"python {platform.python_version()}; D={args.dim}, {args.views} views, tau={args.temperature}, fp32, "
          f"block_size={args.block_size or 'auto'}\n", flush=True)

    print("| N | classes | ours ms | floor ms (fwd GEMM + bwd GEMMs + exp) | ours ÷ floor | dense ÷ ours | "
          "PML ÷ ours | ours peak extra MiB |")
    print("|---:|---:|---:|---|---:|---|---|---:|", flush=True)
    measured = []
    for n in args.n:
        for classes in args.classes:
            r = _run_config(args, n, classes, "out")
            measured.append(r)
            if "error" in r:
                print(f"| {n:,} | {classes} | failed (exit {r['error']}) | | | | | |", flush=True)
                continue
            floor = (f"{_fmt_ms(r['floor_ms'])} ({_fmt_ms(r['floor_fwd_ms'])} + {_fmt_ms(r['floor_bwd_ms'])} + "
                     f"{_fmt_ms(r['floor_exp_ms'])}){' tiled' if r['floor_tiled'] else ''}")
            print(f"| {n:,} | {classes} | {_fmt_ms(r['ours_ms'])} | {floor} | {r['ours_ms'] / r['floor_ms']:.2f} | "
                  f"{_vs_ours(r, 'dense')} | {_vs_ours(r, 'pml')} | {r['peak_mib']:.0f} |", flush=True)

    if args.paths:
        print("\nThe two paths of the loss, forced, against the floor above and the plain dense floor (autograd "
              "through logsumexp(Z Zᵀ / τ)); same rounds, L_out.\n")
        print("| N | classes | automatic path | dense path ms | blocked path ms | floor ms | dense ÷ floor | "
              "blocked ÷ floor | GEMM + logsumexp ms | dense ÷ GEMM + logsumexp |")
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in measured:
            if "error" in r:
                continue
            print(f"| {r['n']:,} | {r['classes']} | {r['auto_path']} | {_path_ms(r, 'dense')} | "
                  f"{_path_ms(r, 'blocked')} | {_fmt_ms(r['floor_ms'])} | {_path_ratio(r, 'dense')} | "
                  f"{_path_ratio(r, 'blocked')} | {_path_ms(r, 'lse')} | {_path_ratio(r, 'dense', 'lse')} |",
                  flush=True)

    if args.variants:
        print("\n| N | configuration | ours ms | floor ms | ours ÷ floor | ours peak extra MiB |")
        print("|---:|---|---:|---:|---:|---:|", flush=True)
        names = {"in": "L_in, 10 classes", "simclr": "SimCLR (labels=None), L_out",
                 "one": "contrast_mode='one', L_out, 10 classes (floor: N/2 anchors)"}
        for n in [n for n in args.n if n <= FULL_FLOOR_MAX_N]:
            for config in ("in", "simclr", "one"):
                r = _run_config(args, n, 10, config)
                if "error" in r:
                    print(f"| {n:,} | {names[config]} | failed (exit {r['error']}) | | | |", flush=True)
                    continue
                print(f"| {n:,} | {names[config]} | {_fmt_ms(r['ours_ms'])} | {_fmt_ms(r['floor_ms'])} | "
                      f"{r['ours_ms'] / r['floor_ms']:.2f} | {r['peak_mib']:.0f} |", flush=True)

    if not args.no_exactness:
        print("\nExactness: ours (fp32) against the dense formulation in float64, N = 2,000, D = 128, labels in "
              "[-7, 93); the worst of the automatic path, the blocked path with blocks of 100 and 7 rows and the "
              "dense path; max relative error (gradient: max |error| / max |grad|).\n")
        print("| variant | contrast_mode | labels | loss | gradient |")
        print("|---|---|---|---:|---:|")
        for row in exactness(args.temperature, device=args.device):
            print(row, flush=True)


if __name__ == "__main__":
    main()
