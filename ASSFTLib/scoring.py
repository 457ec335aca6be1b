"""Score every volume once per model version, cache it, rank from the cache.

:func:`score_volume` turns the forward passes of :mod:`inference` into the
per-case numbers ATSQ and SSFT need (SPEC.md: DKD, ASD, SSFT) and keeps no
probability map.  :func:`score_cases` does that for a workspace, reusing the
score cache keyed by (case, model checksum, ``settings.scoring_hash()``), so
labeling volumes or changing the budget never re-runs inference and an
interrupted run resumes where it stopped.  :func:`rank_cases` builds the
annotator's worklist from cached scores alone with the pure selectors of
:mod:`query`.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import query, reductions, strategies
from .errors import ASSFTError, JobCancelled, WorkspaceError
from .fileutil import atomic_write_text
from .settings import Settings

Progress = Callable[[int, int, dict], None]

#: Knowledge-divergence modes in the order ``divergence_mode="auto"`` prefers them.
DIVERGENCE_MODES = ("bnstats", "pretext", "drift")


@dataclass
class CaseScores:
    """What one scoring pass knows about one volume (JSON-serialisable via :meth:`to_dict`).

    K: knowledge divergence per available mode (``bnstats``, ``pretext``, ``drift``).
    asd, confidence, entropy: ASD(x), c(x) and whole-volume mean normalised
        entropy; None without a task head (cold start).
    bald: MC-dropout BALD, None unless ``settings.mc_dropout_samples > 0``.
    z0, zt: L2-normalised embeddings under E0 and the current encoder.
    fg_fraction, roi_voxels, roi_fallback: the foreground ROI behind ASD.
    has_task_head: whether the scoring model segments the task's classes.
    dist_to_labeled: min dist(zt, L) when labeled embeddings were given (never cached).
    """

    K: dict[str, float]
    zt: list[float]
    z0: list[float]
    has_task_head: bool
    asd: float | None = None
    confidence: float | None = None
    entropy: float | None = None
    bald: float | None = None
    fg_fraction: float | None = None
    roi_voxels: int | None = None
    roi_fallback: bool | None = None
    dist_to_labeled: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The cache record (``dist_to_labeled`` depends on L and is left out)."""
        d = asdict(self)
        d.pop("dist_to_labeled")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CaseScores":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def needs_pretext_pass(divergence_mode: str, has_norm_stats: bool) -> bool:
    """Whether ranking with ``divergence_mode`` can use K_pretext.

    ``auto`` prefers ``bnstats`` whenever the foundation has running
    statistics (:data:`DIVERGENCE_MODES`), and the mode is part of the score
    cache key, so the pretext network's full sliding-window pass would be
    wasted on every volume and every model version.
    """
    return divergence_mode == "pretext" or (divergence_mode == "auto" and not has_norm_stats)


def _same_model(a, b) -> bool:
    return b is None or a is b or a.checksum == b.checksum


#: The parts of a score record that depend only on the foundation (E0), the volume and the settings.
FOUNDATION_K_MODES = ("bnstats", "pretext")


def foundation_part(record: dict) -> dict:
    """What of a score record E0 alone determines: z0 and K in the foundation-only modes."""
    return {"z0": record["z0"], "K": {m: v for m, v in record["K"].items() if m in FOUNDATION_K_MODES}}


def score_volume(model, foundation, volume, settings: Settings,
                 labeled_embeddings: np.ndarray | None = None, foundation_record: dict | None = None) -> CaseScores:
    """Score one volume (an ``io.Volume``) with the current ``model`` and the frozen ``foundation``.

    model, foundation: ``models.LoadedModel``; ``foundation`` may be ``model``
        itself or None (then the model's own statistics stand in for E0's).
    labeled_embeddings: ``(m, D)`` zt of the labeled volumes, to fill
        ``dist_to_labeled``; optional.
    foundation_record: this volume's :func:`foundation_part` from an earlier
        scoring with the same foundation and settings; when given, the E0 pass
        is skipped (E0 never changes, so later rounds cost only the model's passes).
    One pass over ``model`` per test-time flip (plus MC-dropout passes when
    asked); one feature-only pass over E0 unless the model is the foundation;
    one pass over the foundation's pretext network only when the ranking can
    use ``pretext`` (:func:`needs_pretext_pass`).
    """
    from . import inference
    same = _same_model(model, foundation)
    base = model if foundation is None else foundation
    head = bool(model.spec.has_task_head)
    mc = int(settings.mc_dropout_samples) if head else 0
    # probs_view: the test-time mean stays on the network's grid and is restored to the volume's grid
    # slab by slab inside the reduction (a resampled CT's full-grid map is never held)
    fwd = inference.forward_volume(model, volume, settings, with_probs=head, with_norm_stats=same, mc_samples=mc,
                                   probs_view=True)
    if not same and foundation_record is not None:
        K = dict(foundation_record["K"])
        z0 = np.asarray(foundation_record["z0"], dtype=np.float64)
    else:
        f0 = fwd if same else inference.embed(base, volume, settings, with_norm_stats=True)
        K = {}
        if f0.norm_stats:
            K["bnstats"] = query.knowledge_divergence_bnstats([(m, v) for _, m, v in f0.norm_stats],
                                                              [(m, v) for _, m, v in f0.running_stats])
        if base.pretext is not None and needs_pretext_pass(settings.divergence_mode, bool(f0.norm_stats)):
            K["pretext"] = inference.pretext_divergence(base, volume, settings)
        z0 = f0.embedding
    if not same:
        K["drift"] = float(query.cosine_distance(z0[None], fwd.embedding[None])[0, 0])
    scores = CaseScores(K=K, zt=fwd.embedding.tolist(), z0=z0.tolist(), has_task_head=head, bald=fwd.bald)
    if fwd.probs is not None:
        r = reductions.asd_from_probs_streaming(fwd.probs, settings.fg_threshold, settings.roi_dilation,
                                                settings.roi_min_fraction, settings.roi_fallback_fraction)
        scores.asd, scores.confidence, scores.entropy = r.asd, r.confidence, r.entropy
        scores.fg_fraction, scores.roi_voxels, scores.roi_fallback = r.fg_fraction, r.roi_voxels, r.roi_fallback
    if labeled_embeddings is not None and len(labeled_embeddings):
        scores.dist_to_labeled = float(query.diversity(fwd.embedding[None], labeled_embeddings)[0])
    return scores


# ----------------------------------------------------------------------------
# the workspace cache
def _models_of(workspace):
    """(current ModelVersion, foundation ModelVersion or the current one)."""
    current = workspace.current_model()
    if current is None:
        raise WorkspaceError("the workspace has no model yet", path=workspace.folder,
                             hint="register a foundation model (assft init --model, or assft pretrain)")
    return current, workspace.foundation_model() or current


def _verified_models(workspace):
    """:func:`_models_of`, each file checked against its recorded checksum before it is used."""
    current, found = _models_of(workspace)
    return workspace.verified(current), workspace.verified(found)


def score_cases(workspace, settings: Settings | None = None, progress: Progress | None = None,
                should_stop: Callable[[], bool] | None = None, case_ids: list[str] | None = None) -> dict:
    """Score every case (or ``case_ids``) the cache lacks for the current model and settings.

    Labeled cases are scored too: their zt are L's embeddings.  Each case's
    record is saved as soon as it is computed, so a cancelled run
    (:class:`JobCancelled`) or a crash loses at most one case.  A case whose
    image cannot be read or scored gets an ``{"error": ...}`` record (retried
    on the next run) and the others go on.
    Returns ``{"model_checksum", "settings_hash", "total", "cached", "scored", "errors"}``.
    """
    from .volumes import read_volume
    from .models import load_model
    settings = settings or workspace.settings
    current, found = _verified_models(workspace)
    key = (current.checksum, settings.scoring_hash())
    cases = workspace.cases()
    if case_ids is not None:
        wanted = set(case_ids)
        unknown = sorted(wanted - {c.case_id for c in cases})
        if unknown:
            raise WorkspaceError(f"unknown or unusable cases: {', '.join(unknown)}", path=workspace.folder,
                                 hint="`assft status WORKSPACE --cases` lists them")
        cases = [c for c in cases if c.case_id in wanted]
    cached = workspace.get_scores(*key)
    todo = [c for c in cases if c.case_id not in cached or "error" in cached[c.case_id]]
    summary = {"model_checksum": current.checksum, "settings_hash": key[1], "total": len(cases),
               "cached": len(cases) - len(todo), "scored": 0, "errors": {}}
    if not todo:
        return summary
    device = settings.resolved_device()
    model = load_model(current.path, device=device)
    foundation = model if found.checksum == current.checksum else load_model(found.path, device=device)
    # E0's results (z0, K bnstats/pretext) depend only on the foundation: cache them under its
    # checksum so that every round after the first runs only the current model's passes.
    f_key = (found.checksum, f"{settings.scoring_hash()}:foundation")
    f_cached = workspace.get_scores(*f_key)
    for step, case in enumerate(todo):
        if should_stop is not None and should_stop():
            raise JobCancelled(f"scoring stopped after {step} of {len(todo)} cases; run it again to continue",
                               path=workspace.folder)
        try:
            volume = read_volume(case.image_path, kind="image", root=workspace.dataset)
            check_work_size(volume, model.spec, case.image_path)
            record = score_volume(model, foundation, volume, settings,
                                  foundation_record=f_cached.get(case.case_id)).to_dict()
            summary["scored"] += 1
        except Exception as exc:  # noqa: BLE001 - one bad case never stops the others (docs/reliability.md)
            message = case_failure(exc)
            record = {"error": message, "error_type": type(exc).__name__}
            summary["errors"][case.case_id] = message
        finally:
            volume = None  # a huge volume's memory goes before the next case
        workspace.put_scores(*key, {case.case_id: record})
        if "error" not in record and case.case_id not in f_cached:
            workspace.put_scores(*f_key, {case.case_id: foundation_part(record)})
        if progress is not None:
            progress(step + 1, len(todo), {"case_id": case.case_id, "error": record.get("error")})
    return summary


def case_failure(exc: BaseException) -> str:
    """One line for a case that could not be scored: the ASSFT message, or the unexpected error with a hint."""
    if isinstance(exc, ASSFTError):
        return str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return (f"ran out of memory ({type(exc).__name__}) (crop or downsample this volume, lower sw_batch_size, "
                "or score on a machine with more memory)")
    detail = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {detail} (an unexpected failure on this volume; the other cases were scored)"


#: Most voxels one volume may have on the network's grid (resampling included) before scoring refuses it.
MAX_GRID_VOXELS = 2 ** 30


def check_work_size(volume, spec, path) -> None:
    """Refuse, before allocating, a volume whose network grid (after the model's resampling) is too large."""
    from .preprocess import resampled_shape
    target = spec.preprocessing.get("target_spacing")
    shape = resampled_shape(volume.shape, volume.spacing, target) if target is not None else volume.shape
    voxels = math.prod(int(n) for n in shape)
    if voxels > MAX_GRID_VOXELS:
        raise ASSFTError(f"would be {voxels:,} voxels on the model's grid (shape {tuple(shape)}), more than "
                         f"ASSFT scores ({MAX_GRID_VOXELS:,})", path=path,
                         hint="crop the volume, or use a model whose target spacing suits it")


# ----------------------------------------------------------------------------
# ranking
@dataclass
class RankRow:
    """One worklist row.  ``rank`` counts from 1 over the pool; None for cases outside it."""

    rank: int | None
    case_id: str
    status: str            # pool | labeled | unscored | error
    K: float | None = None
    ASD: float | None = None
    Div: float | None = None
    q: float | None = None
    picked: bool = False
    entropy: float | None = None
    bald: float | None = None
    confidence: float | None = None
    note: str | None = None


@dataclass
class RankTable:
    """The ranked worklist: picked batch first, then the rest of the pool, then the other cases."""

    rows: list[RankRow]
    strategy: str
    budget: int
    divergence_mode: str | None
    model_checksum: str
    notes: list[str] = field(default_factory=list)

    COLUMNS = ("rank", "case_id", "status", "K", "ASD", "Div", "q", "picked", "entropy", "bald", "confidence", "note")

    @property
    def picked(self) -> list[str]:
        return [r.case_id for r in self.rows if r.picked]

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "budget": self.budget, "divergence_mode": self.divergence_mode,
                "model_checksum": self.model_checksum, "notes": list(self.notes), "picked": self.picked,
                "rows": [asdict(r) for r in self.rows]}

    def to_csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(self.COLUMNS)
        for r in self.rows:
            writer.writerow(["" if getattr(r, c) is None else getattr(r, c) for c in self.COLUMNS])
        return buf.getvalue()

    def write_csv(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_csv_text())

    def write_json(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def resolve_divergence_mode(requested: str, available: set[str]) -> str | None:
    """The K mode to rank with: ``requested`` if available, the first available for ``auto``, else None."""
    if requested == "auto":
        return next((m for m in DIVERGENCE_MODES if m in available), None)
    return requested if requested in available else None


def _column(records: list[dict], name: str) -> np.ndarray | None:
    """A per-case float column, or None when any record lacks it."""
    values = [r.get(name) for r in records]
    if not values or any(v is None for v in values):
        return None
    return np.asarray(values, dtype=np.float64)


def select(strategy: str, records: list[dict], labeled_z: np.ndarray, budget: int, settings: Settings,
           mode: str | None) -> query.Selection:
    """Run the registered ``strategy`` on the pool's cached ``records`` (one dict per case), L's embeddings ``(m, D)``.

    The measurements the strategy reads become the columns of a :class:`strategies.Pool`; a
    required one that some case lacks is an :class:`ASSFTError` naming it.
    """
    entry = strategies.get(strategy)
    n = len(records)
    dim = labeled_z.shape[1] if labeled_z.ndim == 2 else 0
    zt = np.asarray([r["zt"] for r in records], dtype=np.float64).reshape(n, -1) if n else np.zeros((0, dim))
    scores = {}
    for name in entry.reads:
        if name == "K":
            values = np.asarray([r["K"][mode] for r in records], np.float64) if mode and n else None
        else:
            values = _column(records, name)
        if values is None and name in entry.needs:
            if n:
                what, hint = strategies.MEASUREMENTS[name]
                raise ASSFTError(f"strategy {strategy!r} needs {what}, which the cached scores lack", hint=hint)
            values = np.zeros(0)
        scores[name] = values
    head = n > 0 and all(r.get("has_task_head") for r in records)
    pool = strategies.Pool(zt, labeled_z, scores, has_task_head=head)
    params = strategies.QueryParams(budget, settings.query_weight, settings.diversity_gamma, settings.seed,
                                    settings.diversity_scale, settings.cold_start)
    return entry.select(pool, params)


def _num(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def rank_cases(workspace, settings: Settings | None = None, strategy: str | None = None,
               budget: int | None = None) -> RankTable:
    """The worklist for the current model from cached scores only (no inference, two queries).

    The pool is every unlabeled case with a cached score; L is every labeled
    case with one.  Unscored and failed cases are listed after the pool.
    """
    settings = settings or workspace.settings
    strategy = strategy or settings.strategy
    budget = settings.budget if budget is None else int(budget)
    current, _ = _models_of(workspace)
    cached = workspace.get_scores(current.checksum, settings.scoring_hash())
    cases = workspace.cases()
    ok = {cid: r for cid, r in cached.items() if "error" not in r}
    pool = [c.case_id for c in cases if c.status == "unlabeled" and c.case_id in ok]
    labeled = [c.case_id for c in cases if c.status == "labeled" and c.case_id in ok]
    records = [ok[cid] for cid in pool]
    available = set.intersection(*(set(r["K"]) for r in records)) if records else set()
    mode = resolve_divergence_mode(settings.divergence_mode, available)
    notes = []
    if records and mode is None and "K" in strategies.get(strategy).reads:
        notes.append(f"no knowledge divergence ({settings.divergence_mode}) in the cached scores: "
                     "ranking without K")
    labeled_z = np.asarray([ok[cid]["zt"] for cid in labeled], dtype=np.float64)
    labeled_z = labeled_z.reshape(len(labeled), len(records[0]["zt"]) if records else
                                  (labeled_z.shape[1] if labeled_z.ndim == 2 else 0))
    sel = select(strategy, records, labeled_z, budget, settings, mode)
    comp = sel.components
    div = comp.get("div_at_pick")
    if div is None and records:
        div = query.diversity(np.asarray([r["zt"] for r in records]), labeled_z)
    picked = set(sel.picked)
    rows = []
    for rank, i in enumerate(sel.order, start=1):
        r = records[i]
        rows.append(RankRow(rank, pool[i], "pool", K=_num(r["K"].get(mode)) if mode else None, ASD=_num(r.get("asd")),
                            Div=_num(div[i]), q=_num(comp["q"][i]) if "q" in comp else None, picked=i in picked,
                            entropy=_num(r.get("entropy")), bald=_num(r.get("bald")),
                            confidence=_num(r.get("confidence"))))
    for c in cases:
        if c.case_id in pool:
            continue
        if "error" in cached.get(c.case_id, {}):
            rows.append(RankRow(None, c.case_id, "error", note=cached[c.case_id]["error"]))
        elif c.case_id not in ok:
            rows.append(RankRow(None, c.case_id, "unscored", note="run `assft score`"))
        else:
            r = ok[c.case_id]
            rows.append(RankRow(None, c.case_id, "labeled", K=_num(r["K"].get(mode)) if mode else None,
                                ASD=_num(r.get("asd")), entropy=_num(r.get("entropy")), bald=_num(r.get("bald")),
                                confidence=_num(r.get("confidence"))))
    return RankTable(rows, strategy, budget, mode, current.checksum, notes)
