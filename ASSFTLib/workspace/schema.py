"""The workspace database: connecting, its schema, and short write transactions.

``assft.db`` is SQLite in WAL mode.  Several processes may use it at once
(the Slicer GUI and a background worker): every write is a short
``BEGIN IMMEDIATE`` transaction with a generous busy timeout, so writers wait
for each other instead of failing.
"""
from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Tuple

from ..errors import WorkspaceError
from .paths import WorkspacePaths

#: Meta ``schema_version`` as the first releases wrote it; they refuse a workspace above it.  A
#: migration those releases could not read must raise it (the steps so far only add).
META_SCHEMA_VERSION = 1

# Step 1: the schema of the first release.
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    image_path TEXT NOT NULL,
    reference_label TEXT,            -- the dataset's own label file, if any (never written)
    label_path TEXT,                 -- the current label in use, if any
    status TEXT NOT NULL DEFAULT 'unlabeled',   -- unlabeled | labeled
    labeled_by TEXT,
    labeled_at TEXT,
    error TEXT,                      -- never written
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
    model_id INTEGER
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


def _create_tables(conn: sqlite3.Connection) -> None:
    for statement in _TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)


def _add_round_pid(conn: sqlite3.Connection) -> None:
    """Step 2: ``rounds.pid``, the process running a round, to tell an interrupted one.

    Workspaces of the releases before numbered migrations (``user_version`` 0)
    may already have it: those created after it was added to the schema.
    """
    if "pid" not in {r["name"] for r in conn.execute("PRAGMA table_info(rounds)")}:
        conn.execute("ALTER TABLE rounds ADD COLUMN pid INTEGER")


#: Sub-folders of a workspace whose files the database points to.
_INTERNAL = ("labels", "models", "pseudo", "cache")


def relative_to_workspace(value: str, folder: Path) -> str:
    """``value`` as stored from now on: relative (POSIX) when it names a file of the workspace ``folder``,
    else unchanged.  A path of the workspace's old location (it was moved or copied) is recognised by
    its last ``labels/``/``models/``/... part when that file exists here."""
    path = Path(value)
    if not path.is_absolute():
        return value
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        pass
    parts = path.parts
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in _INTERNAL:
            rel = Path(*parts[i:])
            if (folder / rel).exists():
                return rel.as_posix()
            break
    return value


def _relative_paths(conn: sqlite3.Connection) -> None:
    """Step 3: paths of the workspace's own files (labels, history, models) relative to the workspace, so a
    workspace moved or copied to another folder keeps working.  Dataset files keep their absolute paths."""
    row = next((r for r in conn.execute("PRAGMA database_list") if r["name"] == "main"), None)
    if row is None or not row["file"]:
        return
    folder = Path(row["file"]).resolve().parent
    for table, key, column in (("cases", "case_id", "label_path"), ("label_history", "id", "path"),
                               ("models", "id", "path")):
        for r in conn.execute(f"SELECT {key}, {column} FROM {table} WHERE {column} IS NOT NULL").fetchall():
            new = relative_to_workspace(r[column], folder)
            if new != r[column]:
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (new, r[key]))


#: Numbered migrations: step ``n`` (1-based) brings a database at ``user_version`` n-1 to n.
#: Append new steps; never edit or reorder old ones.
MIGRATIONS: Tuple[Callable[[sqlite3.Connection], None], ...] = (_create_tables, _add_round_pid, _relative_paths)
#: The ``PRAGMA user_version`` this code writes and knows how to read.
SCHEMA_VERSION = len(MIGRATIONS)


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def apply_migrations(conn: sqlite3.Connection, db: Path) -> None:
    """Run the steps after the database's ``user_version``; the caller holds a write transaction."""
    version = user_version(conn)
    _refuse_newer(version, db)
    for step in MIGRATIONS[version:]:
        step(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")


def migrate(conn: sqlite3.Connection, db: Path) -> None:
    """Bring an existing database up to :data:`SCHEMA_VERSION` in one write transaction.

    Safe when several processes open one old workspace at once: each waits
    for the write lock and reads the version again under it, so the steps
    run once; a failed step rolls back and leaves the database as it was.
    A database newer than this code is refused with a :class:`WorkspaceError`.
    """
    try:
        version = user_version(conn)
        _refuse_newer(version, db)
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            apply_migrations(conn, db)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as exc:
        raise WorkspaceError(f"workspace database cannot be upgraded to schema {SCHEMA_VERSION}: {exc}", path=db,
                             hint="another program may hold it, or the disk is full; nothing was changed") from exc


def _refuse_newer(version: int, db: Path) -> None:
    if version > SCHEMA_VERSION:
        raise WorkspaceError(f"workspace was written by a newer ASSFT (database schema {version}; this ASSFT "
                             f"knows up to {SCHEMA_VERSION})", path=db, hint="upgrade ASSFT to open it")


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
        raise database_error(exc, db, "opened") from exc
    return conn


def database_error(exc: sqlite3.DatabaseError, db: Path, doing: str = "read") -> WorkspaceError:
    """A clear error for SQLite's failure on ``db``.  Only a database SQLite itself calls damaged gets the
    advice to restore a backup: that advice, given for a read-only folder or a busy file, could make a
    user replace a good database."""
    text = str(exc)
    low = text.lower()
    if "readonly" in low or "read-only" in low or "unable to open" in low or "permission" in low \
            or (db.exists() and not os.access(db, os.W_OK)) or not os.access(db.parent, os.W_OK):
        return WorkspaceError(f"workspace database cannot be {doing}: {text}; the workspace folder or assft.db is "
                              "read-only or not accessible (the database itself is not damaged)", path=db,
                              hint="ask for write permission, or copy the whole workspace folder to one you can "
                                   "write and open the copy")
    if "locked" in low or "busy" in low:
        return WorkspaceError(f"workspace database cannot be {doing}: {text}", path=db,
                              hint="another program holds it; close it and repeat (the database is fine)")
    if "malformed" in low or "not a database" in low or "corrupt" in low:
        return WorkspaceError(f"workspace database is damaged: {text}", path=db,
                              hint="copy assft.db aside, then restore it from a backup; labels/ and models/ are "
                                   "untouched")
    return WorkspaceError(f"workspace database cannot be {doing}: {text}", path=db,
                          hint="check the disk and the folder's permissions, then repeat")


def quick_check(conn: sqlite3.Connection, db: Path) -> None:
    """SQLite's ``PRAGMA quick_check`` (every page readable, constraints aside); a damaged page is a clear error."""
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        raise database_error(exc, db) from exc
    if rows != ["ok"]:
        raise database_error(sqlite3.DatabaseError(f"database disk image is malformed ({'; '.join(rows[:3])})"), db)


class DatabaseMixin:
    """The connection's helpers shared by the other parts of :class:`~ASSFTLib.workspace.Workspace`."""

    folder: Path
    paths: WorkspacePaths
    _conn: sqlite3.Connection

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
            raise database_error(exc, db, "written") from exc
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

    def resolve_path(self, value: str | Path) -> Path:
        """A path as stored in the database: relative ones are inside the workspace folder."""
        path = Path(value)
        return path if path.is_absolute() else self.folder / path

    def store_path(self, path: str | Path) -> str:
        """How a path is stored: relative (POSIX) inside the workspace, absolute outside (dataset files)."""
        path = Path(path)
        try:
            return path.resolve().relative_to(self.folder).as_posix()
        except ValueError:
            return str(path)

    def _meta(self, key: str) -> str | None:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise database_error(exc, self.paths.db) from exc
        return None if row is None else row["value"]
