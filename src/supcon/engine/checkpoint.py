"""Checkpoints of a training stage: written atomically with a checksum, the last K kept, the newest good one found.

A run directory keeps them in ``checkpoints/``, one file per save, named after the stage and the position:
``pretrain-epoch0003-step000020.pt`` was saved after 20 optimizer steps of epoch 3 (for an end-of-epoch
checkpoint the step is the epoch's number of steps). A file is a one-line header,
``SUPCON-CKPT 1 <sha256 of the payload> <payload bytes>``, and the payload, the bytes of ``torch.save``. The
header makes a truncated or damaged file detectable before ``torch.load`` sees it; the file is written to a
temporary name in the same directory, fsynced and renamed (:mod:`supcon.io`), so a crash leaves the old file or
the new one, never half of one. Loading uses ``weights_only=True``: a checkpoint holds tensors and plain Python
values, and a file from elsewhere cannot run code.

>>> ckpts = Checkpoints("runs/x", "pretrain", keep=2)
>>> ckpts.save({"model": model.state_dict()}, epoch=1, step=10)
>>> state, path = ckpts.latest()            # None when there is none
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supcon.config import result_neutral_options
from supcon.io import atomic_write_bytes

MAGIC = "SUPCON-CKPT"
FORMAT = 1
DIRNAME = "checkpoints"
CORRUPT_SUFFIX = ".corrupt"


class CorruptCheckpoint(ValueError):
    """A checkpoint file that is truncated, damaged or not a checkpoint at all."""


# ---------------------------------------------------------------------------------------------- one file


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors and plain values) to ``path`` atomically, with its checksum in the header."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = f"{MAGIC} {FORMAT} {hashlib.sha256(payload).hexdigest()} {len(payload)}\n".encode()
    atomic_write_bytes(path, header + payload)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state saved in ``path``, on the CPU; :class:`CorruptCheckpoint` if the file is not intact."""
    path = Path(path)
    data = path.read_bytes()
    end = data.find(b"\n", 0, 200)
    fields = data[:end].decode("ascii", "replace").split() if end > 0 else []
    if len(fields) != 4 or fields[0] != MAGIC:
        raise CorruptCheckpoint(f"{path} is not a supcon checkpoint (no header)")
    if fields[1] != str(FORMAT):
        raise CorruptCheckpoint(f"{path} has checkpoint format {fields[1]}; this version reads {FORMAT}")
    payload = data[end + 1:]
    if not fields[3].isdigit() or len(payload) != int(fields[3]):
        raise CorruptCheckpoint(f"{path} is truncated ({len(payload)} of {fields[3]} bytes)")
    if hashlib.sha256(payload).hexdigest() != fields[2]:
        raise CorruptCheckpoint(f"{path} is damaged (checksum mismatch)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # intact bytes that torch cannot read: written by something else
        raise CorruptCheckpoint(f"{path} cannot be read: {str(err).splitlines()[0] if str(err) else err!r}") from None


# ---------------------------------------------------------------------------------------------- random numbers


def rng_state() -> dict[str, Any]:
    """Every global random generator a training step may draw from: torch's (CPU, and CUDA where it has been
    used), Python's and numpy's. The library itself draws only from torch's; the others cost nothing to keep and
    cover user transforms that use them."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # weights_only loading takes tensors and plain values, not numpy arrays
        "numpy": {**np_state, "state": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                                        "pos": int(np_state["state"]["pos"])}},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": state["numpy"]["state"]["key"].numpy().astype(np.uint32),
                         "pos": state["numpy"]["state"]["pos"]}
    np.random.set_state(np_state)
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- a stage's files


class Checkpoints:
    """The checkpoints of one stage (``pretrain``, ``linear``, ``ce``) of the run in ``run_dir``.

    ``keep``: how many :meth:`save` keeps (the oldest go first); ``every``: the optimizer steps between
    mid-epoch checkpoints (0: end of epoch only; :func:`supcon.engine.loop.fit` reads it); ``config``: the resolved
    options, stored in every checkpoint and checked against the checkpoint's by :meth:`latest`.
    """

    def __init__(self, run_dir: str | Path, stage: str, keep: int = 2, every: int = 0,
                 config: dict[str, Any] | None = None):
        if keep < 1:
            raise ValueError(f"keep must be at least 1; got {keep}")
        self.directory = Path(run_dir) / DIRNAME
        self.stage, self.keep, self.every, self.config = stage, keep, every, config
        self._pattern = re.compile(rf"{re.escape(stage)}-epoch(\d+)-step(\d+)\.pt")

    def path(self, epoch: int, step: int) -> Path:
        return self.directory / f"{self.stage}-epoch{epoch:04d}-step{step:06d}.pt"

    def paths(self) -> list[Path]:
        """This stage's checkpoint files, oldest first (by position, not by file time)."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            m = self._pattern.fullmatch(p.name)
            if m:
                found.append(((int(m[1]), int(m[2])), p))
        return [p for _, p in sorted(found)]

    def has_any(self) -> bool:
        return bool(self.paths())

    def save(self, state: dict[str, Any], epoch: int, step: int) -> Path:
        """Write ``state`` (with the config) as the checkpoint at ``(epoch, step)``, then drop the oldest beyond
        ``keep`` and any temporary file a killed writer left behind."""
        path = save_checkpoint(self.path(epoch, step), {**state, "config": self.config, "stage": self.stage})
        for old in self.paths()[:-self.keep]:
            old.unlink(missing_ok=True)
        for stale in self.directory.glob(f".{self.stage}-epoch*"):  # mkstemp names of writes that never finished
            stale.unlink(missing_ok=True)
        return path

    def latest(self) -> tuple[dict[str, Any], Path] | None:
        """The newest checkpoint that reads back intact, or None. A damaged one is reported in one warning line
        and renamed ``*.corrupt`` (kept for inspection, out of the way of later saves and of :meth:`save`'s count),
        and the one before it is tried."""
        for path in reversed(self.paths()):
            try:
                state = load_checkpoint(path)
            except CorruptCheckpoint as err:
                path.replace(path.with_name(path.name + CORRUPT_SUFFIX))
                warnings.warn(f"{err}; trying the checkpoint before it (the damaged file is kept as "
                              f"{path.name}{CORRUPT_SUFFIX})", stacklevel=2)
                continue
            if state.get("stage") != self.stage:
                raise ValueError(f"{path} holds a {state.get('stage')!r} checkpoint, not {self.stage!r}")
            self._check_config(state.get("config"), path)
            return state, path
        return None

    def _check_config(self, saved: dict[str, Any] | None, path: Path) -> None:
        """Resuming under options other than the checkpoint's would give a run that neither one describes."""
        if saved is None or self.config is None:
            return
        ignore = result_neutral_options()
        for key, value in saved.items():
            if key not in ignore and key in self.config and self.config[key] != value:
                raise ValueError(f"{path} was saved with {key}={value!r}, but this run has {key}="
                                 f"{self.config[key]!r}; resume with the run's own options (its config.yaml)")

    def clear(self) -> None:
        """Delete this stage's checkpoints (and its damaged and temporary files); the folder too once empty."""
        if not self.directory.is_dir():
            return
        for p in self.directory.iterdir():
            name = p.name.removeprefix(".")
            if name.startswith(f"{self.stage}-epoch") and p.is_file():
                p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: another stage's checkpoints are still there
            self.directory.rmdir()
