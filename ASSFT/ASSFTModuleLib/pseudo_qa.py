"""Pseudo-label QA: the SSFT candidates of the current model, each shown as an overlay, accepted or rejected.

Selection is the library's (the SSFT filter on the cached scores).  A
pseudo-label not yet written is computed by a background ``predict`` job
(``--purpose pseudo``); this file only shows written ones, on image and overlay
nodes of its own, so reviewing never touches the case being labeled.  A
rejected volume is never pseudo-labeled.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ASSFTLib import mrml

from .session import WorkspaceSession

#: What the overlay's colours mean (shown in the panel).
LEGEND = "Overlay: the model's pseudo-label, one colour per structure, filled and outlined on the image."


def plainReason(reason: str) -> str:
    """The SSFT filter's reason for refusing a candidate, in words for the person reviewing."""
    from ASSFTLib import ssft
    words = {ssft.REASON_REJECTED: "you rejected it", ssft.REASON_NO_LABELS: "no labeled volume to compare it with yet",
             ssft.REASON_NOT_SCORED: "not scored with the current model yet: press Score",
             ssft.REASON_NO_FOREGROUND: "the model found no structure in it"}
    if reason in words:
        return words[reason]
    if reason.startswith("confidence"):
        return "the model is not confident enough (" + reason.replace("tau_c", "needs") + ")"
    if reason.startswith("distance"):
        return "too unlike the labeled volumes (" + reason.replace("tau_d", "at most") + ")"
    if reason.startswith("passes, but over the cap"):
        return "passes, but this round already has as many pseudo-labels as allowed"
    return reason


class PseudoLabelQA:
    """The image and overlay nodes of the pseudo-label under review."""

    def __init__(self, session: WorkspaceSession, scene) -> None:
        self.session = session
        self.scene = scene
        self.imageNode = None
        self.overlayNode = None
        self.overlayCase: Optional[str] = None

    def forgetNodes(self) -> None:
        """The scene was closed: its nodes are gone."""
        self.imageNode = self.overlayNode = None
        self.overlayCase = None

    def candidates(self) -> tuple[list[dict], list[dict], str]:
        """(selected rows, refused rows, message) from the current model's cached scores.

        Selected rows: case_id, confidence, distance, qa (the latest QA decision or "");
        refused rows: case_id, confidence, distance, reason.
        """
        from ASSFTLib import pseudo
        ws = self.session.require()
        selection = pseudo.select_round_pseudo(ws, ws.current_model(), ws.settings)
        if selection is None:
            return [], [], ("No candidates yet: they come after a fine-tuning round, once the volumes are scored "
                            "and at least one is labeled.")
        qa = ws.qa_decisions()
        byId = {d.case_id: d for d in selection.decisions}
        rows = [{"case_id": c, "confidence": byId[c].confidence, "distance": byId[c].distance, "qa": qa.get(c, "")}
                for c in selection.selected]
        refused = [{"case_id": d.case_id, "confidence": d.confidence, "distance": d.distance,
                    "reason": plainReason(d.reason)}
                   for d in selection.decisions if not d.selected]
        message = (f"{len(rows)} candidates: the model is at least {selection.tau_c:.0%} confident and the volume "
                   f"is close to the labeled ones (distance at most {selection.tau_d:.2f}); at most {selection.cap} "
                   f"per round. {len(refused)} refused.")
        return rows, refused, message

    def pseudoLabelPath(self, caseId: str) -> Path:
        """``pseudo/<case>.nii.gz`` (it may not exist yet: then a ``predict`` job writes it)."""
        return self.session.require().paths.pseudo_label(caseId)

    def needsPrediction(self, caseId: str) -> bool:
        return not self.pseudoLabelPath(caseId).exists()

    def showPseudoLabel(self, caseId: str) -> tuple[Any, Any, int]:
        """Show ``caseId``'s written pseudo-label as an overlay on its image, in nodes of their own.

        Returns (image node, overlay node, the axial slice index with the most foreground).
        """
        import numpy as np
        from ASSFTLib.volumes import read_volume
        ws = self.session.require()
        label = read_volume(self.pseudoLabelPath(caseId), kind="label").array
        volume = read_volume(ws.image_path(caseId))
        self.imageNode = mrml.volume_node_from_array(self.scene, volume.array, volume.affine,
                                                     name=f"{caseId} (review)", node=self.imageNode)
        self.imageNode.SetName(f"{caseId} (review)")
        self.overlayNode = mrml.segmentation_from_labelmap(
            self.scene, label, volume.affine, ws.classes, name=f"{caseId} pseudo-label", reference_node=self.imageNode,
            node=self.overlayNode)
        self.overlayNode.SetName(f"{caseId} pseudo-label")
        self.overlayCase = caseId
        perSlice = (label > 0).reshape(-1, label.shape[-1]).sum(axis=0)
        return self.imageNode, self.overlayNode, int(np.argmax(perSlice))

    def setOverlayDisplay(self, opacity: float, fill: bool, outline: bool) -> None:
        if self.overlayNode is not None:
            mrml.set_overlay_display(self.overlayNode, opacity=opacity, fill=fill, outline=outline)

    def setQA(self, caseId: str, decision: str) -> None:
        ws = self.session.require()
        model = ws.current_model()
        ws.set_qa(caseId, decision, model_checksum=None if model is None else model.checksum)
