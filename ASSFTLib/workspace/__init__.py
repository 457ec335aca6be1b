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
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import ASSFTError, LabelError, WorkspaceError
from ..fileutil import atomic_path
from ..settings import Settings
from .paths import DB_NAME, LABEL_SUFFIX, WorkspacePaths

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    image_path TEXT NOT NULL,
    reference_label TEXT,            -- the dataset's own label file, if any (never written)
    label_path TEXT,                 -- the current label in use, if any
    status TEXT NOT NULL DEFAULT 'unlabeled',   -- unlabeled | labeled | error
    labeled_by TEXT,
    labeled_at TEXT,
    error TEXT,
    profile TEXT,
    position INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS label_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id TEXT NOT NULL,
    path TEXT NOT NULL,
    saved_by TEXT,
    saved_at TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    checksum TEXT NOT NULL,
    kind TEXT NOT NULL,              -- foundation | finetuned
    round_id INTEGER,
    parent_id INTEGER,
    created_at TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,              -- score | train | pretrain | query
    status TEXT NOT NULL,            -- running | finished | cancelled | failed
    started_at TEXT NOT NULL,
    finished_at TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    model_id INTEGER,
    pid INTEGER                      -- the process running it, to tell an interrupted round
);
CREATE TABLE IF NOT EXISTS scores (
    case_id TEXT NOT NULL,
    model_checksum TEXT NOT NULL,
    settings_hash TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (case_id, model_checksum, settings_hash)
);
CREATE TABLE IF NOT EXISTS qa (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id TEXT NOT NULL,
    model_checksum TEXT,
    decision TEXT NOT NULL,          -- accepted | rejected
    user TEXT,
    note TEXT,
    at TEXT NOT NULL
);
"""



def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _user() -> str:
    for var in ("ASSFT_USER", "USER", "USERNAME"):
        if os.environ.get(var):
            return os.environ[var]
    return "unknown"


@dataclass(frozen=True)
class Case:
    case_id: str
    image_path: Path
    reference_label: Path | None
    label_path: Path | None
    status: str
    labeled_by: str | None
    labeled_at: str | None
    error: str | None
    profile: str | None

    @property
    def is_labeled(self) -> bool:
        return self.status == "labeled"


@dataclass(frozen=True)
class ModelVersion:
    id: int
    path: Path
    checksum: str
    kind: str
    round_id: int | None
    parent_id: int | None
    created_at: str
    metrics: dict


@dataclass(frozen=True)
class Round:
    id: int
    kind: str
    status: str
    started_at: str
    finished_at: str | None
    params: dict
    metrics: dict
    model_id: int | None


class Workspace:
    """One adaptation project.  Open with :meth:`open`, create with :meth:`create`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()
        self.paths = WorkspacePaths(self.folder)
        db = self.paths.db
        if not db.exists():
            raise WorkspaceError("not an ASSFT workspace (no assft.db)", path=self.folder,
                                 hint="create one with `assft init WORKSPACE --dataset FOLDER`")
        self._conn = self._connect(db)
        version = self._meta("schema_version")
        if version is None or int(version) > SCHEMA_VERSION:
            raise WorkspaceError(f"workspace schema version {version} is not supported by this ASSFT "
                                 f"(expects {SCHEMA_VERSION})", path=db, hint="upgrade ASSFT")
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Columns added since schema version 1 was first written (additive, so old workspaces open)."""
        def has_pid() -> bool:
            return "pid" in {r["name"] for r in self._conn.execute("PRAGMA table_info(rounds)")}
        if not has_pid():
            with self._write() as c:
                if not has_pid():  # another process may have added it while we waited for the lock
                    c.execute("ALTER TABLE rounds ADD COLUMN pid INTEGER")

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _connect(db: Path) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(db), timeout=60.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise WorkspaceError(f"workspace database cannot be opened: {exc}", path=db,
                                 hint="restore assft.db from a backup; labels in labels/ are untouched") from exc
        return conn

    @classmethod
    def create(cls, folder: str | Path, dataset: str | Path | None = None, settings: Settings | None = None,
               import_labels: bool = True, classes: Sequence[str] | None = None) -> "Workspace":
        """Create a workspace in ``folder`` (new or empty) from a dataset folder.

        ``dataset`` is an MSD-layout folder (``dataset.json``, ``imagesTr/``,
        optional ``labelsTr/``) or a plain folder of NIfTI/NRRD volumes.  Images
        are referenced in place, not copied.  With ``import_labels`` the
        dataset's labels become the cases' labels (``labeled_by = "dataset"``);
        either way they are remembered as reference labels.
        Problems with single cases are recorded on those cases (status
        ``error``) and reported; the other cases stay usable.
        """
        folder = Path(folder).resolve()
        if (folder / DB_NAME).exists():
            raise WorkspaceError("a workspace already exists here", path=folder,
                                 hint="open it, or choose another folder")
        if folder.exists() and any(p for p in folder.iterdir() if not p.name.startswith(".")):
            raise WorkspaceError("folder is not empty", path=folder, hint="choose a new or empty folder for the workspace")
        from ..dataset import load_dataset, task_classes  # here: reading volumes needs nibabel and SimpleITK
        cases, problems = [], []
        if dataset is not None:
            cases, problems = load_dataset(dataset)
        classes = task_classes(dataset, classes)
        paths = WorkspacePaths(folder)
        paths.make_folders()
        db = paths.db
        conn = cls._connect(db)
        try:
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            meta = {"schema_version": str(SCHEMA_VERSION), "created_at": _now(),
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
                     _now() if (c.label and import_labels) else None,
                     (getattr(c, "meta", None) or {}).get("profile"), pos))
            conn.execute("COMMIT")
        finally:
            conn.close()
        (settings or Settings()).save(paths.settings)
        return cls(folder)

    @classmethod
    def open(cls, folder: str | Path) -> "Workspace":
        return cls(folder)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ internals
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction; waits for other writers instead of failing.

        SQLite's own failures (disk full, a lock held past the timeout, a damaged
        file) become a :class:`WorkspaceError` naming the database; the
        transaction is rolled back, so the database keeps its previous state.
        """
        db = self.paths.db
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise WorkspaceError(f"workspace database cannot be written: {exc}", path=db,
                                 hint="another program may hold it, or the disk is full") from exc
        try:
            yield self._conn
        except BaseException as exc:
            self._conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise WorkspaceError(f"workspace database cannot be written: {exc}", path=db,
                                     hint="free disk space or check the folder's permissions, then repeat; "
                                          "nothing was changed") from exc
            raise
        else:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._conn.execute("ROLLBACK")
                raise WorkspaceError(f"workspace database cannot be written: {exc}", path=db,
                                     hint="free disk space, then repeat; nothing was changed") from exc

    def _meta(self, key: str) -> str | None:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise WorkspaceError(f"workspace database is damaged: {exc}", path=self.paths.db,
                                 hint="restore assft.db from a backup; labels in labels/ are untouched") from exc
        return None if row is None else row["value"]

    def _set_meta(self, key: str, value: str) -> None:
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

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

    # ---------------------------------------------------------------- cases
    @staticmethod
    def _case(row: sqlite3.Row) -> Case:
        p = lambda v: Path(v) if v else None  # noqa: E731
        return Case(row["case_id"], Path(row["image_path"]), p(row["reference_label"]), p(row["label_path"]),
                    row["status"], row["labeled_by"], row["labeled_at"], row["error"], row["profile"])

    def cases(self, status: str | None = None) -> list[Case]:
        rows = self._conn.execute("SELECT * FROM cases WHERE ?1 IS NULL OR status = ?1 ORDER BY position",
                                  (status,)).fetchall()
        return [self._case(r) for r in rows]

    def case(self, case_id: str) -> Case:
        row = self._conn.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
        if row is None:
            raise WorkspaceError(f"no case named {case_id!r} in this workspace", path=self.folder,
                                 hint="`assft status WORKSPACE` lists the cases")
        return self._case(row)

    def labeled_ids(self) -> list[str]:
        return [c.case_id for c in self.cases("labeled")]

    def unlabeled_ids(self) -> list[str]:
        return [c.case_id for c in self.cases("unlabeled")]

    def image_path(self, case_id: str) -> Path:
        return self.case(case_id).image_path

    def label_path(self, case_id: str) -> Path | None:
        return self.case(case_id).label_path

    def mark_error(self, case_id: str, message: str) -> None:
        """Record that a case cannot be used (unreadable image, ...); the others stay usable."""
        with self._write() as c:
            c.execute("UPDATE cases SET status = 'error', error = ? WHERE case_id = ?", (message, case_id))

    def clear_error(self, case_id: str) -> None:
        with self._write() as c:
            c.execute("UPDATE cases SET status = CASE WHEN label_path IS NULL THEN 'unlabeled' ELSE 'labeled' END, "
                      "error = NULL WHERE case_id = ?", (case_id,))

    # --------------------------------------------------------------- labels
    def save_label(self, case_id: str, array: np.ndarray, affine: np.ndarray | None = None, user: str | None = None,
                   source: str = "manual") -> Path:
        """Save ``array`` (X, Y, Z) as the case's label, on the image's grid.

        The label is checked against the image (shape, and geometry when
        ``affine`` is given) and the workspace's classes before anything is
        written; it is written atomically to ``labels/<case>.nii.gz`` and a
        label it replaces is first kept in ``labels/.history/``.
        """
        from ..volumes import Volume, check_label_values, check_same_geometry, read_volume, write_volume
        case = self.case(case_id)
        image = read_volume(case.image_path, kind="image")
        array = np.asarray(array)
        if array.shape != image.array.shape:
            raise LabelError(f"label shape {array.shape} does not match the image shape {image.array.shape}",
                             path=case.image_path, hint="segment on the case's own volume, without cropping or resampling")
        if affine is not None:
            check_same_geometry(image, Volume(array, np.asarray(affine), None), what=f"label for {case_id}")
        check_label_values(array, len(self.classes), path=f"label for {case_id}")
        target = self.paths.label(case_id)
        now = _now()
        if target.exists():
            keep = self.paths.label_history / f"{case_id}.{now.replace(':', '').replace('+', 'Z')}{LABEL_SUFFIX}"
            try:
                with atomic_path(keep) as tmp:
                    shutil.copyfile(target, tmp)
            except OSError as exc:
                raise LabelError(f"cannot keep the previous label in the history ({exc.strerror or exc}); "
                                 "the current label is unchanged", path=keep,
                                 hint="free disk space or check that the workspace is writable, then save again") from exc
        write_volume(target, array.astype(np.uint8 if len(self.classes) <= 256 else np.int16), image.affine)
        who = user or _user()
        with self._write() as c:
            c.execute("UPDATE cases SET label_path = ?, status = 'labeled', labeled_by = ?, labeled_at = ?, error = NULL "
                      "WHERE case_id = ?", (str(target), who, now, case_id))
            c.execute("INSERT INTO label_history(case_id, path, saved_by, saved_at, source) VALUES (?,?,?,?,?)",
                      (case_id, str(target), who, now, source))
        return target

    def label_history(self, case_id: str) -> list[dict]:
        rows = self._conn.execute("SELECT * FROM label_history WHERE case_id = ? ORDER BY id", (case_id,)).fetchall()
        return [dict(r) for r in rows]

    def read_label(self, case_id: str) -> np.ndarray | None:
        from ..volumes import read_volume
        path = self.label_path(case_id)
        return None if path is None else read_volume(path, kind="label").array

    # --------------------------------------------------------------- models
    @staticmethod
    def _model(row: sqlite3.Row) -> ModelVersion:
        return ModelVersion(row["id"], Path(row["path"]), row["checksum"], row["kind"], row["round_id"],
                            row["parent_id"], row["created_at"], json.loads(row["metrics"]))

    def register_model(self, path: str | Path, kind: str = "finetuned", round_id: int | None = None,
                       metrics: dict | None = None, make_current: bool = True) -> ModelVersion:
        """Record a complete checkpoint as a model version (and, by default, the current one).

        A checkpoint outside ``models/`` is copied in first (atomically), so the
        workspace never depends on a file the user may move.  The checksum is
        computed from the file as stored.
        """
        from ..models import file_checksum
        src = Path(path).resolve()
        if not src.exists():
            raise WorkspaceError("model file does not exist", path=src, hint="check the path")
        models_dir = self.paths.models
        if src.parent != models_dir:
            with self._write() as c:
                n = (c.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM models").fetchone()[0])
            dest = models_dir / f"model_{n:03d}_{src.name if src.is_file() else src.name + '.bundle'}"
            with atomic_path(dest, suffix="") as tmp:
                if src.is_dir():
                    tmp.unlink()
                    shutil.copytree(src, tmp)
                else:
                    shutil.copyfile(src, tmp)
            src = dest
        checksum = file_checksum(src)
        parent = self.current_model()
        with self._write() as c:
            cur = c.execute("INSERT INTO models(path, checksum, kind, round_id, parent_id, created_at, metrics) "
                            "VALUES (?,?,?,?,?,?,?)",
                            (str(src), checksum, kind, round_id, parent.id if parent else None, _now(),
                             json.dumps(metrics or {})))
            model_id = cur.lastrowid
            if make_current:
                c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('current_model_id', ?)", (str(model_id),))
            if kind == "foundation":
                c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('foundation_model_id', ?)", (str(model_id),))
        return self.model(model_id)

    def model(self, model_id: int) -> ModelVersion:
        row = self._conn.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
        if row is None:
            raise WorkspaceError(f"no model version {model_id}", path=self.folder)
        return self._model(row)

    def models(self) -> list[ModelVersion]:
        return [self._model(r) for r in self._conn.execute("SELECT * FROM models ORDER BY id").fetchall()]

    def current_model(self) -> ModelVersion | None:
        value = self._meta("current_model_id")
        return self.model(int(value)) if value else None

    def foundation_model(self) -> ModelVersion | None:
        value = self._meta("foundation_model_id")
        return self.model(int(value)) if value else None

    def set_current_model(self, model_id: int) -> None:
        self.model(model_id)
        self._set_meta("current_model_id", str(model_id))

    # --------------------------------------------------------------- scores
    def put_scores(self, model_checksum: str, settings_hash: str, records: dict[str, dict]) -> None:
        """Cache per-case score records (JSON-serialisable dicts) for one model and settings."""
        now = _now()
        with self._write() as c:
            c.executemany("INSERT OR REPLACE INTO scores(case_id, model_checksum, settings_hash, record, created_at) "
                          "VALUES (?,?,?,?,?)",
                          [(cid, model_checksum, settings_hash, json.dumps(rec), now) for cid, rec in records.items()])

    def get_scores(self, model_checksum: str, settings_hash: str) -> dict[str, dict]:
        rows = self._conn.execute("SELECT case_id, record FROM scores WHERE model_checksum = ? AND settings_hash = ?",
                                  (model_checksum, settings_hash)).fetchall()
        return {r["case_id"]: json.loads(r["record"]) for r in rows}

    # --------------------------------------------------------------- rounds
    @staticmethod
    def _round(row: sqlite3.Row) -> Round:
        return Round(row["id"], row["kind"], row["status"], row["started_at"], row["finished_at"],
                     json.loads(row["params"]), json.loads(row["metrics"]), row["model_id"])

    def start_round(self, kind: str, params: dict | None = None) -> int:
        with self._write() as c:
            cur = c.execute("INSERT INTO rounds(kind, status, started_at, params, pid) VALUES (?, 'running', ?, ?, ?)",
                            (kind, _now(), json.dumps(params or {}), os.getpid()))
            return int(cur.lastrowid)

    def finish_round(self, round_id: int, status: str = "finished", metrics: dict | None = None,
                     model_id: int | None = None) -> None:
        if status not in ("finished", "cancelled", "failed"):
            raise ValueError(f"unknown round status {status!r}")
        with self._write() as c:
            c.execute("UPDATE rounds SET status = ?, finished_at = ?, metrics = ?, model_id = ? WHERE id = ?",
                      (status, _now(), json.dumps(metrics or {}), model_id, round_id))

    def reap_interrupted_rounds(self) -> list[int]:
        """Mark rounds left ``running`` by a process that no longer exists as ``failed``.

        A worker killed outright (kill -9, power loss) cannot record its end;
        its model was never registered, so only the round's history needs
        mending.  Returns the ids of the rounds marked.
        """
        rows = self._conn.execute("SELECT id, pid FROM rounds WHERE status = 'running'").fetchall()
        dead = [r["id"] for r in rows if r["pid"] is not None and not _process_alive(r["pid"])]
        for round_id in dead:
            self.finish_round(round_id, "failed", metrics={
                "error": "interrupted: the process running this round ended without finishing it",
                "hint": "start the round again; the previous model stayed current"})
        return dead

    def rounds(self, kind: str | None = None) -> list[Round]:
        rows = self._conn.execute("SELECT * FROM rounds WHERE ?1 IS NULL OR kind = ?1 ORDER BY id", (kind,)).fetchall()
        return [self._round(r) for r in rows]

    # ------------------------------------------------------------------- QA
    def set_qa(self, case_id: str, decision: str, model_checksum: str | None = None, user: str | None = None,
               note: str | None = None) -> None:
        if decision not in ("accepted", "rejected"):
            raise ASSFTError(f"unknown QA decision {decision!r}", hint="use accepted or rejected")
        self.case(case_id)
        with self._write() as c:
            c.execute("INSERT INTO qa(case_id, model_checksum, decision, user, note, at) VALUES (?,?,?,?,?,?)",
                      (case_id, model_checksum, decision, user or _user(), note, _now()))

    def qa_decisions(self) -> dict[str, str]:
        """The latest QA decision per case."""
        rows = self._conn.execute("SELECT case_id, decision FROM qa ORDER BY id").fetchall()
        return {r["case_id"]: r["decision"] for r in rows}

    # ---------------------------------------------------------------- locks
    @contextmanager
    def job_lock(self, name: str = "worker") -> Iterator[None]:
        """Hold an exclusive, process-wide lock for a long job on this workspace.

        A second process asking for the same lock gets a :class:`WorkspaceError`
        naming the process that holds it.  The operating system releases the
        lock when the holder dies, so a killed worker never leaves it stuck.
        """
        lock_path = self.paths.lock(name)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock_path, "a+")
        try:
            if not _try_lock(fh):
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise WorkspaceError(f"another ASSFT job is running on this workspace ({holder})", path=self.folder,
                                     hint="wait for it to finish or cancel it")
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} since {_now()}")
            fh.flush()
            # Holding the lock, no other job can be writing: mend what a killed one left.
            self.reap_interrupted_rounds()
            self.remove_stale_temporaries()
            yield
        finally:
            fh.close()

    def remove_stale_temporaries(self, older_than_s: float = 3600.0) -> list[Path]:
        """Delete hidden temporary files of atomic writes that a killed process left behind.

        Only files older than ``older_than_s`` go, so a save in progress in
        another process (the GUI) is never touched.  Returns what was removed.
        """
        import time
        removed = []
        cutoff = time.time() - older_than_s
        for sub in ("labels", "labels/.history", "models", "pseudo", "cache", "."):
            for tmp in (self.folder / sub).glob(".*.tmp*"):
                try:
                    if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                        tmp.unlink()
                        removed.append(tmp)
                except FileNotFoundError:
                    pass
        return removed

    # ---------------------------------------------------------------- check
    def integrity_check(self) -> list[str]:
        """Problems found in the database and files; empty when all is consistent."""
        problems = []
        result = self._conn.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            problems.append(f"database: {result}")
        for case in self.cases():
            if case.label_path is not None and not case.label_path.exists():
                problems.append(f"{case.case_id}: label file missing: {case.label_path}")
        for m in self.models():
            if not m.path.exists():
                problems.append(f"model {m.id}: file missing: {m.path}")
        cur = self.current_model()
        if cur is not None and cur.path.exists():
            from ..models import file_checksum
            if file_checksum(cur.path) != cur.checksum:
                problems.append(f"current model {cur.id}: checksum mismatch: {cur.path}")
        return problems

    def summary(self) -> dict[str, Any]:
        counts = {s: 0 for s in ("unlabeled", "labeled", "error")}
        for row in self._conn.execute("SELECT status, COUNT(*) AS n FROM cases GROUP BY status"):
            counts[row["status"]] = row["n"]
        cur = self.current_model()
        return {"folder": str(self.folder), "dataset": str(self.dataset or ""), "classes": self.classes,
                "cases": sum(counts.values()), **counts,
                "rounds": len(self.rounds("train")), "current_model": None if cur is None else
                {"id": cur.id, "path": str(cur.path), "checksum": cur.checksum[:12], "kind": cur.kind,
                 "metrics": cur.metrics}}


def _process_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours, or the platform cannot tell: assume alive
    return True


def _try_lock(fh) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt
        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
