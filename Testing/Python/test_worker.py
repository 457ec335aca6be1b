"""The background worker as a real subprocess: events, SIGTERM + resume, crashes, a busy workspace."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")

from ASSFTLib import cli, worker
from ASSFTLib.jobs import Job
from ASSFTLib.workspace import Workspace
from ASSFTLib.workspace.paths import job_state_path
from test_training import foundation_file, make_workspace, tiny_dataset, tiny_settings  # noqa: F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::ASSFTLib.training.TrainingWarning")
#: Generous: a worker imports torch and MONAI on a busy 2-core machine.
WAIT_S = 300


def _drain(job: Job, until=lambda e: False) -> list[dict]:
    """Poll until the worker has exited (and said so) or ``until(event)``; every event seen."""
    events, deadline = [], time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        new = job.poll()
        events += new
        if any(e["event"] == "exit" for e in new) or any(until(e) for e in new):
            return events
        time.sleep(0.05)
    job.cancel(timeout=5)
    pytest.fail(f"worker did not finish; stderr: {job.stderr_tail}")


@pytest.fixture
def ws_path(tmp_path, tiny_dataset, foundation_file) -> Path:  # noqa: F811
    ws = make_workspace(tmp_path / "ws", tiny_dataset, foundation_file, tiny_settings())
    ws.close()
    return tmp_path / "ws"


def _check_well_formed(events: list[dict], kind: str) -> None:
    assert events[0]["event"] == "start" and events[-1]["event"] == "exit"
    for e in events[:-1]:
        assert e["event"] in ("start", "progress", "warning", "result", "error", "cancelled")
        assert e["kind"] == kind and isinstance(e["time"], float) and e["job"]
    for e in (e for e in events if e["event"] == "progress"):
        assert 0 <= e["step"] <= e["total"] and "eta_s" in e


def test_train_job_emits_events_and_registers_model(ws_path):
    job = Job.start("train", ws_path, ["--steps", "3"])
    events = _drain(job)
    assert job.returncode == 0, job.stderr_tail
    _check_well_formed(events, "train")
    result = [e for e in events if e["event"] == "result"]
    assert len(result) == 1
    train = [e for e in events if e["event"] == "progress" and e.get("phase") == "train"]
    assert train and train[-1]["step"] == train[-1]["total"] == 3 and "loss" in train[-1]
    logged = [json.loads(line) for line in (job.job_dir / worker.EVENTS_FILE).read_text().splitlines()]
    assert logged == events[:-1]
    with Workspace.open(ws_path) as ws:
        assert ws.current_model().id == result[0]["model_id"]
        assert ws.current_model().kind == "finetuned"


def test_sigterm_stops_keeps_previous_model_and_resume_finishes(ws_path):
    with Workspace.open(ws_path) as ws:
        before = ws.current_model().id
    job = Job.start("train", ws_path, ["--steps", "100000"])
    _drain(job, until=lambda e: e.get("phase") == "train")
    code = job.cancel(timeout=60)
    events = _drain(job)
    assert code == worker.EXIT_CANCELLED, job.stderr_tail
    assert any(e["event"] == "cancelled" and e["resumable"] for e in events)
    state = torch.load(job_state_path(job.job_dir), map_location="cpu", weights_only=True)
    with Workspace.open(ws_path) as ws:
        assert ws.current_model().id == before
        assert [r.status for r in ws.rounds("train")] == ["cancelled"]
    stopped_at = int(state["step"])
    resumed = Job.start("train", ws_path, ["--resume", "--steps", str(stopped_at + 2)], job_dir=job.job_dir)
    events = _drain(resumed)
    assert resumed.returncode == 0, resumed.stderr_tail
    train = [e["step"] for e in events if e["event"] == "progress" and e.get("phase") == "train"]
    assert train[-1] == stopped_at + 2 and min(train) > stopped_at
    with Workspace.open(ws_path) as ws:
        assert ws.current_model().id != before
        assert [r.status for r in ws.rounds("train")] == ["cancelled", "finished"]


def test_crash_reports_error_and_leaves_workspace_consistent(ws_path):
    with Workspace.open(ws_path) as ws:
        before = ws.current_model().id
        broken = ws.label_path(ws.labeled_ids()[0])
    broken.write_bytes(b"this is not a NIfTI file")
    job = Job.start("train", ws_path, ["--steps", "3"])
    events = _drain(job)
    assert job.returncode == worker.EXIT_ERROR
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and str(broken) in errors[0]["message"]
    with Workspace.open(ws_path) as ws:
        assert ws.current_model().id == before
        assert [r.status for r in ws.rounds("train")] == ["failed"]
        assert ws.integrity_check() == []


def test_second_worker_on_a_busy_workspace_refuses(ws_path, tmp_path):
    with Workspace.open(ws_path) as ws, ws.job_lock("worker"):
        proc = subprocess.run([sys.executable, "-m", "ASSFTLib.worker", "train", "--workspace", str(ws_path),
                               "--job-dir", str(tmp_path / "job")], capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == worker.EXIT_BUSY
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last["event"] == "error" and "another ASSFT job" in last["message"]


def test_resume_without_job_dir_is_a_usage_error(ws_path):
    proc = subprocess.run([sys.executable, "-m", "ASSFTLib.worker", "train", "--workspace", str(ws_path), "--resume"],
                          capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == worker.EXIT_USAGE and "--job-dir" in proc.stderr


def test_cli_train_prints_json_events(ws_path, capsys):
    code = cli.main(["train", str(ws_path), "--steps", "2", "--json-events"])
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert out[0]["event"] == "start" and out[-1]["event"] == "result"
    assert out[-1]["metrics"]["steps"] == 2


def test_cancel_file_stops_pretraining_and_resume_registers_foundation(ws_path):
    job = Job.start("pretrain", ws_path, ["--steps", "100000"])
    _drain(job, until=lambda e: e.get("phase") == "pretrain")
    (job.job_dir / worker.CANCEL_FILE).touch()
    events = _drain(job)
    assert job.returncode == worker.EXIT_CANCELLED, job.stderr_tail
    assert events[-2]["event"] == "cancelled"
    stopped_at = int(torch.load(job_state_path(job.job_dir), map_location="cpu", weights_only=True)["step"])
    resumed = Job.start("pretrain", ws_path, ["--resume", "--steps", str(stopped_at + 1)], job_dir=job.job_dir)
    events = _drain(resumed)
    assert resumed.returncode == 0, resumed.stderr_tail
    result = [e for e in events if e["event"] == "result"][0]
    with Workspace.open(ws_path) as ws:
        assert ws.foundation_model().id == result["model_id"]
        assert ws.current_model().kind == "foundation"  # a workspace that had a model keeps it current
        assert ws.current_model().id != result["model_id"]


def test_predict_job_segments_off_the_main_thread_for_prefill_and_pseudo_labels(ws_path):
    """The panel's model calls (pre-fill, a pseudo-label not yet written) as a background ``predict`` job."""
    from ASSFTLib.volumes import read_volume
    with Workspace.open(ws_path) as ws:
        case_id = ws.unlabeled_ids()[0]
        shape = read_volume(ws.image_path(case_id)).array.shape
    refused = Job.start("predict", ws_path, ["--case", case_id])  # the foundation model has no task head
    events = _drain(refused)
    assert refused.returncode == 1
    assert "cannot segment" in next(e for e in events if e["event"] == "error")["message"]

    train = Job.start("train", ws_path, ["--steps", "2"])
    _drain(train)
    assert train.returncode == 0, train.stderr_tail
    prefill = Job.start("predict", ws_path, ["--case", case_id, "--purpose", "prefill"])
    events = _drain(prefill)
    assert prefill.returncode == 0, prefill.stderr_tail
    _check_well_formed(events, "predict")
    out = Path(next(e for e in events if e["event"] == "result")["outputs"][case_id])
    assert out.parent == prefill.job_dir and read_volume(out, kind="label").array.shape == shape
    pseudo = Job.start("predict", ws_path, ["--case", case_id, "--purpose", "pseudo"])
    _drain(pseudo)
    assert pseudo.returncode == 0, pseudo.stderr_tail
    with Workspace.open(ws_path) as ws:
        assert read_volume(ws.paths.pseudo_label(case_id), kind="label").array.shape == shape
    unknown = Job.start("predict", ws_path, ["--case", "no-such-case"])
    events = _drain(unknown)
    assert unknown.returncode == 1 and "no-such-case" in next(e for e in events if e["event"] == "error")["message"]
