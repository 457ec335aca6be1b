"""The worklist: unlabeled volumes ranked from the cached scores, as a ``vtkMRMLTableNode``, with plain-word reasons.

The ranking itself is :func:`ASSFTLib.scoring.rank_cases`; this file puts it in
the scene (this round's batch first and marked), says in words why a volume
ranks high, says why the list is empty, and walks it.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from ASSFTLib import mrml

from .session import WorkspaceSession

#: Columns shown, and (header, tooltip) of each.
COLUMNS = ("rank", "batch", "case_id", "why", "K", "ASD", "Div")
TITLES = {
    "rank": ("Rank", "1 = the volume that would teach the model most"),
    "batch": ("Batch", "this round's batch: label these first"),
    "case_id": ("Volume", "the case name in the dataset"),
    "why": ("Why", "which measurements put this volume high, in plain words"),
    "K": ("Unfamiliar", "how unlike the volumes the foundation model learned from (0-1, rank within the pool; "
                        "higher = more unfamiliar)"),
    "ASD": ("Uncertain", "how unsure the model is inside the anatomy (0-1, rank within the pool)"),
    "Div": ("Different", "how unlike the volumes already labeled (0-1, rank within the pool)"),
}
#: Measurement -> the reason it gives, in words a radiologist uses.
REASONS = (("K", "unlike what the model has seen"), ("ASD", "the model is uncertain inside the anatomy"),
           ("Div", "unlike the volumes already labeled"))


def _rank01(values: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Each value's rank within the finite ones, scaled to 0..1 (None stays None)."""
    finite = sorted(v for v in values if v is not None and math.isfinite(v))
    if not finite:
        return [None] * len(values)
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
        else:
            below = sum(f < v for f in finite)
            out.append(below / max(1, len(finite) - 1))
    return out


def reasons(rows: Sequence[Any], high: float = 0.67) -> list[str]:
    """Why each row ranks where it does: the measurements in the top third of the pool, in words."""
    ranks = {name: _rank01([getattr(r, name, None) for r in rows]) for name, _ in REASONS}
    out = []
    for i, _ in enumerate(rows):
        said = sorted(((ranks[name][i], words) for name, words in REASONS
                       if ranks[name][i] is not None and ranks[name][i] >= high), reverse=True)
        out.append("; ".join(words for _, words in said) if said else "middle of the pool on every measurement")
    return out


class Worklist:
    """The worklist table node of one scene."""

    def __init__(self, session: WorkspaceSession, scene) -> None:
        self.session = session
        self.scene = scene
        self.node = None

    def update(self) -> tuple[Any, str]:
        """Rank the unlabeled volumes from the cached scores into the worklist table node."""
        from ASSFTLib import scoring
        ws = self.session.require()
        shown: list[dict] = []
        if ws.current_model() is None:
            message = "No model yet: choose a foundation model in Setup and press Register model, then Score."
        elif not ws.unlabeled_ids():
            message = "Every volume is labeled."
        else:
            table = scoring.rank_cases(ws)
            rows = [r for r in table.rows if r.status == "pool"]
            unscored = sum(r.status == "unscored" for r in table.rows)
            ranks = {name: _rank01([getattr(r, name) for r in rows]) for name in ("K", "ASD", "Div")}
            for i, (row, why) in enumerate(zip(rows, reasons(rows))):
                shown.append({"rank": row.rank, "batch": "yes" if row.picked else "", "case_id": row.case_id,
                              "why": why, **{name: ranks[name][i] for name in ranks}})
            if rows:
                message = (f"{len(rows)} volumes to label, most useful first; the {len(table.picked)} marked "
                           f"\u201cBatch\u201d are this round's.")
                if unscored:
                    message += f" {unscored} more are not scored yet."
            else:
                message = f"{unscored} volumes are not scored yet: press Score."
            if table.notes:
                message += " " + " ".join(table.notes)
        self.node = mrml.worklist_table(self.scene, shown, columns=COLUMNS, node=self.node, titles=TITLES)
        return self.node, message

    def caseIds(self) -> list[str]:
        if self.node is None:
            return []
        return [row["case_id"] for row in mrml.rows_from_table(self.node)]

    def caseAt(self, row: int) -> Optional[str]:
        ids = self.caseIds()
        return ids[row] if 0 <= row < len(ids) else None

    def nextCase(self, after: Optional[str] = None) -> Optional[str]:
        """The first still-unlabeled case of the worklist after ``after`` (from the top when None)."""
        ids = self.caseIds()
        start = ids.index(after) + 1 if after in ids else 0
        unlabeled = set(self.session.require().unlabeled_ids())
        return next((c for c in ids[start:] if c in unlabeled), None)
