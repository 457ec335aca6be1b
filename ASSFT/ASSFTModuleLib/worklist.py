"""The worklist: unlabeled volumes ranked from the cached scores, as a ``vtkMRMLTableNode``.

The ranking itself is :func:`ASSFTLib.scoring.rank_cases`; this file puts it in
the scene, says why it is empty, and walks it (the case at a row, the next one).
"""
from __future__ import annotations

from typing import Any, Optional

from ASSFTLib import mrml

from .session import WorkspaceSession


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
        if ws.current_model() is None:
            rows, message = [], "No model yet: register a foundation model (Setup) and Score."
        elif not ws.unlabeled_ids():
            rows, message = [], "The pool is empty: every volume is labeled."
        else:
            table = scoring.rank_cases(ws)
            rows = [r for r in table.rows if r.status == "pool"]
            unscored = sum(r.status == "unscored" for r in table.rows)
            if rows:
                message = f"{len(rows)} unlabeled volumes ranked ({table.strategy}); the first {len(table.picked)} " \
                          f"form this round's batch."
            else:
                message = f"{unscored} volumes are not scored yet: press Score."
            if table.notes:
                message += " " + " ".join(table.notes)
        self.node = mrml.worklist_table(self.scene, rows, node=self.node)
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
