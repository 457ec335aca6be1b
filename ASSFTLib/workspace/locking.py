"""The job lock (one long job per workspace) and cleaning up after a killed one."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import WorkspaceBusy
from ..fileutil import is_temporary
from .records import now
from .schema import DatabaseMixin


class LockingMixin(DatabaseMixin):
    """An exclusive, process-wide job lock; taking it mends what a killed job left behind."""

    @contextmanager
    def job_lock(self, name: str = "worker") -> Iterator[None]:
        """Hold an exclusive, process-wide lock for a long job on this workspace.

        A second process asking for the same lock gets
        :class:`~ASSFTLib.errors.WorkspaceBusy` (a ``WorkspaceError``) naming the
        process that holds it.  The operating system releases the
        lock when the holder dies, so a killed worker never leaves it stuck.
        """
        lock_path = self.paths.lock(name)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock_path, "a+")
        try:
            if not _try_lock(fh):
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise WorkspaceBusy(f"another ASSFT job is running on this workspace ({holder})", path=self.folder,
                                    hint="wait for it to finish or cancel it")
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} since {now()}")
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
        removed = []
        cutoff = time.time() - older_than_s
        keep = self.referenced_files()
        for folder in self.paths.written_folders:
            if not folder.is_dir():
                continue
            for tmp in folder.iterdir():
                # recognised by the name atomic_path gives its temporaries, never by a pattern a case id can
                # match; a file the database points to is never a temporary, whatever its name
                if not is_temporary(tmp.name) or tmp.resolve() in keep:
                    continue
                try:
                    if tmp.is_file() and not tmp.is_symlink() and tmp.stat().st_mtime < cutoff:
                        tmp.unlink()
                        removed.append(tmp)
                except FileNotFoundError:
                    pass
        return removed

    def referenced_files(self) -> set:
        """Every file the database points to: labels, their history, models."""
        refs = set()
        for case in self.cases():
            for p in (case.label_path, case.reference_label):
                if p is not None:
                    refs.add(Path(p).resolve())
        for row in self._conn.execute("SELECT path FROM label_history").fetchall():
            refs.add(self.resolve_path(row["path"]))
        for m in self.models():
            refs.add(Path(m.path).resolve())
        return refs


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
