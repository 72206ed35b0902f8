"""The ``supcon`` command line: one sub-command per command, its flags derived from the option fields of the
:class:`~supcon.config.Config` (the training commands) or of the tool's own options (``PredictOptions``,
``KnnOptions``, ...): name, type, default, help and choices."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import typing
from typing import Any

from supcon import __version__
from supcon.config import COMMANDS, MAP_POINTS, TSNE_POINTS, Config, fields_for

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
# Commands that read finished run directories rather than train: their flags come from options of their own.
TOOLS = {
    "tsne": "Draw RUN_DIR/tsne.png: the t-SNE of the validation images' encoder embeddings, coloured by class "
            f"(at most {TSNE_POINTS:,} points, a stratified subsample of larger splits).",
    "embed": "Export a run's encoder embeddings with their labels and class names as .npz (keys train_x, train_y, "
             "val_x, val_y, test_x, test_y, class_names; train_proj, val_proj, test_proj with --projection).",
    "knn": "Weighted kNN accuracy of a finished run's encoder: each validation image is classified by its k most "
           "cosine-similar training images, voting exp(similarity / T) each (or 1 with --weights uniform).",
    "robustness": "Evaluate finished runs' classifiers on their test split: clean, under common corruptions "
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


def _plain_type(hint: Any) -> Any:
    """``int`` of ``int | None``; ``list`` of ``list[str]``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    plain = args[0] if args and typing.get_origin(hint) is not list else hint
    return typing.get_origin(plain) or plain


class OneLineParser(argparse.ArgumentParser):
    """argparse, except that a bad command line is one line on stderr (exit 2) naming the flag, the value and what
    was expected, with a "did you mean" for a misspelt flag, instead of the whole usage block. Flags are never
    abbreviated: ``--epoch 3`` is a mistake to point out, not ``--epochs 3`` to guess."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # the sub-commands' parsers (argparse's own map)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self.commands.get(getattr(namespace, "command", None))
            (command or self).error(_unrecognized(extras, command or self))
        return namespace

    def error(self, message: str):
        print(f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


_INVALID = re.compile(r"argument (?P<flag>[^:]+): invalid (?P<kind>\w+) value: (?P<value>.*)")
_CHOICE = re.compile(r"argument (?P<flag>[^:]+): invalid choice: (?P<value>.*?) \(choose from (?P<choices>.*)\)")
_EXPECTED = {"float": "a number", "int": "a whole number"}


def _one_line(message: str) -> str:
    """argparse's message as this command line says it: the flag first, then what it expected and what it got."""
    if found := _INVALID.fullmatch(message):
        what = _EXPECTED.get(found["kind"], found["kind"])
        return f"{found['flag'].split('/')[0]}: expected {what}, got {found['value']}"
    if found := _CHOICE.fullmatch(message):
        return f"{found['flag'].split('/')[0]}: expected one of {found['choices']}, got {found['value']}"
    if message.startswith("argument ") and message.endswith(": expected one argument"):
        return f"{message[len('argument '):].split(':')[0].split('/')[0]}: expected a value after it"
    return " ".join(message.split())


def _unrecognized(extras: list[str], parser: argparse.ArgumentParser) -> str:
    """``unrecognized argument --epoch; did you mean --epochs?`` for the first of ``extras``."""
    first = extras[0]
    flags = [flag for action in parser._actions for flag in action.option_strings]
    close = difflib.get_close_matches(first.split("=")[0], flags, n=1) if first.startswith("-") else []
    return f"unrecognized argument {first}" + (f"; did you mean {close[0]}?" if close else "")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="supcon", description="Supervised Contrastive Learning against cross-entropy.",
        epilog="Run 'supcon COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"supcon {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)
    parser.commands = commands.choices
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
        # SUPPRESS (the sub-parser's default) keeps unset flags out of the namespace, so that a YAML file or a
        # run's config.yaml below them is not overwritten by defaults; the help shows the Config's default.
        add_flags(sub, fields_for(command), _HINTS)
    _add_tools(commands)
    return parser


def add_flags(parser: argparse.ArgumentParser, fields: list[dataclasses.Field], hints: dict[str, Any]) -> None:
    """One flag per option field (:func:`supcon.config.option`): its help, default, choices and type."""
    for f in fields:
        flag = "--" + (f.metadata["flag"] or f.name).replace("_", "-")
        kind = _plain_type(hints[f.name])
        text = f.metadata["help"]
        default = _default(f)
        shown = ",".join(map(_shown, default)) if isinstance(default, list) else default
        kwargs = {"help": text if "default" in text else f"{text} (default: {shown})", "dest": f.name}
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if f.metadata["items"] is not None:
            kind = _csv(f.metadata["items"], f"{f.metadata['items'].__name__} values")
        if f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
        else:
            kwargs["metavar"] = f.metadata["metavar"] or kind.__name__.upper()
        parser.add_argument(flag, type=kind, **kwargs)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def tool_options(options: type, args: argparse.Namespace) -> Any:
    """The ``options`` dataclass of a tool command, from its flags (which :func:`add_tool_flags` made)."""
    return options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options)})


def add_tool_flags(parser: argparse.ArgumentParser, options: type) -> None:
    """A tool command's flags, one per field of its ``options`` dataclass, with its defaults."""
    parser.set_defaults(**{f.name: _default(f) for f in dataclasses.fields(options)})
    add_flags(parser, list(dataclasses.fields(options)), typing.get_type_hints(options))


def _add_tools(commands) -> None:
    def sub(name: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=TOOLS[name], description=TOOLS[name])

    from supcon.evaluate.predict import PredictOptions
    from supcon.experiments.embeddings import EmbedOptions, KnnOptions, TsneOptions
    from supcon.experiments.robustness import RobustnessOptions

    run_folder = ("a finished run directory, or a compare directory (or one seed-S/ folder of it), whose --method "
                  "run is read")
    tsne = sub("tsne")
    tsne.add_argument("run_dir", metavar="RUN_DIR", help=run_folder)
    add_tool_flags(tsne, TsneOptions)
    embed = sub("embed")
    embed.add_argument("run_dir", metavar="RUN_DIR", help=run_folder)
    embed.add_argument("--out", metavar="FILE", required=True, help="the .npz file to write")
    add_tool_flags(embed, EmbedOptions)
    knn = sub("knn")
    knn.add_argument("run_dir", metavar="RUN_DIR", help=run_folder)
    add_tool_flags(knn, KnnOptions)
    robustness = sub("robustness")
    robustness.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                            help="finished runs with a classifier: compare directories (their supcon/ and ce/ "
                                 "runs), pretrain runs with their linear probe, ce runs, transfer runs")
    robustness.add_argument("--out", metavar="DIR",
                            help="where to write the tables and pictures (default: runs/robustness-<time>)")
    add_tool_flags(robustness, RobustnessOptions)
    predict = sub("predict")
    predict.add_argument("run_dir", metavar="RUN_DIR", help="a finished ce run, pretrain run with a linear probe, "
                         "transfer run, or compare directory (its supcon/ run; give DIR/ce for the baseline)")
    predict.add_argument("paths", nargs="+", metavar="PATH",
                         help="image files, or folders searched recursively; unreadable files are skipped with the "
                              "reason")
    add_tool_flags(predict, PredictOptions)
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
