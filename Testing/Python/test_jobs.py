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
