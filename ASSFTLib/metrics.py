"""Evaluation metrics as pure functions on arrays (no I/O, no model)."""
from __future__ import annotations

import numpy as np


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of each foreground class 1..C-1 between two label arrays of equal shape.

    Returns an array of length ``C - 1``.  A class absent from both arrays
    scores 1 (nothing to find, nothing found); absent from one only, 0.
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    out = np.empty(num_classes - 1, dtype=np.float64)
    for k in range(1, num_classes):
        p, t = pred == k, truth == k
        denom = p.sum() + t.sum()
        out[k - 1] = 1.0 if denom == 0 else 2.0 * np.logical_and(p, t).sum() / denom
    return out


def mean_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean foreground Dice over classes 1..C-1."""
    return float(dice_per_class(pred, truth, num_classes).mean())


def normalized_auc(labels_used: np.ndarray, scores: np.ndarray) -> float:
    """Area under a score-vs-labels curve (trapezoid), divided by the span of labels.

    ``labels_used`` must be increasing; a single point returns its score.
    """
    x = np.asarray(labels_used, dtype=np.float64)
    y = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
        raise ValueError("labels_used and scores must be 1-D arrays of equal, non-zero length")
    if len(x) == 1:
        return float(y[0])
    if np.any(np.diff(x) <= 0):
        raise ValueError("labels_used must be strictly increasing")
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))  # the trapezoid rule (np.trapz / np.trapezoid)
    return area / float(x[-1] - x[0])


def labels_to_reach(labels_used: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The first number of labels at which ``scores`` reaches ``target``; None if never."""
    for n, s in zip(labels_used, scores):
        if s >= target:
            return float(n)
    return None


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Mean of the paired differences ``a - b`` (one pair per seed) with a percentile bootstrap interval.

    ``scipy.stats.bootstrap`` resamples the differences ``n_boot`` times; with very
    few pairs the interval is as wide as the data allow and no wider (two
    seeds: it spans the two differences; one seed: the difference itself).
    Returns ``{"mean", "lo", "hi", "n", "differences"}``.
    """
    from scipy.stats import bootstrap
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError("a and b must be 1-D arrays of equal, non-zero length")
    if len(d) == 1:  # scipy needs two observations; one resample of one pair is that pair
        lo = hi = float(d[0])
    else:
        ci = bootstrap((d,), np.mean, confidence_level=level, n_resamples=n_boot, method="percentile",
                       random_state=np.random.default_rng(seed)).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
    return {"mean": float(d.mean()), "lo": lo, "hi": hi, "n": int(len(d)), "differences": d.tolist()}
