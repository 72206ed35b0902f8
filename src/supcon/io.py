"""Files of a run directory, written so that a crash never leaves half a file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save


def new_file_mode() -> int:
    """The mode the process's umask gives a newly created file (0644 under the usual 022). ``mkstemp`` makes its
    files 0600, which would leave a shared results folder unreadable to everyone but its owner."""
    mask = os.umask(0o022)  # the only way to read the umask is to set it; it is put back at once
    os.umask(mask)
    return 0o666 & ~mask


def _atomic(path: str | Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, new_file_mode())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(path, lambda fh: fh.write(data))


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG, atomically, and close it (a picture is never left half written)."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def save_weights(path: str | Path, module: torch.nn.Module) -> None:
    """Save a module's state as safetensors, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    _atomic(path, lambda fh: fh.write(save(state)))


def load_weights(path: str | Path, module: torch.nn.Module) -> None:
    """Load a safetensors file into ``module``; a missing, corrupt or misfitting file is a one-line ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"cannot read {path}: {_first_line(err)}") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as err:  # another architecture: torch lists every mismatch over many lines
        details = [line.strip().rstrip(".") for line in str(err).splitlines()[1:] if line.strip()]
        first = details[0] if details else _first_line(err)
        more = f"; {len(details) - 1} more" if len(details) > 1 else ""
        raise ValueError(f"cannot read {path}: it does not fit the {type(module).__name__} it was loaded into "
                         f"({first}{more})") from None


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
