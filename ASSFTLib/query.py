"""Active Test-Time Sample Query: acquisition strategies as pure functions on arrays.

Everything here is numpy/scipy only: no I/O, no torch, no workspace.  The
network side (one sliding-window pass per volume) lives in :mod:`inference`,
caching and table building in :mod:`scoring`.  The formulas follow
``SPEC.md`` (sections DKD, ASD, ATSQ, Baselines).

Conventions
-----------
- A pool of ``n`` candidate volumes is indexed ``0..n-1``; every per-case array
  has shape ``(n,)`` and embeddings have shape ``(n, D)`` (L2-normalised).
- Embeddings of the labeled set ``L`` come as ``(m, D)``; ``m`` may be 0.
- Each selector returns a :class:`Selection`: ``order`` lists every pool index
  (the ``picked`` batch first, in pick order, then the rest ranked),
  ``components`` holds the per-case quantities behind the decision, aligned
  with the pool indices.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np
from scipy import ndimage, stats

from .coverage import EPS, cluster_picks, cosine_distance
from .errors import ArrayError

#: Embeddings closer than this (cosine distance) count as the same volume.
DUPLICATE_DISTANCE = 1e-6


@dataclass
class Selection:
    """The outcome of one query.

    order: every pool index, the picked batch first (in pick order), then the rest ranked.
    picked: the first ``min(budget, n)`` entries of ``order``.
    components: per-case arrays of shape ``(n,)`` explaining the decision
        (e.g. ``K``, ``K_hat``, ``ASD``, ``ASD_hat``, ``div_at_pick``, ``q``).
    """

    order: list[int]
    picked: list[int]
    components: dict[str, np.ndarray] = field(default_factory=dict)


# ----------------------------------------------------------------------------
# input checks
def _as_scores(name: str, values, n: int | None = None) -> np.ndarray:
    """``values`` as a finite float64 vector ``(n,)``; a clear error otherwise."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if n is not None and arr.shape[0] != n:
        raise ArrayError(f"{name} holds {arr.shape[0]} values for a pool of {n} cases",
                         hint="score every case of the pool with the same model")
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr)).tolist()
        raise ArrayError(f"{name} is not finite (NaN or inf) for pool indices {bad[:10]}",
                         hint="rescore these cases (assft score) or check their images")
    return arr


def _as_embeddings(name: str, values, n: int | None = None, dim: int | None = None) -> np.ndarray:
    """``values`` as a finite float64 matrix ``(n, D)``; an empty input becomes ``(0, dim)``."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 and not n:
        return np.zeros((0, dim or 0))
    if arr.ndim != 2:
        raise ArrayError(f"{name} must be a matrix (cases, features), got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ArrayError(f"{name} holds {arr.shape[0]} embeddings for a pool of {n} cases",
                         hint="score every case of the pool with the same model")
    if dim is not None and dim and arr.shape[1] != dim:
        raise ArrayError(f"{name} has {arr.shape[1]} features where {dim} are expected",
                         hint="score labeled and unlabeled cases with the same model")
    if not np.all(np.isfinite(arr)):
        raise ArrayError(f"{name} is not finite (NaN or inf)", hint="rescore the cases (assft score)")
    return arr


def _check_budget(budget: int) -> int:
    budget = int(budget)
    if budget < 0:
        raise ArrayError(f"budget={budget} must not be negative")
    return budget


# ----------------------------------------------------------------------------
# building blocks
def rank_normalize(values) -> np.ndarray:
    """Percentile ranks of ``values (n,)`` in ``[0, 1]``; ties share their average rank.

    The smallest value maps to 0 and the largest to 1; when all values are equal
    (or ``n == 1``) every case gets 0.5.  The order of ``values`` is preserved
    exactly (strictly monotone for distinct values).
    """
    arr = _as_scores("scores", values)
    n = arr.shape[0]
    if n == 0:
        return arr
    if n == 1:
        return np.full(1, 0.5)
    return (stats.rankdata(arr, method="average") - 1.0) / (n - 1.0)


def symmetric_gaussian_kl(mu, var, mu_s, var_s) -> np.ndarray:
    """Symmetric KL ``KL(p||q) + KL(q||p)`` between ``N(mu, var)`` and ``N(mu_s, var_s)``, elementwise.

    Shapes broadcast (typically ``(K,)`` channels).  Variances are floored at ``EPS``.
    """
    mu, mu_s = np.asarray(mu, np.float64), np.asarray(mu_s, np.float64)
    var = np.maximum(np.asarray(var, np.float64), EPS)
    var_s = np.maximum(np.asarray(var_s, np.float64), EPS)
    d2 = (mu - mu_s) ** 2
    return 0.5 * ((var + d2) / var_s + (var_s + d2) / var) - 1.0


def knowledge_divergence_bnstats(stats_per_layer, running_per_layer) -> float:
    """K_bnstats(x): symmetric KL of per-volume vs running statistics, channel- then layer-averaged.

    stats_per_layer: list over layers of ``(mu (K_l,), var (K_l,))``, the volume's
        per-channel mean and variance of each normalisation layer's input under E0.
    running_per_layer: the matching ``(running_mean (K_l,), running_var (K_l,))``.
    """
    if len(stats_per_layer) != len(running_per_layer):
        raise ArrayError(f"{len(stats_per_layer)} layers of volume statistics for "
                         f"{len(running_per_layer)} layers of running statistics")
    if not stats_per_layer:
        raise ArrayError("no normalisation layer statistics to compare",
                         hint="use divergence_mode 'pretext' or 'drift' for this architecture")
    per_layer = []
    for (mu, var), (mu_s, var_s) in zip(stats_per_layer, running_per_layer):
        kl = symmetric_gaussian_kl(mu, var, mu_s, var_s)
        if not np.all(np.isfinite(kl)):
            raise ArrayError("normalisation statistics are not finite", hint="check the image intensities")
        per_layer.append(float(np.mean(kl)))
    return float(np.mean(per_layer))


def diversity(z, reference) -> np.ndarray:
    """Div(x | S) = min over s in ``reference (m, D)`` of dist(z(x), z(s)); 1 when ``m == 0``.

    z: ``(n, D)``.  Returns ``(n,)``.
    """
    z = _as_embeddings("embeddings", z)
    ref = _as_embeddings("reference embeddings", reference, dim=z.shape[1] if z.size else None)
    if ref.shape[0] == 0:
        return np.ones(z.shape[0])
    if z.shape[0] == 0:
        return np.zeros(0)
    return cosine_distance(z, ref).min(axis=1)


@dataclass
class ASDResult:
    """Per-volume reductions of the test-time probabilities (SPEC: ASD, SSFT)."""

    asd: float            # mean normalised entropy over the ROI
    confidence: float     # c(x): mean max-probability over the ROI
    entropy: float        # mean normalised entropy over the whole volume (baseline)
    roi_voxels: int       # |R|
    roi_fallback: bool    # R came from the top-fraction fallback
    fg_fraction: float    # fraction of voxels with 1 - p_bg >= tau_fg


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """H(p_v) / log C for probabilities ``(C, ...)`` -> ``(...)`` in ``[0, 1]``."""
    c = probs.shape[0]
    if c < 2:
        raise ArrayError(f"entropy needs at least two classes, got {c}")
    p = np.clip(probs, EPS, 1.0)
    return -(p * np.log(p)).sum(axis=0) / np.log(c)


def _ball(radius: int) -> np.ndarray:
    grid = np.indices((2 * radius + 1,) * 3) - radius
    return (grid ** 2).sum(axis=0) <= radius ** 2


def foreground_roi(probs: np.ndarray, fg_threshold: float, dilation: int, min_fraction: float,
                   fallback_fraction: float) -> tuple[np.ndarray, bool, float]:
    """R(x) from probabilities ``(C, X, Y, Z)`` -> ``(mask (X, Y, Z) bool, fallback_used, fg_fraction)``.

    Voxels with ``1 - p_bg >= fg_threshold`` (tau_fg), dilated by a ball of
    ``dilation`` voxels; when fewer than ``min_fraction`` of the voxels remain,
    the top ``fallback_fraction`` voxels by foreground probability (at least one).
    The four are ``Settings.fg_threshold``, ``roi_dilation``, ``roi_min_fraction``
    and ``roi_fallback_fraction``.
    """
    fg_prob = 1.0 - probs[0]
    core = fg_prob >= fg_threshold
    fg_fraction = float(core.mean())
    roi = core
    if dilation > 0 and core.any():
        roi = ndimage.binary_dilation(core, structure=_ball(int(dilation)))
    n_min = min_fraction * roi.size
    if roi.sum() >= max(n_min, 1):
        return roi, False, fg_fraction
    k = max(1, int(np.ceil(fallback_fraction * roi.size)))
    flat = fg_prob.reshape(-1)
    top = np.argpartition(-flat, k - 1)[:k]
    roi = np.zeros(flat.shape, bool)
    roi[top] = True
    return roi.reshape(fg_prob.shape), True, fg_fraction


def asd_from_probs(probs, fg_threshold: float, dilation: int, min_fraction: float,
                   fallback_fraction: float) -> ASDResult:
    """ASD(x), c(x) and whole-volume entropy from test-time probabilities ``(C, X, Y, Z)``.

    ``probs`` sum to 1 over the class axis (channel 0 is background); the other
    parameters are :func:`foreground_roi`'s.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 4:
        raise ArrayError(f"probabilities must have shape (C, X, Y, Z), got {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ArrayError("probabilities are not finite (NaN or inf)", hint="check the image and the model")
    entropy = normalized_entropy(probs)
    roi, fallback, fg_fraction = foreground_roi(probs, fg_threshold, dilation, min_fraction, fallback_fraction)
    return ASDResult(
        asd=float(entropy[roi].mean()),
        confidence=float(probs.max(axis=0)[roi].mean()),
        entropy=float(entropy.mean()),
        roi_voxels=int(roi.sum()),
        roi_fallback=bool(fallback),
        fg_fraction=fg_fraction,
    )


def bald_from_moments(mean_probs, mean_sample_entropy) -> float:
    """BALD = mean over voxels of H(E_m p_m) - E_m H(p_m), both normalised by log C.

    mean_probs: ``(C, X, Y, Z)`` average of the MC-dropout softmax samples.
    mean_sample_entropy: ``(X, Y, Z)`` average of their normalised entropies.
    """
    mean_probs = np.asarray(mean_probs, np.float64)
    mi = normalized_entropy(mean_probs) - np.asarray(mean_sample_entropy, np.float64)
    return float(np.maximum(mi, 0.0).mean())


def bald_from_samples(samples) -> float:
    """BALD from MC-dropout softmax samples ``(M, C, X, Y, Z)``."""
    samples = np.asarray(samples, np.float64)
    if samples.ndim != 5 or samples.shape[0] < 1:
        raise ArrayError(f"MC samples must have shape (M, C, X, Y, Z), got {samples.shape}")
    mean_h = np.mean([normalized_entropy(s) for s in samples], axis=0)
    return bald_from_moments(samples.mean(axis=0), mean_h)


# ----------------------------------------------------------------------------
# selectors
def _ranked(scores: np.ndarray, budget: int, components: dict[str, np.ndarray]) -> Selection:
    """Top-``budget`` by ``scores`` (descending; ties by lower index), the rest in the same order."""
    order = np.argsort(-scores, kind="stable").tolist()
    return Selection(order=order, picked=order[:min(budget, len(order))], components=components)


def random_select(n: int, budget: int, seed: int = 0) -> Selection:
    """Uniformly random order of the ``n`` pool cases (seeded)."""
    budget = _check_budget(budget)
    order = np.random.default_rng(seed).permutation(int(n)).tolist()
    return Selection(order=order, picked=order[:min(budget, n)], components={})


def entropy_select(entropy, budget: int) -> Selection:
    """Whole-volume mean entropy, highest first (MONAI Label's style)."""
    entropy = _as_scores("entropy", entropy)
    return _ranked(entropy, _check_budget(budget), {"entropy": entropy})


def bald_select(bald, budget: int) -> Selection:
    """MC-dropout BALD (mutual information), highest first."""
    bald = _as_scores("BALD", bald)
    return _ranked(bald, _check_budget(budget), {"BALD": bald})


def asd_select(asd, budget: int) -> Selection:
    """ASD only: foreground-ROI entropy, highest first (no diversity term)."""
    asd = _as_scores("ASD", asd)
    return _ranked(asd, _check_budget(budget), {"ASD": asd, "ASD_hat": rank_normalize(asd)})


def _pick(q: np.ndarray, mind: np.ndarray, available: np.ndarray) -> int:
    """argmax of ``q`` over ``available``; never a duplicate of L ∪ S while another case remains.

    Ties in ``q`` go to the larger distance to L ∪ S, then to the lower index.
    """
    candidates = available & (mind > DUPLICATE_DISTANCE)
    if not candidates.any():
        candidates = available
    best = np.max(q[candidates])
    ties = candidates & (q >= best - 1e-12)
    return int(np.argmax(np.where(ties, mind, -np.inf)))


def greedy_diversified(base, z, labeled_z, budget: int, gamma: float = 1.0,
                       diversity_scale: str = "distance") -> Selection:
    """Greedy batch: b times add argmax over U \\ S of ``base(x) · Div(x | S)^gamma``.

    diversity_scale: ``distance`` uses Div as defined (a cosine distance, often
    0.01-0.3, so its spread can outweigh the rank-normalised base); ``rank``
    rank-normalises Div over the remaining candidates at each pick, so that
    base and diversity count alike.

    base: ``(n,)`` non-negative utilities; z: ``(n, D)`` pool embeddings;
    labeled_z: ``(m, D)`` embeddings of L.  The rest is ranked by the same score
    with Div taken against L ∪ S.  Vectorised: O(b · n · D).
    Components: ``base``, ``div_at_pick`` and ``q`` (at pick for the picked
    cases, given L ∪ S for the rest).
    """
    budget = _check_budget(budget)
    base = _as_scores("acquisition score", base)
    n = base.shape[0]
    z = _as_embeddings("pool embeddings", z, n=n)
    if n == 0:
        return Selection(order=[], picked=[], components={k: np.zeros(0) for k in ("base", "div_at_pick", "q")})
    labeled_z = _as_embeddings("labeled embeddings", labeled_z, dim=z.shape[1])
    # distance to the nearest case of L ∪ S (inf while empty, where Div is 1 by definition)
    mind = diversity(z, labeled_z) if labeled_z.shape[0] else np.full(n, np.inf)
    zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), EPS)
    available = np.ones(n, bool)
    div_at = np.zeros(n)
    q_at = np.zeros(n)
    picked: list[int] = []
    def scaled(div: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        if diversity_scale != "rank" or not candidates.any():
            return div
        out = np.zeros(n)
        out[candidates] = rank_normalize(div[candidates])
        return out

    for _ in range(min(budget, n)):
        div = np.where(np.isinf(mind), 1.0, mind)
        q = base * scaled(div, available) ** gamma
        i = _pick(q, div, available)
        picked.append(i)
        div_at[i], q_at[i] = div[i], q[i]
        available[i] = False
        mind = np.minimum(mind, np.clip(1.0 - zn @ zn[i], 0.0, 2.0))
    div = np.where(np.isinf(mind), 1.0, mind)
    q = base * scaled(div, available) ** gamma
    rest = np.flatnonzero(available)
    # descending q, then descending distance to L ∪ S, then lower index
    rest = rest[np.lexsort((rest, -div[rest], -q[rest]))]
    div_at[rest], q_at[rest] = div[rest], q[rest]
    order = picked + rest.tolist()
    return Selection(order=order, picked=picked, components={"base": base, "div_at_pick": div_at, "q": q_at})


def atsq_select(K, asd, z, labeled_z, budget: int, weight: float = 0.5, gamma: float = 1.0,
                has_task_head: bool = True, diversity_scale: str = "distance", seed: int = 0) -> Selection:
    """ATSQ: greedy ``q(x) = [w · K̂(x) + (1 − w) · ASD̂(x)] · Div(x | S)^γ``.

    K, asd: ``(n,)`` raw knowledge divergence and ASD over the pool U (either may
    be ``None`` when unavailable); they are rank-normalised over U here.
    z: ``(n, D)`` current-model embeddings zt; labeled_z: ``(m, D)`` those of L.
    Cold start (``has_task_head=False`` or no ASD): ASD̂ ≡ 0 and w = 1.
    Without K (no running statistics, no pretext head, first round): w = 0.
    With neither, the utility is constant and the batch is pure diversity.
    diversity_scale ``clusters`` replaces ``Div^γ`` by cluster coverage
    (:func:`clustered_select`, seeded by ``seed``).
    """
    z = _as_embeddings("pool embeddings", z)
    n = z.shape[0]
    components: dict[str, np.ndarray] = {}
    if K is not None:
        components["K"] = _as_scores("K", K, n)
        components["K_hat"] = rank_normalize(components["K"])
    if asd is not None:
        components["ASD"] = _as_scores("ASD", asd, n)
    use_asd = has_task_head and asd is not None
    components["ASD_hat"] = rank_normalize(components["ASD"]) if use_asd else np.zeros(n)
    if K is None and not use_asd:
        base = np.ones(n)
    else:
        if not use_asd:
            weight = 1.0
        elif K is None:
            weight = 0.0
        base = weight * components.get("K_hat", np.zeros(n)) + (1.0 - weight) * components["ASD_hat"]
    if diversity_scale == "clusters":
        sel = clustered_select(base, z, labeled_z, budget, seed)
    else:
        sel = greedy_diversified(base, z, labeled_z, budget, gamma, diversity_scale)
    sel.components = {**components, **sel.components}
    return sel


def dkd_select(K, z, labeled_z, budget: int, gamma: float = 1.0, diversity_scale: str = "distance",
               seed: int = 0) -> Selection:
    """DKD only: greedy ``K̂(x) · Div(x | S)^γ``."""
    return atsq_select(K, None, z, labeled_z, budget, weight=1.0, gamma=gamma, has_task_head=False,
                       diversity_scale=diversity_scale, seed=seed)


def coreset_select(z, labeled_z, budget: int) -> Selection:
    """Core-set k-center greedy on zt with L as the initial centres.

    Each pick is the case farthest from its nearest centre.  With L empty the
    first centre is the pool's 1-center (the case minimising the largest
    distance to all others), so the order is deterministic and representative.
    """
    budget = _check_budget(budget)
    z = _as_embeddings("pool embeddings", z)
    n = z.shape[0]
    labeled_z = _as_embeddings("labeled embeddings", labeled_z, dim=z.shape[1] if n else None)
    if labeled_z.shape[0] == 0 and n > 0 and budget > 0:
        first = int(np.argmin(cosine_distance(z, z).max(axis=1)))
        sel = greedy_diversified(np.ones(n - 1), np.delete(z, first, axis=0), z[first:first + 1], budget - 1)
        rest = np.delete(np.arange(n), first)
        order = [first] + rest[sel.order].tolist()
        div = np.ones(n)
        div[rest] = sel.components["div_at_pick"]
        return Selection(order=order, picked=order[:min(budget, n)], components={"div_at_pick": div})
    sel = greedy_diversified(np.ones(n), z, labeled_z, budget)
    return Selection(order=sel.order, picked=sel.picked, components={"div_at_pick": sel.components["div_at_pick"]})


def typicality(z, neighbours: int = 20) -> np.ndarray:
    """Typicality of each case: 1 / mean cosine distance to its ``neighbours`` nearest others (TypiClust).

    z: ``(n, D)``.  A case in a dense part of the pool is typical; an outlier is not.
    """
    z = _as_embeddings("embeddings", z)
    n = z.shape[0]
    if n <= 1:
        return np.ones(n)
    d = cosine_distance(z, z)
    np.fill_diagonal(d, np.inf)
    k = min(int(neighbours), n - 1)
    return 1.0 / (np.sort(d, axis=1)[:, :k].mean(axis=1) + EPS)


def typical_select(z, labeled_z, budget: int, seed: int = 0, neighbours: int = 20) -> Selection:
    """TypiClust (Hacohen et al., ICML 2022): representative cases for very small budgets.

    U ∪ L is clustered by k-means into ``|L| + b`` clusters of the
    L2-normalised embeddings; b times, the largest cluster that holds no
    labeled or picked case gives its most typical case (:func:`typicality`).
    At a budget of a few volumes, typical cases teach a model more than
    unusual ones (the opposite of uncertainty sampling at large budgets).
    The rest is ranked by typicality.  Components: ``typicality``, ``cluster``.
    """
    budget = _check_budget(budget)
    z = _as_embeddings("pool embeddings", z)
    n = z.shape[0]
    labeled_z = _as_embeddings("labeled embeddings", labeled_z, dim=z.shape[1] if n else None)
    if n == 0:
        return Selection(order=[], picked=[], components={"typicality": np.zeros(0), "cluster": np.zeros(0)})
    typ = typicality(z, neighbours)
    picked, pool_labels = cluster_picks(z, labeled_z, budget, seed, typ, typ)
    rest = np.setdiff1d(np.arange(n), picked)
    rest = rest[np.lexsort((rest, -typ[rest]))]
    return Selection(order=picked + rest.tolist(), picked=picked,
                     components={"typicality": typ, "cluster": pool_labels.astype(float)})


def clustered_select(base, z, labeled_z, budget: int, seed: int = 0, neighbours: int = 20) -> Selection:
    """Diversity by coverage: the highest-``base`` case of each uncovered cluster (``diversity_scale`` clusters).

    The clusters and their order are TypiClust's (:func:`typical_select`): the
    largest k-means cluster of U ∪ L without a labeled or picked case first.
    Within it the pick is the case of highest ``base · T̂``, where T̂ is the
    typicality (:func:`typicality`) rank-normalised over U (ties: the more
    typical).  Unlike ``base · Div``, which favours the case farthest from
    everything labeled (often an outlier of a small scanner), this keeps the
    batch in the parts of the pool that hold the most volumes, and inside
    each takes an informative case that is not an outlier.  The rest is
    ranked by ``base · T̂``.  Components: ``base``, ``typicality``, ``q``
    (``base · T̂``), ``cluster``.
    """
    budget = _check_budget(budget)
    base = _as_scores("acquisition score", base)
    n = base.shape[0]
    z = _as_embeddings("pool embeddings", z, n=n)
    labeled_z = _as_embeddings("labeled embeddings", labeled_z, dim=z.shape[1] if n else None)
    if n == 0:
        return Selection(order=[], picked=[],
                         components={k: np.zeros(0) for k in ("base", "typicality", "q", "cluster")})
    typ = typicality(z, neighbours)
    q = base * rank_normalize(typ)
    picked, pool_labels = cluster_picks(z, labeled_z, budget, seed, q, typ)
    rest = np.setdiff1d(np.arange(n), picked)
    rest = rest[np.lexsort((rest, -typ[rest], -q[rest]))]
    return Selection(order=picked + rest.tolist(), picked=picked,
                     components={"base": base, "typicality": typ, "q": q, "cluster": pool_labels.astype(float)})
