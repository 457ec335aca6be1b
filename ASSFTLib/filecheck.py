"""Is a file safe to read as a volume: a regular file (not a FIFO, device, folder or broken link), inside
the dataset, and -- for a detached NRRD header -- with its data file beside it.

A dataset may come from someone else: nothing in it may make ASSFT read a file outside it (``/etc/passwd``
through a header or a link) or hang on one (a FIFO).  :mod:`ASSFTLib.volumes` and :mod:`ASSFTLib.dataset`
call these before opening anything.
"""
from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

from .errors import VolumeError


_KIND_NAMES = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a device"),
               (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def check_regular_file(path: str | Path, root: str | Path | None = None) -> Path:
    """The real path of ``path`` when it is (or links to) a regular file, inside ``root`` if given.

    A dangling or looping symbolic link, a FIFO (reading it would hang), a device (``/dev/zero`` never
    ends), a socket or a folder raise :class:`VolumeError` naming the file.
    """
    path = Path(path)
    try:
        real = Path(os.path.realpath(path, strict=True)) if sys.version_info >= (3, 10) else path.resolve(strict=True)
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        linked = path.is_symlink()
        raise VolumeError("is a link to a file that does not exist" if linked else "file not found", path=path,
                          hint="check the path, or re-export the volume") from None
    except (RuntimeError, OSError) as exc:  # a link loop (ELOOP), no permission, a name too long
        detail = getattr(exc, "strerror", None) or str(exc)
        raise VolumeError(f"cannot be opened ({detail})", path=path,
                          hint="replace the link or file with the volume itself") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KIND_NAMES if test(mode)), "not a regular file")
        raise VolumeError(f"is {kind}, not a volume file" + (f" (it links to {real})" if path.is_symlink() else ""),
                          path=path, hint="replace it with the volume file itself")
    if root is not None:
        real_root = Path(os.path.realpath(root))
        if real != real_root and real_root not in real.parents:
            raise VolumeError(f"links to {real}, outside the dataset folder {real_root}", path=path,
                              hint="copy the file into the dataset folder instead of linking to it")
    return real


_DATA_FILE_KEY = re.compile(r"^\s*data\s*file\s*:(.*)$", re.IGNORECASE)


def detached_data_files(header: str | Path) -> list[Path]:
    """The data file a detached NRRD header (``.nhdr``) names, checked: a single regular file in the
    header's own folder (or below it).  An absolute path, ``../``, a link leaving the folder, a FIFO, a
    device or a multi-file list raise :class:`VolumeError` naming the header: a header must never make
    ASSFT read (or hang on) a file outside the dataset."""
    header = Path(header)
    try:
        with open(header, "rb") as fh:
            head = fh.read(65536)
    except OSError as exc:
        raise VolumeError(f"cannot be read ({exc.strerror or exc})", path=header, hint="check the file") from None
    lines = head.split(b"\n\n")[0].decode("latin-1").splitlines()
    values = [m.group(1).strip() for m in map(_DATA_FILE_KEY.match, lines) if m]
    hint = "keep the header's data file next to it in the dataset folder, or convert the volume to .nrrd or .nii.gz"
    if not values:
        raise VolumeError("detached NRRD header names no data file", path=header, hint=hint)
    if len(values) > 1 or values[0].upper().startswith("LIST") or len(values[0].split()) > 1:
        raise VolumeError(f"detached NRRD header names several data files ({values[0]!r}); ASSFT reads one",
                          path=header, hint=hint)
    name = values[0]
    folder = Path(os.path.realpath(header)).parent
    if Path(name).is_absolute():
        raise VolumeError(f"detached NRRD header points at {name}, an absolute path outside the dataset",
                          path=header, hint=hint)
    data = folder / name
    try:
        check_regular_file(data, root=folder)
    except VolumeError as exc:
        raise VolumeError(f"its data file {name!r} cannot be used: {exc.message}", path=header, hint=hint) from None
    return [data]
