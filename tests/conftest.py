"""Shared fixtures and helpers. The tests mirror the package (tests/losses for supcon/losses, ...); real data is
scikit-learn's bundled digits and the offline copies of the study's data sets in ../shared/data (never copied
here; tests that need them skip, with the reason, where they are absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from supcon.cli import main
from supcon.data import load_dataset


def pytest_collection_modifyitems(config, items):
    """``SUPCON_TEST_ORDER=reverse`` runs the tests last file first, last test first: a check that no test
    depends on what an earlier one left behind (no plugin needed)."""
    order = os.environ.get("SUPCON_TEST_ORDER", "")
    if order not in ("", "reverse"):
        raise pytest.UsageError(f"SUPCON_TEST_ORDER is 'reverse' or unset; got {order!r}")
    if order == "reverse":
        items.reverse()


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# A run of a few seconds on digits: the options most tests start from (and override what they test).
QUICK = dict(dataset="digits", max_train=300, max_val=150, epochs=2, linear_epochs=4, batch_size=64, quiet=True,
             tsne=False)


def flags(options: dict) -> list[str]:
    """``options`` as command-line flags: ``{"max_train": 300, "tsne": False}`` -> ``--max-train 300 --no-tsne``."""
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + key.replace("_", "-"))
        else:
            out += [flag, str(value)]
    return out


QUICK_FLAGS = flags({k: v for k, v in QUICK.items() if k != "dataset"})


@pytest.fixture(autouse=True)
def _two_threads():
    # CI has two cores; pinning keeps timings and results the same on bigger machines.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def _data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("supcon-data")


@pytest.fixture(autouse=True)
def _own_data_dir(_data_dir, monkeypatch):
    # Decoded caches and downloads go to the session's own folder, never the user's ~/.cache (a test that needs
    # another sets its own).
    monkeypatch.setenv("SUPCON_DATA_DIR", str(_data_dir))


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits, 300 training and 150 validation images (as QUICK loads them)."""
    return load_dataset("digits", max_train=300, max_val=150)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "imagenet5_64.npz").is_file():
        pytest.skip(f"the shared data sets are not at {SHARED_DATA}")
    return SHARED_DATA


def assert_picture(path, panels: int = 1, colours: int = 8) -> tuple[int, int]:
    """``path`` is a PNG that holds a drawing: it decodes, is wider the more ``panels`` it has side by side (about
    300 px each at least), and has at least ``colours`` distinct colours (a blank or failed figure has one or
    two). Returns its size."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG", f"{path} is {image.format}, not a PNG"
        width, height = image.size
        distinct = len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])
    assert width >= 300 * panels and height >= 200, f"{path} is {width}x{height} px for {panels} panel(s)"
    assert distinct >= colours, f"{path} has {distinct} colours: nothing drawn?"
    return width, height


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``supcon ARGS`` in this process: its exit status, stdout and stderr."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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


def supcon_argv(*args: str, signal_at: str | None = None) -> list[str]:
    """The command line of ``supcon ARGS`` in a process of its own; with ``signal_at`` (``SIGNAL:STEP[:STAGE[:NTH]]``)
    it runs through ``signal_launcher.py``, which hands the run a :class:`~supcon.engine.callbacks.SignalAt`: the
    run sends itself that signal right after that optimizer step, a known step rather than a race."""
    import sys

    if signal_at is None:
        return [sys.executable, "-m", "supcon", *args]
    return [sys.executable, str(Path(__file__).with_name("signal_launcher.py")), signal_at, *args]


def default_sigint() -> None:
    """``preexec_fn`` of a ``supcon`` subprocess that a test interrupts with SIGINT: a shell's background job (CI
    under nohup, ``cmd &``) starts with SIGINT ignored, which Python then keeps, so Ctrl-C would never arrive."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class HostReads(TorchDispatchMode):
    """Records the operations that make the host wait for a GPU: values read back (``item``, ``bool``, ``tolist``), and
    outputs whose size depends on values (``nonzero``, ``unique``, ``bincount``, boolean indexing)."""

    SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::unique_consecutive", "aten::_unique2",
               "aten::unique_dim", "aten::masked_select", "aten::bincount", "aten::lift_fresh"}

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        indices = args[1] if name.startswith("aten::index") and len(args) > 1 else ()
        bool_index = isinstance(indices, list | tuple) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
        if name in self.SYNCING or bool_index or func is torch.ops.aten.repeat_interleave.self_Tensor:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


class ToList(TorchFunctionMode):
    """Records ``tolist``, ``cpu`` and ``numpy``, which read a tensor back without an operation."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("tolist", "cpu", "numpy"):
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))
