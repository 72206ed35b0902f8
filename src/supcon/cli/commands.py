"""What each ``supcon`` command does: one library call, then what it prints. No policy a Python user would also
want lives here (that is in :mod:`supcon.runs.options`, :mod:`supcon.stages` and :mod:`supcon.experiments`)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from supcon.cli.parser import tool_options
from supcon.config import ONE_JOB, Config
from supcon.engine import distributed
from supcon.io import append_jsonl
from supcon.methods import LOSS_TITLES, method_for
from supcon.runs.options import options_for, resume_dir

if TYPE_CHECKING:  # supcon.engine.callbacks loads torch, which `supcon --help` does without
    from supcon.engine.callbacks import Callback

# argparse names of the sweep's and the config file's own flags: not options of the Config
NOT_OPTIONS = ("command", "config", "grid", "ce_grid", "no_ce", "variant", "jobs", "redo")


def config_from_args(args: argparse.Namespace) -> Config:
    """The command's options: defaults, a run's config.yaml, --config YAML, then flags (see ``options_for``)."""
    flags = {k: v for k, v in vars(args).items() if k not in NOT_OPTIONS}
    return options_for(args.command, flags, getattr(args, "config", None))


def default_out(command: str, dataset: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in Path(dataset.split(":", 1)[-1]).stem).strip("-")
    return Path("runs") / f"{command}-{slug or 'data'}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_command(command: str, cfg: Config, args: argparse.Namespace | None = None,
                callbacks: Sequence[Callback] = ()) -> int:
    """Run a training command (pretrain, linear, ce, compare, sweep); the exit status. ``callbacks`` join the loop
    of every stage it trains."""
    from supcon.device import resolve_device

    if distributed.launched() and command not in ONE_JOB:
        raise ValueError(f"{command} does not run under torchrun (its cells train one process each); expected one "
                         f"of {', '.join(ONE_JOB)}")
    distributed.init(resolve_device(cfg.device))  # under torchrun: join the others before anything else
    if distributed.restarts() and cfg.resume is None:  # torchrun restarted us: continue where the run stopped
        where = cfg.run if command == "linear" and cfg.run is not None else cfg.out
        if where is None:
            raise ValueError("a restarted process needs the run's directory: give --out (--nproc with "
                             "--max-restarts does)")
        cfg = cfg.replace(resume=str(where))
        if distributed.is_main():
            print(f"supcon {command}: restart {distributed.restarts()}: resuming {where}", file=sys.stderr)
            metrics = Path(where) / "metrics.jsonl"  # a single run's; a comparison's runs each have their own
            if metrics.is_file():
                append_jsonl(metrics, {"event": "restart", "restart": distributed.restarts(),
                                       "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if command != "linear" or cfg.run is None:  # every run but a probe added to --run DIR has a new directory
        # under torchrun every process takes rank 0's clock, so that they name the same directory
        cfg = cfg.replace(out=cfg.out or str(distributed.broadcast(default_out(command, cfg.dataset))))
    try:
        return _run(command, cfg, args or argparse.Namespace(), tuple(callbacks))
    except KeyboardInterrupt as err:
        if command == "sweep":  # a sweep resumes by being run again; its cells say nothing of their own
            raise
        return _interrupted(command, cfg, err)


def show(*parts, **kwargs) -> None:
    """Print, on the main process only: the others of a distributed run stay silent."""
    if distributed.is_main():
        print(*parts, **kwargs)


def _run(command: str, cfg: Config, args: argparse.Namespace, callbacks: tuple[Callback, ...]) -> int:
    from supcon.data import describe
    from supcon.reporting.format import results_table
    from supcon.reporting.notes import ce_note, comparison_text
    from supcon.stages import load_data, train_run

    def say(message: str) -> None:
        if not cfg.quiet:
            show(message, flush=True)

    if command == "linear":  # a probe added to the pretrain run --run, or a transfer from --encoder-from
        adding = cfg.run is not None
        result = train_run(method_for(cfg), cfg, out=None if adding else cfg.out, callbacks=callbacks)
        show(results_table([result.summary]))
        where = cfg.run if adding else cfg.out
        what = (f"linear probe finished: val acc {result.summary['val_acc']:.4f}" if adding else
                f"transfer finished: val acc {result.summary['val_acc']:.4f} on {cfg.dataset} with the encoder of "
                f"{cfg.encoder_from}")
        show(f"{what}; outputs in {where}")
        return 0
    out = Path(cfg.out)
    if command == "sweep":
        from supcon.experiments.sweep import Sweep, run_sweep
        from supcon.reporting.sweep import sweep_markdown

        sweep = Sweep.from_options(cfg, getattr(args, "config", None), getattr(args, "grid", None),
                                   getattr(args, "ce_grid", None), getattr(args, "variant", None),
                                   getattr(args, "no_ce", False))
        rows = run_sweep(sweep, out, jobs=getattr(args, "jobs", None) or 1, log=say,
                         redo=getattr(args, "redo", False), callbacks=callbacks)
        show(sweep_markdown(rows))
        show(f"sweep finished: outputs (sweep.md, sweep.csv, sweep.png, cells/) in {out}")
        return 0
    if command == "compare":
        from supcon.experiments.compare import compare

        results = compare(cfg, out, log=say, callbacks=callbacks)
        show(comparison_text(results))
        runs = (", ".join(f"{m}/" for m in cfg.method_list()) if cfg.seeds == 1
                else f"seed-{cfg.seed}/ ... seed-{cfg.seed + cfg.seeds - 1}/")
        show(f"compare finished: outputs (results.json, results.md, tsne.png, {runs}) in {out}")
        return 0
    data = load_data(cfg)
    say(describe(data))
    if command == "pretrain":
        result = train_run(method_for(cfg), cfg, data, out, until="pretrain", callbacks=callbacks)
    else:
        result = train_run("ce", cfg, data, out, callbacks=callbacks)
    if command == "pretrain":
        knn = result.summary.get("knn_acc")
        show(f"stage 1 finished: {LOSS_TITLES[cfg.loss]} loss {result.summary['stage1_loss']:.4f}"
             + (f", kNN accuracy {knn:.4f}" if knn is not None else "") + f"; outputs in {out}")
        show(f"next: supcon linear --run {out}")
    else:
        show(results_table([result.summary]))
        note = ce_note(result.summary)
        if note:
            show(note)
        show(f"cross-entropy finished: val acc {result.summary['val_acc']:.4f}; outputs in {out}")
    return 0


def _interrupted(command: str, cfg: Config, err: KeyboardInterrupt) -> int:
    """Ctrl-C: say what was saved and the command that continues the run."""
    from supcon.engine.checkpoint import DIRNAME

    run_dir = resume_dir(command, cfg)
    saved = getattr(err, "checkpoint", None)
    if saved is not None:
        print(f"supcon {command}: interrupted; checkpoint saved ({saved})", file=sys.stderr)
    elif run_dir is not None and any(p for pattern in (f"{DIRNAME}/*.pt", f"*/{DIRNAME}/*.pt")
                                     for p in run_dir.glob(pattern)):
        print(f"supcon {command}: interrupted; the last checkpoint is kept", file=sys.stderr)
    else:
        print(f"supcon {command}: interrupted", file=sys.stderr)
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        print(f"resume with: supcon {command} --resume {shlex.quote(str(run_dir))}", file=sys.stderr)
    return 130


def run_tool(args: argparse.Namespace) -> int:
    """Run a command that reads finished runs (predict, robustness, report, knn, tsne, embed)."""
    if args.command == "predict":
        return run_predict(args)
    if args.command == "robustness":
        from supcon.experiments.robustness import RobustnessOptions, robustness_report
        from supcon.reporting.robustness import FILES, summary_table

        out = Path(args.out) if args.out else Path("runs") / f"robustness-{time.strftime('%Y%m%d-%H%M%S')}"
        report = robustness_report(args.run_dirs, out, tool_options(RobustnessOptions, args))
        print(summary_table(report))
        print(f"robustness finished: outputs ({', '.join(f for f in FILES if (out / f).is_file())}) in {out}")
        return 0
    if args.command == "report":
        return run_report(args)
    from supcon.experiments import embeddings

    if args.command == "knn":
        r = embeddings.knn_run(args.run_dir, tool_options(embeddings.KnnOptions, args))
        votes = f"exp(s/{r['temperature']:g})" if r["weights"] == "exp" else "uniform"
        print(f"kNN accuracy {r['knn_acc']:.4f} on {r['dataset']}: {r['val_images']:,} validation images "
              f"classified by their {r['k']} nearest of {r['train_images']:,} training images (cosine, {votes} "
              f"votes), encoder of {args.run_dir}")
        return 0
    if args.command == "tsne":
        paths = embeddings.tsne_run(args.run_dir, tool_options(embeddings.TsneOptions, args))
        print(f"t-SNE written to {', '.join(map(str, paths))}")
        return 0
    path = embeddings.embed_run(args.run_dir, args.out, tool_options(embeddings.EmbedOptions, args))
    print(f"embeddings written to {path}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from supcon.reporting.html import write_html_report
    from supcon.reporting.markdown import write_report

    if args.html is not None:
        def log(line: str) -> None:
            print(line, file=sys.stderr)
        print(f"HTML report written to {write_html_report(args.dirs, args.html, args.map_points, log)}")
    if args.out is not None or args.html is None:
        print(f"report written to {write_report(args.dirs, args.out or 'report.md')}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from supcon.evaluate.predict import (
        PredictionWriter,
        PredictOptions,
        classify_files,
        find_images,
        summarize,
        summary_line,
    )
    from supcon.runs.load import load_run

    opts = tool_options(PredictOptions, args)
    run = load_run(args.run_dir, opts.device, opts.method)
    files = find_images(args.paths, run.classes)
    # a bar for folders, on a terminal: in a log file its redraws between the lines would be noise
    progress = not opts.quiet and any(Path(p).is_dir() for p in args.paths) and sys.stderr.isatty()
    writer = PredictionWriter(sys.stdout, opts.format, run.classes, opts.top_k)
    results = []
    for result in classify_files(run, files, opts.batch_size, progress, opts.high_bit_depth):
        results.append(result)
        line = writer.write(result)
        if result.skipped:
            line, stream = f"skipped {result.path}: {result.reason}", sys.stderr
        else:
            stream = sys.stdout
        if line is not None and progress:
            tqdm.write(line, file=stream)  # above the bar, which stays at the bottom
        elif line is not None:
            print(line, file=stream)
    summary = summarize(results)
    writer.close(summary)
    if not summary["images"]:
        raise ValueError(f"no readable images among the {len(files):,} file(s) given")
    print(summary_line(summary, run.run_dir), file=sys.stdout if opts.format == "text" else sys.stderr)
    return 0
