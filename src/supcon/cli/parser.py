"""The ``supcon`` command line: one sub-command per training command, its flags derived from the
:class:`~supcon.config.Config` (name, type, default, help and choices), and small parsers of the tools that read
finished runs."""

from __future__ import annotations

import argparse
import typing

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
# Commands that read finished run directories rather than train: their own small parsers, not the Config's.
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
    embed.add_argument("--split", choices=("train", "val", "test", "all"), default="all",
                       help="which split to export (default: all three)")
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
    from supcon.evaluate.corruptions import CORRUPTIONS, SEVERITIES
    from supcon.experiments.robustness import EPSILONS_255

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
                        help="evaluate a seeded, class-balanced subsample of N test images (default: all)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the corruptions' noise and PGD's random starts (default: 0)")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N",
                        help="images per forward (and backward, for the attacks) pass (default: 256)")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, then cpu), cpu, cuda, cuda:N, mps "
                                                         "(default: auto)")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write the tables and pictures (default: runs/robustness-<time>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
