"""Pseudo-labels of a workspace: which unlabeled volumes SSFT admits, which reviewed ones were accepted,
and writing them out for review.

The trainer, the report, the Slicer panel and ``assft pseudo`` all ask the same
questions, so they live here rather than in the trainer:

- :func:`select_round_pseudo`: the SSFT selection (``ssft.select_pseudo``) among
  the unlabeled cases, from the cached scores (``scoring.CaseScores``) of the
  model that would make the pseudo-labels;
- :func:`accepted_pseudo_labels`: pseudo-labels the annotator accepted in QA,
  which the next round trains on as labels;
- :func:`write_pseudo_labels`: the argmax pseudo-labels, written to
  ``ws.paths.pseudo_label(case)`` for review.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence

import numpy as np

from . import ssft
from .settings import Settings

if TYPE_CHECKING:
    from .scoring import CaseScores

Progress = Optional[Callable[[int, int, dict], None]]


def cached_case_scores(ws, model_checksum: str, settings: Settings) -> Dict[str, "CaseScores"]:
    """The score cache of one model under ``settings``, typed; records of failed cases (``"error"``) left out."""
    from .scoring import CaseScores
    records = ws.get_scores(model_checksum, settings.scoring_hash())
    return {c: CaseScores.from_dict(r) for c, r in records.items() if "error" not in r}


def select_round_pseudo(ws, teacher, settings: Settings, exclude: Sequence[str] = ()) -> ssft.PseudoSelection | None:
    """SSFT selection among the unlabeled cases (minus ``exclude``) from the cached scores of ``teacher``.

    teacher: the model whose scores decide (a ``LoadedModel`` or a workspace
    ``ModelVersion``: only its ``checksum`` is read), or None.

    Returns None when there is no teacher with a task head (cold start) or no
    labeled volume has a cached embedding for it (not scored yet).
    Unscored candidates are listed as refused ("no confidence/embedding").
    """
    if teacher is None:
        return None
    scores = cached_case_scores(ws, teacher.checksum, settings)
    lab_emb = [scores[c].zt for c in ws.labeled_ids() if c in scores and scores[c].zt]
    if not lab_emb:
        return None
    dim = len(lab_emb[0])
    rejected = [c for c, d in ws.qa_decisions().items() if d == "rejected"]
    excluded = set(exclude)
    candidates = [c for c in ws.unlabeled_ids() if c not in excluded]
    found = [scores.get(c) for c in candidates]
    conf = [np.nan if s is None or s.confidence is None else float(s.confidence) for s in found]
    emb = np.array([s.zt if s is not None and s.zt else [np.nan] * dim for s in found],
                   dtype=np.float64).reshape(-1, dim)
    empty = [bool(s is not None and s.roi_fallback) for s in found]
    return ssft.select_pseudo(candidates, conf, emb, np.asarray(lab_emb, dtype=np.float64),
                              tau_c=settings.confidence_threshold, distance_percentile=settings.distance_percentile,
                              rho=settings.pseudo_ratio, rejected=rejected, no_foreground=empty)


def accepted_pseudo_labels(ws) -> Dict[str, Path]:
    """QA-accepted pseudo-labels of still-unlabeled cases (``pseudo/<case>.nii.gz``): promoted to labels this round."""
    unlabeled = set(ws.unlabeled_ids())
    out = {}
    for case_id, decision in ws.qa_decisions().items():
        path = ws.paths.pseudo_label(case_id)
        if decision == "accepted" and case_id in unlabeled and path.exists():
            out[case_id] = path
    return out


def write_pseudo_labels(ws, teacher, case_ids: Sequence[str], settings: Settings,
                        progress: Progress = None) -> Dict[str, Path]:
    """Write the argmax pseudo-labels of ``case_ids`` to ``<workspace>/pseudo/<case>.nii.gz`` for review.

    Voxels below ``settings.voxel_confidence`` keep their argmax here (the
    reviewer sees the whole prediction); training ignores them.
    """
    from .inference import predict_label
    from .volumes import read_volume, write_volume
    out = {}
    for i, case_id in enumerate(case_ids):
        volume = read_volume(ws.image_path(case_id))
        label, _ = predict_label(teacher, volume, settings)  # ssft.pseudo_target's label, restored slab by slab
        out[case_id] = write_volume(ws.paths.pseudo_label(case_id), label, volume.affine)
        if progress is not None:
            progress(i + 1, len(case_ids), {"phase": "pseudo", "case": case_id})
    return out
