"""`assft import-labels`: labels made in another tool come in checked, with their source; bad ones change nothing.

Real files on the synthetic dataset, the real command in a subprocess, the real SQLite database.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ASSFTLib.errors import LabelError
from ASSFTLib.labelimport import match_case
from ASSFTLib.volumes import read_volume, write_volume
from ASSFTLib.workspace import Workspace


def _assft(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ASSFTLib.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_match_case_by_name_with_tool_endings():
    ids = ["hippocampus_001", "hippocampus_010", "liver_7"]
    assert match_case("/x/hippocampus_001.nii.gz", ids) == "hippocampus_001"
    assert match_case("hippocampus_010_seg.nii.gz", ids) == "hippocampus_010"
    assert match_case("liver_7-label.nrrd", ids) == "liver_7"
    assert match_case("liver_7_0000.nii.gz", ids) == "liver_7"
    assert match_case("hippocampus_002.nii.gz", ids) is None
    assert match_case("Segmentation-label.nrrd", ids) is None


def test_save_label_refuses_an_unknown_source(synthetic_dataset, tmp_path):
    ws = Workspace.create(tmp_path / "ws", dataset=synthetic_dataset, import_labels=False)
    case = ws.cases()[0]
    label = read_volume(case.reference_label, kind="label")
    with pytest.raises(LabelError, match="unknown label source 'typed-by-hand'"):
        ws.save_label(case.case_id, label.array, source="typed-by-hand")
    assert not ws.paths.label(case.case_id).exists() and ws.labeled_ids() == []
    ws.save_label(case.case_id, label.array, source="corrected_pseudo")
    assert ws.label_history(case.case_id)[-1]["source"] == "corrected_pseudo"


def test_import_labels_checks_each_file_and_says_why(synthetic_dataset, tmp_path):
    ws_dir = tmp_path / "ws"
    assert _assft("init", ws_dir, "--dataset", synthetic_dataset, "--no-labels").returncode == 0
    ws = Workspace.open(ws_dir)
    cases = ws.cases()
    ws.close()
    other_tool = tmp_path / "itksnap_output"
    other_tool.mkdir()
    refs = [read_volume(c.reference_label, kind="label") for c in cases]
    # two good labels, one with a tool's ending on its name
    shutil.copyfile(cases[0].reference_label, other_tool / f"{cases[0].case_id}.nii.gz")
    shutil.copyfile(cases[1].reference_label, other_tool / f"{cases[1].case_id}_seg.nii.gz")
    # a label on a shifted grid, one with a class the task does not have, one for no case
    shifted = refs[2].affine.copy()
    shifted[:3, 3] += 5.0
    write_volume(other_tool / f"{cases[2].case_id}.nii.gz", refs[2].array, shifted)
    bad = refs[3].array.copy()
    bad[0, 0, 0] = 7
    write_volume(other_tool / f"{cases[3].case_id}.nii.gz", bad, refs[3].affine)
    write_volume(other_tool / "somebody_else_042.nii.gz", refs[4].array, refs[4].affine)

    r = _assft("import-labels", ws_dir, other_tool)
    assert r.returncode == 1, r.stderr  # something was refused
    assert f"imported  {cases[0].case_id}" in r.stdout and f"imported  {cases[1].case_id}" in r.stdout
    assert "2 imported, 3 refused" in r.stdout and "now has 2 labeled cases" in r.stdout
    refused = r.stderr
    assert f"{cases[2].case_id}.nii.gz" in refused and "do not share geometry" in refused and "origin" in refused
    assert f"{cases[3].case_id}.nii.gz" in refused and "outside 0..2" in refused
    assert "somebody_else_042" in refused and "no case named" in refused

    with Workspace.open(ws_dir) as ws:
        assert sorted(ws.labeled_ids()) == sorted([cases[0].case_id, cases[1].case_id])
        assert ws.label_history(cases[1].case_id)[-1]["source"] == "imported"
        saved = read_volume(ws.label_path(cases[1].case_id), kind="label")
        assert np.array_equal(saved.array, refs[1].array) and np.allclose(saved.affine, refs[1].affine)
        for c in cases[2:4]:  # refused: nothing written, nothing registered
            assert not ws.paths.label(c.case_id).exists() and ws.case(c.case_id).status == "unlabeled"

    # a case that has a label is not replaced silently; --replace keeps the old one in the history
    r = _assft("import-labels", ws_dir, other_tool / f"{cases[0].case_id}.nii.gz")
    assert r.returncode == 1 and "already has a label" in r.stderr and "--replace" in r.stderr
    r = _assft("import-labels", ws_dir, other_tool / f"{cases[0].case_id}.nii.gz", "--replace", "--user", "dr_b")
    assert r.returncode == 0, r.stderr
    with Workspace.open(ws_dir) as ws:
        assert ws.case(cases[0].case_id).labeled_by == "dr_b"
        assert len(list(ws.paths.label_history.iterdir())) == 1

    # a file whose name matches nothing goes in with --case
    r = _assft("import-labels", ws_dir, other_tool / "somebody_else_042.nii.gz", "--case", cases[4].case_id)
    assert r.returncode == 0 and f"imported  {cases[4].case_id}" in r.stdout


def test_status_names_label_files_dropped_into_labels_by_hand(synthetic_dataset, tmp_path):
    ws_dir = tmp_path / "ws"
    ws = Workspace.create(ws_dir, dataset=synthetic_dataset, import_labels=False)
    case = ws.cases()[5]
    ws.close()
    shutil.copyfile(case.reference_label, ws_dir / "labels" / f"{case.case_id}.nii.gz")
    r = _assft("status", ws_dir)
    assert r.returncode == 0, r.stderr
    assert "1 file(s)" in r.stdout and f"{case.case_id}.nii.gz" in r.stdout and "assft import-labels" in r.stdout
    assert json.loads(_assft("status", ws_dir, "--json").stdout)["unregistered_label_files"]
    # bringing it in from labels/ itself registers it, and the note goes away
    r = _assft("import-labels", ws_dir, ws_dir / "labels")
    assert r.returncode == 0 and f"imported  {case.case_id}" in r.stdout, r.stdout + r.stderr
    assert "not registered" not in _assft("status", ws_dir).stdout
    r = _assft("import-labels", ws_dir, ws_dir / "labels")
    assert r.returncode == 0 and "already in place" in r.stdout
