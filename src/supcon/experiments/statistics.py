"""How sure a comparison is: a t-interval of each method's test accuracy over seeds, and the difference of two
methods with an interval that carries both sources of error, the seeds and the test images, which gives the
verdict.

>>> method = method_summary([run_seed0, run_seed1, run_seed2])   # run summaries of one method
>>> method["test_acc"], method["test_acc_ci"]                     # mean, [low, high] (None for one seed)
>>> difference(supcon_runs, ce_runs)["verdict"]                   # supcon_better, ce_better, no_significant_...

The difference of two methods over K seeds (each seed's pair of runs tested on the same N images) is the mean of
the per-seed differences d_k. Its variance has two parts, as in a two-level (random-effects) model: the spread
between seeds, s²(d_k) / K, which also holds each seed's own noise on the images, and the sampling of the test
images themselves, which the seeds share and which so does not average away with more seeds: the spread of the
per-image differences averaged over the seeds, s²(D_i), less the part of it that the seeds' noise makes (the
mean over images of their spread between seeds, over K), over N, and never below zero. The interval is the mean
± t(K − 1) × the square root of their sum: Student's t with K − 1 degrees of freedom, the small-sample correction
that a handful of seeds calls for. Simulated under the null (tests/experiments/test_statistics.py) it calls a
side in 3-7 % of comparisons for 3 and 5 seeds, seeds' SD from 2 to 8 points and 250 or 1,000 test images.

With one seed there is no spread between seeds to estimate, and so no verdict on the methods: the interval is a
paired bootstrap over the test images of that one pair of trained models, said to be only that. A degenerate
interval (no spread at all) calls no side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from supcon.evaluate.inference import hits_array

CONFIDENCE = 0.95
RESAMPLES = 10_000
VERDICTS = ("supcon_better", "ce_better", "no_significant_difference", "needs_seeds")
SIGNS = {"supcon_better": "above_zero", "ce_better": "below_zero",
         "no_significant_difference": "no_significant_difference"}


WIDTH_TOLERANCE = 1e-9  # far below one test image in a billion, far above float64's rounding of accuracies


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
    return hits_array(text)


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
    else ``no_significant_difference``; an interval of no width (nothing varied) calls no side, including one whose
    ends differ by rounding alone (the same difference under every seed, computed from different accuracies)."""
    if not high - low > WIDTH_TOLERANCE:
        return "no_significant_difference"
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
               seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """``first`` (SupCon's runs, one per seed) minus ``second`` (CE's, the same seeds in the same order) on the
    test split: the mean difference of accuracy, its interval (see the module's doc) and the verdict.

    With one seed the verdict is ``needs_seeds`` and ``scope`` says that the interval is that of one pair of
    trained models (``resamples`` bootstrap draws over the test images); with several it is the method's."""
    if [r.get("seed") for r in first] != [r.get("seed") for r in second]:
        raise ValueError("a paired comparison needs the same seeds for both methods")
    return paired_difference(np.stack([correctness(r) for r in first]), np.stack([correctness(r) for r in second]),
                             resamples, seed, confidence)


def paired_difference(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = 0,
                      confidence: float = CONFIDENCE) -> dict[str, Any]:
    """:func:`difference` from the hits themselves: ``a`` and ``b`` are 0/1 ``[K seeds, N images]``, the same
    images in the same order."""
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired hits must have one shape [seeds, images]; got {a.shape} and {b.shape}")
    seeds, images = a.shape
    facts = {"confidence": confidence, "seeds": seeds, "test_images": images}
    if seeds == 1:
        mean, low, high = paired_bootstrap(a, b, resamples, seed, confidence)
        return {"supcon_minus_ce": mean, "ci": [low, high], "verdict": "needs_seeds", **facts,
                "scope": "one pair of trained models", "method": "paired bootstrap over the test images",
                "resamples": resamples}
    from scipy.stats import t

    per_seed = a.mean(1) - b.mean(1)
    # the images' part: the spread of the seed-averaged per-image differences, less what the seeds' own noise puts
    # into it (each image's spread between seeds, over K), which the per-seed term already counts
    per_image, noise = (a - b).mean(0), (a - b).var(0, ddof=1).mean() / seeds
    between, within = per_seed.var(ddof=1) / seeds, max(0.0, per_image.var(ddof=1) - noise) / images
    half = float(t.ppf(0.5 + confidence / 2, seeds - 1) * math.sqrt(between + within))
    mean = float(per_seed.mean())
    return {"supcon_minus_ce": mean, "ci": [mean - half, mean + half], "verdict": verdict(mean - half, mean + half),
            **facts, "scope": "the methods", "method": "two-level t-interval over seeds and test images",
            "seeds_se": math.sqrt(between), "images_se": math.sqrt(within)}


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



def simulated_hits(seeds: int, images: int, seed_sd: float, gap: float, rng: np.random.Generator) -> np.ndarray:
    """Test hits ``[2 methods, seeds, images]`` of a simulated comparison (docs/usage.md's calibration): each
    image has one difficulty for every model (the chance that a model gets it right, about 0.75 on average), each
    trained model is shifted by its seed (SD ``seed_sd``, in accuracy) and the first method by ``gap`` more, and
    each hit is drawn around that. ``gap=0`` is the null: two methods that differ only by chance."""
    difficulty = np.clip(rng.normal(0.75, 0.25, images), 0.02, 0.98)
    shifts = rng.normal(0, seed_sd, (2, seeds)) + np.array([[gap], [0.0]])
    return rng.random((2, seeds, images)) < np.clip(difficulty[None, None] + shifts[..., None], 0, 1)


def simulated_verdicts(seeds: int, images: int, seed_sd: float, gap: float, replications: int,
                       rng: np.random.Generator) -> list[str]:
    """The verdicts of ``replications`` simulated comparisons (:func:`simulated_hits`)."""
    verdicts = []
    for _ in range(replications):
        hits = simulated_hits(seeds, images, seed_sd, gap, rng)
        verdicts.append(paired_difference(hits[0], hits[1], resamples=200)["verdict"])
    return verdicts
