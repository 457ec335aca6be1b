"""ASSFT: label few volumes, fine-tune a foundation model in the background, review pseudo-labels.

The panel only displays and forwards.  Everything that can run without Qt lives
in :mod:`ASSFTLib` (``mrml.py`` for scene nodes, ``workspace.py`` for the
project state, ``scoring.py`` for the ranking, ``jobs.py`` for background jobs)
and is tested outside Slicer; :class:`ASSFTLogic` below wires those together
for the panel and holds no Qt either.
"""
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

try:
    import ASSFTLib  # noqa: F401  (installed extension, or pip-installed library)
except ImportError:  # a source checkout: the library sits beside this module's folder
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import ASSFTLib  # noqa: F401

from ASSFTLib import mrml
from ASSFTLib.errors import ASSFTError
from ASSFTLib.jobs import describe_event

try:
    from slicer.parameterNodeWrapper import parameterNodeWrapper
except ImportError:  # Slicer < 5.4, or slicer-core outside the application
    parameterNodeWrapper = None

#: Python packages the library needs, beyond what Slicer ships, as pip requirements.
#: torch is installed through the PyTorch extension (it picks the build for the machine's GPU).
REQUIREMENTS = {"torch": None, "monai": "monai>=1.4,<1.7", "nibabel": "nibabel>=5.0", "tqdm": "tqdm>=4.60"}

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
class ASSFTParameterNode:
    """The panel's state, kept in the scene so that it survives reloading the module."""

    workspace: str = ""
    dataset: str = ""
    model: str = ""
    device: str = "auto"
    python: str = ""
    budget: int = 2
    prefill: bool = True
    overlayOpacity: float = 0.5
    overlayFill: bool = True
    overlayOutline: bool = True


#: Parameter name -> default value (its type is the parameter's type).
PARAMETER_DEFAULTS = {name: getattr(ASSFTParameterNode, name) for name in ASSFTParameterNode.__annotations__}

if parameterNodeWrapper is not None:
    ASSFTParameterNode = parameterNodeWrapper(ASSFTParameterNode)


class _StoredParameters:
    """Typed access to a ``vtkMRMLScriptedModuleNode`` where ``parameterNodeWrapper`` is missing."""

    def __init__(self, node):
        object.__setattr__(self, "parameterNode", node)

    def __getattr__(self, name: str) -> Any:
        if name not in PARAMETER_DEFAULTS:
            raise AttributeError(name)
        default = PARAMETER_DEFAULTS[name]
        text = self.parameterNode.GetParameter(name)
        if text == "":
            return default
        if isinstance(default, bool):
            return text == "true"
        return type(default)(text)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in PARAMETER_DEFAULTS:
            raise AttributeError(name)
        self.parameterNode.SetParameter(name, ("true" if value else "false") if isinstance(value, bool) else str(value))


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
        self.ui.saveLabelButton.enabled = ws and self.logic.currentCase is not None
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
        missing = ASSFTLogic.missingDependencies()
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
            ASSFTLogic.installDependencies(missing)
        still = ASSFTLogic.missingDependencies()
        if still:
            slicer.util.errorDisplay(f"Still missing: {', '.join(still)}. Restart Slicer and try again.")
        return not still

    def onOpenWorkspace(self) -> None:
        if not self._ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Could not open the workspace.", waitCursor=True):
            self.ui.workspaceStatusLabel.text = self.logic.openWorkspace(self._parameters.workspace)
            self._applySetupToWorkspace()
            self.onRefreshWorklist()
        self._updateButtons()

    def onCreateWorkspace(self) -> None:
        if not self._ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Could not create the workspace.", waitCursor=True):
            p = self._parameters
            self.ui.workspaceStatusLabel.text = self.logic.createWorkspace(p.workspace, p.dataset, p.model or None)
            self._applySetupToWorkspace()
            self.onRefreshWorklist()
        self._updateButtons()

    def _applySetupToWorkspace(self) -> None:
        p = self._parameters
        self.logic.updateSettings(budget=p.budget, device=p.device, python_executable=p.python)

    # --------------------------------------------------------------- worklist
    def onRefreshWorklist(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not rank the volumes.", waitCursor=True):
            self._applySetupToWorkspace()
            node, message = self.logic.updateWorklist()
            self.ui.worklistTableView.setMRMLTableNode(node)
            self.ui.worklistStatusLabel.text = message

    def onWorklistDoubleClicked(self, index) -> None:
        self._loadCase(self.logic.worklistCaseAt(index.row()))

    def onLoadSelectedCase(self) -> None:
        index = self.ui.worklistTableView.currentIndex()
        caseId = self.logic.worklistCaseAt(index.row()) if index.isValid() else self.logic.nextCase()
        self._loadCase(caseId)

    def onNextCase(self) -> None:
        caseId = self.logic.nextCase(after=self.logic.currentCase)
        if caseId is None:
            self.ui.worklistStatusLabel.text = "No unlabeled volume left in the worklist."
            return
        self._loadCase(caseId)

    def _loadCase(self, caseId: Optional[str], labelPath: Optional[str] = None) -> None:
        if caseId is None:
            self.ui.worklistStatusLabel.text = "The worklist is empty: no unlabeled volume is ranked."
            return
        with slicer.util.tryWithErrorDisplay(f"Could not load {caseId}.", waitCursor=True):
            imageNode, segmentationNode, source = self.logic.loadCase(
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
            path = self.logic.saveCurrentLabel()
            self.ui.worklistStatusLabel.text = f"Saved {self.logic.currentCase} to {path}."
            self.onRefreshWorklist()

    # ----------------------------------------------------------------- rounds
    def onJobButton(self, kind: str) -> None:
        if self._job is not None:
            self.logic.requestCancel(self._job)
            self._cancelDeadline = time.monotonic() + CANCEL_GRACE_S
            self.ui.jobStatusLabel.text = "Stopping: the job saves a resumable state first..."
            return
        with slicer.util.tryWithErrorDisplay(f"Could not start the {kind} job."):
            self._applySetupToWorkspace()
            self._job = self.logic.startJob(kind)
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
        self.logic.reopenWorkspace()
        if event.get("returncode") == 0:
            self.onRefreshWorklist()
            self.onRefreshPseudo()
        self._updateButtons()

    # --------------------------------------------------------------- pseudo QA
    def onRefreshPseudo(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not list the pseudo-label candidates.", waitCursor=True):
            rows, message = self.logic.pseudoCandidates()
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
            imageNode, _ = self.logic.showPseudoLabel(caseId)
            self._applyOverlayDisplay()
            slicer.util.setSliceViewerLayers(background=imageNode, fit=True)

    def _applyOverlayDisplay(self) -> None:
        p = self._parameters
        if p is not None:
            self.logic.setOverlayDisplay(p.overlayOpacity, p.overlayFill, p.overlayOutline)

    def onPseudoDecision(self, decision: str) -> None:
        caseId = self._selectedPseudoCase()
        with slicer.util.tryWithErrorDisplay(f"Could not record the decision for {caseId}."):
            self.logic.setQA(caseId, decision)
            self.ui.pseudoStatusLabel.text = f"{caseId}: {decision}."
            self.onRefreshPseudo()

    def onCorrectPseudo(self) -> None:
        caseId = self._selectedPseudoCase()
        self._loadCase(caseId, labelPath=str(self.logic.pseudoLabelPath(caseId)))


# ----------------------------------------------------------------------------
class ASSFTLogic(ScriptedLoadableModuleLogic):
    """What the panel does, without Qt: workspace, worklist, labels, jobs, pseudo-label QA.

    Works on ``slicer.mrmlScene`` (or the ``scene`` given), so that it also runs
    in tests against slicer-core.
    """

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.workspace = None
        self.currentCase: Optional[str] = None
        self._worklistNode = None
        self._imageNode = None
        self._segmentationNode = None
        self._overlayNode = None
        self._overlayCase: Optional[str] = None
        self._model = None

    def getParameterNode(self):
        node = mrml.parameter_node(self.scene, self.moduleName)
        if parameterNodeWrapper is not None:
            return ASSFTParameterNode(node)
        return _StoredParameters(node)

    def forgetNodes(self) -> None:
        """The scene was closed: its nodes are gone."""
        self._worklistNode = self._imageNode = self._segmentationNode = self._overlayNode = None
        self.currentCase = self._overlayCase = None

    # ------------------------------------------------------------ dependencies
    @staticmethod
    def missingDependencies() -> list[str]:
        return [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]

    @staticmethod
    def installDependencies(missing: list[str]) -> None:
        """Install ``missing`` packages; call only after the user agreed (it takes minutes)."""
        if "torch" in missing:
            import PyTorchUtils  # the PyTorch extension, declared in EXTENSION_DEPENDS
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise ASSFTError("PyTorch could not be installed", hint="install it from the PyTorch module")
        others = [REQUIREMENTS[name] for name in missing if REQUIREMENTS[name]]
        if others:
            slicer.util.pip_install(" ".join(others))

    # -------------------------------------------------------------- workspace
    def openWorkspace(self, folder: str) -> str:
        from ASSFTLib.workspace import Workspace
        if not folder:
            raise ASSFTError("no workspace folder given", hint="choose the workspace folder in Setup")
        self.closeWorkspace()
        self.workspace = Workspace.open(folder)
        return self.workspaceSummary()

    def createWorkspace(self, folder: str, dataset: str, model: Optional[str] = None) -> str:
        from ASSFTLib.workspace import Workspace
        if not folder or not dataset:
            raise ASSFTError("a new workspace needs a folder and a dataset folder",
                             hint="choose both in Setup, then Create workspace")
        self.closeWorkspace()
        self.workspace = Workspace.create(folder, dataset=dataset)
        if model:
            from ASSFTLib.models import load_model
            load_model(model)  # refuse an unusable checkpoint before registering it
            self.workspace.register_model(model, kind="foundation")
        return self.workspaceSummary()

    def reopenWorkspace(self) -> None:
        """Read the state a background job changed (new model, scores)."""
        if self.workspace is not None:
            folder = self.workspace.folder
            self.workspace.close()
            from ASSFTLib.workspace import Workspace
            self.workspace = Workspace.open(folder)
            self._model = None

    def closeWorkspace(self) -> None:
        if self.workspace is not None:
            self.workspace.close()
        self.workspace = None
        self._model = None
        self.currentCase = None

    def _ws(self):
        if self.workspace is None:
            raise ASSFTError("no workspace is open", hint="open or create one in Setup")
        return self.workspace

    def workspaceSummary(self) -> str:
        s = self._ws().summary()
        model = s["current_model"]
        return (f"{s['cases']} cases: {s['labeled']} labeled, {s['unlabeled']} unlabeled, {s['error']} with errors. "
                f"Model: {'none' if model is None else '#' + str(model['id']) + ' ' + model['kind']}.")

    def updateSettings(self, **changes: Any) -> None:
        """Store panel settings (budget, device, Python for jobs) in the workspace's settings.json."""
        ws = self.workspace
        if ws is None:
            return
        current = ws.settings
        if any(getattr(current, k) != v for k, v in changes.items()):
            ws.save_settings(current.replace(**changes))

    # --------------------------------------------------------------- worklist
    def updateWorklist(self) -> tuple[Any, str]:
        """Rank the unlabeled volumes from the cached scores into the worklist table node."""
        from ASSFTLib import scoring
        ws = self._ws()
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
        self._worklistNode = mrml.worklist_table(self.scene, rows, node=self._worklistNode)
        return self._worklistNode, message

    def worklistCaseIds(self) -> list[str]:
        if self._worklistNode is None:
            return []
        return [row["case_id"] for row in mrml.rows_from_table(self._worklistNode)]

    def worklistCaseAt(self, row: int) -> Optional[str]:
        ids = self.worklistCaseIds()
        return ids[row] if 0 <= row < len(ids) else None

    def nextCase(self, after: Optional[str] = None) -> Optional[str]:
        """The first still-unlabeled case of the worklist after ``after`` (from the top when None)."""
        ids = self.worklistCaseIds()
        start = ids.index(after) + 1 if after in ids else 0
        unlabeled = set(self._ws().unlabeled_ids())
        return next((c for c in ids[start:] if c in unlabeled), None)

    # ----------------------------------------------------------------- labels
    def _currentModel(self):
        ws = self._ws()
        version = ws.current_model()
        if version is None:
            return None
        if self._model is None or self._model.checksum != version.checksum:
            from ASSFTLib.models import load_model
            self._model = load_model(version.path, device=ws.settings.resolved_device())
        return self._model

    def _loadImage(self, caseId: str):
        from ASSFTLib.volumes import read_volume
        volume = read_volume(self._ws().image_path(caseId))
        self._imageNode = mrml.volume_node_from_array(self.scene, volume.array, volume.affine, name=caseId,
                                                      node=self._imageNode)
        self._imageNode.SetName(caseId)
        return self._imageNode, volume

    def loadCase(self, caseId: str, prefill: bool = True, labelPath: Optional[str] = None) -> tuple[Any, Any, str]:
        """Load a case's image and an editable segmentation; returns (image node, segmentation node, source).

        The segmentation starts from ``labelPath`` if given, else the case's saved
        label, else (with ``prefill``) the current model's prediction, else empty.
        """
        import numpy as np
        from ASSFTLib.volumes import read_volume
        ws = self._ws()
        imageNode, volume = self._loadImage(caseId)
        labelPath = labelPath or ws.label_path(caseId)
        if labelPath:
            label, source = read_volume(labelPath, kind="label").array, f"from {Path(labelPath).name}"
        elif prefill and self._currentModel() is not None and self._currentModel().spec.has_task_head:
            from ASSFTLib.inference import predict_probs
            probs = predict_probs(self._currentModel(), volume, ws.settings)
            label, source = np.argmax(probs, axis=0).astype(np.uint8), "pre-filled with the model's prediction"
        else:
            label, source = np.zeros(volume.array.shape, np.uint8), "empty"
        self._segmentationNode = mrml.segmentation_from_labelmap(
            self.scene, label, volume.affine, ws.classes, name=f"{caseId} label", reference_node=imageNode,
            node=self._segmentationNode)
        self._segmentationNode.SetName(f"{caseId} label")
        self.currentCase = caseId
        return imageNode, self._segmentationNode, source

    def saveCurrentLabel(self, user: Optional[str] = None) -> Path:
        """Write the current segmentation as the case's label, on the image's grid."""
        if self.currentCase is None or self._segmentationNode is None:
            raise ASSFTError("no case is loaded for labeling", hint="double-click a volume in the worklist first")
        ws = self._ws()
        label, affine = mrml.labelmap_from_segmentation(self._segmentationNode, self._imageNode, len(ws.classes))
        return ws.save_label(self.currentCase, label, affine=affine, user=user)

    # ------------------------------------------------------------------- jobs
    def startJob(self, kind: str):
        """Start a background ``score`` or ``train`` job with the workspace's Python and device settings."""
        from ASSFTLib.jobs import Job
        ws = self._ws()
        settings = ws.settings
        python = settings.python_executable or self.slicerPython()
        device = None if settings.device == "auto" else settings.device
        return Job.start(kind, ws.folder, python=python, device=device)

    @staticmethod
    def slicerPython() -> str:
        """Slicer's own Python launcher (``PythonSlicer``) when present, else this interpreter."""
        app = getattr(slicer, "app", None)
        if app is not None:
            launcher = Path(app.slicerHome) / "bin" / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
            if launcher.exists():
                return str(launcher)
        return sys.executable

    @staticmethod
    def requestCancel(job) -> None:
        """Ask ``job`` to stop after saving a resumable state; does not wait."""
        from ASSFTLib.worker import CANCEL_FILE
        (Path(job.job_dir) / CANCEL_FILE).touch()

    # ------------------------------------------------------------- pseudo QA
    def pseudoCandidates(self) -> tuple[list[dict], str]:
        """Unlabeled volumes passing the SSFT filter with the current model's cached scores.

        Rows: case_id, confidence, distance, qa (the latest QA decision or "").
        """
        from ASSFTLib import training
        ws = self._ws()
        selection = training.select_round_pseudo(ws, ws.current_model(), ws.settings)
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
        from ASSFTLib import training
        ws = self._ws()
        path = ws.paths.pseudo_label(caseId)
        if not path.exists():
            model = self._currentModel()
            if model is None or not model.spec.has_task_head:
                raise ASSFTError("the current model cannot segment the task yet", hint="run a fine-tuning round")
            training.write_pseudo_labels(ws, model, [caseId], ws.settings)
        return path

    def showPseudoLabel(self, caseId: str) -> tuple[Any, Any]:
        """Show ``caseId``'s pseudo-label as a read-only overlay on its image."""
        from ASSFTLib.volumes import read_volume
        ws = self._ws()
        label = read_volume(self.pseudoLabelPath(caseId), kind="label").array
        imageNode, volume = self._loadImage(caseId)
        self._overlayNode = mrml.segmentation_from_labelmap(
            self.scene, label, volume.affine, ws.classes, name=f"{caseId} pseudo-label", reference_node=imageNode,
            node=self._overlayNode)
        self._overlayNode.SetName(f"{caseId} pseudo-label")
        self._overlayCase = caseId
        return imageNode, self._overlayNode

    def setOverlayDisplay(self, opacity: float, fill: bool, outline: bool) -> None:
        if self._overlayNode is not None:
            mrml.set_overlay_display(self._overlayNode, opacity=opacity, fill=fill, outline=outline)

    def setQA(self, caseId: str, decision: str) -> None:
        ws = self._ws()
        model = ws.current_model()
        ws.set_qa(caseId, decision, model_checksum=None if model is None else model.checksum)


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
        logic.createWorkspace(str(tmp / "ws"), str(tmp / "data"))
        node, message = logic.updateWorklist()
        self.assertEqual(node.GetNumberOfRows(), 0)
        self.assertIn("model", message)

        caseId = logic.workspace.unlabeled_ids()[0]
        imageNode, segmentationNode, source = logic.loadCase(caseId, prefill=False)
        self.assertEqual(source, "empty")
        self.delayDisplay("Painting a label and saving it")
        shape = slicer.util.arrayFromVolume(imageNode).shape[::-1]
        label = np.zeros(shape, np.uint8)
        label[4:10, 6:14, 5:9] = 1
        mrml.segmentation_from_labelmap(slicer.mrmlScene, label, mrml.node_affine(imageNode),
                                        logic.workspace.classes, reference_node=imageNode, node=segmentationNode)
        path = logic.saveCurrentLabel(user="ASSFTTest")
        from ASSFTLib.volumes import read_volume
        saved = read_volume(path, kind="label")
        self.assertTrue(np.array_equal(saved.array, label))
        self.assertIn(caseId, logic.workspace.labeled_ids())
        logic.closeWorkspace()
        self.delayDisplay("Test passed")
