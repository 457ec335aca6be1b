"""Reliability, round two: hostile workspaces and files (issue 13).

A workspace, a dataset or a checkpoint may come from someone else.  Each test
here is a fault found by probing the product as a hostile or careless user
would; it failed before the fix it guards.  Everything runs through the real
code paths: real files, real SQLite, real worker subprocesses.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import stat
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ASSFTLib import cli, volumes
from ASSFTLib.errors import ASSFTError, VolumeError, WorkspaceError
from ASSFTLib.settings import Settings, SettingsError, SettingsNote
from ASSFTLib.workspace import Workspace
from test_training import foundation_file, tiny_dataset, tiny_settings  # noqa: F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::ASSFTLib.training.TrainingWarning")


def _hinted(message: str) -> bool:
    return message.rstrip().endswith(")") and "(" in message


@pytest.fixture
def ws(tmp_path, tiny_dataset, foundation_file) -> Workspace:  # noqa: F811
    assert cli.main(["init", str(tmp_path / "ws"), "--dataset", str(tiny_dataset), "--model",
                     str(foundation_file)]) == 0
    w = Workspace.open(tmp_path / "ws")
    w.save_settings(tiny_settings(kfold_min_labels=0, steps=2))
    yield w
    w.close()


# ------------------------------------------------------------------ 1. code execution from a workspace
def test_a_workspace_never_chooses_the_program_that_runs_its_jobs(ws, tmp_path):
    marker = tmp_path / "ran"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    script.chmod(0o755)
    data = json.loads(ws.settings_path.read_text())
    data["python_executable"] = str(script)  # what a shared workspace of an older release may hold
    ws.settings_path.write_text(json.dumps(data))

    with pytest.warns(SettingsNote, match="python_executable"):
        settings = ws.settings  # an old settings.json still loads; the field is ignored with a note
    assert not hasattr(settings, "python_executable")
    from ASSFTLib.jobs import Job
    job = Job.start("score", ws.folder, job_dir=tmp_path / "job")  # the launcher's default: this interpreter
    assert job.wait(timeout=120) in (0, 1)
    assert job.process.args[0] == sys.executable
    assert not marker.exists()
    # the Slicer panel's runner takes the Python from its caller, never from the workspace's settings
    runner = (Path(__file__).resolve().parents[2] / "ASSFT" / "ASSFTModuleLib" / "runner.py").read_text()
    assert "python_executable" not in runner and "settings.python" not in runner


# ------------------------------------------------------------------ settings: type, range, NaN, unknown
@pytest.mark.parametrize("field,value,says", [
    ("tta_flips", "no", "true or false"), ("tta_flips", 0, "true or false"), ("budget", "3", "number"),
    ("budget", 2.5, "whole number"), ("fg_threshold", float("nan"), "finite"), ("learning_rate", float("inf"), "finite"),
    ("fg_threshold", 7, "[0, 1]"), ("patch_size", [32, 32], "three"), ("patch_size", "big", "three"),
    ("roi_dilation", 10 ** 6, "at most"), ("sw_batch_size", 10 ** 6, "at most"), ("device", "gpu", "device"),
    ("learning_rate", 1e30, "at most"), ("strategy", None, "text"),
])
def test_settings_of_the_wrong_type_range_or_nan_are_refused_with_the_file(tmp_path, field, value, says):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({**Settings().to_dict(), field: value}))
    with pytest.raises(SettingsError) as err:
        Settings.load(path)
    assert says in str(err.value) and str(path) in str(err.value) and _hinted(str(err.value))


def test_settings_unknown_or_not_an_object_name_the_file(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"budgett": 3}))
    with pytest.raises(SettingsError, match="budgett") as err:
        Settings.load(path)
    assert str(path) in str(err.value)
    path.write_text("[1, 2]")
    with pytest.raises(SettingsError, match="JSON object"):
        Settings.load(path)
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(SettingsError, match="cannot be read"):
        Settings.load(path)
    ok = Settings.from_dict({"budget": 3.0, "patch_size": [32.0, 48, 32]})  # integral floats are whole numbers
    assert ok.budget == 3 and isinstance(ok.budget, int) and ok.patch_size == (32, 48, 32)
