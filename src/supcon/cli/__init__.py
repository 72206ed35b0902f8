"""The ``supcon`` command: flags and YAML become a :class:`~supcon.config.Config`, then one library call."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from supcon.cli.commands import config_from_args, default_out, run_command, run_tool
from supcon.cli.parser import TOOLS, build_parser
from supcon.config import ONE_JOB
from supcon.engine import distributed

if TYPE_CHECKING:  # supcon.engine.callbacks loads torch, which `supcon --help` does without
    from supcon.engine.callbacks import Callback

__all__ = ["build_parser", "main"]


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"supcon: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> int:
    """``supcon ARGV``; the exit status. ``callbacks`` join the loop of every stage a training command runs
    (``tests/signal_launcher.py`` stops a run at a known step this way)."""
    warnings.showwarning = _one_line_warning
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m supcon -- COMMAND ...` keeps torchrun's parser off our options
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        if args.command in TOOLS:
            return run_tool(args)
        cfg = config_from_args(args)
        if cfg.nproc > 1 and args.command in ONE_JOB and not distributed.launched():
            from supcon.device import resolve_device

            distributed.check_launch(cfg.nproc, resolve_device(cfg.device), cfg.batch_size, cfg.sync_bn)
            if cfg.max_restarts and not cfg.out and not cfg.run:  # a restart must find the same directory
                argv = [*argv, "--out", str(default_out(args.command, cfg.dataset))]
            return distributed.launch(cfg.nproc, argv, cfg.max_restarts)
        return run_command(args.command, cfg, args, callbacks)
    except (ValueError, FloatingPointError, OSError, ImportError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"supcon {args.command}{_rank_note()}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"supcon {args.command}{_rank_note()}: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


def _rank_note() -> str:
    return f" (rank {distributed.rank()})" if distributed.launched() else ""
