"""``ASSFTLogic``: the one object the panel talks to, composed of one object per concern.

::

    logic.dependencies   install.Dependencies      missing(), install(missing)
    logic.session        session.WorkspaceSession  open(), create(), reopen(), close(), panelSettings(), updateSettings()
    logic.worklist       worklist.Worklist         update(), caseAt(row), nextCase(after)
    logic.labeling       labeling.Labeling         loadCase(), applyPrefill(), hasUnsavedChanges(), saveCurrentLabel()
    logic.jobs           runner.JobRunner          start(kind, python, args), running(), resumable(kind), requestCancel()
    logic.qa             pseudo_qa.PseudoLabelQA   candidates(), needsPrediction(), showPseudoLabel(), setQA()

No Qt here: it works on ``slicer.mrmlScene`` (or the ``scene`` given), so that
it also runs in tests against slicer-core.
"""
from __future__ import annotations

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from .install import Dependencies
from .labeling import Labeling
from .parameters import parameterNode
from .pseudo_qa import PseudoLabelQA
from .runner import JobRunner
from .session import WorkspaceSession
from .worklist import Worklist


class ASSFTLogic(ScriptedLoadableModuleLogic):
    """What the panel does, without Qt: dependencies, workspace, worklist, labels, jobs, pseudo-label QA."""

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.dependencies = Dependencies()
        self.session = WorkspaceSession(onClose=self._workspaceClosed)
        self.worklist = Worklist(self.session, self.scene)
        self.labeling = Labeling(self.session, self.scene)
        self.jobs = JobRunner(self.session)
        self.qa = PseudoLabelQA(self.session, self.scene)

    @property
    def workspace(self):
        """The open :class:`ASSFTLib.workspace.Workspace`, or None."""
        return self.session.workspace

    def getParameterNode(self):
        return parameterNode(self.scene, self.moduleName)

    def forgetNodes(self) -> None:
        """The scene was closed: its nodes are gone."""
        self.worklist.node = None
        self.labeling.forgetNodes()
        self.qa.forgetNodes()

    def _workspaceClosed(self) -> None:
        self.labeling.currentCase = None
