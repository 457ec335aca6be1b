"""Workspace state: real SQLite, real files, real concurrent processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ASSFTLib import volumes
from ASSFTLib.errors import LabelError, WorkspaceError
from ASSFTLib.settings import Settings
from ASSFTLib.workspace import Workspace


def test_create_from_hippocampus(hippo_dir, tmp_path):
    ws = Workspace.create(tmp_path / "ws", dataset=hippo_dir, import_labels=False)
    cases = ws.cases()
    assert len(cases) == 220
    assert ws.classes == ["background", "Anterior", "Posterior"]
    assert all(c.status == "unlabeled" and c.reference_label is not None for c in cases)
    assert all(c.image_path.is_file() for c in cases)
    assert ws.integrity_check() == []
    # opening it again from another object sees the same state
    assert len(Workspace.open(tmp_path / "ws").unlabeled_ids()) == 220


def test_import_labels_marks_cases_labeled(synthetic_dataset, tmp_path):
    ws = Workspace.create(tmp_path / "ws", dataset=synthetic_dataset, import_labels=True)
    assert len(ws.labeled_ids()) == len(ws.cases()) > 0
    assert {c.labeled_by for c in ws.cases()} == {"dataset"}


def test_label_save_restore_keeps_geometry_and_history(hippo_dir, tmp_path):
    ws = Workspace.create(tmp_path / "ws", dataset=hippo_dir, import_labels=False)
    case = ws.cases()[3]
    image = volumes.read_volume(case.image_path)
    truth = volumes.read_volume(case.reference_label, kind="label").array
    path = ws.save_label(case.case_id, truth, affine=image.affine, user="dr_a")
    assert path.parent == ws.folder / "labels"
    saved = volumes.read_volume(path, kind="label")
    np.testing.assert_array_equal(saved.array, truth)
    np.testing.assert_allclose(saved.affine, image.affine, atol=1e-5)
    assert ws.case(case.case_id).labeled_by == "dr_a"
    # a corrected label replaces it, and the first version is kept
    corrected = truth.copy()
    corrected[corrected == 2] = 1
    ws.save_label(case.case_id, corrected, user="dr_b")
    history = list((ws.folder / "labels" / ".history").iterdir())
    assert len(history) == 1
    np.testing.assert_array_equal(volumes.read_volume(history[0], kind="label").array, truth)
    np.testing.assert_array_equal(ws.read_label(case.case_id), corrected)
    assert [h["saved_by"] for h in ws.label_history(case.case_id)] == ["dr_a", "dr_b"]


def test_bad_labels_are_refused_and_nothing_is_lost(synthetic_dataset, tmp_path):
    ws = Workspace.create(tmp_path / "ws", dataset=synthetic_dataset, import_labels=False)
    cid = ws.unlabeled_ids()[0]
    image = volumes.read_volume(ws.image_path(cid))
    good = np.zeros(image.array.shape, np.uint8)
    good[2:5, 2:5, 2:5] = 1
    ws.save_label(cid, good)
    with pytest.raises(LabelError, match="shape"):
        ws.save_label(cid, np.zeros((3, 3, 3), np.uint8))
    bad_values = good.copy()
    bad_values[0, 0, 0] = 7
    with pytest.raises(LabelError) as err:
        ws.save_label(cid, bad_values)
    assert cid in str(err.value) and "7" in str(err.value)
    shifted = image.affine.copy()
    shifted[:3, 3] += 5.0
    with pytest.raises(Exception) as err:
        ws.save_label(cid, good, affine=shifted)
    assert "origin" in str(err.value)
    # the label saved before the refusals is intact and still current
    np.testing.assert_array_equal(ws.read_label(cid), good)
    assert not list((ws.folder / "labels").glob(".*.tmp*"))


@pytest.mark.torch
def test_models_scores_rounds_qa(synthetic_dataset, tmp_path):
    ws = Workspace.create(tmp_path / "ws", dataset=synthetic_dataset, import_labels=False)
    assert ws.current_model() is None
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"not really a model, but a file with a checksum")
    m0 = ws.register_model(ckpt, kind="foundation")
    assert m0.path.parent == ws.folder / "models" and m0.path.read_bytes() == ckpt.read_bytes()
    rid = ws.start_round("train", {"labels": 2})
    ckpt.write_bytes(b"a second version")
    m1 = ws.register_model(ckpt, round_id=rid, metrics={"quality_dice": 0.5})
    ws.finish_round(rid, metrics={"loss": 0.1}, model_id=m1.id)
    assert ws.current_model().id == m1.id and ws.foundation_model().id == m0.id
    assert m1.parent_id == m0.id and m0.checksum != m1.checksum
    assert ws.rounds("train")[0].status == "finished"
    h = Settings().scoring_hash()
    ws.put_scores(m1.checksum, h, {"a": {"K": 1.0}, "b": {"K": 2.0}})
    assert ws.get_scores(m1.checksum, h) == {"a": {"K": 1.0}, "b": {"K": 2.0}}
    assert ws.get_scores(m0.checksum, h) == {}
    cid = ws.unlabeled_ids()[0]
    ws.set_qa(cid, "rejected")
    ws.set_qa(cid, "accepted")
    assert ws.qa_decisions() == {cid: "accepted"}
    with pytest.raises(WorkspaceError):
        ws.set_qa("no-such-case", "accepted")
    assert ws.integrity_check() == []


def test_create_refuses_nonempty_folder_and_open_refuses_non_workspace(synthetic_dataset, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(WorkspaceError, match="not empty"):
        Workspace.create(tmp_path / "busy", dataset=synthetic_dataset)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(WorkspaceError, match="not an ASSFT workspace"):
        Workspace.open(tmp_path / "busy")


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from ASSFTLib.workspace import Workspace
    from ASSFTLib import volumes
    folder, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ws = Workspace.open(folder)
    ids = ws.cases()
    for i in range(n):
        ws.put_scores("ck", "h", {f"{who}-{i}": {"i": i}})
        case = ids[i % len(ids)]
        if who == "w0":
            shape = volumes.read_volume(case.image_path).array.shape
            ws.save_label(case.case_id, np.full(shape, i % 2, np.uint8), user=who)
        ws.set_qa(case.case_id, "accepted" if i % 2 else "rejected", user=who)
    print("done")
""")


def test_concurrent_writers_do_not_corrupt(synthetic_dataset, tmp_path):
    """Three real processes (one saving labels, two writing scores and QA) on one workspace."""
    Workspace.create(tmp_path / "ws", dataset=synthetic_dataset, import_labels=False)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "ws"), f"w{k}", "25"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.strip() == "done"
    ws = Workspace.open(tmp_path / "ws")
    assert len(ws.get_scores("ck", "h")) == 75
    assert ws.integrity_check() == []
    assert len(ws.labeled_ids()) == min(25, len(ws.cases()))
    for cid in ws.labeled_ids():
        assert set(np.unique(ws.read_label(cid))) <= {0, 1}


def test_job_lock_refuses_second_process(synthetic_dataset, tmp_path):
    ws = Workspace.create(tmp_path / "ws", dataset=synthetic_dataset)
    probe = ("import sys\nfrom ASSFTLib.workspace import Workspace\n"
             "from ASSFTLib.errors import WorkspaceError\n"
             "try:\n    with Workspace.open(sys.argv[1]).job_lock('worker'):\n        print('got')\n"
             "except WorkspaceError as e:\n    print('refused:', e)\n")
    with ws.job_lock("worker"):
        out = subprocess.run([sys.executable, "-c", probe, str(ws.folder)], capture_output=True, text=True,
                             timeout=120).stdout
        assert out.startswith("refused:") and "another ASSFT job" in out
    out = subprocess.run([sys.executable, "-c", probe, str(ws.folder)], capture_output=True, text=True,
                         timeout=120).stdout
    assert out.strip() == "got"


def test_job_lock_held_elsewhere_is_workspace_busy(synthetic_dataset, tmp_path):
    from ASSFTLib.errors import WorkspaceBusy
    ws = Workspace.create(tmp_path / "ws", dataset=synthetic_dataset)
    other = Workspace.open(ws.folder)
    with ws.job_lock("worker"):
        with pytest.raises(WorkspaceBusy, match=f"another ASSFT job .*pid {os.getpid()}") as err:
            with other.job_lock("worker"):
                pass
        assert isinstance(err.value, WorkspaceError) and err.value.hint
        with other.job_lock("report"):  # another lock name is another lock
            pass
    with other.job_lock("worker"):
        pass


def test_cli_init_and_status(synthetic_dataset, tmp_path):
    ws = tmp_path / "ws"
    r = subprocess.run([sys.executable, "-m", "ASSFTLib.cli", "init", str(ws), "--dataset", str(synthetic_dataset),
                        "--no-labels"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "8 cases (0 labeled, 8 unlabeled" in r.stdout
    r = subprocess.run([sys.executable, "-m", "ASSFTLib.cli", "status", str(ws), "--json"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["cases"] == 8 and status["unlabeled"] == 8 and status["current_model"] is None
    r = subprocess.run([sys.executable, "-m", "ASSFTLib.cli", "status", str(tmp_path / "nothing")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "not an ASSFT workspace" in r.stderr and "assft init" in r.stderr


def test_round_of_a_killed_process_is_marked_failed_and_old_temporaries_go(synthetic_dataset, tmp_path):
    """A real process starts a round and is killed with SIGKILL before it can finish it."""
    import signal
    import time
    ws = Workspace.create(tmp_path / "ws", dataset=synthetic_dataset)
    starter = ("import sys, time\nfrom ASSFTLib.workspace import Workspace\n"
               "Workspace.open(sys.argv[1]).start_round('train')\nprint('started', flush=True)\ntime.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", starter, str(ws.folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "started"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    mine = ws.start_round("score")  # this process is alive: its round must stay running
    stale = ws.folder / "labels" / ".assft-tmp-abc123xy.tmp.nii.gz"  # as fileutil.atomic_path names them
    fresh = ws.folder / "labels" / ".assft-tmp-def456zw.tmp.nii.gz"
    stale.write_bytes(b"half a label")
    fresh.write_bytes(b"a save in progress")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    with ws.job_lock():
        pass
    status = {r.id: r for r in ws.rounds()}
    killed = next(r for r in status.values() if r.kind == "train")
    assert killed.status == "failed" and "interrupted" in killed.metrics["error"]
    assert status[mine].status == "running"
    assert not stale.exists() and fresh.exists()


def test_workspace_written_before_the_pid_column_opens_and_runs_rounds(synthetic_dataset, tmp_path):
    import sqlite3
    Workspace.create(tmp_path / "ws", dataset=synthetic_dataset).close()
    conn = sqlite3.connect(tmp_path / "ws" / "assft.db")
    conn.execute("ALTER TABLE rounds DROP COLUMN pid")  # as written by the first release of schema 1
    conn.execute("PRAGMA user_version = 0")  # which had no numbered migrations
    conn.commit()
    conn.close()
    ws = Workspace.open(tmp_path / "ws")
    rid = ws.start_round("train")
    ws.finish_round(rid)
    assert ws.rounds()[0].status == "finished"


def _as_before_migrations(db: Path, with_pid: bool) -> None:
    """Make ``db`` look as the releases before numbered migrations left it (user_version 0)."""
    import sqlite3
    conn = sqlite3.connect(db)
    if not with_pid:
        conn.execute("ALTER TABLE rounds DROP COLUMN pid")
    conn.execute("PRAGMA user_version = 0")
    conn.commit()
    conn.close()


def _schema_of(db: Path) -> tuple[int, dict]:
    import sqlite3
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                             "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        columns = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
        return conn.execute("PRAGMA user_version").fetchone()[0], columns
    finally:
        conn.close()


@pytest.mark.parametrize("with_pid", [False, True])
def test_old_workspace_is_migrated_to_the_schema_of_a_new_one(synthetic_dataset, tmp_path, with_pid):
    """Concurrent openers of a pre-migration workspace (with or without rounds.pid) all succeed; the result
    has the schema a new workspace gets, and keeps its cases, labels, rounds and settings."""
    from ASSFTLib.workspace.schema import SCHEMA_VERSION
    fresh = Workspace.create(tmp_path / "fresh", dataset=synthetic_dataset)
    fresh.close()
    expected = _schema_of(fresh.paths.db)
    assert expected[0] == SCHEMA_VERSION >= 2 and expected[1]["rounds"][-1] == "pid"
    old = Workspace.create(tmp_path / "old", dataset=synthetic_dataset)
    old_round = old.start_round("train")
    old.finish_round(old_round, metrics={"dice": 0.5})
    cases_before = old.cases()
    old.close()
    _as_before_migrations(old.paths.db, with_pid)
    assert _schema_of(old.paths.db)[0] == 0
    opener = ("import sys\nfrom ASSFTLib.workspace import Workspace\n"
              "ws = Workspace.open(sys.argv[1]); ws.start_round('score'); print(len(ws.cases()))\n")
    procs = [subprocess.Popen([sys.executable, "-c", opener, str(old.folder)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.strip() == str(len(cases_before))
    assert _schema_of(old.paths.db) == expected
    ws = Workspace.open(old.folder)
    assert ws.cases() == cases_before
    rounds = ws.rounds()
    assert [r.kind for r in rounds] == ["train"] + ["score"] * 4
    assert rounds[0].status == "finished" and rounds[0].metrics == {"dice": 0.5}
    assert ws.reap_interrupted_rounds() == [r.id for r in rounds[1:]]  # their processes ended: pid was recorded


def test_workspace_from_a_newer_assft_is_refused(synthetic_dataset, tmp_path):
    import sqlite3
    from ASSFTLib.workspace.schema import SCHEMA_VERSION
    Workspace.create(tmp_path / "ws", dataset=synthetic_dataset).close()
    conn = sqlite3.connect(tmp_path / "ws" / "assft.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(WorkspaceError, match=f"newer ASSFT .*schema {SCHEMA_VERSION + 1}") as err:
        Workspace.open(tmp_path / "ws")
    assert "upgrade ASSFT" in str(err.value) and "assft.db" in str(err.value)
    conn = sqlite3.connect(tmp_path / "ws" / "assft.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1  # left as it was
    conn.close()


def test_every_subcommand_has_help():
    """`assft X --help` works for every subcommand the README and the issues name."""
    from ASSFTLib.cli import COMMANDS, build_parser
    parser = build_parser()
    for name in ("init", "status", "demo", "pretrain", "score", "rank", "train", "pseudo", "report", "benchmark"):
        assert name in COMMANDS
        with pytest.raises(SystemExit) as done:
            parser.parse_args([name, "--help"])
        assert done.value.code == 0
