"""Interrupted and concurrent work: kill -9 of real workers and label savers, a full disk, two writers.

Every fault is followed by the same audit (:func:`audit`): ``Workspace.integrity_check()`` is empty,
SQLite's own ``PRAGMA integrity_check`` says ok, every label file (and every label the database
points to) reads with ``volumes.read_volume``, temporary files of interrupted writes are hidden (never
taken for labels), the current model loads and its checksum matches, and every label a saver was
told was saved is still there with its content.

``ASSFT_FAULT_LOOPS`` sets the number of kills, dealt in turn to scoring, training and label saving
(default 6, for CI); ``ASSFT_FAULT_SECONDS`` bounds the kill loop in time (default 90 s).  A heavier local run:
``ASSFT_FAULT_LOOPS=100 ASSFT_FAULT_SECONDS=1800 pytest Testing/Python/test_reliability_faults.py``.
"""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")

from ASSFTLib import volumes
from ASSFTLib import worker
from ASSFTLib.errors import LabelError, VolumeError
from ASSFTLib.models import file_checksum, load_model
from ASSFTLib.workspace import Workspace
from test_training import foundation_file, make_workspace, tiny_dataset, tiny_settings  # noqa: F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::ASSFTLib.training.TrainingWarning")

LOOPS = int(os.environ.get("ASSFT_FAULT_LOOPS", "6"))
LOOP_SECONDS = float(os.environ.get("ASSFT_FAULT_SECONDS", "90"))
WAIT_S = 300
#: Voxels at the start of a saved label that encode which save wrote it (base 3, classes 0..2).
CODE_VOXELS = 12

# A GUI-like process: saves labels (and QA decisions) in a loop, printing "case i" after each save returns;
# arguments: workspace, first save index, number of saves[, a file whose existence stops it].
_SAVER = r"""
import os, sys
import numpy as np
from ASSFTLib import volumes
from ASSFTLib.workspace import Workspace
ws = Workspace.open(sys.argv[1])
start, count = int(sys.argv[2]), int(sys.argv[3])
cases = [c.case_id for c in ws.cases()]
shapes = {c: volumes.read_volume(ws.image_path(c)).shape for c in cases}
print("ready", flush=True)
for i in range(start, start + count):
    if len(sys.argv) > 4 and os.path.exists(sys.argv[4]):
        break
    case = cases[i %% len(cases)]
    label = np.zeros(int(np.prod(shapes[case])), np.uint8)
    label[:%d] = [(i // 3 ** k) %% 3 for k in range(%d)]
    ws.save_label(case, label.reshape(shapes[case]), user="saver")
    ws.set_qa(case, "accepted" if i %% 2 else "rejected", user="saver")
    print(case, i, flush=True)
""" % (CODE_VOXELS, CODE_VOXELS)


def decode(label: np.ndarray) -> int:
    """The save index a label written by ``_SAVER`` carries."""
    digits = label.reshape(-1)[:CODE_VOXELS].astype(int)
    return int(sum(int(d) * 3 ** k for k, d in enumerate(digits)))


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _popen(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), start_new_session=True)


def _worker(kind: str, ws: Path, *extra: str) -> subprocess.Popen:
    return _popen(["-m", "ASSFTLib.worker", kind, "--workspace", str(ws), *extra])


def _read_until(proc: subprocess.Popen, test, lines: list[str]) -> bool:
    """Read stdout lines into ``lines`` until ``test(line)``; False if the process ended first."""
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if test(line):
            return True
    return False


def _kill9(proc: subprocess.Popen) -> bool:
    """SIGKILL the process group; True when it was still running (the fault landed)."""
    landed = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=WAIT_S)
    return landed


def audit(folder: Path, expected: dict[str, set[int]] | None = None) -> None:
    """The invariants that must hold after any fault (see the module docstring)."""
    with sqlite3.connect(folder / "assft.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Workspace.open(folder) as ws:
        assert ws.integrity_check() == []
        labels = folder / "labels"
        for path in labels.iterdir():
            if path.is_file() and not path.name.startswith("."):
                volumes.read_volume(path, kind="label")  # no half-written label file is visible
        assert all(p.name.startswith(".") for p in labels.iterdir() if ".tmp" in p.name)
        for path in (labels / ".history").iterdir():
            if not path.name.startswith("."):
                volumes.read_volume(path, kind="label")
        for case in ws.cases():
            if case.label_path is not None:
                volumes.read_volume(case.label_path, kind="label")
        current = ws.current_model()
        assert current is not None and file_checksum(current.path) == current.checksum
        load_model(current.path)
        for case_id, indices in (expected or {}).items():  # every save that returned is still there
            assert ws.case(case_id).is_labeled  # (or one that was under way when it was killed)
            assert decode(ws.read_label(case_id)) in indices, (case_id, indices)


@pytest.fixture
def ws_path(tmp_path, tiny_dataset, foundation_file) -> Path:  # noqa: F811
    make_workspace(tmp_path / "ws", tiny_dataset, foundation_file, tiny_settings()).close()
    return tmp_path / "ws"


def _finish(proc: subprocess.Popen) -> list[dict]:
    out, err = proc.communicate(timeout=WAIT_S)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert proc.returncode == worker.EXIT_OK, (proc.returncode, err[-2000:], events[-1:])
    return events


# ----------------------------------------------------------------------------------- kill -9
def test_kill9_during_scoring_training_and_label_saving_loses_nothing(ws_path, record_property):
    """Random SIGKILLs of real worker processes (score, train) and of a label-saving GUI stand-in.

    Each kill lands at a random moment after the job has started working; afterwards the
    workspace passes :func:`audit` and the job, run again, completes.
    """
    rng = random.Random(int(os.environ.get("ASSFT_FAULT_SEED", "0")))
    deadline = time.monotonic() + LOOP_SECONDS
    landed = {"score": 0, "train": 0, "save": 0}
    expected: dict[str, set[int]] = {}  # per case: the last acknowledged save, plus any cut short since
    next_save = 0
    with Workspace.open(ws_path) as ws:
        cases = [c.case_id for c in ws.cases()]
    for loop in range(max(LOOPS, 3)):
        if time.monotonic() > deadline and loop >= 3:
            break
        kind = ("score", "train", "save")[loop % 3]
        lines: list[str] = []
        if kind == "save":
            proc = _popen(["-c", _SAVER, str(ws_path), str(next_save), "1000000"])
            assert _read_until(proc, lambda line: line.startswith("ready"), lines), proc.stderr.read()
            time.sleep(rng.uniform(0.0, 1.5))
        else:
            # a new scoring key each loop, so that scoring has work to do (MC-dropout passes make each
            # case slow enough that the kill lands mid-job even on an idle machine: with E0 cached, the
            # bare scoring of these tiny volumes can finish within the delay); training with random steps
            extra = (["--set", f"fg_threshold={0.3 + 0.01 * loop}", "--set", "mc_dropout_samples=12"]
                     if kind == "score" else ["--steps", str(rng.randint(2, 8))])
            proc = _worker(kind, ws_path, *extra)
            _read_until(proc, lambda line: '"progress"' in line, lines)
            time.sleep(rng.uniform(0.0, 0.3 if kind == "score" else 1.0))
        landed[kind] += _kill9(proc)
        lines += proc.stdout.read().splitlines()
        if kind == "save":
            acks = [line.rsplit(" ", 1) for line in lines if line and not line.startswith("ready")]
            for case_id, i in acks:
                expected[case_id] = {int(i)}
            next_save += len(acks)
            cut = cases[next_save % len(cases)]
            if cut in expected:
                expected[cut].add(next_save)
            next_save += 1  # never reuse the index of a save that may have half-happened
        audit(ws_path, expected)
    # afterwards every job runs to completion on the same workspace
    scored = _finish(_worker("score", ws_path))[-1]
    assert scored["event"] == "result" and not scored["errors"] and scored["scored"] + scored["cached"] == len(cases)
    events = _finish(_worker("train", ws_path, "--steps", "2"))
    result = [e for e in events if e["event"] == "result"][0]
    with Workspace.open(ws_path) as ws:
        assert ws.current_model().id == result["model_id"]
    audit(ws_path, expected)
    for kind, n in landed.items():
        record_property(f"kills_{kind}", n)
    stray = [p.name for p in ws_path.rglob(".*.tmp*")]
    print(f"kills landed: {landed}; hidden temp files left by killed writes: {len(stray)}")
    assert all(n >= 1 for n in landed.values()), landed  # every scenario really was interrupted


# --------------------------------------------------------------------------------- full disk
def _save_then_fill(ws: Workspace, fill) -> tuple[str, np.ndarray, int]:
    """Save a label, then a second one while ``fill`` makes the disk full; returns (case, first label, history rows)."""
    case = ws.cases()[0].case_id
    shape = volumes.read_volume(ws.image_path(case)).shape
    first = np.zeros(shape, np.uint8)
    first[2:6, 2:6, 2:6] = 1
    ws.save_label(case, first, user="before")
    rows = len(ws.label_history(case))
    fill()
    return case, first, rows


def _check_nothing_lost(ws: Workspace, case: str, first: np.ndarray, rows: int, saved: dict[str, np.ndarray]) -> None:
    assert np.array_equal(ws.read_label(case), first)
    assert ws.case(case).labeled_by == "before" and len(ws.label_history(case)) == rows
    for other, label in saved.items():
        if other != case:
            assert np.array_equal(ws.read_label(other), label)
    assert not [p for p in (ws.folder / "labels").rglob("*") if ".tmp" in p.name]
    assert ws.integrity_check() == []


def test_full_disk_during_a_label_save_simulated(ws_path, monkeypatch):
    """Simulated ENOSPC: the NIfTI writer writes half a file, then fails as a full disk does (always runs)."""
    with Workspace.open(ws_path) as ws:
        saved = {c: ws.read_label(c) for c in ws.labeled_ids()}
        real_save = nib.save

        def half_then_enospc(img, filename):
            real_save(img, filename)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

        case, first, rows = _save_then_fill(ws, lambda: monkeypatch.setattr(nib, "save", half_then_enospc))
        with pytest.raises(VolumeError, match="No space left") as err:
            ws.save_label(case, np.ones_like(first), user="during")
        assert str(ws.folder / "labels") in str(err.value) and "free disk space" in str(err.value)
        monkeypatch.setattr(nib, "save", real_save)
        _check_nothing_lost(ws, case, first, rows + 0, saved)
        ws.save_label(case, np.ones_like(first), user="after")  # once space is back, saving works
        assert np.array_equal(ws.read_label(case), np.ones_like(first))


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({done.stderr.decode().strip()}); "
                    "the simulated full-disk test covers this")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_during_a_label_save_real_tmpfs(small_disk, tiny_dataset, foundation_file):  # noqa: F811
    """A real full filesystem: the workspace on a 3 MiB tmpfs, filled up between two saves."""
    ws = make_workspace(small_disk / "ws", tiny_dataset, foundation_file, tiny_settings(), n_labeled=2)
    saved = {c: ws.read_label(c) for c in ws.labeled_ids()}
    filler = small_disk / "filler"

    def fill() -> None:
        with open(filler, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC

    case, first, rows = _save_then_fill(ws, fill)
    with pytest.raises((VolumeError, LabelError), match="No space left") as err:
        ws.save_label(case, np.ones_like(first), user="during")
    assert "free disk space" in str(err.value)
    _check_nothing_lost(ws, case, first, rows, saved)
    filler.unlink()
    ws.save_label(case, np.ones_like(first), user="after")
    assert np.array_equal(ws.read_label(case), np.ones_like(first))
    ws.close()


# -------------------------------------------------------------------------------- concurrency
def test_gui_saves_labels_while_a_worker_scores_and_trains(ws_path):
    """The GUI-like saver and a real worker write one workspace at once; both finish, nothing is lost."""
    stop = ws_path.parent / "stop_saver"
    saver = _popen(["-c", _SAVER, str(ws_path), "0", "100000", str(stop)])
    assert _read_until(saver, lambda line: line.startswith("ready"), []), saver.stderr.read()
    train_events = _finish(_worker("train", ws_path, "--steps", "3"))
    score_events = _finish(_worker("score", ws_path))
    stop.touch()
    out, err = saver.communicate(timeout=WAIT_S)
    assert saver.returncode == 0, err[-2000:]
    acks = {}
    for line in out.splitlines():
        case_id, i = line.rsplit(" ", 1)
        acks[case_id] = int(i)
    assert train_events[-1]["event"] == "result" and score_events[-1]["event"] == "result"
    audit(ws_path, {c: {i} for c, i in acks.items()})
    with Workspace.open(ws_path) as ws:
        assert set(ws.qa_decisions()) == set(acks) and len(acks) == len(ws.cases())
        train = ws.rounds("train")[-1]
        saves = [h["saved_at"] for c in acks for h in ws.label_history(c) if h["saved_by"] == "saver"]
        assert any(train.started_at <= t <= train.finished_at for t in saves)  # they really overlapped


def test_a_second_worker_refuses_with_exit_code_4(ws_path):
    """Two real workers on one workspace: the second says who holds it and exits 4; later it runs."""
    first = _worker("train", ws_path, "--steps", "100000")
    lines: list[str] = []
    assert _read_until(first, lambda line: '"progress"' in line, lines), first.stderr.read()
    second = _worker("score", ws_path)
    out, _ = second.communicate(timeout=WAIT_S)
    assert second.returncode == worker.EXIT_BUSY
    last = json.loads(out.splitlines()[-1])
    assert last["event"] == "error" and last["code"] == worker.EXIT_BUSY
    assert "another ASSFT job" in last["message"] and f"pid {first.pid}" in last["message"]
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=WAIT_S)
    assert first.returncode == worker.EXIT_CANCELLED
    _finish(_worker("score", ws_path))
    audit(ws_path)
