"""Cases and their labels: listing cases, saving a label on the image's grid, its history."""
from __future__ import annotations

import hashlib
import itertools
import shutil
import sqlite3
from pathlib import Path

import numpy as np

from ..errors import LabelError, WorkspaceError
from ..fileutil import atomic_path
from .paths import LABEL_SUFFIX
from .records import LABEL_SOURCES, SIMULATED_SOURCES, Case, current_user, now
from .schema import DatabaseMixin


class CasesMixin(DatabaseMixin):
    """Cases (one per image of the dataset) and the labels saved on them."""

    def _case(self, row: sqlite3.Row) -> Case:
        p = lambda v: self.resolve_path(v) if v else None  # noqa: E731
        return Case(row["case_id"], Path(row["image_path"]), p(row["reference_label"]), p(row["label_path"]),
                    row["status"], row["labeled_by"], row["labeled_at"], row["profile"])

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

    # --------------------------------------------------------------- labels
    def save_label(self, case_id: str, array: np.ndarray, affine: np.ndarray | None = None, user: str | None = None,
                   source: str = "manual") -> Path:
        """Save ``array`` (X, Y, Z) as the case's label, on the image's grid.

        The label is checked against the image (shape, and geometry when
        ``affine`` is given) and the workspace's classes before anything is
        written; it is written atomically to ``labels/<case>.nii.gz`` and a
        label it replaces is first kept in ``labels/.history/``.  ``source`` is one of
        :data:`~.records.LABEL_SOURCES` (or a simulated annotator's, :data:`~.records.SIMULATED_SOURCES`).
        """
        from ..volumes import Volume, check_label_values, check_same_geometry, read_volume, write_volume
        if source not in LABEL_SOURCES + SIMULATED_SOURCES:
            raise LabelError(f"unknown label source {source!r}", path=self.folder,
                             hint=f"use one of {', '.join(LABEL_SOURCES + SIMULATED_SOURCES)}")
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
        stamp = now()
        if target.exists():
            name = case_id if len(case_id.encode()) <= 150 else \
                f"{case_id.encode()[:100].decode(errors='ignore')}-{hashlib.sha1(case_id.encode()).hexdigest()[:10]}"
            base = f"{name}.{stamp.replace(':', '').replace('+', 'Z')}"  # within a file name's 255 bytes
            keep = self.paths.label_history / f"{base}{LABEL_SUFFIX}"
            try:
                for n in itertools.count(1):  # saves within one millisecond: .2, .3, ... never one over another
                    try:
                        with atomic_path(keep, overwrite=False) as tmp:
                            shutil.copyfile(target, tmp)
                        break
                    except FileExistsError:
                        keep = self.paths.label_history / f"{base}.{n + 1}{LABEL_SUFFIX}"
            except OSError as exc:
                raise LabelError(f"cannot keep the previous label in the history ({exc.strerror or exc}); "
                                 "the current label is unchanged", path=keep,
                                 hint="free disk space or check that the workspace is writable, then save again") from exc
        write_volume(target, array.astype(np.uint8 if len(self.classes) <= 256 else np.int16), image.affine)
        who = user or current_user()
        with self._write() as c:
            c.execute("UPDATE cases SET label_path = ?, status = 'labeled', labeled_by = ?, labeled_at = ? "
                      "WHERE case_id = ?", (self.store_path(target), who, stamp, case_id))
            c.execute("INSERT INTO label_history(case_id, path, saved_by, saved_at, source) VALUES (?,?,?,?,?)",
                      (case_id, self.store_path(target), who, stamp, source))
        return target

    def label_history(self, case_id: str) -> list[dict]:
        rows = self._conn.execute("SELECT * FROM label_history WHERE case_id = ? ORDER BY id", (case_id,)).fetchall()
        return [{**dict(r), "path": str(self.resolve_path(r["path"]))} for r in rows]

    def read_label(self, case_id: str) -> np.ndarray | None:
        from ..volumes import read_volume
        path = self.label_path(case_id)
        return None if path is None else read_volume(path, kind="label").array
