"""The ``supcon`` command: flags and YAML become a :class:`~supcon.config.Config`, then one library call."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing
import warnings
from pathlib import Path

from supcon import __version__
from supcon.config import COMMANDS, Config, fields_for, load_yaml

DESCRIPTIONS = {
    "pretrain": "Stage 1: train an encoder and projection head with the supervised contrastive loss.",
    "linear": "Stage 2: freeze a pretrained encoder and train a linear classifier on it (early stopping).",
    "ce": "The baseline: the same encoder and a linear layer trained end to end with cross-entropy.",
    "compare": "Train the CE baseline and SupCon (stage 1 + stage 2) on one data set under the same budget; "
               "print a table and draw t-SNE pictures of both encoders' embeddings.",
}
_HINTS = typing.get_type_hints(Config)


def _value_type(name: str):
    hint = _HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supcon", description="Supervised Contrastive Learning against cross-entropy.",
        epilog="Run 'supcon COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"supcon {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = commands.add_parser(command, help=DESCRIPTIONS[command], description=DESCRIPTIONS[command],
                                  argument_default=argparse.SUPPRESS)
        sub.add_argument("--config", metavar="FILE",
                         help="YAML file of options (keys as below, with - or _); flags override it")
        for f in fields_for(command):
            flag = "--" + f.name.replace("_", "-")
            kind = _value_type(f.name)
            # The help shows the Config default; SUPPRESS keeps unset flags out of the namespace so that a
            # YAML file or a run's config.yaml below them is not overwritten by defaults.
            text = f.metadata["help"]
            kwargs = {"help": text if "default" in text else f"{text} (default: {f.default})"}
            if kind is bool:
                sub.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
                continue
            if f.metadata["choices"]:
                kwargs["choices"] = f.metadata["choices"]
            else:
                kwargs["metavar"] = f.metadata["metavar"] or kind.__name__.upper()
            sub.add_argument(flag, type=kind, **kwargs)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Layers, lowest first: Config defaults, a linear run's config.yaml, --config YAML, then flags."""
    values: dict = {}
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    run = flags.get("run")
    if args.command == "linear":
        if run is None:
            raise ValueError("linear needs --run DIR, the directory of a finished pretrain run")
        values.update(load_yaml(Path(run) / "config.yaml") if (Path(run) / "config.yaml").is_file() else {})
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    values.update(flags)
    allowed = {f.name for f in fields_for(args.command)} | ({f.name for f in dataclasses.fields(Config)}
                                                           if args.command == "linear" else set())
    source = args.config if getattr(args, "config", None) else "config"
    unknown = sorted(set(k.replace("-", "_") for k in values) - allowed)
    if unknown:
        raise ValueError(f"option(s) not used by '{args.command}' in {source}: {', '.join(unknown)}; valid "
                         f"options: {', '.join(sorted(allowed))}")
    return Config.from_dict(values, source=source)


def default_out(command: str, dataset: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in Path(dataset.split(":", 1)[-1]).stem).strip("-")
    return Path("runs") / f"{command}-{slug or 'data'}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_command(command: str, cfg: Config) -> int:
    from supcon import train
    from supcon.compare import compare, results_table
    from supcon.data import describe

    def say(message: str) -> None:
        if not cfg.quiet:
            print(message, flush=True)

    if command == "linear":
        out = Path(cfg.run)
        result = train.linear_probe_run(out, cfg)
        print(results_table([result.summary]))
        print(f"linear probe finished: val acc {result.summary['val_acc']:.4f}; outputs in {out}")
        return 0
    out = Path(cfg.out) if cfg.out else default_out(command, cfg.dataset)
    cfg = cfg.replace(out=str(out))
    if command == "compare":
        results = compare(cfg, out, log=say)
        print(results_table(results["runs"]))
        print(f"compare finished: outputs (results.json, results.md, tsne.png, ce/, supcon/) in {out}")
        return 0
    data = train.load_data(cfg)
    say(describe(data))
    if command == "pretrain":
        result = train.pretrain(cfg, data, out)
        print(f"stage 1 finished: SupCon loss {result.summary['supcon_loss']:.4f}; outputs in {out}")
        print(f"next: supcon linear --run {out}")
    else:
        result = train.train_ce(cfg, data, out)
        print(results_table([result.summary]))
        print(f"cross-entropy finished: val acc {result.summary['val_acc']:.4f}; outputs in {out}")
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"supcon: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        return run_command(args.command, cfg)
    except (ValueError, FloatingPointError, OSError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"supcon {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"supcon {args.command}: interrupted", file=sys.stderr)
        return 130
