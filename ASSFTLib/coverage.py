"""Coverage of an embedding space: cosine distance and TypiClust's clusters, pure numpy/scipy.

The building blocks that :mod:`query` uses for diversity (``Div``), for TypiClust's
cold start (``typical``) and for ATSQ's ``diversity_scale`` ``clusters``.
"""
from __future__ import annotations

import numpy as np

#: Floor on norms, variances and probabilities before divisions and logs.
EPS = 1e-8


def cosine_distance(a, b) -> np.ndarray:
    """Pairwise ``1 - cos`` between rows of ``a (n, D)`` and ``b (m, D)`` -> ``(n, m)`` in ``[0, 2]``."""
    return np.clip(1.0 - unit_rows(a) @ unit_rows(b).T, 0.0, 2.0)


def unit_rows(x) -> np.ndarray:
    """The rows of ``x (n, D)`` scaled to unit L2 norm (float64; a zero row stays zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)


def kmeans_labels(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ cluster ids of the rows of ``x (n, D)``, seeded."""
    from scipy.cluster.vq import kmeans2
    rng = np.random.default_rng(seed)
    try:
        _, labels = kmeans2(x, k, minit="++", rng=rng)
    except TypeError:  # SciPy before 1.15 (Slicer 5.6/5.8's Python 3.9) calls it seed
        _, labels = kmeans2(x, k, minit="++", seed=rng)
    return labels


def cluster_picks(z: np.ndarray, labeled_z: np.ndarray, budget: int, seed: int,
                   utility: np.ndarray, typ: np.ndarray) -> tuple[list[int], np.ndarray]:
    """TypiClust's coverage: b picks, each from the largest k-means cluster of U ∪ L that holds no L or S case.

    U ∪ L is clustered into ``|L| + b`` clusters of the L2-normalised embeddings.
    Within the chosen cluster the pick is the case of highest ``utility``
    (ties: higher ``typ``, then lower index); once every cluster is covered,
    the highest utility left.  Returns ``(picked, cluster id of each pool case)``.
    """
    n = z.shape[0]
    allz = unit_rows(np.concatenate([z, labeled_z]) if labeled_z.shape[0] else z)
    k = min(labeled_z.shape[0] + min(budget, n), allz.shape[0])
    labels = kmeans_labels(allz, k, seed) if k > 1 else np.zeros(allz.shape[0], int)
    pool_labels = labels[:n]
    covered = set(labels[n:].tolist())
    size = np.bincount(labels, minlength=k)  # of U ∪ L: fixed while picking
    available = np.ones(n, bool)
    # one rank for (utility, typicality, -index): larger is better
    merit = np.empty(n)
    merit[np.lexsort((-np.arange(n), typ, utility))] = np.arange(n)
    picked: list[int] = []
    for _ in range(min(budget, n)):
        open_ = sorted(set(pool_labels[available].tolist()) - covered)
        if open_:  # the largest uncovered cluster (ties: lower cluster id)
            cluster = max(open_, key=lambda c: size[c])
            members = available & (pool_labels == cluster)
        else:      # every cluster covered: the best case left
            cluster, members = None, available
        i = int(np.argmax(np.where(members, merit, -np.inf)))
        picked.append(i)
        available[i] = False
        covered.add(int(pool_labels[i]) if cluster is None else cluster)
    return picked, pool_labels
