"""Where tensors run and in what form: the device, mixed precision and memory layout, and the machine behind them.

A building block: training (``supcon.engine``) and evaluation (``supcon.evaluate``) both resolve ``--device``,
run models under the same autocast and feed them images in the same layout, so that a run's features at
evaluation are the ones training saw.
"""

from __future__ import annotations

import contextlib
import os
import platform

import torch
from torch import nn


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then MPS, then the CPU; any other name is checked to exist here (a one-line ValueError)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps; got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available here")
    return device


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision only on CUDA: bf16 where the card supports it (no loss scaling needed), else fp16."""
    if device.type != "cuda" or amp == "none":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``, or a context that does nothing when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def channels_last(device: torch.device) -> bool:
    # Convolutions run faster on channels-last tensors on CUDA and, through oneDNN, on the CPU as well (the
    # ResNet-18 step at 64 px on 2 cores: 15 % more images/s; benchmarks/bench_train.py).
    return device.type in ("cuda", "cpu")


def place(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``, in the memory layout that :func:`as_model_input` feeds it."""
    model.to(device)
    if channels_last(device):
        model.to(memory_format=torch.channels_last)
    return model


def as_model_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Images in the memory layout the model was placed for (a no-op where they already are)."""
    if channels_last(device) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; from pinned memory without waiting, on CUDA."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def cpu_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What a result was computed on. Runs repeat bit for bit on one machine at one thread count, but the same code
    and seed on another processor can move an accuracy by points, so results compared across runs say this."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__}
