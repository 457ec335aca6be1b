"""Background jobs for the panel: start a ``score`` or ``train`` worker, ask it to stop.

The process itself is :class:`ASSFTLib.jobs.Job` (polled by the panel's timer,
its events shown through :func:`ASSFTLib.jobs.describe_event`); this file picks
the device from the workspace's settings; the Python is the caller's.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import slicer

from .session import WorkspaceSession


class JobRunner:
    """Starts jobs on the session's workspace."""

    def __init__(self, session: WorkspaceSession) -> None:
        self.session = session

    def start(self, kind: str, python: str | None = None):
        """Start a background ``score`` or ``train`` job with ``python`` (this machine's choice; default Slicer's
        own) and the workspace's device.  A workspace never chooses the program that runs (docs/reliability.md)."""
        from ASSFTLib.jobs import Job
        ws = self.session.require()
        settings = ws.settings
        python = python or self.slicerPython()
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
