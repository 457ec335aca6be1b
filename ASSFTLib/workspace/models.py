"""The model registry: checkpoints kept in ``models/`` with their checksums, and which is current."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

from ..errors import WorkspaceError
from ..fileutil import atomic_path
from .records import ModelVersion, now
from .schema import DatabaseMixin


class ModelsMixin(DatabaseMixin):
    """Model versions: registered checkpoints, the current one and the foundation model."""

    def _model(self, row: sqlite3.Row) -> ModelVersion:
        return ModelVersion(row["id"], self.resolve_path(row["path"]), row["checksum"], row["kind"], row["round_id"],
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
                            (self.store_path(src), checksum, kind, round_id, parent.id if parent else None, now(),
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

    def model_problem(self, version: ModelVersion) -> str | None:
        """Why ``version``'s file cannot be trusted (missing, or its bytes changed since it was registered)."""
        from ..errors import CheckpointError
        from ..models import file_checksum
        models = self.paths.models.resolve()
        if models not in Path(os.path.realpath(version.path)).parents:  # a colleague's database may name any file
            return f"model #{version.id}: the database points outside the workspace's models/ folder: {version.path}"
        if not version.path.exists():
            return f"model #{version.id}: file missing: {version.path}"
        try:
            actual = file_checksum(version.path)
        except CheckpointError as exc:
            return f"model #{version.id}: {exc}"
        if actual != version.checksum:
            return (f"model #{version.id}: the file changed since it was registered (checksum {actual[:12]}, "
                    f"recorded {version.checksum[:12]}): {version.path}")
        return None

    def verified(self, version: ModelVersion) -> ModelVersion:
        """``version`` when its file is intact; else :class:`WorkspaceError` (never use a swapped model, nor
        the score cache of the file it replaced)."""
        problem = self.model_problem(version)
        if problem is not None:
            raise WorkspaceError(problem, path=version.path,
                                 hint="restore the file, or make another model current with "
                                      "`assft use-model WORKSPACE ID` (`assft status` lists them)")
        return version

    def use_model(self, model_id: int) -> ModelVersion:
        """Make an earlier (or any registered, intact) model version current again."""
        version = self.verified(self.model(int(model_id)))
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('current_model_id', ?)", (str(version.id),))
        return version
