"""Data-parallel training on ``torch.distributed``: the process group, batch shards and the global-batch loss.

Launched by ``torchrun --nproc-per-node N -m supcon ...`` (or ``supcon ... --nproc N``, which runs exactly that),
every process trains a copy of the model under :class:`~torch.nn.parallel.DistributedDataParallel` (DDP) on its
shard of each global batch:

* :func:`init` joins the process group that torchrun describes in the environment (gloo on the CPU, nccl on
  CUDA, one GPU per process, picked by ``LOCAL_RANK``).
* :func:`shard` cuts a global batch into per-process pieces. Every process draws the same seeded permutation, so
  the pieces of one batch are disjoint and together are the batch: the same split as a ``DistributedSampler``
  with a shared seed, applied per batch so that ``--batch-size`` stays the global batch.
* :class:`GatheredLoss` computes the SupCon loss on the global batch: :func:`gather` collects every process's
  embeddings and labels (gradients flow back to their owners), each process takes only its own samples as
  anchors against all of them, and the result is scaled so that DDP's averaging of the gradients leaves exactly
  the single-process gradient of the concatenated batch. :func:`global_mean` does the same for a mean loss
  (cross-entropy) when the shards differ in size.
* Only rank 0 writes files, logs and shows progress (:func:`is_main`); :func:`from_main` runs evaluation there
  and hands the result to everyone, so that early stopping decides the same everywhere.

In a single process (no ``WORLD_SIZE`` above 1) everything but the launcher falls back to the plain behaviour:
no process group, the whole batch, the criterion itself.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

# Rank 0 alone evaluates, draws t-SNE pictures and may download a data set while the others wait in a
# collective; NCCL's default of 10 minutes would kill a healthy run over a slow download.
TIMEOUT = datetime.timedelta(hours=1)


# ---------------------------------------------------------------------------------------------- the process group


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting ``WORLD_SIZE``) with others."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: the process group's, else the launcher's ``RANK`` (0 when run alone)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files, logs metrics, prints and shows progress bars."""
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group once (a no-op in a single process) and return this process's device.

    On CUDA each process takes the GPU of its ``LOCAL_RANK`` (an index in ``--device cuda:N`` is ignored, since
    every process would otherwise pick the same card); the backend is nccl there and gloo on the CPU.
    """
    if not launched():
        return device
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"distributed training runs on cpu or cuda; got device {device.type!r}")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if restarts():
            # A restarted group meets in the same store as the one that died, where that group's addresses still
            # stand (pytorch/pytorch#167288): its keys under a prefix of their own keep the two apart.
            size = int(os.environ["WORLD_SIZE"])
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                                  is_master=rank() == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True",
                                  timeout=TIMEOUT)
            dist.init_process_group(backend, store=dist.PrefixStore(f"supcon/restart-{restarts()}", store),
                                    rank=rank(), world_size=size, timeout=TIMEOUT)
        else:
            dist.init_process_group(backend, timeout=TIMEOUT)
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_launch(nproc: int, device: torch.device, batch_size: int, sync_bn: bool = False) -> None:
    """What would stop every process alike, said once by the launcher instead of by each of them."""
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"distributed training runs on cpu or cuda; got device {device.type!r}")
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(f"--nproc {nproc} on CUDA needs {nproc} GPUs (one per process); this machine has "
                         f"{torch.cuda.device_count()}")
    if sync_bn and device.type != "cuda":
        raise ValueError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on the CPU")
    if batch_size < 2 * nproc:
        raise ValueError(f"--batch-size is the global batch, split over {nproc} processes: expected at least "
                         f"{2 * nproc} (two images each), got {batch_size}")


def restarts() -> int:
    """How many times torchrun's elastic agent has restarted this process's group (0: the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def launch(nproc: int, argv: Sequence[str], max_restarts: int = 0) -> int:
    """Run ``python -m supcon ARGV`` in ``nproc`` processes on this machine under torchrun; the exit status.
    ``max_restarts``: how many times torchrun restarts them all when one dies (they resume, :func:`restarts`).

    ``--standalone`` picks a free port, so that two runs on one machine do not collide on torchrun's default.
    The workers see ``WORLD_SIZE`` and so do not launch again, whatever ``--nproc`` says. Each gets an equal
    share of the cores unless ``OMP_NUM_THREADS`` says otherwise. A worker that failed with an error of ours
    (exit status 2) has printed it; for any other failure one line names the process and its exit status,
    in place of torchrun's log and traceback.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("torch.distributed") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}",
                                         f"--max-restarts={max_restarts}", "-m", "supcon"])
    # Set, not parsed: torchrun's parser takes --nproc, --run and --monitor for abbreviations of its own options.
    args.training_script_args = list(argv)
    try:
        run(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        if failure.exitcode != 2:
            print(f"supcon: error: process {rank} of {nproc} failed with exit status {failure.exitcode}",
                  file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


# ---------------------------------------------------------------------------------------------- batches and models


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This process's piece of a global batch: contiguous, the first ``len % world`` pieces one longer."""
    if not is_distributed():
        return indices
    return indices.tensor_split(world_size())[rank()]


def min_batch() -> int:
    """The smallest global batch that leaves every process two images (BatchNorm needs two in training)."""
    return 2 * world_size()


def wrap(model: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """``model`` under DDP (its BatchNorm layers synchronised first with ``sync_bn``), or ``model`` when alone.

    The module itself is converted in place, so callers keep training, saving and evaluating ``model``; only the
    training forward goes through the wrapper, which averages the gradients across processes in backward.
    """
    if not is_distributed():
        return model
    if sync_bn:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on the CPU")
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the layers below the top module in place
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


# ---------------------------------------------------------------------------------------------- collectives


def sizes_of(n: int, device: torch.device) -> list[int]:
    """Every process's local batch size (they differ by one when the global batch does not divide evenly)."""
    local = torch.tensor([n], device=device)
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return [int(p) for p in parts]


class _GatherRows(torch.autograd.Function):
    """All processes' rows in rank order, of unequal counts; backward sends each its rows' summed gradient.

    Not ``torch.distributed.nn.functional.all_gather``: that one needs equal shapes, and the last batch of an
    epoch splits unevenly. Backward is an all-reduce of the whole (small: rows x dim) gradient rather than a
    reduce-scatter, which gloo lacks.
    """

    @staticmethod
    def forward(ctx, x, sizes):
        ctx.sizes = sizes
        most = max(sizes)
        padded = x.new_zeros((most, *x.shape[1:]))
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:k] for part, k in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()  # all_reduce works in place; autograd may still hold grad
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: rank()])
        return grad[start:start + ctx.sizes[rank()]], None


def gather(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Every process's ``x`` concatenated along dim 0 in rank order; differentiable (``x`` alone when alone)."""
    if not is_distributed():
        return x
    sizes = sizes if sizes is not None else sizes_of(len(x), x.device)
    if x.requires_grad:
        return _GatherRows.apply(x, sizes)
    with torch.no_grad():
        return _GatherRows.apply(x, sizes)


def all_sum(values: Sequence[float]) -> list[float]:
    """Each number summed over the processes (float64, so counts stay exact)."""
    if not is_distributed():
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    totals = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every process (any picklable object)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: T) -> list[T]:
    """Every process's ``obj`` (any picklable object), in rank order, on every process."""
    if not is_distributed():
        return [obj]
    found: list = [None] * world_size()
    dist.all_gather_object(found, obj)
    return found


def from_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only, its result handed to every process."""
    if not is_distributed():
        return fn()
    return broadcast(fn() if is_main() else None)


@contextlib.contextmanager
def main_first():
    """One process per machine (its ``LOCAL_RANK`` 0) runs the block first (a download, a cache being filled),
    then the others run it, reading what the first left behind."""
    first = int(os.environ.get("LOCAL_RANK", rank())) == 0
    if is_distributed() and not first:
        dist.barrier()
    try:
        yield
    finally:
        if is_distributed() and first:
            dist.barrier()


# ---------------------------------------------------------------------------------------------- losses


def _global_value(share: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """A loss whose value is ``total`` (the global batch's) on every process and whose gradient is
    ``world x d share``: DDP averages the processes' gradients, which then add up to the global gradient.
    Every process seeing the same value also makes a non-finite loss stop them all at the same step."""
    scaled = share * world_size()
    return scaled + (total - scaled).detach()


class GatheredLoss(nn.Module):
    """A SupCon-style criterion (``criterion(features, labels, anchors=...)``, reduction "mean") on the global
    batch.

    ``features`` ``[b, V, D]`` and ``labels`` ``[b]`` are this process's; all processes' are gathered (in rank
    order, so the global batch is the concatenation of the shards) and this process's samples are the anchors,
    against the whole gathered contrast set: the N x N work is split, not repeated. The returned value is the
    global batch's loss on every process; its gradient, once DDP has averaged it, equals a single process's on
    the concatenated batch. In a single process it is ``criterion`` itself.
    """

    def __init__(self, criterion: nn.Module):
        super().__init__()
        if getattr(criterion, "reduction", "mean") != "mean":
            raise ValueError(f"GatheredLoss needs a criterion with reduction 'mean'; got {criterion.reduction!r}")
        self.criterion = criterion

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if not is_distributed():
            return self.criterion(features, labels)
        sizes = sizes_of(len(features), features.device)
        everything = gather(features, sizes)
        all_labels = gather(labels, sizes) if labels is not None else None
        start = sum(sizes[: rank()])
        mine = torch.arange(start, start + len(features), device=features.device)
        share = self.criterion(everything, all_labels, anchors=mine)
        total = share.detach().clone()
        dist.all_reduce(total)
        return _global_value(share, total)


def global_mean(loss: torch.Tensor, n: int) -> torch.Tensor:
    """This process's mean ``loss`` over its ``n`` examples as the global batch's mean: the value on every
    process, and a gradient weighted by ``n`` so that DDP's average is right even when the shards differ."""
    if not is_distributed():
        return loss
    stats = torch.stack([loss.detach().double() * n, torch.tensor(float(n), dtype=torch.float64,
                                                                  device=loss.device)])
    dist.all_reduce(stats)
    total_n = stats[1].item()
    share = loss * (n / total_n)
    return _global_value(share, (stats[0] / stats[1]).to(loss.dtype))
