"""The ``supcon`` command: flags and YAML become a :class:`~supcon.config.Config`, then one library call."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
import typing
import warnings
from pathlib import Path

from supcon import __version__, distributed
from supcon.config import (
    COMMANDS,
    DISTRIBUTED,
    LOSS_NAMES,
    MAP_POINTS,
    NO_DISTRIBUTED_RESUME,
    TSNE_POINTS,
    Config,
    fields_for,
    load_yaml,
    runtime_options,
)

DESCRIPTIONS = {
    "pretrain": "Stage 1: train an encoder and projection head with a contrastive loss (--loss: SupCon by "
                "default, max-margin, npairs, SimCLR), watching a kNN accuracy of its features (--knn-every).",
    "linear": "Stage 2: freeze a pretrained encoder and train a linear classifier on it (early stopping); "
              "--run DIR adds it to DIR, --encoder-from DIR transfers DIR's encoder to --dataset in a new run.",
    "ce": "The baseline: the same encoder and a linear layer trained end to end with cross-entropy.",
    "compare": "Train the CE baseline and SupCon (stage 1 + stage 2) on one data set under the same budget; "
               "print a table and draw t-SNE pictures of both encoders' embeddings.",
    "sweep": "Run a grid of SupCon and CE runs (default: the reference study's optimizer x lr strategy x "
             "augmentation grid) and write sweep.md, sweep.csv and sweep.png; a sweep started again skips "
             "finished cells. Options below set the base configuration of every cell.",
}
SWEEP_KEYS = ("grid", "ce_grid", "variants")
# Commands that read finished run directories rather than train: their own small parsers, not the Config's.
TOOLS = {
    "tsne": "Draw RUN_DIR/tsne.png: the t-SNE of the validation images' encoder embeddings, coloured by class "
            f"(at most {TSNE_POINTS:,} points, a stratified subsample of larger splits).",
    "embed": "Export a run's encoder embeddings with their labels and class names as .npz (keys train_x, train_y, "
             "val_x, val_y, class_names; train_proj, val_proj with --projection).",
    "knn": "Weighted kNN accuracy of a finished run's encoder: each validation image is classified by its k most "
           "cosine-similar training images, voting exp(similarity / T) each (or 1 with --weights uniform).",
    "robustness": "Evaluate finished runs' classifiers on their validation split: clean, under common corruptions "
                  "at 5 severities (accuracy, ImageNet-C's mCE and relative mCE against a baseline run), under "
                  "FGSM and PGD attacks, and their logit margins and calibration (ECE, reliability diagram). "
                  "Writes robustness.md/.json/.csv and pictures to --out; the runs are not changed.",
    "predict": "Classify image files or folders (recursively) with a finished run's encoder and linear head: one "
               "line per image (path, class, confidence); images are decoded and resized as in training. Where "
               "images sit in folders named after the run's classes, the accuracy is reported too.",
    "report": "Gather run directories (single runs, compare directories, or folders holding many runs) into one "
              "Markdown report (results table, options changed from the defaults, the pictures) or, with --html, one "
              "self-contained HTML page with interactive curves and embedding maps.",
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
                         help="YAML file of options (keys as below, with - or _); flags override it" + (
                             "; a sweep file may also hold grid: and ce_grid: mappings of axis lists, and "
                             "variants: a list of option mappings"
                             if command == "sweep" else ""))
        if command == "sweep":
            sub.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                             help="a SupCon axis (repeat for more); replaces the study's default grid "
                                  "(optimizer=sgd,adam,rmsprop schedule=fixed,cosine augment=none,<--augment>)")
            sub.add_argument("--ce-grid", action="append", metavar="KEY=V1,V2",
                             help="a cross-entropy axis (repeat for more); default optimizer=sgd,adam,rmsprop")
            sub.add_argument("--variant", action="append", metavar="KEY=V[,KEY=V]",
                             help="a set of options applied on top of every SupCon cell of the grid, one cell each "
                                  "(repeat for more; 'base' for none): a one-factor-at-a-time study")
            sub.add_argument("--no-ce", action="store_true", help="no cross-entropy cells")
            sub.add_argument("--redo", action="store_true",
                             help="redo cells that finished under other options (without it, such a cell is an "
                                  "error: redoing it deletes its result)")
            sub.add_argument("--jobs", type=int, metavar="N",
                             help="cells run at once, each in its own process with cores/N threads (default: 1)")
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
    _add_tools(commands)
    return parser


def _add_tools(commands) -> None:
    def sub(name: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=TOOLS[name], description=TOOLS[name])

    tsne = sub("tsne")
    tsne.add_argument("run_dir", metavar="RUN_DIR", help="a finished pretrain, linear or ce run directory")
    tsne.add_argument("--projection", action="store_true",
                      help="also draw the projection head's output (pretrain runs) to RUN_DIR/tsne_projection.png")
    embed = sub("embed")
    embed.add_argument("run_dir", metavar="RUN_DIR", help="a finished pretrain, linear or ce run directory")
    embed.add_argument("--dataset", metavar="SPEC", help="data set to embed, resized to the encoder's input size "
                       "(default: the run's own, with its split)")
    embed.add_argument("--split", choices=("train", "val", "both"), default="both",
                       help="which split to export (default: both)")
    embed.add_argument("--projection", action="store_true",
                       help="also export the projection head's output (pretrain runs) as train_proj / val_proj")
    embed.add_argument("--out", metavar="FILE", required=True, help="the .npz file to write")
    knn = sub("knn")
    knn.add_argument("run_dir", metavar="RUN_DIR", help="a finished pretrain, linear or ce run directory")
    knn.add_argument("--dataset", metavar="SPEC", help="data set whose training images are the neighbours and whose "
                     "validation images are classified, resized to the encoder's input size (default: the run's "
                     "own, with its split)")
    knn.add_argument("--k", type=int, metavar="K", help="neighbours (default: the run's --knn-k, else 20)")
    knn.add_argument("--temperature", type=float, metavar="T",
                     help="votes weigh exp(similarity / T) (default: the run's --knn-temperature, else 0.07)")
    knn.add_argument("--weights", choices=("exp", "uniform"), default="exp",
                     help="exp(similarity / T) per neighbour, or 1 (uniform) (default: exp)")
    _add_robustness(sub("robustness"))
    predict = sub("predict")
    predict.add_argument("run_dir", metavar="RUN_DIR", help="a finished ce run, pretrain run with a linear probe, "
                         "transfer run, or compare directory (its supcon/ run; give DIR/ce for the baseline)")
    predict.add_argument("paths", nargs="+", metavar="PATH",
                         help="image files, or folders searched recursively; unreadable files are skipped with the "
                              "reason")
    predict.add_argument("--top-k", type=int, default=1, metavar="K",
                         help="also give the next K-1 classes and their probabilities (default: 1)")
    predict.add_argument("--format", choices=("text", "json", "csv"), default="text",
                         help="text: one tab-separated line per image; csv: a header and one row per image; json: "
                              "one document with predictions, skipped files and the summary (default: text)")
    predict.add_argument("--batch-size", type=int, default=256, metavar="N",
                         help="images decoded and classified at a time (default: 256)")
    predict.add_argument("--high-bit-depth", choices=("skip", "convert"), default="skip",
                         help="images of more than 8 bits per sample (16-bit PNG or TIFF, float): skip them with "
                              "the reason, since the runs learned from 8-bit photos, or convert them to 8 bits as "
                              "the training loader does and classify them (default: skip)")
    predict.add_argument("--device", default="auto",
                         help="auto (cuda, mps, then cpu), cpu, cuda, cuda:N or mps (default: auto)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    report = sub("report")
    report.add_argument("dirs", nargs="+", metavar="DIR",
                        help="run directories, compare directories or folders searched for runs (by results.json)")
    report.add_argument("--out", metavar="FILE",
                        help="the Markdown file to write; pictures are linked relative to it (default: report.md, "
                             "unless --html is given)")
    report.add_argument("--html", metavar="FILE",
                        help="also (or, without --out, only) write one self-contained HTML page: the tables, "
                             "interactive training curves and embedding maps (t-SNE, and UMAP with umap-learn) "
                             "whose points show their image and classes on hover; needs plotly "
                             "(pip install 'supcon[report]')")
    report.add_argument("--map-points", type=int, metavar="N", default=MAP_POINTS,
                        help="points in each embedding map of the HTML page, a class-balanced subset of the "
                             f"validation images; 0 for no maps (default: {MAP_POINTS})")


def run_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from supcon.evaluate.predict import PredictionWriter, classify_files, find_images, load_run, summarize, summary_line

    if args.batch_size < 1 or args.top_k < 1:
        raise ValueError(f"--batch-size and --top-k must be positive; got {args.batch_size} and {args.top_k}")
    run = load_run(args.run_dir, args.device)
    files = find_images(args.paths, run.classes)
    # a bar for folders, on a terminal: in a log file its redraws between the lines would be noise
    progress = not args.quiet and any(Path(p).is_dir() for p in args.paths) and sys.stderr.isatty()
    writer = PredictionWriter(sys.stdout, args.format, run.classes, args.top_k)
    results = []
    for result in classify_files(run, files, args.batch_size, progress, args.high_bit_depth):
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
    print(summary_line(summary, run.run_dir), file=sys.stdout if args.format == "text" else sys.stderr)
    return 0


def _csv(kind, name: str):
    """An argparse type: comma-separated values of ``kind``; ``none`` (or nothing) is the empty list."""
    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if items in ([], ["none"]):
            return []
        try:
            return [kind(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {name}, got {text!r}") from None
    return parse


def _add_robustness(parser: argparse.ArgumentParser) -> None:
    from supcon.evaluate.attacks import ATTACKS, PGD_STEPS
    from supcon.evaluate.calibration import BINS
    from supcon.evaluate.robustness import CORRUPTIONS, SEVERITIES
    from supcon.robustness_report import EPSILONS_255

    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="finished runs with a classifier: compare directories (their supcon/ and ce/ runs), "
                             "pretrain runs with their linear probe, ce runs, transfer runs")
    parser.add_argument("--baseline", metavar="RUN_DIR",
                        help="the run that corruption errors are relative to (CE_c = a run's errors over the "
                             "baseline's); evaluated too if not among RUN_DIR (default: the first cross-entropy "
                             "run, else the first run)")
    parser.add_argument("--corruptions", type=_csv(str, "corruption names"), default=list(CORRUPTIONS),
                        metavar="LIST", help=f"comma-separated, or none (default: all nine: {', '.join(CORRUPTIONS)})")
    parser.add_argument("--severities", type=_csv(int, "integers 1-5"), default=list(SEVERITIES), metavar="LIST",
                        help="comma-separated severities 1-5; mCE sums over these (default: 1,2,3,4,5)")
    parser.add_argument("--attacks", type=_csv(str, "attack names"), default=list(ATTACKS), metavar="LIST",
                        help=f"L-inf attacks, comma-separated, or none (default: {','.join(ATTACKS)})")
    parser.add_argument("--eps", type=_csv(float, "numbers"), default=list(EPSILONS_255), metavar="LIST",
                        help="attack radii in 1/255 of the pixel range, comma-separated (default: 1,2,4,8)")
    parser.add_argument("--pgd-steps", type=int, default=PGD_STEPS, metavar="N",
                        help=f"PGD steps, each of 2.5 eps / N, after a random start (default: {PGD_STEPS})")
    parser.add_argument("--bins", type=int, default=BINS, metavar="N",
                        help=f"equal-width confidence bins of the ECE and reliability diagram (default: {BINS})")
    parser.add_argument("--max-images", type=int, metavar="N",
                        help="evaluate a seeded, class-balanced subsample of N validation images (default: all)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the corruptions' noise and PGD's random starts (default: 0)")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N",
                        help="images per forward (and backward, for the attacks) pass (default: 256)")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, then cpu), cpu, cuda, cuda:N, mps "
                                                         "(default: auto)")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write the tables and pictures (default: runs/robustness-<time>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_tool(args: argparse.Namespace) -> int:
    if args.command == "predict":
        return run_predict(args)
    if args.command == "robustness":
        from supcon.robustness_report import FILES, robustness_report, summary_table

        out = Path(args.out) if args.out else Path("runs") / f"robustness-{time.strftime('%Y%m%d-%H%M%S')}"
        report = robustness_report(args.run_dirs, out, baseline=args.baseline, corruptions=args.corruptions,
                                   severities=args.severities, attacks=args.attacks, epsilons=args.eps,
                                   pgd_steps=args.pgd_steps, bins=args.bins, max_images=args.max_images,
                                   seed=args.seed, batch_size=args.batch_size, device=args.device,
                                   progress=not args.quiet)
        print(summary_table(report))
        print(f"robustness finished: outputs ({', '.join(f for f in FILES if (out / f).is_file())}) in {out}")
        return 0
    if args.command == "report":
        from supcon.report import write_html_report, write_report

        if args.html is not None:
            log = lambda line: print(line, file=sys.stderr)  # noqa: E731
            print(f"HTML report written to {write_html_report(args.dirs, args.html, args.map_points, log)}")
        if args.out is not None or args.html is None:
            print(f"report written to {write_report(args.dirs, args.out or 'report.md')}")
        return 0
    from supcon import transfer

    if args.command == "knn":
        r = transfer.knn_run(args.run_dir, dataset=args.dataset, k=args.k, temperature=args.temperature,
                             weights=args.weights)
        votes = f"exp(s/{r['temperature']:g})" if r["weights"] == "exp" else "uniform"
        print(f"kNN accuracy {r['knn_acc']:.4f} on {r['dataset']}: {r['val_images']:,} validation images "
              f"classified by their {r['k']} nearest of {r['train_images']:,} training images (cosine, {votes} "
              f"votes), encoder of {args.run_dir}")
        return 0
    if args.command == "tsne":
        paths = transfer.tsne_run(args.run_dir, projection=args.projection)
        print(f"t-SNE written to {', '.join(map(str, paths))}")
        return 0
    path = transfer.embed_run(args.run_dir, args.out, dataset=args.dataset, split=args.split,
                              projection=args.projection)
    print(f"embeddings written to {path}")
    return 0


def config_from_args(args: argparse.Namespace) -> Config:
    """Layers, lowest first: Config defaults, a linear run's config.yaml, --config YAML, then flags."""
    values: dict = {}
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "grid", "ce_grid", "no_ce",
                                                              "variant", "jobs", "redo")}
    if flags.get("resume") is not None:
        return resume_config(args.command, flags, getattr(args, "config", None))
    run, source = flags.get("run"), flags.get("encoder_from")
    if args.command == "linear":
        if run is None and source is None:
            raise ValueError("linear needs --run DIR, the directory of a finished pretrain run (or --encoder-from "
                             "DIR to train a probe on DIR's encoder on another --dataset)")
        if run is not None and source is not None:
            raise ValueError("give --run DIR (add a probe to DIR) or --encoder-from DIR (a new run), not both")
        if run is not None and "out" in flags:
            raise ValueError("--out goes with --encoder-from; --run DIR writes into DIR")
        given = Path(run or source)
        loaded = load_yaml(given / "config.yaml") if (given / "config.yaml").is_file() else {}
        if source is not None:  # the transfer run starts from the source's options, but is a run of its own
            # (and on data of its own: the source's label noise was a property of its training labels)
            loaded = {k: v for k, v in loaded.items()
                      if k not in ("out", "run", "encoder_from", "label_noise", "label_noise_mode")}
        values.update(loaded)
    if getattr(args, "config", None):
        values.update({k: v for k, v in load_yaml(args.config).items() if k not in SWEEP_KEYS})
    values.update(flags)
    allowed = {f.name for f in fields_for(args.command)} | ({f.name for f in dataclasses.fields(Config)}
                                                           if args.command == "linear" else set())
    source = args.config if getattr(args, "config", None) else "config"
    unknown = sorted(set(k.replace("-", "_") for k in values) - allowed)
    if unknown:
        raise ValueError(f"option(s) not used by '{args.command}' in {source}: {', '.join(unknown)}; valid "
                         f"options: {', '.join(sorted(allowed))}")
    return Config.from_dict(values, source=source)


def resume_config(command: str, flags: dict, config_file: str | None) -> Config:
    """The options of ``--resume RUN_DIR``: RUN_DIR's config.yaml. Flags may repeat its values; only options that
    do not change what the run computes (``runtime`` in the Config) may differ, so the resumed run is the run
    that was started."""
    run_dir = Path(flags["resume"])
    if config_file:
        raise ValueError("--resume takes the run's options from RUN_DIR/config.yaml; leave out --config")
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"nothing to resume in {run_dir}: no config.yaml (is it the directory the run wrote?)")
    saved = Config.from_yaml(run_dir / "config.yaml")
    _check_resume_kind(command, run_dir, saved)
    changeable = runtime_options()
    for key, value in flags.items():
        if key in ("out", "run", "encoder_from") and value is not None:
            same = Path(value) == run_dir if key != "encoder_from" else value == saved.encoder_from
            if not same:
                raise ValueError(f"--{key.replace('_', '-')} {value} does not match --resume {run_dir}; "
                                 "leave it out")
        elif key not in changeable and getattr(saved, key) != value:
            raise ValueError(f"--resume continues {run_dir} with its own options: --{key.replace('_', '-')} {value} "
                             f"differs from its config.yaml ({getattr(saved, key)}); leave it out (only "
                             f"{', '.join('--' + k.replace('_', '-') for k in sorted(changeable - {'out', 'resume'}))}"
                             " may change)")
    cfg = saved.replace(**{k: v for k, v in flags.items() if k in changeable})
    if command == "linear" and saved.encoder_from is None:
        return cfg.replace(run=str(run_dir))  # a probe added to RUN_DIR (config.yaml written by pretrain or linear)
    return cfg.replace(out=str(run_dir))


def _check_resume_kind(command: str, run_dir: Path, saved: Config) -> None:
    """A run is resumed by the command that started it (``linear`` also continues a finished pretrain run)."""
    from supcon.checkpoint import DIRNAME

    stages = {p.name.split("-epoch")[0] for p in (run_dir / DIRNAME).glob("*-epoch*.pt")}
    try:
        method = json.loads((run_dir / "results.json").read_text())["runs"][0].get("method")
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        method = None
    if (run_dir / "ce").is_dir() or (run_dir / "supcon").is_dir():
        kind = "compare"
    elif saved.encoder_from is not None:
        kind = "linear"  # a transfer run
    elif "ce" in stages or method == "ce":
        kind = "ce"
    elif stages or method is not None:
        kind = "pretrain"
    else:
        return  # nothing written yet: whichever command it was starts it again
    if command != kind and not (command == "linear" and kind == "pretrain"):
        raise ValueError(f"{run_dir} holds a {kind} run; resume it with: supcon {kind} --resume {run_dir}")


def resume_dir(command: str, cfg: Config) -> Path | None:
    """The run directory that ``supcon COMMAND --resume`` continues."""
    if command == "linear" and cfg.run is not None:
        return Path(cfg.run)
    return Path(cfg.out) if cfg.out else None


def _interrupted(command: str, cfg: Config, err: KeyboardInterrupt) -> int:
    """Ctrl-C: say what was saved and the command that continues the run."""
    from supcon.checkpoint import DIRNAME

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


def sweep_from_args(args: argparse.Namespace, cfg: Config):
    """The grid: the sweep file's ``grid``/``ce_grid``, replaced by ``--grid``/``--ce-grid`` flags."""
    from supcon.sweep import STUDY_CE_GRID, STUDY_GRID, Sweep, parse_axis, parse_variant

    grid, ce_grid, variants = dict(STUDY_GRID), dict(STUDY_CE_GRID), []
    if getattr(args, "config", None):
        values = load_yaml(args.config)
        for key in ("grid", "ce_grid"):
            if key in values and not isinstance(values[key], dict):
                raise ValueError(f"{args.config}: {key} must be a mapping of option: [values]")
        if "variants" in values and not isinstance(values["variants"], list):
            raise ValueError(f"{args.config}: variants must be a list of option mappings")
        grid = values.get("grid", grid)
        ce_grid = values.get("ce_grid", ce_grid)
        variants = [{k.replace("-", "_"): v for k, v in (variant or {}).items()} if isinstance(variant, dict)
                    else variant for variant in values.get("variants", [])]
    if getattr(args, "variant", None):
        variants = [parse_variant(text) for text in args.variant]
    if getattr(args, "grid", None):
        grid = dict(parse_axis(text) for text in args.grid)
    if getattr(args, "ce_grid", None):
        ce_grid = dict(parse_axis(text) for text in args.ce_grid)
    if getattr(args, "no_ce", False):
        ce_grid = {}
    return Sweep(cfg, grid, ce_grid, variants)


def default_out(command: str, dataset: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in Path(dataset.split(":", 1)[-1]).stem).strip("-")
    return Path("runs") / f"{command}-{slug or 'data'}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_command(command: str, cfg: Config, args: argparse.Namespace | None = None) -> int:
    from supcon import train

    if distributed.launched() and command not in DISTRIBUTED:
        raise ValueError(f"{command} does not run under torchrun (its cells train one process each); expected one "
                         f"of {', '.join(DISTRIBUTED)}")
    distributed.init(train.resolve_device(cfg.device))  # under torchrun: join the others before anything else
    main_rank = distributed.is_main()
    if distributed.is_distributed() and cfg.resume is not None:
        raise ValueError(NO_DISTRIBUTED_RESUME)

    def show(*parts, **kwargs) -> None:  # the other processes of a distributed run stay silent
        if main_rank:
            print(*parts, **kwargs)

    def say(message: str) -> None:
        if not cfg.quiet:
            show(message, flush=True)

    if command != "linear" or cfg.run is None:  # every run but a probe added to --run DIR has a new directory
        # under torchrun every process takes rank 0's clock, so that they name the same directory
        cfg = cfg.replace(out=cfg.out or str(distributed.broadcast(default_out(command, cfg.dataset))))
    try:
        return _run(command, cfg, args, say, show)
    except KeyboardInterrupt as err:
        if command == "sweep":  # a sweep resumes by being run again; its cells say nothing of their own
            raise
        return _interrupted(command, cfg, err)


def _run(command: str, cfg: Config, args: argparse.Namespace | None, say, show) -> int:
    from supcon import train
    from supcon.compare import ce_note, compare, compare_notes, results_table
    from supcon.data import describe

    if command == "linear" and cfg.run is None:  # by --run: a transfer run's own config.yaml names encoder_from
        from supcon.transfer import linear_transfer

        out = Path(cfg.out)
        result = linear_transfer(cfg.encoder_from, cfg, out)
        show(results_table([result.summary]))
        show(f"transfer finished: val acc {result.summary['val_acc']:.4f} on {cfg.dataset} with the encoder of "
              f"{cfg.encoder_from}; outputs in {out}")
        return 0
    if command == "linear":
        out = Path(cfg.run)
        result = train.linear_probe_run(out, cfg)
        show(results_table([result.summary]))
        show(f"linear probe finished: val acc {result.summary['val_acc']:.4f}; outputs in {out}")
        return 0
    out = Path(cfg.out)
    if command == "sweep":
        from supcon.sweep import run_sweep, sweep_markdown

        args = args or argparse.Namespace()
        rows = run_sweep(sweep_from_args(args, cfg), out, jobs=getattr(args, "jobs", None) or 1, log=say,
                         redo=getattr(args, "redo", False))
        show(sweep_markdown(rows))
        show(f"sweep finished: outputs (sweep.md, sweep.csv, sweep.png, cells/) in {out}")
        return 0
    if command == "compare":
        results = compare(cfg, out, log=say)
        show(results_table(results["runs"]))
        note = compare_notes(results["runs"])
        if note:
            show(note)
        show(f"compare finished: outputs (results.json, results.md, tsne.png, ce/, supcon/) in {out}")
        return 0
    data = train.load_data(cfg)
    say(describe(data))
    if command == "pretrain":
        result = train.pretrain(cfg, data, out)
        knn = result.summary.get("knn_acc")
        show(f"stage 1 finished: {LOSS_NAMES[cfg.loss]} loss {result.summary['supcon_loss']:.4f}"
              + (f", kNN accuracy {knn:.4f}" if knn is not None else "") + f"; outputs in {out}")
        show(f"next: supcon linear --run {out}")
    else:
        result = train.train_ce(cfg, data, out)
        show(results_table([result.summary]))
        note = ce_note(result.summary)
        if note:
            show(note)
        show(f"cross-entropy finished: val acc {result.summary['val_acc']:.4f}; outputs in {out}")
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"supcon: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m supcon -- COMMAND ...` keeps torchrun's parser off our options
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in TOOLS:
            return run_tool(args)
        cfg = config_from_args(args)
        if cfg.nproc > 1 and args.command in DISTRIBUTED and not distributed.launched():
            from supcon.train import resolve_device

            distributed.check_launch(cfg.nproc, resolve_device(cfg.device), cfg.batch_size, cfg.sync_bn)
            return distributed.launch(cfg.nproc, argv)
        return run_command(args.command, cfg, args)
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
