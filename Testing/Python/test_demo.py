"""The README's main job, end to end, on tiny settings (real pretraining, scoring, ranking, training)."""
from __future__ import annotations

import json
import os
import shutil
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


def _case_dice(model_path, test_folder, settings) -> list:
    """Per-class Dice of a checkpoint on each test case (in dataset order)."""
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
    return per_case


def test_demo_runs_the_loop_and_prints_dice_per_round(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "ASSFTLib.cli", "demo", "--out", str(out), "--pool", "6", "--test", "2",
                        "--source", "3", "--rounds", "2", "--budget", "2", "--pretrain-steps", "4", "--steps", "6",
                        "--json", str(tmp_path / "rounds.json")],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test Dice" in r.stdout
    # the library's warnings are said as notes, not as Python warnings with file:line
    assert "TrainingWarning" not in r.stdout + r.stderr
    rounds = json.loads((tmp_path / "rounds.json").read_text())
    # round 0 is the other site's model before any label of this site, then a row per labeling round
    assert [x["labels"] for x in rounds] == [0, 2, 4]
    assert [x["round"] for x in rounds] == [0, 1, 2] and [len(x["picked"]) for x in rounds] == [0, 2, 2]
    assert all(x["test_dice"] == pytest.approx(sum(x["test_dice_per_class"]) / 2, abs=1e-12) for x in rounds)
    # the loop really used the product: labels saved by the simulated annotator, two fine-tuned models
    ws = Workspace.open(out / "workspace")
    assert sorted(ws.labeled_ids()) == sorted(rounds[1]["picked"] + rounds[2]["picked"])
    assert {c.labeled_by for c in ws.cases("labeled")} == {"simulated-annotator"}
    assert [m.kind for m in ws.models()] == ["foundation", "finetuned", "finetuned"]
    # the foundation is the other site's model: trained on the source site's labels, so it has a task head
    assert load_model(ws.models()[0].path).spec.has_task_head
    sources, _ = load_dataset(out / "data" / "source")
    assert len(sources) == 3 and {json.loads((out / "data" / "source" / "dataset.json").read_text())["training"][i]
                                  ["profile"] for i in range(3)} == {"clean"}
    # the reported test Dice is that of each round's own model (round 0: the foundation) on the held-out test cases
    assert len(ws.models()) == len(rounds)
    for x, model in zip(rounds, ws.models()):
        per_case = _case_dice(model.path, out / "data" / "test", ws.settings)
        assert x["test_dice_per_class"] == pytest.approx(np.mean(per_case, axis=0).tolist(), abs=1e-6)
        # and per scanner: the two synthetic test cases are made under this site's T1 scanner and T2-like sequence
        assert x["test_dice_per_scanner"] == pytest.approx({"gamma_noise": np.mean(per_case[0]),
                                                            "t2_like": np.mean(per_case[1])}, abs=1e-6)
    assert "per scanner: gamma_noise  t2_like" in r.stdout
    # this site's volumes are the site's profiles in turn, none is the other site's clean scanner
    pool = json.loads((out / "data" / "pool" / "dataset.json").read_text())["training"]
    assert [e["profile"] for e in pool] == ["gamma_noise", "t2_like"] * 3
    # the second batch was chosen after the first was labeled: no volume picked twice
    assert not set(rounds[1]["picked"]) & set(rounds[2]["picked"])
    # the same command again (the README's command 1 twice in a row) reruns: data and model reused, workspace new
    again = subprocess.run([sys.executable, "-m", "ASSFTLib.cli", "demo", "--out", str(out), "--pool", "6",
                            "--test", "2", "--source", "3", "--rounds", "1", "--budget", "2", "--pretrain-steps", "4",
                            "--steps", "2"],
                           capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "replacing the earlier demo's workspace" in again.stdout
    assert "foundation model: reusing" in again.stdout and "the other site's model: reusing" in again.stdout
    assert "test Dice" in again.stdout
    assert [m.kind for m in Workspace.open(out / "workspace").models()] == ["foundation", "finetuned"]
    # every slow step talks: pretraining is announced, and each round says what it scores and trains
    assert "pretraining on the 6 unlabeled pool volumes" in r.stdout and "round 2: scoring" in r.stdout
    assert "trained on 3 labeled volumes of another scanner" in r.stdout
    assert not (out / "foundation.pt.job").exists() and not any((out / "workspace" / "jobs").glob("train-*"))
    assert not (out / "foundation_supervised.ws").exists()  # the throwaway workspace of the other site's model


def test_demo_with_a_self_supervised_foundation_has_no_round_0(tmp_path):
    """--foundation self-supervised: the pretrained model alone, no head, so no Dice before the first labels."""
    from ASSFTLib.demo import run_demo
    lines = []
    rounds = run_demo(tmp_path / "demo", rounds=1, budget=2, n_pool=4, n_test=1, pretrain_steps=2, steps=2,
                      foundation="self-supervised", log=lines.append)
    assert [(r.round, r.labels) for r in rounds] == [(1, 2)]
    assert not (tmp_path / "demo" / "data" / "source").exists() and not (tmp_path / "demo" / "foundation_supervised.pt").exists()
    ws = Workspace.open(tmp_path / "demo" / "workspace")
    assert not load_model(ws.models()[0].path).spec.has_task_head
    assert not any("other site" in line for line in lines)
    # the cold start's "no pseudo-labels" (a TrainingWarning) is said as a note, not with Python's file:line
    assert any(line.startswith("  note: no pseudo-labels this round") for line in lines)


def test_demo_says_when_its_data_come_from_an_earlier_version(tmp_path):
    """An --out made by an earlier demo keeps its data (and the models made from them): the run says so."""
    from ASSFTLib import synthetic
    from ASSFTLib.demo import run_demo, scanner_of_cases
    synthetic.make_dataset(tmp_path / "demo" / "data" / "pool", 4, profiles=("clean", "bias_contrast"))
    lines = []
    run_demo(tmp_path / "demo", rounds=0, n_pool=4, n_test=1, pretrain_steps=2, steps=2,
             foundation="self-supervised", log=lines.append)
    notes = [line for line in lines if "earlier version of the demo" in line]
    assert len(notes) == 1 and "bias_contrast, clean" in notes[0] and "gamma_noise, t2_like" in notes[0]
    lines.clear()
    shutil.rmtree(tmp_path / "demo")
    # a fresh --out, with a pool too small to hold every profile of this site: nothing to say
    run_demo(tmp_path / "demo", rounds=0, n_pool=1, n_test=1, pretrain_steps=2, steps=2,
             foundation="self-supervised", log=lines.append)
    assert set(scanner_of_cases(tmp_path / "demo" / "data" / "pool").values()) == {"gamma_noise"}
    assert not any("earlier version" in line for line in lines)


@pytest.mark.parametrize("foundation, source, match", [("supervised", 0, "--source"),
                                                        ("pretrained", 4, "unknown foundation")])
def test_demo_refuses_a_foundation_it_cannot_make_before_doing_anything(tmp_path, foundation, source, match):
    from ASSFTLib.demo import run_demo
    from ASSFTLib.errors import ASSFTError
    with pytest.raises(ASSFTError, match=match) as err:
        run_demo(tmp_path / "demo", foundation=foundation, n_source=source, log=lambda line: None)
    assert err.value.hint and not (tmp_path / "demo").exists()


def test_demo_split_of_a_users_dataset_is_three_disjoint_parts(tmp_path):
    """--dataset: test cases first, then the pool, then the other site's source cases; never one case twice,
    the same split on a rerun, and a clear error when the folder is too small for the parts asked for."""
    from ASSFTLib import synthetic
    from ASSFTLib.demo import prepare_data
    from ASSFTLib.errors import DatasetError
    mine = synthetic.make_dataset(tmp_path / "mine", 12, profiles=("clean", "thick_slices"), seed=3)
    data = prepare_data(tmp_path / "a", mine, n_pool=5, n_test=3, seed=0, n_source=4)
    names = {part: sorted(c.image.name for c in load_dataset(folder)[0])
             for part, folder in (("pool", data.pool), ("test", data.test), ("source", data.source))}
    assert [len(names[k]) for k in ("pool", "test", "source")] == [5, 3, 4]
    assert len(set(sum(names.values(), []))) == 12
    again = prepare_data(tmp_path / "b", mine, n_pool=5, n_test=3, seed=0, n_source=4)
    assert sorted(c.image.name for c in load_dataset(again.source)[0]) == names["source"]
    # without a source (a self-supervised foundation) the test and pool parts are the same as with one
    plain = prepare_data(tmp_path / "c", mine, n_pool=5, n_test=3, seed=0)
    assert plain.source is None and sorted(c.image.name for c in load_dataset(plain.test)[0]) == names["test"]
    with pytest.raises(DatasetError, match="at least 16 labeled cases") as err:
        prepare_data(tmp_path / "d", mine, n_pool=5, n_test=6, seed=0, n_source=8)
    assert "mine" in str(err.value)


def test_demo_never_replaces_a_folder_that_is_not_its_own_workspace(tmp_path):
    from ASSFTLib.demo import _clear_previous_demo
    from ASSFTLib.errors import DatasetError
    (tmp_path / "workspace").mkdir()
    keep = tmp_path / "workspace" / "thesis.txt"
    keep.write_text("mine")
    with pytest.raises(DatasetError, match="not a workspace of an earlier demo"):
        _clear_previous_demo(tmp_path / "workspace", tmp_path / "data" / "pool", print)
    assert keep.read_text() == "mine"


@pytest.mark.parametrize("content, expected", [
    ('{"training": [{"image": "./imagesTr/a.nii.gz", "profile": "clean"}, 3, {"image": 4}]}', {"a": "clean"}),
    ('[1, 2]', {}), ('{"training": 5}', {}), ('not json', {}), (None, {})])
def test_scanner_columns_come_only_from_a_well_formed_dataset_json(tmp_path, content, expected):
    """A user's dataset.json may be anything: no per-scanner columns rather than a crash at the end of a run."""
    from ASSFTLib.demo import scanner_of_cases
    if content is not None:
        (tmp_path / "dataset.json").write_text(content)
    assert scanner_of_cases(tmp_path) == expected
