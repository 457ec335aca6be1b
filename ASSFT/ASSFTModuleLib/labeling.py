"""Labeling one case: its image as a volume node, an editable segmentation (pre-filled), the saved label.

The segmentation starts from a given label file, else the case's saved label,
else the current model's prediction, else empty.  Saving takes the label on the
image's grid and the workspace checks and writes it atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ASSFTLib import mrml
from ASSFTLib.errors import ASSFTError

from .session import WorkspaceSession


class Labeling:
    """The image and segmentation nodes of the case being labeled; also the image under a pseudo-label overlay."""

    def __init__(self, session: WorkspaceSession, scene) -> None:
        self.session = session
        self.scene = scene
        self.currentCase: Optional[str] = None
        self.imageNode = None
        self.segmentationNode = None

    def forgetNodes(self) -> None:
        """The scene was closed: its nodes are gone."""
        self.imageNode = self.segmentationNode = None
        self.currentCase = None

    def loadImage(self, caseId: str):
        """Show ``caseId``'s image in the (reused) image node; returns (node, :class:`ASSFTLib.volumes.Volume`)."""
        from ASSFTLib.volumes import read_volume
        volume = read_volume(self.session.require().image_path(caseId))
        self.imageNode = mrml.volume_node_from_array(self.scene, volume.array, volume.affine, name=caseId,
                                                     node=self.imageNode)
        self.imageNode.SetName(caseId)
        return self.imageNode, volume

    def loadCase(self, caseId: str, prefill: bool = True, labelPath: Optional[str] = None) -> tuple[Any, Any, str]:
        """Load a case's image and an editable segmentation; returns (image node, segmentation node, source).

        The segmentation starts from ``labelPath`` if given, else the case's saved
        label, else (with ``prefill``) the current model's prediction, else empty.
        """
        import numpy as np
        from ASSFTLib.volumes import read_volume
        ws = self.session.require()
        imageNode, volume = self.loadImage(caseId)
        labelPath = labelPath or ws.label_path(caseId)
        if labelPath:
            label, source = read_volume(labelPath, kind="label").array, f"from {Path(labelPath).name}"
        elif prefill and self.session.currentModel() is not None and self.session.currentModel().spec.has_task_head:
            from ASSFTLib.inference import predict_probs
            probs = predict_probs(self.session.currentModel(), volume, ws.settings)
            label, source = np.argmax(probs, axis=0).astype(np.uint8), "pre-filled with the model's prediction"
        else:
            label, source = np.zeros(volume.array.shape, np.uint8), "empty"
        self.segmentationNode = mrml.segmentation_from_labelmap(
            self.scene, label, volume.affine, ws.classes, name=f"{caseId} label", reference_node=imageNode,
            node=self.segmentationNode)
        self.segmentationNode.SetName(f"{caseId} label")
        self.currentCase = caseId
        return imageNode, self.segmentationNode, source

    def saveCurrentLabel(self, user: Optional[str] = None) -> Path:
        """Write the current segmentation as the case's label, on the image's grid."""
        if self.currentCase is None or self.segmentationNode is None:
            raise ASSFTError("no case is loaded for labeling", hint="double-click a volume in the worklist first")
        ws = self.session.require()
        label, affine = mrml.labelmap_from_segmentation(self.segmentationNode, self.imageNode, len(ws.classes))
        return ws.save_label(self.currentCase, label, affine=affine, user=user)
