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


def job_state_path(job_dir: str | Path) -> Path:
    """The resumable state file of a job folder."""
    return Path(job_dir) / JOB_STATE_FILE
