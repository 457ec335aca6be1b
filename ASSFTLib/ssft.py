"""Selective Semi-supervised Fine-tuning (SSFT): which unlabeled volumes become pseudo-labels.

Pure functions on arrays (no I/O, no network), following ``SPEC.md`` ("SSFT"):

- confidence ``c(x)`` (foreground-focused mean of max-probabilities) and the
  embedding ``zt(x)`` come from the scoring pass; this module only decides.
- semantic distance ``d(x) = min_l 1 - cos(zt(x), zt(l))`` over the labeled set L
  (:func:`ASSFTLib.query.diversity`, the same quantity ATSQ's diversity term uses).
- adaptive bound ``tau_d`` = the ``distance_percentile``-th percentile of the
  nearest-neighbour distances among the labeled volumes themselves.
- a candidate passes when ``c >= tau_c`` and ``d <= tau_d``; at most
  ``rho * |L|`` pass, highest ``c * (1 - d)`` first.
- pseudo-label = argmax of the test-time averaged probabilities; voxels whose
  max-probability is below ``tau_v`` are ignored in the loss.
- the pseudo-label loss weight ramps linearly from 0 to ``lambda_max``.

``tau_d`` when |L| = 1 (no neighbour inside L): the bound falls back to the
median distance from the labeled volume to the candidates, so that only the
nearer half of the pool can pass (the confidence test and the ``rho * |L|``
cap still apply). With |L| = 0 no candidate passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .errors import ArrayError
from .query import cosine_distance, diversity  # one definition of dist(a, b) = 1 - cos(a, b)

#: Reasons a candidate can be refused (the first that applies is reported).
REASON_REJECTED = "rejected in QA"
REASON_NO_LABELS = "no labeled volumes to compare with"
REASON_NOT_SCORED = "no confidence/embedding for the current model"
REASON_NO_FOREGROUND = "no predicted foreground (confidence measured on the fallback ROI)"


@dataclass(frozen=True)
class PseudoDecision:
    """Why one candidate passed or not.

    ``priority`` = ``c * (1 - d)`` (NaN when unscored); ``reason`` is empty for
    a selected candidate and one short sentence otherwise.
    """

    case_id: str
    confidence: float
    distance: float
    priority: float
    selected: bool
    reason: str

    def to_dict(self) -> dict:
        return {"case_id": self.case_id, "confidence": self.confidence, "distance": self.distance,
                "priority": self.priority, "selected": self.selected, "reason": self.reason}


@dataclass
class PseudoSelection:
    """Result of :func:`select_pseudo`.

    ``selected``: case ids in priority order (highest ``c * (1 - d)`` first).
    ``decisions``: one :class:`PseudoDecision` per candidate, in candidate order.
    ``tau_c``/``tau_d``: the thresholds applied; ``cap``: ``floor(rho * |L|)``.
    """

    selected: list[str]
    decisions: list[PseudoDecision]
    tau_c: float
    tau_d: float
    cap: int
    tau_d_rule: str = ""

    def to_dict(self) -> dict:
        return {"selected": list(self.selected), "tau_c": self.tau_c, "tau_d": self.tau_d, "cap": self.cap,
                "tau_d_rule": self.tau_d_rule, "decisions": [d.to_dict() for d in self.decisions]}


def distance_bound(labeled_embeddings: np.ndarray, percentile: float,
                   candidate_distances: np.ndarray | None = None) -> tuple[float, str]:
    """Adaptive ``tau_d`` from the labeled embeddings (M, D) -> (bound, rule used).

    M >= 2: the ``percentile``-th percentile of each labeled volume's distance
    to its nearest other labeled volume. M = 1: the median of
    ``candidate_distances`` (distances of the candidates to that volume), or
    0 when there are none. M = 0: ``-inf`` (nothing can pass).
    """
    labeled = np.asarray(labeled_embeddings, dtype=np.float64)
    m = len(labeled)
    if m == 0:
        return float("-inf"), "no labeled volumes"
    if m == 1:
        finite = np.asarray(candidate_distances if candidate_distances is not None else [], dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            return 0.0, "one labeled volume, no candidates: 0"
        return float(np.median(finite)), "one labeled volume: median candidate distance"
    dist = cosine_distance(labeled, labeled)
    np.fill_diagonal(dist, np.inf)
    nn = dist.min(axis=1)
    return float(np.percentile(nn, percentile)), f"{percentile:g}th percentile of nearest-neighbour distances in L"


def select_pseudo(candidate_ids: Sequence[str], confidence: Sequence[float] | np.ndarray,
                  embeddings: np.ndarray, labeled_embeddings: np.ndarray, *, tau_c: float,
                  distance_percentile: float, rho: float, rejected: Iterable[str] = (),
                  no_foreground: Sequence[bool] | None = None) -> PseudoSelection:
    """Choose the unlabeled volumes admitted as pseudo-labeled training data.

    Parameters
    ----------
    candidate_ids: N case ids (the unlabeled pool U \\ (L ∪ Q)).
    confidence: (N,) ``c(x)`` per candidate; NaN = not scored.
    embeddings: (N, D) ``zt(x)`` per candidate (rows of NaN = not scored).
    labeled_embeddings: (M, D) ``zt(l)`` of the labeled volumes.
    tau_c: confidence threshold (``Settings.confidence_threshold``).
    distance_percentile: percentile of L's nearest-neighbour distances that bounds d(x)
        (``Settings.distance_percentile``).
    rho: at most ``floor(rho * |L|)`` are selected (``Settings.pseudo_ratio``).
    rejected: case ids the annotator rejected in QA; never selected.
    no_foreground: (N,) True where the model predicted (almost) no foreground, so
        that c(x) was measured on ASD's fallback ROI; never selected.  Such a
        volume's fallback voxels are confidently *background*, so c(x) is near 1
        while the pseudo-label is empty: the benchmark (multisite, seed 2)
        admitted 16 of them over three rounds, every one with true Dice 0 (test Dice 0.08
        at 8 labels against 0.28 for ATSQ without SSFT).
    """
    ids = [str(c) for c in candidate_ids]
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    emb = np.asarray(embeddings, dtype=np.float64)
    labeled = np.asarray(labeled_embeddings, dtype=np.float64)
    if emb.size == 0 and emb.ndim != 2:
        emb = emb.reshape(0, labeled.shape[1] if labeled.ndim == 2 else 0)
    if labeled.size == 0 and labeled.ndim != 2:
        labeled = labeled.reshape(0, emb.shape[1])
    if conf.shape[0] != len(ids) or emb.ndim != 2 or emb.shape[0] != len(ids) or labeled.ndim != 2:
        raise ArrayError(f"{len(ids)} candidates need ({len(ids)},) confidences, ({len(ids)}, D) embeddings and "
                         f"(M, D) labeled embeddings; got {conf.shape}, {emb.shape}, {labeled.shape}")

    scored = np.isfinite(conf) & np.all(np.isfinite(emb), axis=1)
    dist = np.full(len(ids), np.nan)
    if scored.any() and len(labeled):
        dist[scored] = diversity(emb[scored], labeled)
    empty = np.zeros(len(ids), bool) if no_foreground is None else np.asarray(no_foreground, bool).reshape(-1)
    if empty.shape[0] != len(ids):
        raise ArrayError(f"{len(ids)} candidates need {len(ids)} no_foreground flags, got {empty.shape[0]}")
    rejected_set = set(map(str, rejected))
    eligible = scored & np.array([c not in rejected_set for c in ids], dtype=bool)
    tau_c = float(tau_c)
    tau_d, rule = distance_bound(labeled, distance_percentile, dist[eligible])
    cap = int(np.floor(rho * len(labeled) + 1e-9))
    priority = conf * (1.0 - dist)

    reasons: list[str] = []
    for i, case_id in enumerate(ids):
        if case_id in rejected_set:
            reasons.append(REASON_REJECTED)
        elif not scored[i]:
            reasons.append(REASON_NOT_SCORED)
        elif len(labeled) == 0:
            reasons.append(REASON_NO_LABELS)
        elif empty[i]:
            reasons.append(REASON_NO_FOREGROUND)
        elif conf[i] < tau_c:
            reasons.append(f"confidence {conf[i]:.3f} < tau_c {tau_c:.3f}")
        elif dist[i] > tau_d:
            reasons.append(f"distance {dist[i]:.3f} > tau_d {tau_d:.3f}")
        else:
            reasons.append("")
    passing = [i for i, r in enumerate(reasons) if not r]
    passing.sort(key=lambda i: (-priority[i], ids[i]))
    for rank, i in enumerate(passing):
        if rank >= cap:
            reasons[i] = f"passes, but over the cap rho*|L| = {cap}"
    selected = [ids[i] for i in passing[:cap]]
    chosen = set(selected)
    decisions = [PseudoDecision(case_id, float(conf[i]), float(dist[i]), float(priority[i]), case_id in chosen,
                                reasons[i]) for i, case_id in enumerate(ids)]
    return PseudoSelection(selected, decisions, tau_c, tau_d, cap, rule)


def pseudo_target(probs: np.ndarray, tau_v: float) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-label and ignore mask from test-time averaged probabilities.

    probs: (C, X, Y, Z) class probabilities.
    Returns ``label`` (X, Y, Z) uint8 = argmax over C, and ``ignore`` (X, Y, Z)
    bool = voxels whose max-probability is below ``tau_v`` (left out of the loss).
    """
    probs = np.asarray(probs)
    if probs.ndim != 4:
        raise ArrayError(f"probs must be (C, X, Y, Z), got shape {probs.shape}")
    if probs.shape[0] > 256:
        raise ArrayError(f"{probs.shape[0]} classes do not fit a uint8 label")
    label = np.argmax(probs, axis=0).astype(np.uint8)
    ignore = np.max(probs, axis=0) < tau_v
    return label, ignore


def pseudo_weight(step: int, total: int, weight_max: float, ramp_fraction: float) -> float:
    """lambda(t): linear ramp from 0 at step 0 to ``weight_max`` (lambda_max,
    ``Settings.pseudo_weight_max``) at ``ramp_fraction * total`` steps
    (``Settings.pseudo_ramp_fraction``), constant after."""
    lam = float(weight_max)
    ramp = ramp_fraction * max(int(total), 1)
    if ramp <= 0:
        return lam
    return lam * min(1.0, max(0, int(step)) / ramp)
