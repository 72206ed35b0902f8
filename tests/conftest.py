"""Shared fixtures and helpers: the offline copies of the study's data sets in ../shared/data (never copied here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _two_threads():
    # CI has two cores; pinning keeps timings and results the same on bigger machines.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "imagenet5_64.npz").is_file():
        pytest.skip(f"the shared data sets are not at {SHARED_DATA}")
    return SHARED_DATA


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces: the memory-bound tests' probe."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out
