"""Where things live inside a workspace folder: the one place that builds these paths.

Every other module (training, pseudo-labels, the worker, the report, the
Slicer panel) asks :class:`WorkspacePaths` instead of joining folder names
itself.  It needs no database, so the job launcher can use it on a folder
before any process opens the workspace.

    <workspace>/
      assft.db          SQLite (WAL)
      settings.json     Settings
      labels/           <case_id>.nii.gz, previous versions in labels/.history/
      models/           model_<n>.pt
      pseudo/           <case_id>.nii.gz pseudo-labels written for review
      jobs/             <kind>-<stamp>/ job folders (events, cancel file, resumable state), <name>.lock
      cache/            per-case arrays too large for the database
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

DB_NAME = "assft.db"
SETTINGS_NAME = "settings.json"
LABEL_SUFFIX = ".nii.gz"
PSEUDO_SUFFIX = ".nii.gz"
JOB_STATE_FILE = "state.pt"       # a job's resumable state inside its job folder
SUBFOLDERS = ("labels", "labels/.history", "models", "pseudo", "jobs", "cache")


@dataclass(frozen=True)
class WorkspacePaths:
    """Paths of one workspace folder (absolute once resolved by the caller)."""
    folder: Path

    @property
    def db(self) -> Path:
        return self.folder / DB_NAME

    @property
    def settings(self) -> Path:
        return self.folder / SETTINGS_NAME

    @property
    def labels(self) -> Path:
        return self.folder / "labels"

    @property
    def label_history(self) -> Path:
        return self.labels / ".history"

    @property
    def models(self) -> Path:
        return self.folder / "models"

    @property
    def pseudo(self) -> Path:
        return self.folder / "pseudo"

    @property
    def jobs(self) -> Path:
        return self.folder / "jobs"

    @property
    def cache(self) -> Path:
        return self.folder / "cache"

    @property
    def written_folders(self) -> tuple[Path, ...]:
        """Folders whose files are written atomically, so may hold a killed writer's hidden temporaries."""
        return (self.labels, self.label_history, self.models, self.pseudo, self.cache, self.folder)

    def label(self, case_id: str) -> Path:
        return self.labels / f"{case_id}{LABEL_SUFFIX}"

    def pseudo_label(self, case_id: str) -> Path:
        return self.pseudo / f"{case_id}{PSEUDO_SUFFIX}"

    def lock(self, name: str) -> Path:
        return self.jobs / f"{name}.lock"

    def new_job_dir(self, kind: str) -> Path:
        """A fresh (not yet created) job folder ``jobs/<kind>-<timestamp>``."""
        return self.jobs / f"{kind}-{datetime.now():%Y%m%d-%H%M%S-%f}"

    def make_folders(self) -> None:
        for sub in SUBFOLDERS:
            (self.folder / sub).mkdir(parents=True, exist_ok=True)


#: Files a job writes in its job folder and removes when it ends; a new job refuses a folder already holding one.
JOB_OUTPUTS = (JOB_STATE_FILE, "model.pt", "pretrained.pt")


def check_job_dir(job_dir: str | Path, resume: bool = False, workspace: str | Path | None = None) -> Path:
    """Refuse a job folder where a job could delete or overwrite what it did not create.

    A job folder must not be the workspace itself nor one of its data folders (``labels/``, ``models/``,
    ``pseudo/``, ``cache/``): a finished round removes its ``model.pt``, which there would be the current
    model.  A new (not resumed) job refuses a folder that already holds a file named like its outputs
    (:data:`JOB_OUTPUTS`): they belong to someone else.  Raises :class:`~ASSFTLib.errors.WorkspaceError`.
    """
    from ..errors import WorkspaceError
    job_dir = Path(job_dir)
    real = Path(os.path.realpath(job_dir))
    if workspace is not None:
        ws = WorkspacePaths(Path(os.path.realpath(workspace)))
        for protected in (ws.folder, ws.labels, ws.models, ws.pseudo, ws.cache, ws.jobs):
            inside = real == protected or (protected != ws.folder and protected != ws.jobs and protected in real.parents)
            if inside:
                raise WorkspaceError(f"cannot be a job folder: it is the workspace's {protected.name or 'folder'}"
                                     f"{'' if protected == ws.folder else ' folder'}, whose files a job must never "
                                     "remove", path=job_dir,
                                     hint="leave --job-dir out (a new folder under jobs/), or choose an empty folder")
    if not resume:
        taken = [name for name in JOB_OUTPUTS if (real / name).exists()]
        if taken:
            raise WorkspaceError(f"already holds {', '.join(taken)}, which a new job would overwrite and remove",
                                 path=job_dir, hint="choose a new or empty folder, or pass --resume to continue "
                                                    "the job saved there")
    return job_dir


def job_state_path(job_dir: str | Path) -> Path:
    """The resumable state file of a job folder."""
    return Path(job_dir) / JOB_STATE_FILE
