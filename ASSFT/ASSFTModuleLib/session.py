"""The open workspace, as the panel sees it: create, open, reopen after a job, settings, current model.

One :class:`WorkspaceSession` per panel; the other concerns (worklist,
labeling, pseudo-label QA, jobs) ask it for the workspace with
:meth:`~WorkspaceSession.require`, which says what to do when none is open.
Nothing here imports torch: a model is checked and registered by a background
``register`` job, and segmenting is a ``predict`` job.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ASSFTLib.errors import ASSFTError

#: Workspace settings that the panel shows and edits (Setup).
PANEL_SETTINGS = ("budget", "device")


class WorkspaceSession:
    """Holds the open :class:`ASSFTLib.workspace.Workspace`."""

    def __init__(self, onClose: Optional[Callable[[], None]] = None) -> None:
        self.workspace = None
        self._onClose = onClose

    def open(self, folder: str) -> str:
        """Open an existing workspace; returns its one-line summary."""
        from ASSFTLib.workspace import Workspace
        if not folder:
            raise ASSFTError("no workspace folder is chosen", hint="choose the workspace folder in Setup")
        self.close()
        self.workspace = Workspace.open(folder)
        return self.summary()

    def create(self, folder: str, dataset: str, importLabels: bool = True) -> str:
        """Create a workspace on a dataset folder (its labels imported or not); its summary.

        The foundation model is registered afterwards by a ``register`` job.
        """
        from ASSFTLib.workspace import Workspace
        if not folder or not dataset:
            raise ASSFTError("a new workspace needs a folder and a folder of images",
                             hint="choose both in Setup, then press Create workspace")
        self.close()
        self.workspace = Workspace.create(folder, dataset=dataset, import_labels=importLabels)
        return self.summary()

    def reopen(self) -> None:
        """Read the state a background job changed (new model, scores)."""
        if self.workspace is not None:
            folder = self.workspace.folder
            self.workspace.close()
            from ASSFTLib.workspace import Workspace
            self.workspace = Workspace.open(folder)

    def close(self) -> None:
        if self.workspace is not None:
            self.workspace.close()
        self.workspace = None
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
        if model is None:
            modelText = "no model yet (choose a foundation model and press Register model)"
        elif model["kind"] == "foundation":
            modelText = "the foundation model (not fine-tuned yet)"
        else:
            modelText = f"fine-tuned model #{model['id']}"
        return f"{s['cases']} volumes: {s['labeled']} labeled, {s['unlabeled']} to label. Model: {modelText}."

    def lastRoundQuality(self) -> str:
        """The quality signals of the last finished fine-tuning round, as the panel shows them when it ends."""
        from ASSFTLib.jobs import describe_event
        ws = self.require()
        finished = [r for r in ws.rounds("train") if r.status == "finished"]
        if not finished:
            return ""
        text = describe_event({"event": "result", "kind": "train", "metrics": finished[-1].metrics})["quality"]
        return text or (f"No quality number for the last round: below {ws.settings.kfold_min_labels} labels none "
                        "is held out, and a first round has no previous model to compare.")

    def panelSettings(self) -> dict:
        """The workspace's own values of the settings the panel shows (read into the panel on open)."""
        settings = self.require().settings
        return {name: getattr(settings, name) for name in PANEL_SETTINGS}

    def updateSettings(self, **changes: Any) -> None:
        """Store panel settings (budget, device) in the workspace's settings.json, when they differ."""
        ws = self.workspace
        if ws is None:
            return
        unknown = set(changes) - set(PANEL_SETTINGS)
        if unknown:
            raise ValueError(f"not a panel setting: {sorted(unknown)}")
        current = ws.settings
        if any(getattr(current, k) != v for k, v in changes.items()):
            ws.save_settings(current.replace(**changes))

    def modelCanSegment(self) -> bool:
        """Whether the current model is a fine-tuned one (a foundation model has no task head to pre-fill with)."""
        ws = self.require()
        version = ws.current_model()
        return version is not None and version.kind != "foundation"
