"""How sure a comparison is: a t-interval of each method's test accuracy over seeds, and the difference of two
methods with a paired bootstrap over test images and seeds, which gives the verdict.

>>> method = method_summary([run_seed0, run_seed1, run_seed2])   # run summaries of one method
>>> method["test_acc"], method["test_acc_ci"]                     # mean, [low, high] (None for one seed)
>>> difference(supcon_runs, ce_runs)["verdict"]                   # supcon_better, ce_better or no_significant_...

The bootstrap resamples the seeds and the test images together: each resample draws K seeds and N test images
with replacement, and the difference is the mean over the drawn seeds of the two methods' accuracies on the drawn
images. Both methods see the same draws (the pairing), so that what the images have in common (some are hard for
every model) cancels, and the spread between seeds counts as well as the spread between images. The interval is
the 2.5th and 97.5th percentile of the resampled differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000
VERDICTS = ("supcon_better", "ce_better", "no_significant_difference")
SIGNS = {"supcon_better": "above_zero", "ce_better": "below_zero",
         "no_significant_difference": "no_significant_difference"}


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> list[float] | None:
    """The ``confidence`` t-interval of the mean of ``values`` (a method's test accuracy over seeds); None for a
    single value, which has no spread to estimate."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    mean = float(np.mean(values))
    half = float(t.ppf(0.5 + confidence / 2, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return [mean - half, mean + half]


def correctness(summary: dict[str, Any]) -> np.ndarray:
    """A run's per-image test hits (``test_correct``, "0"/"1" per test image) as a bool array."""
    text = summary.get("test_correct")
    if not text:
        raise ValueError(f"the {summary.get('method')} run of seed {summary.get('seed')} has no per-image test "
                         "results (test_correct); it was written before runs had a test split")
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = 0,
                     confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """The mean difference of accuracy ``a - b`` and its ``confidence`` interval, from hits ``a`` and ``b`` (bool or
    0/1, ``[K seeds, N images]``, the same images in the same order), resampling seeds and images together."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired hits must have one shape [seeds, images]; got {a.shape} and {b.shape}")
    seeds, images = a.shape
    d = a - b
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    chunk = max(1, min(resamples, 4_000_000 // max(1, images)))  # keeps the count matrices small
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=n)  # [n, K]
        image_counts = rng.multinomial(images, np.full(images, 1 / images), size=n)  # [n, N]
        diffs[start:start + n] = np.einsum("bk,kn,bn->b", seed_counts, d, image_counts) / (seeds * images)
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return float(d.mean()), float(low), float(high)


def verdict(low: float, high: float) -> str:
    """``supcon_better`` where the interval of SupCon − CE lies above zero, ``ce_better`` where it lies below,
    else ``no_significant_difference``."""
    if low > 0:
        return "supcon_better"
    if high < 0:
        return "ce_better"
    return "no_significant_difference"


def method_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's line of ``results.json``: the mean test accuracy with its t-interval over seeds, the mean
    validation accuracy, and each seed's pair (``per_seed``)."""
    tests = [r["test_acc"] for r in runs]
    return {"test_acc": float(np.mean(tests)), "test_acc_ci": t_interval(tests),
            "val_acc": float(np.mean([r["val_acc"] for r in runs])),
            "per_seed": [{"seed": r.get("seed"), "val_acc": r["val_acc"], "test_acc": r["test_acc"]} for r in runs]}


def difference(first: list[dict[str, Any]], second: list[dict[str, Any]], resamples: int = RESAMPLES,
               seed: int = 0) -> dict[str, Any]:
    """``first`` (SupCon's runs, one per seed) minus ``second`` (CE's, the same seeds in the same order) on the
    test split: the mean difference of accuracy, its paired-bootstrap interval and the verdict."""
    if [r.get("seed") for r in first] != [r.get("seed") for r in second]:
        raise ValueError("a paired comparison needs the same seeds for both methods")
    a = np.stack([correctness(r) for r in first])
    b = np.stack([correctness(r) for r in second])
    mean, low, high = paired_bootstrap(a, b, resamples, seed)
    return {"supcon_minus_ce": mean, "ci": [low, high], "verdict": verdict(low, high),
            "confidence": CONFIDENCE, "seeds": len(first), "test_images": int(a.shape[1]),
            "method": "paired bootstrap over test images and seeds", "resamples": resamples}


def seed_paired_difference(first: Sequence[float], second: Sequence[float],
                           confidence: float = CONFIDENCE) -> dict[str, Any]:
    """``first`` minus ``second``, one value of each per seed (the same seeds in the same order): the mean
    difference, its t-interval over the seeds and where that interval lies (``above_zero``, ``below_zero`` or
    ``no_significant_difference``; None for one seed). For a measurement with no per-image pairing to bootstrap
    (a corruption error, a calibration error), where the seeds are the only replication."""
    if len(first) != len(second):
        raise ValueError(f"a paired difference needs one value of each per seed; got {len(first)} and {len(second)}")
    diffs = [float(a) - float(b) for a, b in zip(first, second, strict=True)]
    ci = t_interval(diffs, confidence)
    return {"difference": float(np.mean(diffs)), "ci": ci, "sign": None if ci is None else SIGNS[verdict(*ci)],
            "seeds": len(diffs), "confidence": confidence, "method": "t-interval over seed-paired differences"}

