"""The README's main job, end to end, on tiny settings (real pretraining, scoring, ranking, training)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")

from ASSFTLib.dataset import load_dataset
from ASSFTLib.inference import predict_probs
from ASSFTLib.models import load_model
from ASSFTLib.volumes import read_volume
from ASSFTLib.workspace import Workspace


def _test_dice(model_path, test_folder, settings) -> list:
    """Per-class Dice of a checkpoint, mean over the test cases, counted here rather than by ASSFTLib.metrics."""
    model = load_model(model_path, device=settings.resolved_device())
    cases, _ = load_dataset(test_folder)
    per_case, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # as the demo ran (OMP_NUM_THREADS=1): the same arithmetic, the same argmax
    try:
        for case in cases:
            pred = np.argmax(predict_probs(model, read_volume(case.image), settings), axis=0)
            truth = read_volume(case.label, kind="label").array
            sizes = [(int(np.count_nonzero((pred == k) & (truth == k))), int(np.count_nonzero(pred == k)),
                      int(np.count_nonzero(truth == k))) for k in (1, 2)]
            per_case.append([1.0 if p + t == 0 else 2 * both / (p + t) for both, p, t in sizes])
    finally:
        torch.set_num_threads(threads)
    assert len(per_case) == 2
    return np.mean(per_case, axis=0).tolist()


def test_demo_runs_the_loop_and_prints_dice_per_round(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "ASSFTLib.cli", "demo", "--out", str(out), "--pool", "6", "--test", "2",
                        "--rounds", "2", "--budget", "2", "--pretrain-steps", "4", "--steps", "6",
                        "--json", str(tmp_path / "rounds.json")],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test Dice" in r.stdout
    # the cold start's "no pseudo-labels" is said as a note, not as a Python warning with file:line
    assert "note: no pseudo-labels this round" in r.stdout and "TrainingWarning" not in r.stdout + r.stderr
    rounds = json.loads((tmp_path / "rounds.json").read_text())
    assert [x["labels"] for x in rounds] == [2, 4]
    assert [x["round"] for x in rounds] == [1, 2] and all(len(x["picked"]) == 2 for x in rounds)
    assert all(x["test_dice"] == pytest.approx(sum(x["test_dice_per_class"]) / 2, abs=1e-12) for x in rounds)
    # the loop really used the product: labels saved by the simulated annotator, two fine-tuned models
    ws = Workspace.open(out / "workspace")
    assert sorted(ws.labeled_ids()) == sorted(rounds[0]["picked"] + rounds[1]["picked"])
    assert {c.labeled_by for c in ws.cases("labeled")} == {"simulated-annotator"}
    assert [m.kind for m in ws.models()] == ["foundation", "finetuned", "finetuned"]
    # the reported test Dice is that of each round's own model on the held-out test cases
    for x, model in zip(rounds, ws.models()[1:]):
        assert x["test_dice_per_class"] == pytest.approx(_test_dice(model.path, out / "data" / "test", ws.settings),
                                                         abs=1e-6)
    # the second batch was chosen after the first was labeled: no volume picked twice
    assert not set(rounds[0]["picked"]) & set(rounds[1]["picked"])
    # the same command again (the README's command 1 twice in a row) reruns: data and model reused, workspace new
    again = subprocess.run([sys.executable, "-m", "ASSFTLib.cli", "demo", "--out", str(out), "--pool", "6",
                            "--test", "2", "--rounds", "1", "--budget", "2", "--pretrain-steps", "4", "--steps", "2"],
                           capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "replacing the earlier demo's workspace" in again.stdout and "reusing" in again.stdout
    assert "test Dice" in again.stdout
    assert [m.kind for m in Workspace.open(out / "workspace").models()] == ["foundation", "finetuned"]
    # every slow step talks: pretraining is announced, and each round says what it scores and trains
    assert "pretraining on the 6 unlabeled pool volumes" in r.stdout and "round 2: scoring" in r.stdout
    assert not (out / "foundation.pt.job").exists() and not any((out / "workspace" / "jobs").glob("train-*"))


def test_demo_never_replaces_a_folder_that_is_not_its_own_workspace(tmp_path):
    from ASSFTLib.demo import _clear_previous_demo
    from ASSFTLib.errors import DatasetError
    (tmp_path / "workspace").mkdir()
    keep = tmp_path / "workspace" / "thesis.txt"
    keep.write_text("mine")
    with pytest.raises(DatasetError, match="not a workspace of an earlier demo"):
        _clear_previous_demo(tmp_path / "workspace", tmp_path / "data" / "pool", print)
    assert keep.read_text() == "mine"
