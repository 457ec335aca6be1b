"""The workspace database: connecting, its schema, and short write transactions.

``assft.db`` is SQLite in WAL mode.  Several processes may use it at once
(the Slicer GUI and a background worker): every write is a short
``BEGIN IMMEDIATE`` transaction with a generous busy timeout, so writers wait
for each other instead of failing.
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import WorkspaceError
from .paths import WorkspacePaths

SCHEMA_VERSION = 1

SCHEMA = """
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


def connect(db: Path) -> sqlite3.Connection:
    """Open ``db`` for use by one process: rows by name, WAL, full sync, a 60 s busy timeout."""
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


class DatabaseMixin:
    """The connection's helpers shared by the other parts of :class:`~ASSFTLib.workspace.Workspace`."""

    folder: Path
    paths: WorkspacePaths
    _conn: sqlite3.Connection

    def _add_missing_columns(self) -> None:
        """Columns added since schema version 1 was first written (additive, so old workspaces open)."""
        def has_pid() -> bool:
            return "pid" in {r["name"] for r in self._conn.execute("PRAGMA table_info(rounds)")}
        if not has_pid():
            with self._write() as c:
                if not has_pid():  # another process may have added it while we waited for the lock
                    c.execute("ALTER TABLE rounds ADD COLUMN pid INTEGER")

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
