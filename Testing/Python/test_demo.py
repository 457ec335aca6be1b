"""The README's main job, end to end, on tiny settings (real pretraining, scoring, ranking, training)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from ASSFTLib.workspace import Workspace


def test_demo_runs_the_loop_and_prints_dice_per_round(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "ASSFTLib.cli", "demo", "--out", str(out), "--pool", "6", "--test", "2",
                        "--rounds", "2", "--budget", "2", "--pretrain-steps", "4", "--steps", "6",
                        "--json", str(tmp_path / "rounds.json")],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test Dice" in r.stdout
    rounds = json.loads((tmp_path / "rounds.json").read_text())
    assert [x["labels"] for x in rounds] == [2, 4]
    assert all(0.0 <= x["test_dice"] <= 1.0 and len(x["test_dice_per_class"]) == 2 for x in rounds)
    # the loop really used the product: labels saved by the simulated annotator, two fine-tuned models
    ws = Workspace.open(out / "workspace")
    assert sorted(ws.labeled_ids()) == sorted(rounds[0]["picked"] + rounds[1]["picked"])
    assert {c.labeled_by for c in ws.cases("labeled")} == {"simulated-annotator"}
    assert [m.kind for m in ws.models()] == ["foundation", "finetuned", "finetuned"]
    # the second batch was chosen after the first was labeled: no volume picked twice
    assert not set(rounds[0]["picked"]) & set(rounds[1]["picked"])
    # a second demo into the same folder refuses instead of overwriting the workspace
    again = subprocess.run([sys.executable, "-m", "ASSFTLib.cli", "demo", "--out", str(out)], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 1 and "already exists" in again.stderr
