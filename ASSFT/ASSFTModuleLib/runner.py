"""Background jobs for the panel: start a worker job, find the ones still running, name a resumable one.

The process itself is :class:`ASSFTLib.jobs.Job` (polled by the panel's timer,
its events shown through :func:`ASSFTLib.jobs.describe_event`).  The Python
that runs jobs is the user's own choice (the panel keeps it in Slicer's
application settings, never in the workspace) and is passed in explicitly;
empty means Slicer's own ``PythonSlicer``.  Jobs start from Slicer's startup
environment, as ``slicer.util.launchConsoleProcess`` does.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import slicer

from .session import WorkspaceSession


class JobRunner:
    """Starts jobs on the session's workspace."""

    def __init__(self, session: WorkspaceSession) -> None:
        self.session = session

    def start(self, kind: str, python: str = "", args: Sequence[str] = (), jobDir: Optional[str] = None):
        """Start a background job (``score``, ``train``, ``predict``, ``register``) with ``python`` (checked)."""
        from ASSFTLib.jobs import Job, check_python
        ws = self.session.require()
        python = check_python(python) if python else self.slicerPython()
        device = None if ws.settings.device == "auto" else ws.settings.device
        return Job.start(kind, ws.folder, args=list(args), python=python, device=device, job_dir=jobDir,
                         base_env=self.startupEnvironment())

    def running(self) -> list:
        """Jobs on this workspace still running (started by an earlier panel or the command line)."""
        from ASSFTLib.jobs import running_jobs
        return running_jobs(self.session.require().folder)

    def resumable(self, kind: str) -> Optional[Path]:
        """The job folder of a cancelled ``kind`` job that can be resumed, or None."""
        from ASSFTLib.jobs import resumable_job
        return resumable_job(self.session.require().folder, kind)

    @staticmethod
    def startupEnvironment() -> Optional[dict]:
        """Slicer's environment before its launcher set PYTHONHOME/PYTHONPATH; None outside Slicer."""
        app = getattr(slicer, "app", None)
        if app is None:
            return None
        return slicer.util.startupEnvironment()

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
