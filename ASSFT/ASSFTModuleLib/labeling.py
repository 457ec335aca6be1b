"""Labeling one case: its image as a volume node, an editable segmentation, the saved label and where it came from.

The segmentation starts from a given label file (a pseudo-label being
corrected), else the case's saved label, else empty; a pre-fill (the model's
prediction, computed by a background ``predict`` job) replaces it later only
while the radiologist has not painted.  What was painted since the last load or
save is "unsaved paint": the panel asks before discarding it.  Saving records
the label's source: ``corrected_pseudo`` when it started from a pseudo-label,
else ``manual``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ASSFTLib import mrml
from ASSFTLib.errors import ASSFTError

from .session import WorkspaceSession


class Labeling:
    """The image and segmentation nodes of the case being labeled (nodes of its own, never the QA overlay's)."""

    def __init__(self, session: WorkspaceSession, scene) -> None:
        self.session = session
        self.scene = scene
        self.currentCase: Optional[str] = None
        self.imageNode = None
        self.segmentationNode = None
        self.source = "manual"
        self._baseline = None  # the label as loaded or last saved: what "unsaved paint" is compared with

    def forgetNodes(self) -> None:
        """The scene was closed: its nodes are gone."""
        self.imageNode = self.segmentationNode = None
        self.currentCase = None
        self._baseline = None

    def loadCase(self, caseId: str, labelPath: Optional[str] = None,
                 source: str = "manual") -> tuple[Any, Any, str]:
        """Load a case's image and an editable segmentation; returns (image node, segmentation node, what it shows).

        The segmentation starts from ``labelPath`` if given (``source`` says what
        that file is, e.g. ``corrected_pseudo``), else the case's saved label, else empty.
        """
        import numpy as np
        from ASSFTLib.volumes import read_volume
        ws = self.session.require()
        volume = read_volume(ws.image_path(caseId))
        saved = ws.label_path(caseId)
        if labelPath:
            label, shown = read_volume(labelPath, kind="label").array, f"from {Path(labelPath).name}"
        elif saved:
            label, shown, source = read_volume(saved, kind="label").array, "its saved label", "manual"
        else:
            label, shown = np.zeros(volume.array.shape, np.uint8), "empty"
        self.imageNode = mrml.volume_node_from_array(self.scene, volume.array, volume.affine, name=caseId,
                                                     node=self.imageNode)
        self.imageNode.SetName(caseId)
        self._setLabel(caseId, label, volume.affine)
        self.currentCase = caseId
        self.source = source
        return self.imageNode, self.segmentationNode, shown

    def _setLabel(self, caseId: str, label, affine) -> None:
        ws = self.session.require()
        self.segmentationNode = mrml.segmentation_from_labelmap(
            self.scene, label, affine, ws.classes, name=f"{caseId} label", reference_node=self.imageNode,
            node=self.segmentationNode)
        self.segmentationNode.SetName(f"{caseId} label")
        self._baseline = label.astype("uint8", copy=True)

    def applyPrefill(self, caseId: str, predictionPath: str) -> bool:
        """Show a pre-fill computed in the background, if ``caseId`` is still loaded and nothing was painted."""
        from ASSFTLib.volumes import read_volume
        if caseId != self.currentCase or self.hasUnsavedChanges():
            return False
        prediction = read_volume(predictionPath, kind="label")
        self._setLabel(caseId, prediction.array, prediction.affine)
        return True

    def currentLabel(self):
        """The segmentation as a label array on the image's grid, and its affine."""
        return mrml.labelmap_from_segmentation(self.segmentationNode, self.imageNode,
                                               len(self.session.require().classes))

    def hasUnsavedChanges(self) -> bool:
        """True when the segmentation differs from what was loaded or last saved."""
        import numpy as np
        if self.currentCase is None or self.segmentationNode is None or self._baseline is None:
            return False
        label, _ = self.currentLabel()
        return label.shape != self._baseline.shape or not np.array_equal(label, self._baseline)

    def saveCurrentLabel(self, user: Optional[str] = None) -> Path:
        """Write the current segmentation as the case's label (with its source), on the image's grid."""
        if self.currentCase is None or self.segmentationNode is None:
            raise ASSFTError("no volume is loaded for labeling", hint="double-click a volume in the worklist first")
        ws = self.session.require()
        label, affine = self.currentLabel()
        path = ws.save_label(self.currentCase, label, affine=affine, user=user, source=self.source)
        self._baseline = label.astype("uint8", copy=True)
        return path
