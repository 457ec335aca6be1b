"""The workspace: one adaptation project on disk.

A folder with an SQLite database (``assft.db``, WAL mode) that records cases,
labels (who, when), rounds, model versions with checksums, cached scores per
(case, model checksum, settings hash) and pseudo-label QA decisions, next to
``settings.json``, ``labels/``, ``models/``, ``pseudo/``, ``jobs/`` and ``cache/``.

Several processes may open one workspace at once (the Slicer GUI and a
background worker): every write is a short ``BEGIN IMMEDIATE`` transaction
with a generous busy timeout, files are written atomically, and long jobs take
an exclusive :meth:`Workspace.job_lock` so that two workers never train on one
workspace at once.

``Workspace`` is assembled from one part per concern: ``schema`` (connection,
numbered migrations, write transactions), ``cases`` (cases and labels),
``models`` (model registry), ``scores`` (score cache), ``rounds`` (rounds and
QA), ``locking`` (job lock, mending after a killed job); ``paths`` says where
every file lives and ``records`` what callers get back.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..errors import WorkspaceError
from ..settings import Settings
from .cases import CasesMixin
from .locking import LockingMixin
from .models import ModelsMixin
from .paths import DB_NAME, WorkspacePaths
from .records import Case, ModelVersion, Round, now
from .rounds import RoundsMixin
from .schema import META_SCHEMA_VERSION, apply_migrations, connect, migrate, quick_check
from .scores import ScoresMixin

__all__ = ["Case", "ModelVersion", "Round", "Workspace", "WorkspacePaths"]


class Workspace(CasesMixin, ModelsMixin, ScoresMixin, RoundsMixin, LockingMixin):
    """One adaptation project.  Open with :meth:`open`, create with :meth:`create`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()
        self.paths = WorkspacePaths(self.folder)
        db = self.paths.db
        if not db.exists():
            raise WorkspaceError("not an ASSFT workspace (no assft.db)", path=self.folder,
                                 hint="create one with `assft init WORKSPACE --dataset FOLDER`")
        self._conn = connect(db)
        try:
            quick_check(self._conn, db)
            version = self._meta("schema_version")
            if version is None or int(version) > META_SCHEMA_VERSION:
                raise WorkspaceError(f"workspace schema version {version} is not supported by this ASSFT "
                                     f"(expects {META_SCHEMA_VERSION})", path=db, hint="upgrade ASSFT")
            migrate(self._conn, db)
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ setup

    @classmethod
    def create(cls, folder: str | Path, dataset: str | Path | None = None, settings: Settings | None = None,
               import_labels: bool = True, classes: Sequence[str] | None = None,
               foundation: str | Path | None = None) -> "Workspace":
        """Create a workspace in ``folder`` (new or empty) from a dataset folder, all or nothing.

        ``dataset`` is an MSD-layout folder (``dataset.json``, ``imagesTr/``,
        optional ``labelsTr/``) or a plain folder of NIfTI/NRRD volumes.  Images
        are referenced in place, not copied.  With ``import_labels`` the
        dataset's labels become the cases' labels (``labeled_by = "dataset"``);
        either way they are remembered as reference labels.  ``foundation``, a
        checkpoint or MONAI bundle folder, is registered as the foundation model.
        A bad dataset entry (missing file, duplicate case id, path leaving the
        folder, unreadable ``dataset.json``) does not stop it: the entry gets
        no case, and the problem is kept in the workspace's meta as
        :attr:`import_problems` (``assft init`` prints them); the other cases
        are created as usual.  Volumes are not opened here: an unreadable
        image shows up when the case is scored or labeled.

        The workspace is built in a hidden folder beside ``folder`` and renamed
        into place at the end: an error, Ctrl-C or a second ``init`` into the
        same folder leaves either a complete workspace or nothing.
        """
        folder = Path(folder).resolve()
        paths = WorkspacePaths(folder)
        if paths.db.exists():
            raise WorkspaceError("a workspace already exists here", path=folder,
                                 hint="open it, or choose another folder")
        if folder.exists() and not folder.is_dir():
            raise WorkspaceError("is a file, not a folder", path=folder, hint="choose a new or empty folder")
        if folder.exists() and any(p for p in folder.iterdir() if not p.name.startswith(".")):
            raise WorkspaceError("folder is not empty", path=folder, hint="choose a new or empty folder for the workspace")
        from ..dataset import load_dataset, task_classes  # here: reading volumes needs nibabel and SimpleITK
        cases, problems = [], []
        if dataset is not None:
            cases, problems = load_dataset(dataset)
        classes = task_classes(dataset, classes)
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=".assft-init-", dir=folder.parent))
        except OSError as exc:
            raise WorkspaceError(f"cannot create the workspace here ({exc.strerror or exc})", path=folder,
                                 hint="check that the folder is writable and its path not too long") from exc
        try:
            cls._build(stage, dataset, settings, import_labels, classes, cases, problems, foundation)
            cls._move_into_place(stage, folder)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return cls(folder)

    @classmethod
    def _build(cls, stage: Path, dataset, settings, import_labels: bool, classes, cases, problems,
               foundation) -> None:
        paths = WorkspacePaths(stage)
        paths.make_folders()
        db = paths.db
        conn = connect(db)
        try:
            conn.execute("BEGIN IMMEDIATE")
            apply_migrations(conn, db)
            meta = {"schema_version": str(META_SCHEMA_VERSION), "created_at": now(),
                    "dataset": str(Path(dataset).resolve()) if dataset else "",
                    "classes": json.dumps(classes),
                    "import_problems": json.dumps([{"path": str(p.path), "message": p.message} for p in problems])}
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
            for pos, c in enumerate(cases):
                conn.execute(
                    "INSERT INTO cases(case_id, image_path, reference_label, label_path, status, labeled_by, "
                    "labeled_at, profile, position) VALUES (?,?,?,?,?,?,?,?,?)",
                    (c.case_id, str(Path(c.image).resolve()), str(Path(c.label).resolve()) if c.label else None,
                     str(Path(c.label).resolve()) if (c.label and import_labels) else None,
                     "labeled" if (c.label and import_labels) else "unlabeled",
                     "dataset" if (c.label and import_labels) else None,
                     now() if (c.label and import_labels) else None,
                     (getattr(c, "meta", None) or {}).get("profile"), pos))
            conn.execute("COMMIT")
        finally:
            conn.close()
        (settings or Settings()).save(paths.settings)
        if foundation is not None:
            with cls(stage) as ws:
                ws.register_model(foundation, kind="foundation")

    @staticmethod
    def _move_into_place(stage: Path, folder: Path) -> None:
        """Rename the finished ``stage`` to ``folder`` (absent or empty: one atomic rename).  A folder holding
        only hidden files gets the parts moved in under an exclusive lock, the database last."""
        try:
            os.rename(stage, folder)
            return
        except OSError as exc:
            if not folder.is_dir() or (folder / DB_NAME).exists() or any(
                    not p.name.startswith(".") for p in folder.iterdir()):
                raise WorkspaceError("another `assft init` created a workspace here meanwhile", path=folder,
                                     hint="open that workspace, or choose another folder") from exc
        lock = folder / ".assft-init.lock"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError as exc:
            raise WorkspaceError("another `assft init` is creating a workspace here", path=folder,
                                 hint="wait for it, or choose another folder") from exc
        os.close(fd)
        try:
            if (folder / DB_NAME).exists():
                raise WorkspaceError("another `assft init` created a workspace here meanwhile", path=folder,
                                     hint="open that workspace, or choose another folder")
            parts = sorted(stage.iterdir(), key=lambda p: p.name == DB_NAME)  # the database last
            for part in parts:
                os.rename(part, folder / part.name)
            stage.rmdir()
        finally:
            lock.unlink(missing_ok=True)

    @classmethod
    def open(cls, folder: str | Path) -> "Workspace":
        return cls(folder)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------- settings
    @property
    def settings_path(self) -> Path:
        return self.paths.settings

    @property
    def settings(self) -> Settings:
        return Settings.load(self.settings_path)

    def save_settings(self, settings: Settings) -> None:
        settings.validate().save(self.settings_path)

    @property
    def classes(self) -> list[str]:
        return json.loads(self._meta("classes") or "[]")

    @property
    def dataset(self) -> Path | None:
        value = self._meta("dataset")
        return Path(value) if value else None

    @property
    def import_problems(self) -> list[dict]:
        return json.loads(self._meta("import_problems") or "[]")

    # ---------------------------------------------------------------- check
    def integrity_check(self) -> list[str]:
        """Problems found in the database and files; empty when all is consistent."""
        problems = []
        result = self._conn.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            problems.append(f"database: {result}")
        roots = [self.folder] + ([Path(os.path.realpath(self.dataset))] if self.dataset else [])
        for case in self.cases():
            if case.label_path is not None and not case.label_path.exists():
                problems.append(f"{case.case_id}: label file missing: {case.label_path}")
            for what, p in (("image", case.image_path), ("label", case.label_path)):
                real = None if p is None else Path(os.path.realpath(p))
                if real is not None and not any(real == r or r in real.parents for r in roots):
                    problems.append(f"{case.case_id}: {what} outside the workspace and its dataset: {p}")
        for m in self.models():
            if not m.path.exists():
                problems.append(f"model {m.id}: file missing: {m.path}")
        for m in self.models():
            if m.path.exists():
                problem = self.model_problem(m)
                if problem is not None:
                    problems.append(problem)
        return problems

    def summary(self) -> dict[str, Any]:
        counts = {s: 0 for s in ("unlabeled", "labeled")}
        for row in self._conn.execute("SELECT status, COUNT(*) AS n FROM cases GROUP BY status"):
            counts[row["status"]] = row["n"]
        cur = self.current_model()
        found = self.foundation_model()
        checked = [m for m in (cur, found) if m is not None and (m is cur or cur is None or m.id != cur.id)]
        problems = [p for p in map(self.model_problem, checked) if p]
        failures = {} if cur is None else self.score_failures(cur.checksum, self.settings.scoring_hash())
        return {"model_problems": problems, "score_failures": failures,
                "folder": str(self.folder), "dataset": str(self.dataset or ""), "classes": self.classes,
                "cases": sum(counts.values()), **counts, "import_problems": len(self.import_problems),
                "rounds": len(self.rounds("train")), "current_model": None if cur is None else
                {"id": cur.id, "path": str(cur.path), "checksum": cur.checksum[:12], "kind": cur.kind,
                 "metrics": cur.metrics}}
