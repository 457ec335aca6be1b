"""ASSFT: label few volumes, fine-tune a foundation model in the background, review pseudo-labels.

This file is the module (its title and help), the panel (Qt widgets wired to
the logic) and the in-Slicer test.  The panel only displays and forwards: it
talks to :class:`ASSFTLogic` (``ASSFTModuleLib/``, one file per concern:
dependencies, workspace, worklist, labeling, jobs, pseudo-label QA; no Qt),
which drives :mod:`ASSFTLib` (``mrml.py`` for scene nodes, ``workspace/`` for
the project state, ``scoring.py`` for the ranking, ``jobs.py`` for background
jobs), tested outside Slicer.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from ASSFTModuleLib.logic import ASSFTLogic  # first: it puts ASSFTLib on the path in a source checkout
from ASSFTModuleLib.parameters import PARAMETER_DEFAULTS

from ASSFTLib import mrml
from ASSFTLib.jobs import describe_event

#: How often the panel reads a background job's events (milliseconds).
POLL_INTERVAL_MS = 500

#: After asking a job to stop, how long to wait for its resumable save before killing it (seconds).
CANCEL_GRACE_S = 15.0


# ----------------------------------------------------------------------------
class ASSFT(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ASSFT"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "SegmentEditor"]
        self.parent.contributors = ["ASSFT contributors"]
        self.parent.helpText = (
            "Adapt a medical vision foundation model to your segmentation task with few expert labels. "
            "Open or create a workspace, label the volumes the worklist ranks first, run a fine-tuning round in "
            "the background, and review the pseudo-labels it would add. The same steps run from the command "
            "line (<code>assft --help</code>).")
        self.parent.acknowledgementText = (
            "Method: Yang, Marcus, Sotiras, arXiv:2509.10784 (active test-time sample query and selective "
            "semi-supervised fine-tuning). Built on MONAI, PyTorch and 3D Slicer.")


# ----------------------------------------------------------------------------
class ASSFTWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: Setup, Worklist, Rounds, Pseudo-label QA."""

    #: (widget, parameter, widget property, change signal): two-way bindings kept explicit
    #: so that they work with and without ``parameterNodeWrapper``.
    BINDINGS = (
        ("workspacePathLineEdit", "workspace", "currentPath", "currentPathChanged(QString)"),
        ("datasetPathLineEdit", "dataset", "currentPath", "currentPathChanged(QString)"),
        ("modelPathLineEdit", "model", "currentPath", "currentPathChanged(QString)"),
        ("deviceComboBox", "device", "currentText", "currentTextChanged(QString)"),
        ("pythonPathLineEdit", "python", "currentPath", "currentPathChanged(QString)"),
        ("budgetSpinBox", "budget", "value", "valueChanged(int)"),
        ("prefillCheckBox", "prefill", "checked", "toggled(bool)"),
        ("overlayOpacitySlider", "overlayOpacity", "value", "valueChanged(double)"),
        ("overlayFillCheckBox", "overlayFill", "checked", "toggled(bool)"),
        ("overlayOutlineCheckBox", "overlayOutline", "checked", "toggled(bool)"),
    )

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameters = None
        self._updatingGUI = False
        self._job = None
        self._cancelDeadline = None
        self._timer = None
        self._dependenciesChecked = False

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ASSFT.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ASSFTLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for widgetName, name, prop, signal in self.BINDINGS:
            getattr(self.ui, widgetName).connect(signal, lambda value, n=name: self._setParameter(n, value))

        self.ui.openWorkspaceButton.connect("clicked(bool)", self.onOpenWorkspace)
        self.ui.createWorkspaceButton.connect("clicked(bool)", self.onCreateWorkspace)
        self.ui.refreshWorklistButton.connect("clicked(bool)", self.onRefreshWorklist)
        self.ui.worklistTableView.connect("doubleClicked(QModelIndex)", self.onWorklistDoubleClicked)
        self.ui.loadCaseButton.connect("clicked(bool)", self.onLoadSelectedCase)
        self.ui.saveLabelButton.connect("clicked(bool)", self.onSaveLabel)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCase)
        self.ui.scoreButton.connect("clicked(bool)", lambda: self.onJobButton("score"))
        self.ui.trainButton.connect("clicked(bool)", lambda: self.onJobButton("train"))
        self.ui.refreshPseudoButton.connect("clicked(bool)", self.onRefreshPseudo)
        self.ui.pseudoTableWidget.connect("itemSelectionChanged()", self.onPseudoSelected)
        self.ui.acceptPseudoButton.connect("clicked(bool)", lambda: self.onPseudoDecision("accepted"))
        self.ui.rejectPseudoButton.connect("clicked(bool)", lambda: self.onPseudoDecision("rejected"))
        self.ui.correctPseudoButton.connect("clicked(bool)", self.onCorrectPseudo)
        for name in ("overlayOpacitySlider", "overlayFillCheckBox", "overlayOutlineCheckBox"):
            signal = "valueChanged(double)" if name.endswith("Slider") else "toggled(bool)"
            getattr(self.ui, name).connect(signal, lambda *_: self._applyOverlayDisplay())
        self.ui.jobProgressBar.setVisible(False)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._timer is not None:
            self._timer.stop()

    def enter(self) -> None:
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        self._parameters = None
        self.logic.forgetNodes()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------- parameter node
    def initializeParameterNode(self) -> None:
        self._parameters = self.logic.getParameterNode()
        self._updatingGUI = True
        try:
            for widgetName, name, prop, _ in self.BINDINGS:
                setattr(getattr(self.ui, widgetName), prop, getattr(self._parameters, name))
        finally:
            self._updatingGUI = False
        self._updateButtons()

    def _setParameter(self, name: str, value: Any) -> None:
        if self._updatingGUI or self._parameters is None:
            return
        setattr(self._parameters, name, type(PARAMETER_DEFAULTS[name])(value))

    def _updateButtons(self) -> None:
        ws = self.logic.workspace is not None
        jobRunning = self._job is not None
        self.ui.refreshWorklistButton.enabled = ws
        self.ui.loadCaseButton.enabled = ws
        self.ui.nextCaseButton.enabled = ws
        self.ui.saveLabelButton.enabled = ws and self.logic.labeling.currentCase is not None
        self.ui.refreshPseudoButton.enabled = ws
        for name in ("acceptPseudoButton", "rejectPseudoButton", "correctPseudoButton"):
            getattr(self.ui, name).enabled = ws and self._selectedPseudoCase() is not None
        for kind, button, label in (("score", self.ui.scoreButton, "Score"),
                                    ("train", self.ui.trainButton, "Fine-tune round")):
            mine = jobRunning and self._job.kind == kind
            button.text = "Cancel" if mine else label
            button.enabled = ws and (mine or not jobRunning)

    # ----------------------------------------------------------------- setup
    def _ensureDependencies(self) -> bool:
        """Offer to install missing packages once per session; True when the library can run."""
        missing = self.logic.dependencies.missing()
        if not missing:
            return True
        if self._dependenciesChecked:
            slicer.util.errorDisplay(f"ASSFT needs {', '.join(missing)}, which are not installed.")
            return False
        self._dependenciesChecked = True
        if not slicer.util.confirmOkCancelDisplay(
                f"ASSFT needs these Python packages: {', '.join(missing)}. Install them now? "
                "PyTorch is installed through the PyTorch extension; this can take several minutes.",
                windowTitle="ASSFT: install dependencies"):
            return False
        with slicer.util.tryWithErrorDisplay("Installing ASSFT's dependencies failed.", waitCursor=True):
            self.logic.dependencies.install(missing)
        still = self.logic.dependencies.missing()
        if still:
            slicer.util.errorDisplay(f"Still missing: {', '.join(still)}. Restart Slicer and try again.")
        return not still

    def onOpenWorkspace(self) -> None:
        if not self._ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Could not open the workspace.", waitCursor=True):
            self.ui.workspaceStatusLabel.text = self.logic.session.open(self._parameters.workspace)
            self._applySetupToWorkspace()
            self.onRefreshWorklist()
        self._updateButtons()

    def onCreateWorkspace(self) -> None:
        if not self._ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Could not create the workspace.", waitCursor=True):
            p = self._parameters
            self.ui.workspaceStatusLabel.text = self.logic.session.create(p.workspace, p.dataset, p.model or None)
            self._applySetupToWorkspace()
            self.onRefreshWorklist()
        self._updateButtons()

    def _applySetupToWorkspace(self) -> None:
        p = self._parameters
        self.logic.session.updateSettings(budget=p.budget, device=p.device)

    # --------------------------------------------------------------- worklist
    def onRefreshWorklist(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not rank the volumes.", waitCursor=True):
            self._applySetupToWorkspace()
            node, message = self.logic.worklist.update()
            self.ui.worklistTableView.setMRMLTableNode(node)
            self.ui.worklistStatusLabel.text = message

    def onWorklistDoubleClicked(self, index) -> None:
        self._loadCase(self.logic.worklist.caseAt(index.row()))

    def onLoadSelectedCase(self) -> None:
        index = self.ui.worklistTableView.currentIndex()
        caseId = self.logic.worklist.caseAt(index.row()) if index.isValid() else self.logic.worklist.nextCase()
        self._loadCase(caseId)

    def onNextCase(self) -> None:
        caseId = self.logic.worklist.nextCase(after=self.logic.labeling.currentCase)
        if caseId is None:
            self.ui.worklistStatusLabel.text = "No unlabeled volume left in the worklist."
            return
        self._loadCase(caseId)

    def _loadCase(self, caseId: Optional[str], labelPath: Optional[str] = None) -> None:
        if caseId is None:
            self.ui.worklistStatusLabel.text = "The worklist is empty: no unlabeled volume is ranked."
            return
        with slicer.util.tryWithErrorDisplay(f"Could not load {caseId}.", waitCursor=True):
            imageNode, segmentationNode, source = self.logic.labeling.loadCase(
                caseId, prefill=self._parameters.prefill, labelPath=labelPath)
            slicer.util.setSliceViewerLayers(background=imageNode, fit=True)
            self._openSegmentEditor(imageNode, segmentationNode)
            self.ui.worklistStatusLabel.text = f"Labeling {caseId} ({source}). Save label when done."
        self._updateButtons()

    @staticmethod
    def _openSegmentEditor(imageNode, segmentationNode) -> None:
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentationNode)
        if hasattr(editor, "setSourceVolumeNode"):
            editor.setSourceVolumeNode(imageNode)
        else:  # Slicer < 5.4
            editor.setMasterVolumeNode(imageNode)

    def onSaveLabel(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not save the label.", waitCursor=True):
            path = self.logic.labeling.saveCurrentLabel()
            self.ui.worklistStatusLabel.text = f"Saved {self.logic.labeling.currentCase} to {path}."
            self.onRefreshWorklist()

    # ----------------------------------------------------------------- rounds
    def onJobButton(self, kind: str) -> None:
        if self._job is not None:
            self.logic.jobs.requestCancel(self._job)
            self._cancelDeadline = time.monotonic() + CANCEL_GRACE_S
            self.ui.jobStatusLabel.text = "Stopping: the job saves a resumable state first..."
            return
        with slicer.util.tryWithErrorDisplay(f"Could not start the {kind} job."):
            self._applySetupToWorkspace()
            self._job = self.logic.jobs.start(kind, python=self._parameters.python or None)
            self._cancelDeadline = None
            self.ui.jobProgressBar.setVisible(True)
            self.ui.jobProgressBar.setRange(0, 0)  # busy until the first progress event
            self.ui.jobStatusLabel.text = f"{kind}: starting..."
            self._timer.start()
        self._updateButtons()

    def onPollJob(self) -> None:
        if self._job is None:
            self._timer.stop()
            return
        if self._cancelDeadline is not None and time.monotonic() > self._cancelDeadline:
            self._job.cancel(timeout=0)  # did not stop in time: end the process tree
            self._cancelDeadline = None
        for event in self._job.poll():
            state = describe_event(event)
            if state["fraction"] is not None:
                self.ui.jobProgressBar.setRange(0, 1000)
                self.ui.jobProgressBar.setValue(int(1000 * state["fraction"]))
            if state["text"]:
                self.ui.jobStatusLabel.text = state["text"]
            if state["quality"]:
                self.ui.qualityLabel.text = state["quality"]
            if event.get("event") == "error":
                slicer.util.errorDisplay(state["text"], windowTitle="ASSFT job failed")
            if event.get("event") == "exit":
                self._jobFinished(event)

    def _jobFinished(self, event: dict) -> None:
        self._timer.stop()
        self._job = None
        self._cancelDeadline = None
        self.ui.jobProgressBar.setVisible(False)
        self.logic.session.reopen()
        if event.get("returncode") == 0:
            self.onRefreshWorklist()
            self.onRefreshPseudo()
        self._updateButtons()

    # --------------------------------------------------------------- pseudo QA
    def onRefreshPseudo(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not list the pseudo-label candidates.", waitCursor=True):
            rows, message = self.logic.qa.candidates()
            table = self.ui.pseudoTableWidget
            headers = ["case", "confidence", "distance", "QA"]
            table.clear()
            table.setColumnCount(len(headers))
            table.setHorizontalHeaderLabels(headers)
            table.setRowCount(len(rows))
            for r, row in enumerate(rows):
                for c, key in enumerate(("case_id", "confidence", "distance", "qa")):
                    value = row[key]
                    text = f"{value:.3f}" if isinstance(value, float) else str(value or "")
                    table.setItem(r, c, qt.QTableWidgetItem(text))
            self.ui.pseudoStatusLabel.text = message
        self._updateButtons()

    def _selectedPseudoCase(self) -> Optional[str]:
        items = self.ui.pseudoTableWidget.selectedItems()
        if not items:
            return None
        return self.ui.pseudoTableWidget.item(items[0].row(), 0).text()

    def onPseudoSelected(self) -> None:
        caseId = self._selectedPseudoCase()
        self._updateButtons()
        if caseId is None:
            return
        with slicer.util.tryWithErrorDisplay(f"Could not show the pseudo-label of {caseId}.", waitCursor=True):
            imageNode, _ = self.logic.qa.showPseudoLabel(caseId)
            self._applyOverlayDisplay()
            slicer.util.setSliceViewerLayers(background=imageNode, fit=True)

    def _applyOverlayDisplay(self) -> None:
        p = self._parameters
        if p is not None:
            self.logic.qa.setOverlayDisplay(p.overlayOpacity, p.overlayFill, p.overlayOutline)

    def onPseudoDecision(self, decision: str) -> None:
        caseId = self._selectedPseudoCase()
        with slicer.util.tryWithErrorDisplay(f"Could not record the decision for {caseId}."):
            self.logic.qa.setQA(caseId, decision)
            self.ui.pseudoStatusLabel.text = f"{caseId}: {decision}."
            self.onRefreshPseudo()

    def onCorrectPseudo(self) -> None:
        caseId = self._selectedPseudoCase()
        self._loadCase(caseId, labelPath=str(self.logic.qa.pseudoLabelPath(caseId)))


# ----------------------------------------------------------------------------
class ASSFTTest(ScriptedLoadableModuleTest):
    """In-Slicer test: a synthetic workspace, a worklist, a label saved through a segmentation."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_label_round_trip()

    def test_label_round_trip(self) -> None:
        import tempfile

        import numpy as np
        from ASSFTLib.synthetic import make_dataset

        self.delayDisplay("Creating a synthetic workspace")
        tmp = Path(tempfile.mkdtemp(prefix="assft_test_"))
        make_dataset(tmp / "data", n_cases=3, shape=(24, 32, 24), with_labels=False)
        logic = ASSFTLogic()
        logic.session.create(str(tmp / "ws"), str(tmp / "data"))
        node, message = logic.worklist.update()
        self.assertEqual(node.GetNumberOfRows(), 0)
        self.assertIn("model", message)

        caseId = logic.workspace.unlabeled_ids()[0]
        imageNode, segmentationNode, source = logic.labeling.loadCase(caseId, prefill=False)
        self.assertEqual(source, "empty")
        self.delayDisplay("Painting a label and saving it")
        shape = slicer.util.arrayFromVolume(imageNode).shape[::-1]
        label = np.zeros(shape, np.uint8)
        label[4:10, 6:14, 5:9] = 1
        mrml.segmentation_from_labelmap(slicer.mrmlScene, label, mrml.node_affine(imageNode),
                                        logic.workspace.classes, reference_node=imageNode, node=segmentationNode)
        path = logic.labeling.saveCurrentLabel(user="ASSFTTest")
        from ASSFTLib.volumes import read_volume
        saved = read_volume(path, kind="label")
        self.assertTrue(np.array_equal(saved.array, label))
        self.assertIn(caseId, logic.workspace.labeled_ids())
        logic.session.close()
        self.delayDisplay("Test passed")
