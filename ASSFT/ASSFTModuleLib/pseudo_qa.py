"""Pseudo-label QA: the SSFT candidates of the current model, each shown as an overlay, accepted or rejected.

Selection is the library's (the SSFT filter on the cached scores); a
pseudo-label is written from the current model's prediction the first time it
is shown.  A rejected volume is never pseudo-labeled.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ASSFTLib import mrml
from ASSFTLib.errors import ASSFTError

from .labeling import Labeling
from .session import WorkspaceSession


class PseudoLabelQA:
    """The overlay node of the pseudo-label under review, on the labeling's image node."""

    def __init__(self, session: WorkspaceSession, labeling: Labeling, scene) -> None:
        self.session = session
        self.labeling = labeling
        self.scene = scene
        self.overlayNode = None
        self.overlayCase: Optional[str] = None

    def forgetNodes(self) -> None:
        """The scene was closed: its nodes are gone."""
        self.overlayNode = None
        self.overlayCase = None

    def candidates(self) -> tuple[list[dict], str]:
        """Unlabeled volumes passing the SSFT filter with the current model's cached scores.

        Rows: case_id, confidence, distance, qa (the latest QA decision or "").
        """
        from ASSFTLib import pseudo
        ws = self.session.require()
        selection = pseudo.select_round_pseudo(ws, ws.current_model(), ws.settings)
        if selection is None:
            return [], "No candidates: the model needs a task head, scores and at least one labeled volume."
        qa = ws.qa_decisions()
        byId = {d.case_id: d for d in selection.decisions}
        rows = [{"case_id": c, "confidence": byId[c].confidence, "distance": byId[c].distance, "qa": qa.get(c, "")}
                for c in selection.selected]
        return rows, (f"{len(rows)} candidates pass confidence >= {selection.tau_c:.2f} and distance <= "
                      f"{selection.tau_d:.3f} (at most {selection.cap}).")

    def pseudoLabelPath(self, caseId: str) -> Path:
        """``pseudo/<case>.nii.gz``, written from the current model's prediction when absent."""
        from ASSFTLib import pseudo
        ws = self.session.require()
        path = ws.paths.pseudo_label(caseId)
        if not path.exists():
            model = self.session.currentModel()
            if model is None or not model.spec.has_task_head:
                raise ASSFTError("the current model cannot segment the task yet", hint="run a fine-tuning round")
            pseudo.write_pseudo_labels(ws, model, [caseId], ws.settings)
        return path

    def showPseudoLabel(self, caseId: str) -> tuple[Any, Any]:
        """Show ``caseId``'s pseudo-label as a read-only overlay on its image."""
        from ASSFTLib.volumes import read_volume
        ws = self.session.require()
        label = read_volume(self.pseudoLabelPath(caseId), kind="label").array
        imageNode, volume = self.labeling.loadImage(caseId)
        self.overlayNode = mrml.segmentation_from_labelmap(
            self.scene, label, volume.affine, ws.classes, name=f"{caseId} pseudo-label", reference_node=imageNode,
            node=self.overlayNode)
        self.overlayNode.SetName(f"{caseId} pseudo-label")
        self.overlayCase = caseId
        return imageNode, self.overlayNode

    def setOverlayDisplay(self, opacity: float, fill: bool, outline: bool) -> None:
        if self.overlayNode is not None:
            mrml.set_overlay_display(self.overlayNode, opacity=opacity, fill=fill, outline=outline)

    def setQA(self, caseId: str, decision: str) -> None:
        ws = self.session.require()
        model = ws.current_model()
        ws.set_qa(caseId, decision, model_checksum=None if model is None else model.checksum)
