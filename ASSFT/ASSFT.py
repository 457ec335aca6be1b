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
from ASSFTModuleLib.pseudo_qa import LEGEND

from ASSFTLib import mrml
from ASSFTLib.errors import ASSFTError
from ASSFTLib.jobs import describe_event

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4, or slicer-core outside the application
    def _(text: str) -> str:
        return text

#: How often the panel reads a background job's events (milliseconds).
POLL_INTERVAL_MS = 500

#: After asking a job to stop, how long to wait for its resumable save before killing it (seconds).
CANCEL_GRACE_S = 15.0

#: Where the user's own "Python for jobs" is kept (Slicer's application settings, never the workspace).
PYTHON_SETTING = "ASSFT/PythonForJobs"


# ----------------------------------------------------------------------------
class ASSFT(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ASSFT"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "SegmentEditor"]
        self.parent.contributors = ["ASSFT contributors (ASSFT project)"]
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
    """The panel: Setup, Worklist (with an embedded Segment Editor), Rounds, Pseudo-label QA.

    Every model call runs as a background job (``score``, ``train``, ``register``,
    ``predict``); the panel polls them from a timer.  Every action goes through
    :meth:`_action`: one error dialog, the buttons always updated afterwards.
    """

    #: (widget, parameter, widget property, change signal): two-way bindings kept explicit
    #: so that they work with and without ``parameterNodeWrapper``.
    BINDINGS = (
        ("workspacePathLineEdit", "workspace", "currentPath", "currentPathChanged(QString)"),
        ("datasetPathLineEdit", "dataset", "currentPath", "currentPathChanged(QString)"),
        ("modelPathLineEdit", "model", "currentPath", "currentPathChanged(QString)"),
        ("deviceComboBox", "device", "currentText", "currentTextChanged(QString)"),
        ("budgetSpinBox", "budget", "value", "valueChanged(int)"),
        ("importLabelsCheckBox", "importLabels", "checked", "toggled(bool)"),
        ("prefillCheckBox", "prefill", "checked", "toggled(bool)"),
        ("overlayOpacitySlider", "overlayOpacity", "value", "valueChanged(double)"),
        ("overlayFillCheckBox", "overlayFill", "checked", "toggled(bool)"),
        ("overlayOutlineCheckBox", "overlayOutline", "checked", "toggled(bool)"),
    )
    #: Parameters that are also workspace settings: changing them in the panel stores them in the workspace.
    WORKSPACE_SETTINGS = ("budget", "device")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameters = None
        self._updatingGUI = False
        self._job = None            # score / train / register: the Rounds section's job
        self._predictJob = None     # predict: a pre-fill or a pseudo-label, beside the other
        self._predictFor = None     # (purpose, case id) of the predict job
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
        self._timer.connect("timeout()", self.onPollJobs)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for widgetName, name, prop, signal in self.BINDINGS:
            getattr(self.ui, widgetName).connect(signal, lambda value, n=name: self._setParameter(n, value))
        self.ui.pythonPathLineEdit.currentPath = pythonForJobs()
        self.ui.pythonPathLineEdit.connect("currentPathChanged(QString)", setPythonForJobs)

        self.ui.openWorkspaceButton.connect("clicked(bool)", self.onOpenWorkspace)
        self.ui.createWorkspaceButton.connect("clicked(bool)", self.onCreateWorkspace)
        self.ui.registerModelButton.connect("clicked(bool)", self.onRegisterModel)
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
        self.ui.pseudoLegendLabel.text = _(LEGEND)
        self._setUpSegmentEditor()

        self.initializeParameterNode()

    def _setUpSegmentEditor(self) -> None:
        """The Segment Editor inside the panel (as MONAI Label's module does), so Save and Next stay in view."""
        editor = self.ui.segmentEditorWidget
        editor.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "ASSFT segment editor")
        editor.setMRMLSegmentEditorNode(editorNode)

    def cleanup(self) -> None:
        """Module reloaded or Slicer closing: stop polling; a round saves a resumable state and stops."""
        self.removeObservers()
        if self._timer is not None:
            self._timer.stop()
        if self._predictJob is not None:
            self._predictJob.cancel(timeout=0)
            self._predictJob = None
        if self._job is not None:
            self.logic.jobs.requestCancel(self._job)  # offered for Resume when the workspace is opened again
            self._job = None
        if self.logic is not None:
            self.logic.session.close()

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
        self._showParameters()
        self._updateButtons()

    def _showParameters(self) -> None:
        self._updatingGUI = True
        try:
            for widgetName, name, prop, _signal in self.BINDINGS:
                setattr(getattr(self.ui, widgetName), prop, getattr(self._parameters, name))
        finally:
            self._updatingGUI = False

    def _setParameter(self, name: str, value: Any) -> None:
        if self._updatingGUI or self._parameters is None:
            return
        value = type(PARAMETER_DEFAULTS[name])(value)
        setattr(self._parameters, name, value)
        if name in self.WORKSPACE_SETTINGS and self.logic.workspace is not None:
            self._action(_("Could not store the setting in the workspace."),
                         lambda: self.logic.session.updateSettings(**{name: value}))

    def _readWorkspaceSettings(self) -> None:
        """The workspace's own budget and device, shown in the panel (never overwritten by the panel's defaults)."""
        for name, value in self.logic.session.panelSettings().items():
            setattr(self._parameters, name, value)
        self._showParameters()

    def _updateButtons(self) -> None:
        ws = self.logic.workspace is not None
        jobRunning = self._job is not None
        self.ui.registerModelButton.enabled = ws and not jobRunning
        self.ui.refreshWorklistButton.enabled = ws
        self.ui.loadCaseButton.enabled = ws
        self.ui.nextCaseButton.enabled = ws
        self.ui.saveLabelButton.enabled = ws and self.logic.labeling.currentCase is not None
        self.ui.refreshPseudoButton.enabled = ws
        for name in ("acceptPseudoButton", "rejectPseudoButton", "correctPseudoButton"):
            getattr(self.ui, name).enabled = ws and self._selectedPseudoCase() is not None
        for kind, button, label in (("score", self.ui.scoreButton, _("Score")),
                                    ("train", self.ui.trainButton, _("Fine-tune round"))):
            mine = jobRunning and self._job.kind == kind
            button.text = _("Cancel") if mine else label
            button.enabled = ws and (mine or not jobRunning)

    # ------------------------------------------------------------ actions
    def _action(self, message: str, function, *args, waitCursor: bool = False) -> bool:
        """Run one user action: on failure one dialog (``message`` and the reason); buttons always updated.

        Slicer's ``tryWithErrorDisplay`` shows its dialog and re-raises; the
        re-raised error ends here, so nested calls never show a second dialog.
        Returns True when the action succeeded.
        """
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
                function(*args)
            return True
        except Exception:  # already shown to the user by tryWithErrorDisplay
            return False
        finally:
            self._updateButtons()

    def _ensureDependencies(self) -> bool:
        """Offer to install missing packages once per session; True when the library can run."""
        missing = self.logic.dependencies.missing()
        if not missing:
            return True
        if self._dependenciesChecked:
            slicer.util.errorDisplay(_("ASSFT needs {packages}, which are not installed.").format(
                packages=", ".join(missing)))
            return False
        self._dependenciesChecked = True
        if not slicer.util.confirmOkCancelDisplay(
                _("ASSFT needs these Python packages: {packages}. Install them now? PyTorch is installed through "
                  "the PyTorch extension; this can take several minutes.").format(packages=", ".join(missing)),
                windowTitle=_("ASSFT: install dependencies")):
            return False
        if not self._action(_("Installing ASSFT's dependencies failed."), self.logic.dependencies.install, missing,
                            waitCursor=True):
            return False
        still = self.logic.dependencies.missing()
        if still:
            slicer.util.errorDisplay(_("Still missing: {packages}. Restart Slicer and try again.").format(
                packages=", ".join(still)))
        return not still

    # ------------------------------------------------------------ workspace
    def onOpenWorkspace(self) -> None:
        if self._ensureDependencies() and self._leaveCurrentCase():
            self._action(_("Could not open the workspace."), self._openWorkspace, waitCursor=True)

    def _openWorkspace(self) -> None:
        self._stopFollowing()
        self.ui.workspaceStatusLabel.text = self.logic.session.open(self._parameters.workspace)
        self._readWorkspaceSettings()
        self._afterOpen()

    def onCreateWorkspace(self) -> None:
        if self._ensureDependencies() and self._leaveCurrentCase():
            self._action(_("Could not create the workspace."), self._createWorkspace, waitCursor=True)

    def _createWorkspace(self) -> None:
        p = self._parameters
        self._stopFollowing()
        self.ui.workspaceStatusLabel.text = self.logic.session.create(p.workspace, p.dataset, p.importLabels)
        self.logic.session.updateSettings(budget=p.budget, device=p.device)  # a new workspace takes the panel's
        self._afterOpen()
        if p.model:
            self._startJob("register", ["--model", p.model])

    def _afterOpen(self) -> None:
        """Show the worklist and QA; follow a job still running on this workspace; say if one can be resumed."""
        self.ui.qualityLabel.text = self.logic.session.lastRoundQuality()
        self._refreshWorklist()
        self._refreshPseudo()
        running = [j for j in self.logic.jobs.running() if j.kind != "predict"]
        if running:
            self._follow(running[0])
            self.ui.jobStatusLabel.text = _("A {kind} job started earlier is still running: following it. "
                                            "Press Cancel to stop it.").format(kind=running[0].kind)
        elif self.logic.jobs.resumable("train") is not None:
            self.ui.jobStatusLabel.text = _("The last fine-tuning round was cancelled; it can be resumed: "
                                            "press Fine-tune round.")

    def onRegisterModel(self) -> None:
        self._action(_("Could not register the model."), self._registerModel)

    def _registerModel(self) -> None:
        if not self._parameters.model:
            raise ASSFTError(_("no foundation model is chosen"), hint=_("choose a model file in Setup first"))
        self._startJob("register", ["--model", self._parameters.model])

    # --------------------------------------------------------------- worklist
    def onRefreshWorklist(self) -> None:
        self._action(_("Could not rank the volumes."), self._refreshWorklist, waitCursor=True)

    def _refreshWorklist(self) -> None:
        node, message = self.logic.worklist.update()
        self.ui.worklistTableView.setMRMLTableNode(node)
        self.ui.worklistStatusLabel.text = message

    def onWorklistDoubleClicked(self, index) -> None:
        self._loadCaseAction(self.logic.worklist.caseAt(index.row()))

    def onLoadSelectedCase(self) -> None:
        index = self.ui.worklistTableView.currentIndex()
        caseId = self.logic.worklist.caseAt(index.row()) if index.isValid() else self.logic.worklist.nextCase()
        self._loadCaseAction(caseId)

    def onNextCase(self) -> None:
        caseId = self.logic.worklist.nextCase(after=self.logic.labeling.currentCase)
        if caseId is None:
            self.ui.worklistStatusLabel.text = _("No volume left to label in the worklist.")
            return
        self._loadCaseAction(caseId)

    def _leaveCurrentCase(self) -> bool:
        """Before the segmentation is reused: ask what to do with unsaved paint. True to go on."""
        labeling = self.logic.labeling
        try:
            unsaved = labeling.hasUnsavedChanges()
        except Exception:
            unsaved = True  # cannot tell: ask rather than lose paint
        if not unsaved:
            return True
        answer = slicer.util.messageBox(
            _("{case} has paint that is not saved. Save it before moving on?").format(case=labeling.currentCase),
            windowTitle=_("Unsaved label"), icon=qt.QMessageBox.Warning,
            standardButtons=qt.QMessageBox.Save | qt.QMessageBox.Discard | qt.QMessageBox.Cancel)
        if answer == qt.QMessageBox.Save:
            return self._action(_("Could not save the label."), self._saveLabel)
        return answer == qt.QMessageBox.Discard

    def _loadCaseAction(self, caseId: Optional[str], labelPath: Optional[str] = None, source: str = "manual") -> None:
        if caseId is None:
            self.ui.worklistStatusLabel.text = _("The worklist is empty: no unlabeled volume is ranked.")
            return
        if self._leaveCurrentCase():
            self._action(_("Could not load {case}.").format(case=caseId), self._loadCase, caseId, labelPath, source,
                         waitCursor=True)

    def _loadCase(self, caseId: str, labelPath: Optional[str], source: str) -> None:
        self._cancelPredict()
        imageNode, segmentationNode, shown = self.logic.labeling.loadCase(caseId, labelPath=labelPath, source=source)
        slicer.util.setSliceViewerLayers(background=imageNode, fit=True)
        editor = self.ui.segmentEditorWidget
        editor.setSegmentationNode(segmentationNode)
        editor.setSourceVolumeNode(imageNode)
        text = _("Labeling {case} (starts {shown}). Paint, then Save label.").format(case=caseId, shown=shown)
        if (shown == "empty" and self._parameters.prefill and self.logic.session.modelCanSegment()):
            self._startPredict("prefill", caseId)
            text = _("Labeling {case}: the model's pre-fill is being computed; you can paint meanwhile.").format(
                case=caseId)
        self.ui.worklistStatusLabel.text = text

    def onSaveLabel(self) -> None:
        self._action(_("Could not save the label."), self._saveLabel, waitCursor=True)

    def _saveLabel(self) -> None:
        path = self.logic.labeling.saveCurrentLabel()
        caseId = self.logic.labeling.currentCase
        self._refreshWorklist()
        self.ui.worklistStatusLabel.text = _("Saved the label of {case} ({file}).").format(case=caseId, file=path.name)

    # ----------------------------------------------------------------- jobs
    def onJobButton(self, kind: str) -> None:
        if self._job is not None:
            self.logic.jobs.requestCancel(self._job)
            self._cancelDeadline = time.monotonic() + CANCEL_GRACE_S
            self.ui.jobStatusLabel.text = _("Stopping: the job saves a resumable state first...")
            return
        self._action(_("Could not start the {kind} job.").format(kind=kind), self._startRound, kind)

    def _startRound(self, kind: str) -> None:
        resumable = self.logic.jobs.resumable(kind) if kind == "train" else None
        if resumable is not None and slicer.util.confirmYesNoDisplay(
                _("The last fine-tuning round was cancelled. Resume it where it stopped? (No starts a new round.)"),
                windowTitle=_("Resume the round?")):
            self._startJob(kind, ["--resume"], jobDir=str(resumable))
        else:
            self._startJob(kind)

    def _startJob(self, kind: str, args=(), jobDir: Optional[str] = None) -> None:
        self._follow(self.logic.jobs.start(kind, pythonForJobs(), args, jobDir))
        self.ui.jobStatusLabel.text = _("{kind}: starting...").format(kind=kind)

    def _follow(self, job) -> None:
        self._job = job
        self._cancelDeadline = None
        self.ui.jobProgressBar.setVisible(True)
        self.ui.jobProgressBar.setRange(0, 0)  # busy until the first progress event
        self._timer.start()

    def _stopFollowing(self) -> None:
        """Another workspace is opened: stop showing this one's jobs (they go on; reopening follows them again)."""
        self._cancelPredict()
        self._job = None
        self.ui.jobProgressBar.setVisible(False)

    def _startPredict(self, purpose: str, caseId: str) -> None:
        self._cancelPredict()
        self._predictJob = self.logic.jobs.start("predict", pythonForJobs(), ["--case", caseId, "--purpose", purpose])
        self._predictFor = (purpose, caseId)
        self._timer.start()

    def _cancelPredict(self) -> None:
        if self._predictJob is not None:
            self._predictJob.cancel(timeout=0)
        self._predictJob = self._predictFor = None

    def onPollJobs(self) -> None:
        try:
            if self._job is not None:
                self._pollRoundJob()
            if self._predictJob is not None:
                self._pollPredictJob()
        finally:
            if self._job is None and self._predictJob is None:
                self._timer.stop()
            self._updateButtons()

    def _pollRoundJob(self) -> None:
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
                slicer.util.errorDisplay(clinicianText(event), windowTitle=_("ASSFT: the job failed"))
            if event.get("event") == "exit":
                self._roundJobFinished(event)
                return

    def _roundJobFinished(self, event: dict) -> None:
        self._job = None
        self._cancelDeadline = None
        self.ui.jobProgressBar.setVisible(False)

        def reread():
            self.logic.session.reopen()
            self.ui.workspaceStatusLabel.text = self.logic.session.summary()
            self.ui.qualityLabel.text = self.logic.session.lastRoundQuality()
            self._refreshWorklist()
            self._refreshPseudo()
        self._action(_("Could not show the job's results."), reread)

    def _pollPredictJob(self) -> None:
        for event in self._predictJob.poll():
            state = describe_event(event)
            purpose, caseId = self._predictFor
            if event.get("event") == "progress":
                self.ui.jobStatusLabel.text = _("Segmenting {case} with the model...").format(case=caseId)
            if event.get("event") == "error":
                slicer.util.errorDisplay(clinicianText(event), windowTitle=_("ASSFT: segmenting failed"))
            if event.get("event") == "result":
                output = event.get("outputs", {}).get(caseId)
                if purpose == "prefill":
                    self._action(_("Could not show the pre-fill."), self._showPrefill, caseId, output)
                else:
                    self._action(_("Could not show the pseudo-label of {case}.").format(case=caseId),
                                 self._showPseudoIfSelected, caseId)
            elif state["text"] and event.get("event") == "cancelled":
                self.ui.jobStatusLabel.text = state["text"]
            if event.get("event") == "exit":
                self._predictJob = self._predictFor = None
                if self._job is None and event.get("returncode") == 0:
                    self.ui.jobStatusLabel.text = _("{case} segmented.").format(case=caseId)
                return

    def _showPrefill(self, caseId: str, path: str) -> None:
        if self.logic.labeling.applyPrefill(caseId, path):
            self.ui.worklistStatusLabel.text = _("Labeling {case}: pre-filled with the model's prediction; correct "
                                                 "it, then Save label.").format(case=caseId)
        else:
            self.ui.worklistStatusLabel.text = _("The pre-fill of {case} arrived after you started painting; "
                                                 "your paint was kept.").format(case=caseId)

    # --------------------------------------------------------------- pseudo QA
    def onRefreshPseudo(self) -> None:
        self._action(_("Could not list the pseudo-label candidates."), self._refreshPseudo, waitCursor=True)

    def _refreshPseudo(self) -> None:
        rows, refused, message = self.logic.qa.candidates()
        fill(self.ui.pseudoTableWidget, [_("Volume"), _("Confidence"), _("Distance"), _("Your decision")],
             [[r["case_id"], f"{r['confidence']:.0%}", f"{r['distance']:.2f}", r["qa"]] for r in rows],
             [_("volume"), _("mean voxel confidence of the model's prediction (higher = surer)"),
              _("distance to the labeled volumes' features (lower = more alike)"), _("accepted or rejected")])
        fill(self.ui.pseudoRefusedTableWidget, [_("Refused volume"), _("Why")],
             [[r["case_id"], r["reason"]] for r in refused], [_("volume"), _("why the filter refused it")])
        self.ui.pseudoStatusLabel.text = message

    def _selectedPseudoCase(self) -> Optional[str]:
        items = self.ui.pseudoTableWidget.selectedItems()
        if not items:
            return None
        return self.ui.pseudoTableWidget.item(items[0].row(), 0).text()

    def onPseudoSelected(self) -> None:
        caseId = self._selectedPseudoCase()
        self._updateButtons()
        if caseId is not None:
            self._action(_("Could not show the pseudo-label of {case}.").format(case=caseId), self._showPseudo,
                         caseId, waitCursor=True)

    def _showPseudo(self, caseId: str) -> None:
        if self.logic.qa.needsPrediction(caseId):
            if not self.logic.session.modelCanSegment():
                raise ASSFTError(_("the model cannot segment yet"), hint=_("run a fine-tuning round first"))
            self._startPredict("pseudo", caseId)
            self.ui.pseudoInfoLabel.text = _("{case}: the model is segmenting it...").format(case=caseId)
            return
        if self._predictFor is not None and self._predictFor[0] == "pseudo":
            self._cancelPredict()  # another candidate's pseudo-label is no longer wanted
        imageNode, _overlay, sliceIndex = self.logic.qa.showPseudoLabel(caseId)
        self._applyOverlayDisplay()
        slicer.util.setSliceViewerLayers(background=imageNode, fit=True)
        row = next((r for r in self.logic.qa.candidates()[0] if r["case_id"] == caseId), None)
        confidence = "" if row is None else _(", confidence {c:.0%}, distance {d:.2f}").format(
            c=row["confidence"], d=row["distance"])
        self.ui.pseudoInfoLabel.text = _("Reviewing {case}{details}; most of the structure is on axial slice "
                                         "{slice}.").format(case=caseId, details=confidence, slice=sliceIndex + 1)

    def _showPseudoIfSelected(self, caseId: str) -> None:
        if self._selectedPseudoCase() == caseId:
            self._showPseudo(caseId)

    def _applyOverlayDisplay(self) -> None:
        p = self._parameters
        if p is not None:
            self.logic.qa.setOverlayDisplay(p.overlayOpacity, p.overlayFill, p.overlayOutline)

    def onPseudoDecision(self, decision: str) -> None:
        caseId = self._selectedPseudoCase()

        def decide():
            self.logic.qa.setQA(caseId, decision)
            self._refreshPseudo()
            self.ui.pseudoStatusLabel.text = _("{case}: {decision}.").format(case=caseId, decision=_(decision))
        self._action(_("Could not record the decision for {case}.").format(case=caseId), decide)

    def onCorrectPseudo(self) -> None:
        """Edit the pseudo-label in the labeling segmentation; saving it records it as a corrected pseudo-label."""
        caseId = self._selectedPseudoCase()
        path = self.logic.qa.pseudoLabelPath(caseId)
        if not path.exists():
            self.ui.pseudoStatusLabel.text = _("Select the volume first: its pseudo-label is not computed yet.")
            return
        self._loadCaseAction(caseId, labelPath=str(path), source="corrected_pseudo")


# ----------------------------------------------------------------------------
def pythonForJobs() -> str:
    """The user's own "Python for jobs" (Slicer's application settings; empty = Slicer's Python)."""
    value = qt.QSettings().value(PYTHON_SETTING, "")
    return str(value or "")


def setPythonForJobs(path: str) -> None:
    qt.QSettings().setValue(PYTHON_SETTING, str(path or ""))


def clinicianText(event: dict) -> str:
    """A job's error, said for the person at the panel: what failed and what to do, no traceback."""
    message = str(event.get("message") or _("the job stopped unexpectedly"))
    message = message.split("Traceback (most recent call last)")[0].strip()
    if len(message) > 600:
        message = message[:600] + "..."
    hint = event.get("hint")
    return message + (f"\n\n{_('What to do')}: {hint}" if hint else "")


def fill(table, headers, rows, tooltips=()) -> None:
    """Fill a ``QTableWidget`` with text rows, one tooltip per column header."""
    table.clear()
    table.setColumnCount(len(headers))
    table.setHorizontalHeaderLabels(headers)
    for c, tip in enumerate(tooltips):
        table.horizontalHeaderItem(c).setToolTip(tip)
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            table.setItem(r, c, qt.QTableWidgetItem(str(text or "")))
    table.resizeColumnsToContents()


# ----------------------------------------------------------------------------
class ASSFTTest(ScriptedLoadableModuleTest):
    """In-Slicer test: a synthetic workspace, a worklist, a label saved through a segmentation."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        missing = ASSFTLogic().dependencies.missing()
        if missing:  # Slicer does not bundle them; the Extensions Index build must not fail on that
            self.skipTest(f"ASSFT's test needs {', '.join(missing)}, not installed in this Slicer "
                          "(the module offers to install them when a workspace is opened)")
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
        imageNode, segmentationNode, source = logic.labeling.loadCase(caseId)
        self.assertEqual(source, "empty")
        self.delayDisplay("Painting a label and saving it")
        shape = slicer.util.arrayFromVolume(imageNode).shape[::-1]
        label = np.zeros(shape, np.uint8)
        label[4:10, 6:14, 5:9] = 1
        mrml.segmentation_from_labelmap(slicer.mrmlScene, label, mrml.node_affine(imageNode),
                                        logic.workspace.classes, reference_node=imageNode, node=segmentationNode)
        self.assertTrue(logic.labeling.hasUnsavedChanges())
        path = logic.labeling.saveCurrentLabel(user="ASSFTTest")
        self.assertFalse(logic.labeling.hasUnsavedChanges())
        from ASSFTLib.volumes import read_volume
        saved = read_volume(path, kind="label")
        self.assertTrue(np.array_equal(saved.array, label))
        self.assertIn(caseId, logic.workspace.labeled_ids())
        logic.session.close()
        self.delayDisplay("Test passed")
