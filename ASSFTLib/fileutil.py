"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

A reader never sees a half-written file; a crash or a full disk leaves the
previous version in place.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ASSFTError


#: How every temporary of an atomic write is named: ``.assft-tmp-<random>.tmp<suffix>``.
TEMP_PREFIX = ".assft-tmp-"
_TEMP_NAME = re.compile(r"^\.assft-tmp-[A-Za-z0-9_]{6,}\.tmp")
_NAME_MAX = 255


def _check_target(target: str | Path, suffix: str | None = None) -> Path:
    """``target`` as a Path, or an :class:`~ASSFTLib.errors.ASSFTError`: a name too long, a path too long, a folder."""
    target = Path(target)
    if len(os.fsencode(target.name)) > _NAME_MAX:
        raise ASSFTError(f"file name is {len(os.fsencode(target.name))} bytes long; file systems allow {_NAME_MAX}",
                         path=target, hint="choose a shorter name")
    try:
        is_folder = target.is_dir()
    except OSError as exc:  # a path too long for the file system
        raise ASSFTError(f"cannot be written ({exc.strerror or exc})", path=target,
                         hint="choose a shorter path") from exc
    if is_folder:
        raise ASSFTError("is a folder, not a file name", path=target,
                         hint=f"give a file name, for example {target / 'out'}{suffix or ''.join(target.suffixes)}")
    return target


def check_writable(target: str | Path, what: str = "the file") -> None:
    """Fail now, not after a long job, where :func:`atomic_path` would fail: the checks it makes, and a file
    created and removed in ``target``'s folder (made if missing)."""
    target = _check_target(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(prefix=TEMP_PREFIX, dir=target.parent):
            pass
    except OSError as exc:
        raise ASSFTError(f"cannot write {what} here: {exc.strerror or exc}", path=target,
                         hint="choose a folder you can write to") from exc


@contextmanager
def atomic_path(target: str | Path, suffix: str | None = None, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it over ``target``.

    ``suffix`` keeps the file type visible to writers that dispatch on it
    (``.nii.gz``, ``.nrrd``); it defaults to the target's full suffix.
    On any exception the temporary file is removed and ``target`` is untouched.
    The temporary is hidden and named ``.assft-tmp-<random>.tmp<suffix>`` (:func:`is_temporary`), a name no
    case id gives.  The caller may replace it by a folder (a MONAI bundle).  ``overwrite=False`` raises
    ``FileExistsError`` instead of replacing an existing ``target``.  A ``target`` that is a folder is an
    :class:`~ASSFTLib.errors.ASSFTError` (``rank --csv DIR``).
    """
    target = _check_target(target, suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes)[-32:] or ".tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp" + suffix, dir=target.parent)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise ASSFTError("path is too long for the file system", path=target,
                             hint="choose a folder with a shorter path") from exc
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the file the permissions a plain open() would (others on the
    # workstation, e.g. the radiologist's account, must be able to read labels and reports).
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        if tmp_path.is_dir():  # a folder copied in its place (a MONAI bundle): sync its files, then itself
            for sub in sorted(tmp_path.rglob("*")):
                if sub.is_file() and not sub.is_symlink():
                    with open(sub, "rb") as fh:
                        os.fsync(fh.fileno())
            _fsync_dir(tmp_path)
        else:
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp_path, target)
        else:  # never replaces an existing file (FileExistsError); a folder keeps rename's own check
            if tmp_path.is_dir():
                if target.exists():
                    raise FileExistsError(errno.EEXIST, "exists", str(target))
                os.rename(tmp_path, target)
            else:
                try:
                    os.link(tmp_path, target)
                    tmp_path.unlink()
                except FileExistsError:
                    raise
                except OSError:  # no hard links here (FAT, some network shares): check, then rename
                    if target.exists():
                        raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
                    os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except BaseException:
        _remove(tmp_path)
        raise


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def is_temporary(name: str) -> bool:
    """Whether a file name is one :func:`atomic_path` gives its temporaries (never a label's or a case's:
    case ids never start with ``.``, and the name carries :data:`TEMP_PREFIX`)."""
    return _TEMP_NAME.match(name) is not None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
