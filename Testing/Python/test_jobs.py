"""The panel's text for worker events (``jobs.describe_event``): pure, no Qt, no process."""
from __future__ import annotations

import pytest

from ASSFTLib.jobs import describe_event


def test_progress_shows_step_loss_and_eta():
    progress = describe_event({"event": "progress", "kind": "train", "phase": "train", "step": 30, "total": 120,
                               "loss": 0.51234, "eta_s": 75})
    assert progress["fraction"] == pytest.approx(0.25)
    assert "30/120" in progress["text"] and "0.5123" in progress["text"] and "1:15" in progress["text"]
    assert progress["text"] == "train 30/120, loss 0.5123, ETA 1:15"
    assert progress["quality"] == ""


def test_progress_without_a_total_is_busy_and_never_past_the_end():
    busy = describe_event({"event": "progress", "kind": "score", "step": 3, "total": None})
    assert busy["fraction"] is None and busy["text"] == "score 3/None"
    assert describe_event({"event": "progress", "step": 9, "total": 4})["fraction"] == 1.0


def test_result_reports_the_held_out_dice():
    result = describe_event({"event": "result", "kind": "train", "metrics": {"heldout_dice": 0.8123}})
    assert result["fraction"] == 1.0 and "0.812" in result["quality"]
    assert result["text"] == "train finished."
    assert describe_event({"event": "result", "kind": "score", "metrics": {"dice": 0.5}})["quality"].endswith("0.500")
    assert describe_event({"event": "result", "kind": "score"})["quality"] == ""


def test_result_reports_the_previous_models_dice_on_the_new_labels():
    metrics = {"heldout_dice": None, "new_label_dice": 0.6543, "new_label_dice_per_case": {"a": 0.6, "b": 0.7086}}
    quality = describe_event({"event": "result", "kind": "train", "metrics": metrics})["quality"]
    assert "Held-out" not in quality and "0.654" in quality and "2 volume(s) labeled since" in quality
    both = describe_event({"event": "result", "kind": "train", "metrics": {**metrics, "heldout_dice": 0.8}})["quality"]
    assert both.splitlines()[0].endswith("0.800") and "0.654" in both.splitlines()[1]


def test_errors_warnings_and_cancellation():
    error = describe_event({"event": "error", "message": "model.pt: cannot be read (choose another file)"})
    assert error["fraction"] is None and error["text"].startswith("Failed: model.pt")
    assert describe_event({"event": "error"})["text"] == "Failed: unknown error"
    assert describe_event({"event": "warning", "message": "slow"})["text"] == "Warning: slow"
    assert "resumed" in describe_event({"event": "cancelled", "resumable": True})["text"]
    stopped = describe_event({"event": "cancelled", "message": "worker exited with code -9"})
    assert stopped["text"] == "Stopped: worker exited with code -9"


def test_start_and_silent_events():
    assert describe_event({"event": "start", "kind": "score"})["text"] == "score started."
    for event in ({"event": "log", "message": "x"}, {"event": "exit", "returncode": 0}, {}):
        assert describe_event(event) == {"fraction": None, "text": "", "quality": ""}


# ---------------------------------------------------------------- starting and finding jobs (real processes)
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from ASSFTLib import jobs  # noqa: E402
from ASSFTLib.errors import ASSFTError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_child_environment_drops_the_parents_python_and_points_at_this_library():
    env = jobs.child_environment({"PYTHONHOME": "/slicer/lib/Python", "PYTHONPATH": "/slicer/lib/site-packages",
                                  "PATH": "/usr/bin", "PYTHONSTARTUP": "/x.py"}, {"ASSFT_X": "1"})
    assert "PYTHONHOME" not in env and "PYTHONSTARTUP" not in env
    assert env["PYTHONPATH"] == str(REPO)  # exactly the folder holding ASSFTLib, nothing of the parent's
    assert env["PATH"] == "/usr/bin" and env["ASSFT_X"] == "1" and env["PYTHONUNBUFFERED"] == "1"


def test_a_job_starts_under_slicers_launcher_variables(tmp_path):
    """Slicer's launcher sets PYTHONHOME/PYTHONPATH; a Python started with them dies before running a line.
    The worker must start anyway, and import ASSFTLib from this checkout only."""
    hostile = {**os.environ, "PYTHONHOME": str(tmp_path / "no-such-python-home"),
               "PYTHONPATH": str(tmp_path / "elsewhere")}
    broken = subprocess.run([sys.executable, "-c", "print(1)"], env=hostile, capture_output=True, text=True)
    assert broken.returncode != 0  # what happens without the clean environment
    job = jobs.Job.start("predict", tmp_path / "not-a-workspace", ["--case", "x"], base_env=hostile,
                         job_dir=tmp_path / "job")
    assert job.wait(timeout=60) == 1
    events = job.poll()
    assert events[0]["event"] == "start"
    error = next(e for e in events if e["event"] == "error")
    assert "not-a-workspace" in error["message"] or "not-a-workspace" in str(error.get("path"))


def test_check_python_says_what_is_wrong(tmp_path):
    assert jobs.check_python(sys.executable) == sys.executable
    with pytest.raises(ASSFTError) as missing:
        jobs.check_python(str(tmp_path / "python3"))
    assert "does not exist" in str(missing.value) and missing.value.hint
    not_a_program = tmp_path / "python.txt"
    not_a_program.write_text("x")
    with pytest.raises(ASSFTError, match="not a program"):
        jobs.check_python(str(not_a_program))
    with pytest.raises(ASSFTError, match="not a program"):
        jobs.check_python(str(tmp_path))


_FAKE_WORKER = """
import json, os, signal, sys, time
job = sys.argv[1]
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))  # as the worker's StopRequest
def emit(**e):
    with open(os.path.join(job, "events.jsonl"), "a") as fh:
        fh.write(json.dumps({"job": os.path.basename(job), "kind": "train", **e}) + "\\n")
emit(event="start", pid=os.getpid())
emit(event="progress", step=1, total=10)
while not stop and not os.path.exists(os.path.join(job, "cancel")):
    time.sleep(0.05)
emit(event="cancelled", resumable=True, message="stopped")
"""


def test_a_running_job_is_found_again_followed_and_cancelled_then_offered_for_resume(tmp_path):
    """A worker that outlived its panel (module reloaded): found from its events file, followed, cancelled.
    The process is a real one that speaks the worker's file protocol (events.jsonl, cancel file)."""
    job_dir = tmp_path / "ws" / "jobs" / "train-20260101-000000-000000"
    job_dir.mkdir(parents=True)
    (tmp_path / "ws" / "jobs" / "score-20250101-000000-000000").mkdir()  # no events: ignored
    process = subprocess.Popen([sys.executable, "-c", _FAKE_WORKER, str(job_dir)], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        found = []
        while not found and time.monotonic() < deadline:
            found = jobs.running_jobs(tmp_path / "ws")
            time.sleep(0.05)
        assert [(j.kind, j.pid) for j in found] == [("train", process.pid)]
        attached = found[0]
        first = attached.poll()
        assert [e["event"] for e in first] == ["start", "progress"]  # replays what was written
        assert jobs.resumable_job(tmp_path / "ws", "train") is None
        attached.cancel(timeout=10)  # the cancel file: the job saves and says so
        events = []
        while not any(e["event"] == "exit" for e in events) and time.monotonic() < deadline:
            events += attached.poll()
            time.sleep(0.05)
        assert [e["event"] for e in events][-2:] == ["cancelled", "exit"]
        assert events[-1]["returncode"] == 3
        process.wait(timeout=10)
        assert jobs.running_jobs(tmp_path / "ws") == []
        assert jobs.resumable_job(tmp_path / "ws", "train") == job_dir
        assert jobs.resumable_job(tmp_path / "ws", "score") is None
    finally:
        if process.poll() is None:
            process.kill()


def test_a_followed_job_that_dies_silently_ends_with_an_error(tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    (job_dir / "events.jsonl").write_text(json.dumps({"event": "start", "kind": "score", "pid": process.pid}) + "\n")
    attached = jobs.AttachedJob(job_dir, "score", process.pid)
    assert [e["event"] for e in attached.poll()] == ["start"]
    process.kill()
    process.wait()
    events = attached.poll()
    assert [e["event"] for e in events] == ["error", "exit"] and events[-1]["returncode"] == 1
    assert attached.poll() == []
