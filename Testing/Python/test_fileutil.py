import os
import stat

import pytest

from ASSFTLib.fileutil import atomic_path, atomic_write_text


def test_atomic_write_replaces_whole_file_with_plain_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "labels" / "case.txt"
        atomic_write_text(target, "first")
        atomic_write_text(target, "second")
    finally:
        os.umask(old)
    assert target.read_text() == "second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # readable by the other accounts of a workstation
    assert [p.name for p in target.parent.iterdir()] == ["case.txt"]


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "case.nii.gz"
    target.write_bytes(b"saved before")
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz")  # writers dispatch on the suffix
            tmp.write_bytes(b"half")
            raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"saved before"
    assert [p.name for p in tmp_path.iterdir()] == ["case.nii.gz"]
