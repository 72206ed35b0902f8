"""``robustness``: finished runs under corrupted inputs, adversarial examples, and their margins and calibration.

Reads run directories (``compare`` directories are expanded into their ``supcon/`` and ``ce/`` runs; a
``pretrain`` run needs its linear probe, a ``ce`` or transfer run has its classifier), evaluates each run's
classifier on its own validation split (the split its training held out, always with clean labels), and writes
``robustness.md``, ``robustness.json``, ``robustness.csv``, ``robustness.png`` (accuracy per corruption and
severity as a heat map), ``reliability.png`` and ``margins.png`` into ``out``. The run directories are not
changed. The protocol is in ``docs/robustness.md``.

>>> from supcon.robustness_report import robustness_report
>>> report = robustness_report(["runs/compare-imagenet5"], "runs/robustness")   # supcon/ against ce/
>>> report["runs"][0]["mce"]                       # ImageNet-C's mCE of SupCon, with the CE run as baseline
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from supcon.config import Config
from supcon.data import stratified_subset
from supcon.evaluate.attacks import ATTACKS, PGD_STEPS
from supcon.evaluate.calibration import BINS, calibration_summary, margins, plot_margins, plot_reliability
from supcon.evaluate.robustness import (
    CORRUPTIONS,
    PARAMETERS,
    SEVERITIES,
    adversarial_accuracy,
    corruption_accuracy,
    corruption_errors,
    logits_of,
)
from supcon.io import atomic_write_text, read_json, save_figure, write_json

EPSILONS_255 = (1.0, 2.0, 4.0, 8.0)  # the attacks' eps in 1/255 steps of a pixel value
METHODS = {"supcon": "SupCon + linear", "simclr": "SimCLR + linear", "ce": "cross-entropy"}
FILES = ("robustness.md", "robustness.json", "robustness.csv", "robustness.png", "reliability.png", "margins.png")


class ImageClassifier(nn.Module):
    """A run's classifier on float images in [0, 1]: its input normalisation (if it had one), encoder and linear
    layer. Attacks and corruptions then act on pixel values, before the normalisation."""

    def __init__(self, encoder: nn.Module, fc: nn.Linear, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        super().__init__()
        self.encoder, self.fc = encoder, fc
        self.normalized = mean is not None
        if self.normalized:
            self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalized:
            x = (x - self.mean) / self.std
        return self.fc(self.encoder(x))


@dataclass
class RunRef:
    """One classifier to evaluate: its directory and the name the tables give it."""

    name: str
    path: Path


def expand_runs(dirs: Sequence[str | Path]) -> list[RunRef]:
    """Run directories in the order given, a ``compare`` directory as its ``supcon/`` then ``ce/`` run; a
    one-line ValueError for a directory that is not a run."""
    refs: list[RunRef] = []
    for given in map(Path, dirs):
        parts = [given / part for part in ("supcon", "ce") if (given / part / "results.json").is_file()]
        if parts:
            refs += [RunRef(f"{given.name}/{p.name}", p) for p in parts]
        elif (given / "results.json").is_file():
            refs.append(RunRef(given.name, given))
        else:
            raise ValueError(f"{given} is not a run directory (no results.json, and no supcon/ or ce/ run in it)")
    names = [r.name for r in refs]
    if len(set(names)) < len(names):  # same-named directories in different places: name them by path
        refs = [RunRef(str(r.path), r.path) for r in refs]
    seen: set[Path] = set()
    unique = []
    for ref in refs:
        if ref.path.resolve() not in seen:
            seen.add(ref.path.resolve())
            unique.append(ref)
    return unique


def load_classifier(run_dir: str | Path, device: torch.device | str = "cpu"
                    ) -> tuple[ImageClassifier, Config, Any, dict[str, Any]]:
    """A finished run's classifier on [0, 1] images, with the run's config, ``Inputs`` and summary."""
    from supcon import train, transfer

    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    if len(results.get("runs", [])) != 1:
        raise ValueError(f"{run_dir} holds a comparison; give the directory itself (both runs are read) or one "
                         f"of its runs: {run_dir / 'supcon'} or {run_dir / 'ce'}")
    if not (run_dir / "linear.safetensors").is_file():
        raise ValueError(f"{run_dir} has no classifier (linear.safetensors): a pretrain run needs its linear probe "
                         f"first (supcon linear --run {run_dir})")
    encoder, cfg, inputs = train.load_encoder(run_dir, device)
    fc = transfer.load_linear(run_dir, encoder, cfg, len(results.get("class_names") or []))
    model = ImageClassifier(encoder, fc, inputs.mean, inputs.std).to(device).eval()
    return model, cfg, inputs, results["runs"][0]


def _eps_key(eps_255: float) -> str:
    return f"{eps_255:g}"


def robustness_report(run_dirs: Sequence[str | Path], out: str | Path, *, baseline: str | Path | None = None,
                      corruptions: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES,
                      attacks: Sequence[str] = ATTACKS, epsilons: Sequence[float] = EPSILONS_255,
                      pgd_steps: int = PGD_STEPS, bins: int = BINS, max_images: int | None = None, seed: int = 0,
                      batch_size: int = 256, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Evaluate the classifiers of ``run_dirs`` and write the tables and pictures into ``out``; returns what
    ``robustness.json`` holds.

    ``baseline`` is the run the corruption errors are relative to (default: the first cross-entropy run, else
    the first run; evaluated as well if it is not among ``run_dirs``). ``epsilons`` are in 1/255 units.
    ``max_images`` evaluates a seeded, class-balanced subsample of each validation split.
    """
    from tqdm.auto import tqdm

    from supcon import train, transfer

    _check_options(corruptions, severities, attacks, epsilons, pgd_steps, bins, max_images, batch_size)
    refs = expand_runs(run_dirs)
    base_ref = None
    if baseline is not None:
        base_refs = expand_runs([baseline])
        if len(base_refs) != 1:
            raise ValueError(f"--baseline must be one run; {baseline} holds {len(base_refs)}: give one of "
                             f"{', '.join(str(r.path) for r in base_refs)}")
        base_ref = next((r for r in refs if r.path.resolve() == base_refs[0].path.resolve()), None)
        if base_ref is None:
            base_ref = base_refs[0]
            refs.append(base_ref)
    torch_device = train.resolve_device(device)
    # every run is read before any is evaluated, so that a bad directory fails in a second, not after an hour
    loaded = [(ref, *load_classifier(ref.path, torch_device)) for ref in refs]
    if base_ref is None:
        base_ref = next((ref for ref, _, _, _, summary in loaded if summary.get("method") == "ce"), refs[0])
    cache: dict = {}
    splits = {}
    for ref, _, cfg, inputs, _ in loaded:
        data = transfer.data_for_run(ref.path, cfg, inputs, cache=cache)  # a comparison's runs share it
        keep = torch.from_numpy(stratified_subset(data.val.labels.numpy(), max_images, seed, f"{data.name} val"))
        splits[ref.name] = (data, data.val.images[keep], data.val.labels[keep])

    per_run = 1 + len(corruptions) * len(severities) + len(attacks) * len(epsilons)
    bar = tqdm(total=per_run * len(loaded), desc="robustness", unit="pass", disable=not progress, file=sys.stderr)
    runs, margin_panels = [], []
    try:
        for ref, model, cfg, _, summary in loaded:
            bar.set_postfix_str(ref.name)
            data, images, labels = splits[ref.name]
            logits = logits_of(model, images, torch_device, batch_size)
            bar.update()
            calibration = calibration_summary(logits, labels, bins)
            margin_panels.append((ref.name, margins(logits, labels)))
            accuracy = corruption_accuracy(model, images, labels, corruptions, severities, seed=seed,
                                           device=torch_device, batch_size=batch_size, advance=bar.update)
            adversarial = {}
            for attack in attacks:
                acc = adversarial_accuracy(model, images, labels, attack, [e / 255 for e in epsilons],
                                           steps=pgd_steps, seed=seed, device=torch_device, batch_size=batch_size,
                                           advance=bar.update)
                adversarial[attack] = {_eps_key(e): a for e, a in zip(epsilons, acc.values(), strict=True)}
            corrupted = [a for by_severity in accuracy.values() for a in by_severity.values()]
            runs.append({"name": ref.name, "run_dir": str(ref.path), "method": summary.get("method"),
                         "loss": summary.get("loss"), "dataset": data.name, "val_images": len(labels),
                         "label_noise": cfg.label_noise, "label_noise_mode": cfg.label_noise_mode,
                         "clean_acc": calibration["accuracy"],
                         "corrupted_acc": sum(corrupted) / len(corrupted) if corrupted else None,
                         "corruptions": {c: {str(s): a for s, a in by.items()} for c, by in accuracy.items()},
                         "adversarial": adversarial, "calibration": calibration,
                         "_labels": labels, "_accuracy": accuracy})
    finally:
        bar.close()
    base = next(r for r in runs if r["name"] == base_ref.name)
    for run in runs:
        comparable = (run["dataset"] == base["dataset"] and torch.equal(run["_labels"], base["_labels"]))
        errors = (corruption_errors(run["_accuracy"], run["clean_acc"], base["_accuracy"], base["clean_acc"])
                  if comparable and run["_accuracy"] else
                  {"ce": None, "relative_ce": None, "mce": None, "relative_mce": None, "mce_over": [],
                   "relative_mce_over": []})
        run.update(errors, comparable_to_baseline=comparable)
    for run in runs:
        del run["_labels"], run["_accuracy"]
    report = {"baseline": base_ref.name, "corruptions": list(corruptions), "severities": list(severities),
              "attacks": list(attacks), "eps_255": list(epsilons), "pgd_steps": pgd_steps,
              "pgd_step_size": "2.5 eps / steps", "bins": bins, "max_images": max_images, "seed": seed,
              "parameters": {c: PARAMETERS[c] for c in corruptions}, "runs": runs}
    _write(report, margin_panels, Path(out))
    return report


def _check_options(corruptions, severities, attacks, epsilons, pgd_steps, bins, max_images, batch_size) -> None:
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruption {unknown[0]!r}; expected some of {', '.join(CORRUPTIONS)}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise ValueError(f"severities must be among {', '.join(map(str, SEVERITIES))}; got {bad[0]!r}")
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack {unknown[0]!r}; expected some of {', '.join(ATTACKS)}")
    if attacks and not epsilons:
        raise ValueError("attacks need at least one eps")
    if any(not 0 < e <= 255 for e in epsilons):
        raise ValueError(f"eps are in 1/255 units and must lie in (0, 255]; got {list(epsilons)}")
    for name, value in (("pgd_steps", pgd_steps), ("bins", bins), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be positive; got {max_images}")
    for what, values in (("corruption", corruptions), ("severity", severities), ("attack", attacks),
                         ("eps", epsilons)):
        if len(set(values)) < len(values):
            raise ValueError(f"each {what} may be given once; got {list(values)}")


# ---------------------------------------------------------------------------------------------- tables


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _label(run: dict[str, Any]) -> str:
    return f"{run['name']} ({METHODS.get(run['method'], run['method'])})"


def summary_table(report: dict[str, Any]) -> str:
    """One row per run: clean and mean corrupted accuracy, mCE, the strongest attacks, ECE and median margin."""
    runs = report["runs"]
    eps = report["eps_255"] if report["attacks"] else []
    strongest = _eps_key(max(eps)) if eps else None
    lines = ["| run | label noise | clean acc | corrupted acc | mCE (%) | relative mCE (%) | "
             + (f"FGSM {strongest}/255 | PGD {strongest}/255 | " if strongest else "")
             + "ECE | median margin |",
             "|---|---|---|---|---|---|" + ("---|---|" if strongest else "") + "---|---|"]
    for run in runs:
        noise = f"{run['label_noise']:.0%} {run['label_noise_mode']}" if run["label_noise"] else "–"
        adv = ""
        if strongest:
            adv = "".join(f"{_num(run['adversarial'].get(a, {}).get(strongest), 4)} | " for a in ("fgsm", "pgd"))
        lines.append(f"| {_label(run)} | {noise} | {_num(run['clean_acc'], 4)} | {_num(run['corrupted_acc'], 4)} | "
                     f"{_pct(run['mce'])} | {_pct(run['relative_mce'])} | {adv}"
                     f"{_num(run['calibration']['ece'], 4)} | "
                     f"{_num(run['calibration']['margin_quantiles']['p50'])} |")
    lost = [r["name"] for r in runs if not r["comparable_to_baseline"]]
    if lost:
        lines += ["", f"No corruption errors for {', '.join(lost)}: not evaluated on the baseline's images."]
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The tables of ``robustness.md``."""
    runs, base, eps = report["runs"], report["baseline"], report["eps_255"]
    splits = ", ".join(sorted({"{}: {} images".format(r["dataset"], r["val_images"]) for r in runs}))
    lines = ["# Robustness", "",
             f"Baseline of the corruption errors: **{base}**. Accuracies are on each run's validation split "
             f"({splits}), with clean labels; the corruptions' parameters and the definitions are in "
             "docs/robustness.md of the supcon repository.", "", summary_table(report)]
    if report["corruptions"]:
        lines += ["", "## Accuracy under each corruption (mean over severities) and corruption error CE (%)", "",
                  "| corruption | " + " | ".join(f"{r['name']} acc | {r['name']} CE" for r in runs) + " |",
                  "|---|" + "---|---|" * len(runs)]
        for c in report["corruptions"]:
            cells = []
            for r in runs:
                by = r["corruptions"][c]
                cells.append(f"{_num(sum(by.values()) / len(by), 4)} | {_pct((r['ce'] or {}).get(c))}")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        severities = report["severities"]
        lines += ["", "## Accuracy per corruption and severity", ""]
        for r in runs:
            lines += [f"**{_label(r)}** (clean {_num(r['clean_acc'], 4)})", "",
                      "| corruption | " + " | ".join(f"s{s}" for s in severities) + " |",
                      "|---|" + "---|" * len(severities)]
            for c in report["corruptions"]:
                lines.append(f"| {c} | " + " | ".join(_num(r["corruptions"][c][str(s)], 4) for s in severities)
                             + " |")
            lines.append("")
    if report["attacks"]:
        lines += ["## Adversarial accuracy (L-inf, eps in 1/255)", "",
                  f"FGSM: one signed-gradient step of eps. PGD: {report['pgd_steps']} steps of 2.5 eps / "
                  f"{report['pgd_steps']} from a random start in the eps-ball.", "",
                  "| run | " + " | ".join(f"{a.upper()} {_eps_key(e)}" for a in report["attacks"] for e in eps)
                  + " |", "|---|" + "---|" * (len(report["attacks"]) * len(eps))]
        for r in runs:
            lines.append(f"| {r['name']} | " + " | ".join(_num(r["adversarial"][a][_eps_key(e)], 4)
                                                        for a in report["attacks"] for e in eps) + " |")
        lines.append("")
    lines += [f"## Margins and calibration ({report['bins']} confidence bins)", "",
              "| run | accuracy | ECE | NLL | mean confidence | margin p10 | p25 | median | p75 | p90 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c, q = r["calibration"], r["calibration"]["margin_quantiles"]
        lines.append(f"| {r['name']} | {_num(c['accuracy'], 4)} | {_num(c['ece'], 4)} | {_num(c['nll'])} | "
                     f"{_num(c['mean_confidence'])} | " + " | ".join(_num(q[k]) for k in ("p10", "p25", "p50", "p75",
                                                                                      "p90")) + " |")
    if report["corruptions"]:
        lines += ["", "![accuracy per corruption and severity](robustness.png)"]
    lines += ["", "![reliability diagrams](reliability.png)", "", "![logit margins](margins.png)", ""]
    return "\n".join(lines)


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """``robustness.csv``: one value a row (run, method, metric, condition, level, value)."""
    rows = []
    for r in report["runs"]:
        def add(metric, condition, level, value, r=r):
            rows.append({"run": r["name"], "method": r["method"], "metric": metric, "condition": condition,
                         "level": level, "value": value})

        add("accuracy", "clean", 0, r["clean_acc"])
        for c, by in r["corruptions"].items():
            for s, a in by.items():
                add("accuracy", c, s, a)
        for attack, by in r["adversarial"].items():
            for e, a in by.items():
                add("accuracy", attack, e, a)
        for c, value in (r["ce"] or {}).items():
            add("ce", c, "", value)
        for c, value in (r["relative_ce"] or {}).items():
            add("relative_ce", c, "", value)
        add("mce", "all", "", r["mce"])
        add("relative_mce", "all", "", r["relative_mce"])
        for key in ("ece", "nll", "mean_confidence", "margin_mean"):
            add(key, "clean", "", r["calibration"][key])
        for key, value in r["calibration"]["margin_quantiles"].items():
            add(f"margin_{key}", "clean", "", value)
    return rows


def plot_heatmap(report: dict[str, Any], path: str | Path) -> Path | None:
    """Accuracy per corruption (rows) and severity (columns): one row of panels per run, its accuracy and,
    where it has one, its difference from the baseline; None without corruptions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corruptions, severities = report["corruptions"], report["severities"]
    if not corruptions or not severities:
        return None
    runs = report["runs"]
    base = next(r for r in runs if r["name"] == report["baseline"])

    def grid(run):
        return [[run["corruptions"][c][str(s)] for s in severities] for c in corruptions]

    differences = [r is not base and r["comparable_to_baseline"] for r in runs]
    columns = 2 if any(differences) else 1
    width, height = 0.55 * len(severities) + 3.4, 0.36 * len(corruptions) + 1.2
    # One run per row keeps the picture readable at any number of runs; a single row grew too wide to read.
    fig, axes = plt.subplots(len(runs), columns, figsize=(width * columns, height * len(runs)), squeeze=False)
    for row, (run, has_difference) in enumerate(zip(runs, differences, strict=True)):
        panels = [(run["name"], grid(run), False)]
        if has_difference:
            panels.append((f"{run['name']} − {base['name']}",
                           [[a - b for a, b in zip(ra, rb, strict=True)]
                            for ra, rb in zip(grid(run), grid(base), strict=True)], True))
        for col in range(len(panels), columns):
            axes[row][col].axis("off")
        for ax, (title, values, difference) in zip(axes[row], panels, strict=False):
            if difference:
                reach = max(0.05, max(abs(v) for line in values for v in line))
                image = ax.imshow(values, cmap="RdBu", vmin=-reach, vmax=reach, aspect="auto")
            else:
                image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
            for i, line in enumerate(values):
                for j, v in enumerate(line):
                    ax.text(j, i, f"{v:+.2f}" if difference else f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if difference or v > 0.5 else "white")
            ax.set_xticks(range(len(severities)), [str(s) for s in severities])
            ax.set_yticks(range(len(corruptions)), corruptions)
            ax.set_xlabel("severity")
            ax.set_title(title, fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return save_figure(fig, path)


def _write(report: dict[str, Any], margin_panels, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "robustness.json", report)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["run", "method", "metric", "condition", "level", "value"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(report))
    atomic_write_text(out / "robustness.csv", buffer.getvalue())
    atomic_write_text(out / "robustness.md", markdown(report))
    if plot_heatmap(report, out / "robustness.png") is None:
        (out / "robustness.png").unlink(missing_ok=True)  # an earlier report's picture would not match the tables
    plot_reliability([(r["name"], r["calibration"]) for r in report["runs"]], out / "reliability.png")
    plot_margins(margin_panels, out / "margins.png")
