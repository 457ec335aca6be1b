"""The one registry of query strategies: name -> what it reads, how it selects, how it is shown.

Settings validation, :func:`ASSFTLib.scoring.select` (and so ``rank_cases``),
``assft rank --strategy``, the label-efficiency benchmark's arms and the
plot colours all read :data:`REGISTRY`; nothing else lists strategy names.

Adding a strategy is one :func:`register` call below plus its pure selector
on arrays (in :mod:`ASSFTLib.query`); a strategy that needs a new per-case
measurement also adds that field to :class:`ASSFTLib.scoring.CaseScores`
and a line to :data:`MEASUREMENTS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from . import query
from .errors import ASSFTError

#: Per-case measurements a strategy may read, each a field of ``scoring.CaseScores``
#: (``K`` is the knowledge divergence in the resolved mode): (what it is, how to get it when missing).
MEASUREMENTS: Dict[str, Tuple[str, str]] = {
    "K": ("a knowledge divergence", "the model has no running statistics or pretext head; "
          "use 'drift' from the second round on, or another strategy"),
    "asd": ("ASD", "fine-tune a task head first (cold start)"),
    "entropy": ("entropy", "fine-tune a task head first (cold start)"),
    "bald": ("MC-dropout BALD", "set mc_dropout_samples > 0 and score again"),
}


@dataclass(frozen=True)
class Pool:
    """What a strategy may read about the unlabeled pool U and the labeled set L.

    zt: ``(n, D)`` current-model embeddings of U; labeled_z: ``(m, D)`` those of L.
    scores: measurement name -> ``(n,)`` values, or None where some case lacks it.
    has_task_head: whether every pool case was scored by a model with a segmentation head.
    """

    zt: np.ndarray
    labeled_z: np.ndarray
    scores: Mapping[str, Optional[np.ndarray]]
    has_task_head: bool

    @property
    def n(self) -> int:
        return int(self.zt.shape[0])

    def get(self, name: str) -> Optional[np.ndarray]:
        return self.scores.get(name)


@dataclass(frozen=True)
class QueryParams:
    """The query knobs of ``Settings`` a selector may use (budget b, weight w, gamma, seed, diversity scale)."""

    budget: int
    weight: float = 0.5
    gamma: float = 1.0
    seed: int = 0
    diversity_scale: str = "distance"
    cold_start: str = "typical"


Selector = Callable[[Pool, QueryParams], query.Selection]


@dataclass(frozen=True)
class Strategy:
    """One registered strategy.

    select: the pure selection function on a :class:`Pool`.
    needs: measurements that must be present (an error names the first missing one).
    optional: measurements used when present (the strategy degrades without them).
    description: one line for ``assft rank --help``.
    color: its colour in the benchmark figures.
    mc_dropout: scoring must run MC-dropout passes (``mc_dropout_samples > 0``) for it.
    cold_start: the rule the benchmark's cold-start round uses for it (no task head yet).
    benchmark: whether it is an arm of the label-efficiency benchmark.
    ssft_arm, ssft_color: name and colour of its benchmark arm with SSFT, if any.
    """

    name: str
    select: Selector
    needs: Tuple[str, ...]
    optional: Tuple[str, ...]
    description: str
    color: str
    mc_dropout: bool = False
    cold_start: str = "random"
    benchmark: bool = True
    ssft_arm: Optional[str] = None
    ssft_color: Optional[str] = None

    @property
    def reads(self) -> Tuple[str, ...]:
        """Every measurement the strategy reads, required or not."""
        return self.needs + self.optional


#: name -> Strategy, in the order the benchmark reports them (baselines first, the method last).
REGISTRY: Dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add ``strategy`` to :data:`REGISTRY` (its measurements must be known)."""
    unknown = [m for m in strategy.reads if m not in MEASUREMENTS]
    if unknown:
        raise ValueError(f"strategy {strategy.name!r} reads unknown measurements {unknown}")
    REGISTRY[strategy.name] = strategy
    return strategy


def names() -> Tuple[str, ...]:
    """The registered strategy names (``Settings.strategy`` accepts exactly these)."""
    return tuple(REGISTRY)


def get(name: str) -> Strategy:
    """The registered strategy ``name``; an :class:`ASSFTError` listing the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ASSFTError(f"unknown strategy {name!r}", hint=f"choose one of {', '.join(REGISTRY)}") from None


def help_text() -> str:
    """One line per strategy, for ``assft rank --help``."""
    return "; ".join(f"{s.name}: {s.description}" for s in REGISTRY.values())


# ----------------------------------------------------------------------------
# the strategies
register(Strategy(
    "random", lambda pool, p: query.random_select(pool.n, p.budget, p.seed), (), (),
    "uniformly random order (seeded)", "#7f7f7f", ssft_arm="random+ssft", ssft_color="#ff7f0e"))
register(Strategy(
    "entropy", lambda pool, p: query.entropy_select(pool.get("entropy"), p.budget), ("entropy",), (),
    "whole-volume mean entropy, highest first", "#bcbd22"))
register(Strategy(
    "bald", lambda pool, p: query.bald_select(pool.get("bald"), p.budget), ("bald",), (),
    "MC-dropout BALD (mutual information), highest first", "#8c564b", mc_dropout=True))
register(Strategy(
    "coreset", lambda pool, p: query.coreset_select(pool.zt, pool.labeled_z, p.budget), (), (),
    "core-set k-center greedy on the embeddings", "#17becf", cold_start="coreset"))
register(Strategy(
    "typical", lambda pool, p: query.typical_select(pool.zt, pool.labeled_z, p.budget, p.seed), (), (),
    "TypiClust: the most typical volume of each uncovered embedding cluster (for the first few labels)",
    "#bfa000", cold_start="typical"))
register(Strategy(
    "dkd", lambda pool, p: query.dkd_select(pool.get("K"), pool.zt, pool.labeled_z, p.budget, p.gamma,
                                             p.diversity_scale, p.seed), ("K",), (),
    "knowledge divergence times diversity (greedy)", "#9467bd", cold_start="dkd"))
register(Strategy(
    "asd", lambda pool, p: query.asd_select(pool.get("asd"), p.budget), ("asd",), (),
    "foreground-ROI entropy only, highest first", "#e377c2"))
def _atsq(pool: Pool, p: QueryParams) -> query.Selection:
    """ATSQ; while the model has no task head, ``p.cold_start``: typical (default) or DKD only."""
    if not pool.has_task_head and p.cold_start == "typical":
        return query.typical_select(pool.zt, pool.labeled_z, p.budget, p.seed)
    return query.atsq_select(pool.get("K"), pool.get("asd"), pool.zt, pool.labeled_z, p.budget, p.weight, p.gamma,
                             has_task_head=pool.has_task_head, diversity_scale=p.diversity_scale, seed=p.seed)


register(Strategy(
    "atsq", _atsq, (), ("K", "asd"),
    "(w K + (1-w) ASD) times diversity, greedy: the method (typical volumes first while there is no task head)",
    "#1f77b4", cold_start="typical", ssft_arm="assft", ssft_color="#d62728"))
