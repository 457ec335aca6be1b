"""The open workspace, as the panel sees it: create, open, reopen after a job, settings, current model.

One :class:`WorkspaceSession` per panel; the other concerns (worklist,
labeling, pseudo-label QA, jobs) ask it for the workspace with
:meth:`~WorkspaceSession.require`, which says what to do when none is open.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ASSFTLib.errors import ASSFTError


class WorkspaceSession:
    """Holds the open :class:`ASSFTLib.workspace.Workspace` and its current model, loaded once."""

    def __init__(self, onClose: Optional[Callable[[], None]] = None) -> None:
        self.workspace = None
        self._model = None
        self._onClose = onClose

    def open(self, folder: str) -> str:
        """Open an existing workspace; returns its one-line summary."""
        from ASSFTLib.workspace import Workspace
        if not folder:
            raise ASSFTError("no workspace folder given", hint="choose the workspace folder in Setup")
        self.close()
        self.workspace = Workspace.open(folder)
        return self.summary()

    def create(self, folder: str, dataset: str, model: Optional[str] = None) -> str:
        """Create a workspace on an MSD dataset folder, registering ``model`` when given; its summary."""
        from ASSFTLib.workspace import Workspace
        if not folder or not dataset:
            raise ASSFTError("a new workspace needs a folder and a dataset folder",
                             hint="choose both in Setup, then Create workspace")
        self.close()
        if model:
            from ASSFTLib.dataset import task_classes
            from ASSFTLib.models import check_task_compatible, load_model
            # refuse an unusable checkpoint before creating anything
            check_task_compatible(load_model(model), task_classes(dataset))
        self.workspace = Workspace.create(folder, dataset=dataset, foundation=model or None)  # all or nothing
        return self.summary()

    def reopen(self) -> None:
        """Read the state a background job changed (new model, scores)."""
        if self.workspace is not None:
            folder = self.workspace.folder
            self.workspace.close()
            from ASSFTLib.workspace import Workspace
            self.workspace = Workspace.open(folder)
            self._model = None

    def close(self) -> None:
        if self.workspace is not None:
            self.workspace.close()
        self.workspace = None
        self._model = None
        if self._onClose is not None:
            self._onClose()

    def require(self):
        """The open workspace; a clear error when none is."""
        if self.workspace is None:
            raise ASSFTError("no workspace is open", hint="open or create one in Setup")
        return self.workspace

    def summary(self) -> str:
        s = self.require().summary()
        model = s["current_model"]
        return (f"{s['cases']} cases: {s['labeled']} labeled, {s['unlabeled']} unlabeled. "
                f"Model: {'none' if model is None else '#' + str(model['id']) + ' ' + model['kind']}.")

    def updateSettings(self, **changes: Any) -> None:
        """Store panel settings (budget, device, Python for jobs) in the workspace's settings.json."""
        ws = self.workspace
        if ws is None:
            return
        current = ws.settings
        if any(getattr(current, k) != v for k, v in changes.items()):
            ws.save_settings(current.replace(**changes))

    def currentModel(self):
        """The workspace's current model, loaded on the workspace's device; None before one is registered."""
        ws = self.require()
        version = ws.current_model()
        if version is None:
            return None
        if self._model is None or self._model.checksum != version.checksum:
            from ASSFTLib.models import load_model
            self._model = load_model(ws.verified(version).path, device=ws.settings.resolved_device())
        return self._model
