"""``robustness``: finished runs under corrupted inputs, adversarial examples, and their margins and calibration.

Reads run directories (``compare`` directories are expanded into their ``supcon/`` and ``ce/`` runs; a
``pretrain`` run needs its linear probe, a ``ce`` or transfer run has its classifier), evaluates each run's
classifier on its own test split (held out from training and from every choice, always with clean labels), and writes
``robustness.md``, ``robustness.json``, ``robustness.csv``, ``robustness.png`` (accuracy per corruption and
severity as a heat map), ``reliability.png`` and ``margins.png`` into ``out``. The run directories are not
changed. The protocol is in ``docs/robustness.md``.

>>> from supcon.experiments.robustness import robustness_report
>>> report = robustness_report(["runs/compare-imagenet5"], "runs/robustness")   # supcon/ against ce/
>>> report["runs"][0]["mce"]                       # ImageNet-C's mCE of SupCon, with the CE run as baseline
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supcon.augment import apply_batch
from supcon.config import shared
from supcon.data import stratified_subset
from supcon.device import resolve_device
from supcon.evaluate.attacks import ATTACKS, PGD_STEPS
from supcon.evaluate.calibration import BINS, calibration_summary, margins
from supcon.evaluate.corruptions import (
    CORRUPTIONS,
    PARAMETERS,
    SEVERITIES,
    adversarial_hits,
    corruption_errors,
    corruption_hits,
    hit_rates,
)
from supcon.evaluate.inference import correct, hits_array, hits_text, outputs
from supcon.experiments.statistics import SIGNS, paired_difference, seed_paired_difference
from supcon.options import TOOL, option
from supcon.reporting.robustness import eps_key, write_robustness
from supcon.runs import expand_runs
from supcon.runs.load import data_for_run, load_classifier

EPSILONS_255 = (1.0, 2.0, 4.0, 8.0)  # the attacks' eps in 1/255 steps of a pixel value


@dataclass
class RobustnessOptions:
    """What ``robustness`` evaluates and how (beside the runs and ``out``); the flags are made from these fields,
    and :func:`robustness_report` takes them whole or as keywords. ``epsilons`` are in 1/255 units."""

    baseline: str | None = option(None, "the run that corruption errors are relative to (CE_c = a run's errors over "
                                  "the baseline's); evaluated too if not among RUN_DIR (default: the first "
                                  "cross-entropy run, else the first run)", TOOL, metavar="RUN_DIR")
    corruptions: list[str] = option(CORRUPTIONS, f"comma-separated, or none (default: all nine: "
                                    f"{', '.join(CORRUPTIONS)})", TOOL, metavar="LIST", items=str)
    severities: list[int] = option(SEVERITIES, "comma-separated severities 1-5; mCE sums over these", TOOL,
                                   metavar="LIST", items=int)
    attacks: list[str] = option(ATTACKS, "L-inf attacks, comma-separated, or none", TOOL, metavar="LIST", items=str)
    epsilons: list[float] = option(EPSILONS_255, "attack radii in 1/255 of the pixel range, comma-separated", TOOL,
                                   metavar="LIST", flag="eps", items=float)
    pgd_steps: int = option(PGD_STEPS, "PGD steps, each of 2.5 eps / N, after a random start", TOOL, metavar="N")
    bins: int = option(BINS, "equal-width confidence bins of the ECE and reliability diagram", TOOL, metavar="N")
    max_images: int | None = option(None, "evaluate a seeded, class-balanced subsample of N test images (default: "
                                    "all)", TOOL, metavar="N")
    seed: int = shared("seed", "seed of the corruptions' noise, PGD's random starts and the subsample")
    batch_size: int = shared("eval_batch_size", "images per forward (and backward, for the attacks) pass")
    device: str = shared("device")
    quiet: bool = shared("quiet", "no progress bar")

    def __post_init__(self):
        self.corruptions, self.severities = list(self.corruptions), list(self.severities)
        self.attacks, self.epsilons = list(self.attacks), list(self.epsilons)
        _check_options(self)


def robustness_report(run_dirs: Sequence[str | Path], out: str | Path, options: RobustnessOptions | None = None,
                      **changes) -> dict[str, Any]:
    """Evaluate the classifiers of ``run_dirs`` and write the tables and pictures into ``out``; returns what
    ``robustness.json`` holds. ``changes`` are :class:`RobustnessOptions` fields
    (``robustness_report(runs, out, attacks=["pgd"])``).

    The ``baseline`` is the run the corruption errors are relative to (default: the first cross-entropy run, else
    the first run; evaluated as well if it is not among ``run_dirs``). ``max_images`` evaluates a seeded,
    class-balanced subsample of each test split.
    """
    from tqdm.auto import tqdm

    opts = dataclasses.replace(options or RobustnessOptions(), **changes)
    corruptions, severities, attacks, epsilons = opts.corruptions, opts.severities, opts.attacks, opts.epsilons
    named, base_name = _runs_and_baseline(run_dirs, opts.baseline)
    torch_device = resolve_device(opts.device)
    # every run is read before any is evaluated, so that a bad directory fails in a second, not after an hour
    loaded = [(name, load_classifier(run.path, torch_device)) for name, run in named]
    if base_name is None:
        base_name = next((name for name, run in loaded if run.summary.get("method") == "ce"), loaded[0][0])
    cache: dict = {}
    per_run = 1 + len(corruptions) * len(severities) + len(attacks) * len(epsilons)
    bar = tqdm(total=per_run * len(loaded), desc="robustness", unit="pass", disable=True if opts.quiet else None,
               file=sys.stderr)  # None: a bar on a terminal only
    runs, margin_panels = [], []
    try:
        for name, run in loaded:
            data = data_for_run(run.run.path, run.cfg, run.inputs, cache=cache)  # a comparison's runs share it
            keep = torch.from_numpy(stratified_subset(data.test.labels.numpy(), opts.max_images, opts.seed,
                                                      f"{data.name} test"))
            bar.set_postfix_str(name)
            images = data.test.images[keep]
            if run.inputs.stored_size:  # stored larger: the run's centre view, in [0, 1], is what is perturbed
                images = apply_batch(run.inputs.pixels(), images)
            record, margin = _evaluate(name, run, data.name, images, data.test.labels[keep], opts, torch_device,
                                       bar.update)
            runs.append(record)
            margin_panels.append((name, margin))
    finally:
        bar.close()
    _add_corruption_errors(runs, next(r for r in runs if r["name"] == base_name))
    report = {"baseline": base_name, "corruptions": list(corruptions), "severities": list(severities),
              "attacks": list(attacks), "eps_255": list(epsilons), "pgd_steps": opts.pgd_steps,
              "pgd_step_size": "2.5 eps / steps", "bins": opts.bins, "max_images": opts.max_images, "seed": opts.seed,
              "parameters": {c: PARAMETERS[c] for c in corruptions}, "runs": runs,
              "differences": seed_differences(runs, epsilons if attacks else [])}
    write_robustness(report, margin_panels, Path(out))
    return report


def _runs_and_baseline(run_dirs, baseline) -> tuple[list, str | None]:
    """The runs to evaluate, by name, and the baseline's name (None: chosen once the runs are read); a baseline
    that is not among the runs is evaluated too."""
    named = expand_runs(run_dirs)
    if baseline is None:
        return named, None
    base = expand_runs([baseline])
    if len(base) != 1:
        raise ValueError(f"--baseline must be one run; {baseline} holds {len(base)}: give one of "
                         f"{', '.join(str(run.path) for _, run in base)}")
    found = next((name for name, run in named if run == base[0][1]), None)
    if found is None:
        named.append(base[0])
        found = base[0][0]
    return named, found


def _evaluate(name, run, dataset, images, labels, opts: RobustnessOptions, device, advance
              ) -> tuple[dict[str, Any], torch.Tensor]:
    """One run's record of ``robustness.json`` (with the raw accuracies the corruption errors need, as ``_``
    keys) and its logit margins."""
    model, cfg, summary = run.model, run.cfg, run.summary
    epsilons, seed, batch_size = opts.epsilons, opts.seed, opts.batch_size
    logits = outputs(model, images, device=device, batch_size=batch_size)
    advance()
    calibration = calibration_summary(logits, labels, opts.bins)
    hits = corruption_hits(model, images, labels, opts.corruptions, opts.severities, seed=seed, device=device,
                           batch_size=batch_size, advance=advance)
    accuracy = {c: hit_rates(by) for c, by in hits.items()}
    adversarial, adversarial_correct = {}, {}
    for attack in opts.attacks:
        under = adversarial_hits(model, images, labels, attack, [e / 255 for e in epsilons], steps=opts.pgd_steps,
                                 seed=seed, device=device, batch_size=batch_size, advance=advance)
        by_key = {eps_key(e): h for e, h in zip(epsilons, under.values(), strict=True)}
        adversarial[attack] = hit_rates(by_key)
        adversarial_correct[attack] = {key: hits_text(h) for key, h in by_key.items()}
    corrupted = [a for by_severity in accuracy.values() for a in by_severity.values()]
    corrupted_hits = [h for by_severity in hits.values() for h in by_severity.values()]
    record = {"name": name, "run_dir": str(run.run.path), "method": summary.get("method"), "seed": cfg.seed,
              "loss": summary.get("loss"), "dataset": dataset, "test_images": len(labels),
              "label_noise": cfg.label_noise, "label_noise_mode": cfg.label_noise_mode,
              "clean_acc": calibration["accuracy"],
              "corrupted_acc": sum(corrupted) / len(corrupted) if corrupted else None,
              "corruptions": {c: {str(s): a for s, a in by.items()} for c, by in accuracy.items()},
              "adversarial": adversarial, "calibration": calibration,
              # per test image, for the paired intervals of seed_differences: clean hits, how many of the
              # corruption x severity conditions it survived, and its hits under each attack
              "test_correct": hits_text(correct(logits, labels)),
              "corrupted_correct": (torch.stack(corrupted_hits).sum(0).tolist() if corrupted_hits else None),
              "corrupted_conditions": len(corrupted_hits), "adversarial_correct": adversarial_correct,
              "_labels": labels, "_accuracy": accuracy}
    return record, margins(logits, labels)



def _add_corruption_errors(runs: list[dict[str, Any]], base: dict[str, Any]) -> None:
    """Each run's corruption errors against the baseline's, where both were evaluated on the same images."""
    for run in runs:
        comparable = (run["dataset"] == base["dataset"] and torch.equal(run["_labels"], base["_labels"]))
        errors = (corruption_errors(run["_accuracy"], run["clean_acc"], base["_accuracy"], base["clean_acc"])
                  if comparable and run["_accuracy"] else
                  {"ce": None, "relative_ce": None, "mce": None, "relative_mce": None, "mce_over": [],
                   "relative_mce_over": []})
        run.update(errors, comparable_to_baseline=comparable)
    for run in runs:
        del run["_labels"], run["_accuracy"]


def _per_image_clean(r: dict[str, Any]) -> np.ndarray | None:
    return _hits(r.get("test_correct"))


def _per_image_corrupted(r: dict[str, Any]) -> np.ndarray | None:
    if not r.get("corrupted_correct"):
        return None
    return np.asarray(r["corrupted_correct"], dtype=np.float64) / r["corrupted_conditions"]


def _per_image_drop(r: dict[str, Any]) -> np.ndarray | None:
    clean, corrupted = _per_image_clean(r), _per_image_corrupted(r)
    return None if clean is None or corrupted is None else clean - corrupted


def _hits(text: str | None) -> np.ndarray | None:
    return hits_array(text) if text else None


# (key, what it is, how to read it from a run's record, whether higher is more robust, and its per-image values,
# whose mean it is, where the record has them: then the interval is compare's, over seeds and test images)
PAIRED_METRICS = (
    ("clean_acc", "clean accuracy", lambda r: r["clean_acc"], True, _per_image_clean),
    ("corrupted_acc", "mean accuracy under the corruptions", lambda r: r["corrupted_acc"], True,
     _per_image_corrupted),
    ("corruption_drop", "clean minus corrupted accuracy",
     lambda r: None if r["corrupted_acc"] is None else r["clean_acc"] - r["corrupted_acc"], False, _per_image_drop),
    ("ece", "expected calibration error", lambda r: r["calibration"]["ece"], False, None),
    ("median_margin", "median logit margin", lambda r: r["calibration"]["margin_quantiles"]["p50"], True, None),
)


def seed_differences(runs: list[dict[str, Any]], epsilons: Sequence[float]) -> list[dict[str, Any]]:
    """SupCon minus CE for each measurement, paired by seed: the runs of one comparison trained with the same seed
    on the same data, labels (and label noise) and test images form a pair. One entry per condition (data set and
    label noise) with at least one pair: its seeds and, per measurement, :func:`seed_paired_difference` and
    which method the difference favours where its interval excludes zero."""
    metrics = list(PAIRED_METRICS)
    for attack in ("fgsm", "pgd"):
        for key in [eps_key(e) for e in sorted({min(epsilons), max(epsilons)})] if epsilons else []:
            metrics.append((f"{attack}_{key}", f"{attack.upper()} accuracy at eps {key}/255",
                            lambda r, a=attack, k=key: r["adversarial"].get(a, {}).get(k), True,
                            lambda r, a=attack, k=key: _hits(r.get("adversarial_correct", {}).get(a, {}).get(k))))
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        if run["method"] in ("supcon", "ce"):
            key = (run["dataset"], run["label_noise"], run["label_noise_mode"], run["test_images"], run["seed"])
            groups.setdefault(key, {"supcon": [], "ce": []})[run["method"]].append(run)
    conditions: dict[tuple, list[tuple[dict, dict]]] = {}
    for key, pair in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len(pair["supcon"]) == 1 and len(pair["ce"]) == 1:  # two compares of one seed and condition: ambiguous
            conditions.setdefault(key[:4], []).append((pair["supcon"][0], pair["ce"][0]))
    out = []
    for (dataset, noise, mode, images), pairs in conditions.items():
        rows = []
        for key, label, value, higher, per_image in metrics:
            sup, ce = [value(s) for s, _ in pairs], [value(c) for _, c in pairs]
            if any(v is None for v in sup + ce):
                continue
            d = _paired(pairs, per_image) or seed_paired_difference(sup, ce)
            favours = {"above_zero": "supcon" if higher else "ce", "below_zero": "ce" if higher else "supcon"}
            rows.append({"metric": key, "label": label, "higher_is_more_robust": higher, **d,
                         "favours": favours.get(d["sign"])})
        out.append({"dataset": dataset, "label_noise": noise, "label_noise_mode": mode, "test_images": images,
                    "seeds": [s["seed"] for s, _ in pairs], "metrics": rows})
    return out


def _paired(pairs: list[tuple[dict, dict]], per_image) -> dict[str, Any] | None:
    """SupCon minus CE from the runs' per-image values, with :func:`~supcon.experiments.statistics.difference`'s
    two-level interval over seeds and test images (in :func:`seed_paired_difference`'s keys); None where a run
    lacks them (a measurement without them, or a robustness.json written before they were kept)."""
    if per_image is None or len(pairs) < 2:
        return None
    sup, ce = [per_image(s) for s, _ in pairs], [per_image(c) for _, c in pairs]
    if any(v is None for v in sup + ce):
        return None
    d = paired_difference(np.stack(sup), np.stack(ce))
    return {"difference": d["supcon_minus_ce"], "ci": d["ci"], "sign": SIGNS[d["verdict"]], "seeds": d["seeds"],
            "confidence": d["confidence"], "method": d["method"]}


def _check_options(opts: RobustnessOptions) -> None:
    corruptions, severities, attacks, epsilons = opts.corruptions, opts.severities, opts.attacks, opts.epsilons
    pgd_steps, bins, max_images, batch_size = opts.pgd_steps, opts.bins, opts.max_images, opts.batch_size
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
