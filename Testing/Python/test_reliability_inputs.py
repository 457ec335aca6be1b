"""Bad input through the product's own paths: ``assft init``, ``Workspace.create``, ``score_cases``,
``save_label``, ``finetune_round`` and hostile checkpoints.

One messy MSD folder holds every kind of bad file a radiology group's share
can hold next to good cases (truncated NIfTI, truncated NRRD, NaN voxels, 2D,
4D, labels on another grid / spacing / orientation or with foreign values,
names with spaces and non-ASCII characters, a dataset.json that lists missing
files, duplicates and paths leaving the folder).  Each bad file must be named
with what to do, and the rest of the workspace must stay usable.
(``test_volumes.py`` checks the readers alone; here the files go through the product.)
"""
from __future__ import annotations

import json
import pathlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")

from ASSFTLib import cli, scoring, training
from ASSFTLib import volumes
from ASSFTLib.errors import CheckpointError, LabelError, VolumeError, WorkspaceError
from ASSFTLib.models import build_network, default_spec, save_checkpoint
from ASSFTLib.workspace import Workspace
from test_training import foundation_file, tiny_dataset, tiny_settings  # noqa: F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::ASSFTLib.training.TrainingWarning")

#: Images that cannot be used, by case id -> what the message must say.
BAD_IMAGES = {"trunc case": "truncated or corrupt", "half": "truncated or corrupt", "nan_case": "NaN",
              "flat2d": "2D", "four_d": "4D"}
#: Labels that cannot be used (their images are fine), by case id -> what the message must say.
BAD_LABELS = {"shape_mm": "shape", "spacing_mm": "spacing", "orient_mm": "direction", "values_bad": "outside"}
#: Good cases with awkward names (one NRRD).
ODD_NAMES = {"patiënt ß": ".nii.gz", "with space": ".nrrd"}
#: Good unlabeled cases (dataset.json "test" entries): the pool that ranking picks from.
POOL = ("pool_a", "pool_b", "pool_c")


def _suffix(case_id: str) -> str:
    return ".nrrd" if case_id in ("half", "with space") else ".nii.gz"


@pytest.fixture(scope="module")
def messy_dataset(tiny_dataset, tmp_path_factory) -> Path:  # noqa: F811
    """The tiny synthetic dataset plus one file for every kind of bad input, listed in a lying dataset.json."""
    ds = tmp_path_factory.mktemp("messy") / "Task97_Messy"
    shutil.copytree(tiny_dataset, ds)
    images, labels = ds / "imagesTr", ds / "labelsTr"
    ref = sorted(images.iterdir())[0]
    img = volumes.read_volume(ref)
    lab = volumes.read_volume(labels / ref.name, kind="label")
    a = img.affine
    good_bytes = ref.read_bytes()
    (images / "trunc case.nii.gz").write_bytes(good_bytes[: len(good_bytes) // 2])
    volumes.write_volume(images / "half.nrrd", img.array, a)
    nrrd = (images / "half.nrrd").read_bytes()
    (images / "half.nrrd").write_bytes(nrrd[: len(nrrd) // 2])
    nan = img.array.copy()
    nan[1, 2, 3], nan[4, 5, 6] = np.nan, np.inf
    nib.save(nib.Nifti1Image(nan, a), str(images / "nan_case.nii.gz"))
    nib.save(nib.Nifti1Image(img.array[:, :, 0], a), str(images / "flat2d.nii.gz"))
    nib.save(nib.Nifti1Image(np.stack([img.array] * 2, -1), a), str(images / "four_d.nii.gz"))
    for case_id, suffix in ODD_NAMES.items():
        volumes.write_volume(images / f"{case_id}{suffix}", img.array, a)
        volumes.write_volume(labels / f"{case_id}{suffix}", lab.array, a)
    for case_id in (*BAD_LABELS, *POOL):
        volumes.write_volume(images / f"{case_id}.nii.gz", img.array, a)
    volumes.write_volume(labels / "shape_mm.nii.gz", lab.array[:-1], a)
    volumes.write_volume(labels / "spacing_mm.nii.gz", lab.array, a @ np.diag([1.5, 1.5, 1.5, 1.0]))
    volumes.write_volume(labels / "orient_mm.nii.gz", lab.array, a @ np.diag([-1.0, 1.0, 1.0, 1.0]))
    foreign = lab.array.copy()
    foreign[0, 0, 0] = 7
    volumes.write_volume(labels / "values_bad.nii.gz", foreign, a)

    meta = json.loads((ds / "dataset.json").read_text())
    for case_id in [*BAD_IMAGES, *ODD_NAMES, *BAD_LABELS]:
        entry = {"image": f"./imagesTr/{case_id}{_suffix(case_id)}"}
        if (labels / f"{case_id}{_suffix(case_id)}").exists():
            entry["label"] = f"./labelsTr/{case_id}{_suffix(case_id)}"
        meta["training"].append(entry)
    meta["training"] += [{"image": "./imagesTr/missing.nii.gz", "label": "./labelsTr/missing.nii.gz"},
                         {"image": "../outside.nii.gz"}, {"image": "./imagesTr/../../escape.nii.gz"},
                         {"image": meta["training"][0]["image"]}]
    meta["test"] = [f"./imagesTr/{case_id}.nii.gz" for case_id in POOL]
    (ds / "dataset.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return ds


@pytest.fixture
def messy_ws(tmp_path, messy_dataset, foundation_file) -> Workspace:  # noqa: F811
    code = cli.main(["init", str(tmp_path / "ws"), "--dataset", str(messy_dataset), "--model", str(foundation_file)])
    assert code == 0
    ws = Workspace.open(tmp_path / "ws")
    ws.save_settings(tiny_settings(kfold_min_labels=0, steps=2))
    yield ws
    ws.close()


def _hinted(message: str) -> bool:
    """A user message ends with its hint in parentheses (errors.ASSFTError.__str__)."""
    return message.rstrip().endswith(")") and "(" in message


# ------------------------------------------------------------------------------------------ init
def test_init_reports_every_lie_and_keeps_every_good_case(tmp_path, messy_dataset, capsys):
    assert cli.main(["init", str(tmp_path / "ws"), "--dataset", str(messy_dataset)]) == 0
    out = capsys.readouterr().out
    assert "missing.nii.gz: listed in dataset.json but missing" in out
    assert "'../outside.nii.gz' leaves the dataset folder" in out
    assert "'./imagesTr/../../escape.nii.gz' leaves the dataset folder" in out
    assert "duplicate case id" in out
    with Workspace.open(tmp_path / "ws") as ws:
        ids = [c.case_id for c in ws.cases()]
        assert len(ids) == len(set(ids))
        assert set(BAD_IMAGES) | set(BAD_LABELS) | set(ODD_NAMES) <= set(ids)
        assert not any("outside" in i or "escape" in i or "missing" in i for i in ids)
        assert all(messy_dataset.resolve() in c.image_path.parents for c in ws.cases())
        assert ws.integrity_check() == []


def test_init_on_an_empty_folder_fails_cleanly_and_creates_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no volumes here")
    for folder in (empty, tmp_path / "notes"):
        assert cli.main(["init", str(tmp_path / "ws"), "--dataset", str(folder)]) == 1
        err = capsys.readouterr().err
        assert str(folder) in err and "no usable volumes" in err and _hinted(err)
        assert not (tmp_path / "ws").exists()


def test_plain_folder_duplicates_keep_one_case_each_and_say_so(tmp_path, tiny_dataset):  # noqa: F811
    src = sorted((tiny_dataset / "imagesTr").iterdir())[0]
    vol = volumes.read_volume(src)
    folder = tmp_path / "plain"
    volumes.write_volume(folder / "a.nii.gz", vol.array, vol.affine)
    volumes.write_volume(folder / "a.nrrd", vol.array, vol.affine)
    volumes.write_volume(folder / "b_0000.nii.gz", vol.array, vol.affine)
    volumes.write_volume(folder / "b.nii.gz", vol.array, vol.affine)
    with Workspace.create(tmp_path / "ws", folder) as ws:
        assert sorted(c.case_id for c in ws.cases()) == ["a", "b"]
        dupes = [p for p in ws.import_problems if "duplicate case id" in p["message"]]
        assert len(dupes) == 2 and {Path(p["path"]).name for p in dupes} == {"a.nrrd", "b_0000.nii.gz"}


# --------------------------------------------------------------------------------------- scoring
def test_scoring_scores_the_good_cases_and_records_each_bad_one(messy_ws):
    result = scoring.score_cases(messy_ws)
    assert set(result["errors"]) == set(BAD_IMAGES)
    for case_id, needle in BAD_IMAGES.items():
        message = result["errors"][case_id]
        assert str(messy_ws.image_path(case_id)) in message and needle in message and _hinted(message)
    usable = [c.case_id for c in messy_ws.cases() if c.case_id not in BAD_IMAGES]
    assert result["scored"] == len(usable)
    cached = messy_ws.get_scores(result["model_checksum"], result["settings_hash"])
    assert all(np.isfinite(cached[c]["zt"]).all() for c in usable)
    table = scoring.rank_cases(messy_ws, budget=2)
    status = {r.case_id: r.status for r in table.rows}
    assert {c for c, s in status.items() if s == "error"} == set(BAD_IMAGES)
    assert len(table.picked) == 2 and set(table.picked) <= set(POOL)
    again = scoring.score_cases(messy_ws)  # failed cases are retried, good ones come from the cache
    assert again["cached"] == len(usable) and set(again["errors"]) == set(BAD_IMAGES)
    assert messy_ws.integrity_check() == []


# ------------------------------------------------------------------------------------ save_label
def test_save_label_on_odd_names_nan_images_and_escaping_ids(messy_ws):
    for case_id in ODD_NAMES:
        truth = volumes.read_volume(messy_ws.case(case_id).reference_label, kind="label").array
        path = messy_ws.save_label(case_id, truth, user="test")
        assert path.parent == messy_ws.folder / "labels" and path.name.startswith(case_id)
        assert np.array_equal(messy_ws.read_label(case_id), truth)
    shape = volumes.read_volume(messy_ws.image_path("patiënt ß")).shape
    with pytest.raises(VolumeError, match="NaN") as err:
        messy_ws.save_label("nan_case", np.zeros(shape, np.uint8))
    assert str(messy_ws.image_path("nan_case")) in str(err.value)
    assert messy_ws.case("nan_case").label_path is None
    with pytest.raises(LabelError, match="outside 0..2"):
        messy_ws.save_label("patiënt ß", np.full(shape, 3, np.uint8))
    for hostile in ("../../escape", "../labels/x", "/etc/passwd"):
        with pytest.raises(WorkspaceError, match="no case named"):
            messy_ws.save_label(hostile, np.zeros(shape, np.uint8))
    assert sorted(p.name for p in (messy_ws.folder / "labels").iterdir() if not p.name.startswith(".")) == \
        sorted(f"{c}.nii.gz" for c in ODD_NAMES)
    assert messy_ws.integrity_check() == []


# -------------------------------------------------------------------------------------- training
def test_training_names_every_bad_label_before_any_step_then_trains_once_fixed(messy_ws):
    before = messy_ws.current_model().id
    steps = []
    with pytest.raises(LabelError) as err:
        training.finetune_round(messy_ws, progress=lambda s, t, info: steps.append(info.get("phase")))
    message = str(err.value)
    assert f"{len(BAD_LABELS)} labeled cases cannot be used" in message and _hinted(message)
    for case_id, needle in BAD_LABELS.items():
        assert str(messy_ws.label_path(case_id)) in message
    assert all(needle in message for needle in BAD_LABELS.values())
    assert "train" not in steps  # refused while preparing, not after the training steps
    assert messy_ws.current_model().id == before
    assert [r.status for r in messy_ws.rounds("train")] == ["failed"]
    assert messy_ws.integrity_check() == []
    # the fix the message asks for: save correct labels (on the image grid) through the workspace
    for case_id in BAD_LABELS:
        shape = volumes.read_volume(messy_ws.image_path(case_id)).shape
        messy_ws.save_label(case_id, np.zeros(shape, np.uint8), user="fixer")
    result = training.finetune_round(messy_ws)
    assert messy_ws.current_model().id == result["model_id"] != before
    assert result["metrics"]["train_labels"] == len(messy_ws.labeled_ids())
    assert messy_ws.integrity_check() == []


def test_a_bad_heldout_label_fails_the_round_before_training(tmp_path, tiny_dataset, foundation_file):  # noqa: F811
    from test_training import make_workspace
    ws = make_workspace(tmp_path / "ws", tiny_dataset, foundation_file, tiny_settings(kfold_min_labels=3))
    heldout = training.holdout_fold(ws.labeled_ids(), ws.settings, 0)
    assert heldout
    bad = ws.label_path(heldout[0])
    bad.write_bytes(bad.read_bytes()[:40])
    phases = []
    with pytest.raises(VolumeError) as err:
        training.finetune_round(ws, progress=lambda s, t, info: phases.append(info.get("phase")))
    assert str(bad) in str(err.value) and "train" not in phases
    assert [r.status for r in ws.rounds("train")] == ["failed"] and ws.current_model().kind == "foundation"
    ws.close()


# --------------------------------------------------------------------------- hostile checkpoints
class _WritesMarker:
    """A pickle payload that would create a file when unpickled (stands for any code execution)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    spec = default_spec(["background", "head", "body"], (16, 16, 16))
    state = build_network(spec).state_dict()
    torch.save({"state_dict": state, "payload": _WritesMarker(marker)}, path)
    return path


def test_the_evil_payload_is_live_when_unpickled_unsafely(tmp_path):
    """Control: unpickled by plain pickle (what an unsafe checkpoint load does), the payload runs,
    so the refusals below are meaningful."""
    import pickle
    marker = tmp_path / "control_marker"
    pickle.loads(pickle.dumps({"state_dict": {}, "payload": _WritesMarker(marker)}))
    assert marker.exists()


def test_init_refuses_a_code_running_checkpoint_and_creates_nothing(tmp_path, messy_dataset, capsys):
    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    assert cli.main(["init", str(tmp_path / "ws"), "--dataset", str(messy_dataset), "--model", str(evil)]) == 1
    err = capsys.readouterr().err
    assert str(evil) in err and "pickled code" in err and _hinted(err)
    assert not marker.exists() and not (tmp_path / "ws").exists()


def test_training_refuses_a_registered_code_running_checkpoint(messy_ws, tmp_path):
    marker = tmp_path / "pwned"
    evil = messy_ws.register_model(_evil_checkpoint(tmp_path / "evil.pt", marker), kind="foundation")
    for run in (lambda: training.finetune_round(messy_ws), lambda: scoring.score_cases(messy_ws),
                lambda: cli.main(["train", str(messy_ws.folder), "--steps", "1"])):
        try:
            code = run()
        except CheckpointError as exc:
            assert str(evil.path) in str(exc) and "pickled code" in str(exc)
        else:
            assert code == 1  # the CLI reports the error event and exits 1
        assert not marker.exists()
    assert messy_ws.rounds("train") == []  # refused while loading the start model, before a round began
    assert not any(m.kind == "finetuned" for m in messy_ws.models())


def _other_task_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """A checkpoint for 2 classes (the task has 3) and one whose weights belong to another network."""
    two = default_spec(["background", "hippocampus"], (16, 16, 16))
    save_checkpoint(tmp_path / "two_classes.pt", build_network(two), two)
    three = default_spec(["background", "head", "body"], (16, 16, 16))
    other = three.replace(network="SegResNet", kwargs={"spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                                                       "init_filters": 8})
    torch.save({"format": "assft", "format_version": 1, "spec": three.to_dict(),
                "state_dict": build_network(other).state_dict(), "pretext": None, "extra": {}},
               tmp_path / "other_net.pt")
    return {"classes": (tmp_path / "two_classes.pt", "segments 2 classes"),
            "network": (tmp_path / "other_net.pt", "no tensor in the checkpoint matches")}


def test_init_refuses_a_checkpoint_for_another_task(tmp_path, messy_dataset, capsys):
    for name, (path, needle) in _other_task_checkpoints(tmp_path).items():
        ws = tmp_path / f"ws_{name}"
        assert cli.main(["init", str(ws), "--dataset", str(messy_dataset), "--model", str(path)]) == 1
        err = capsys.readouterr().err
        assert str(path) in err and needle in err and _hinted(err), err
        assert not ws.exists()


def test_training_refuses_a_checkpoint_for_another_task_before_a_round_starts(messy_ws, tmp_path):
    for path, needle in _other_task_checkpoints(tmp_path).values():
        version = messy_ws.register_model(path, kind="finetuned")
        with pytest.raises(CheckpointError, match=needle) as err:
            training.finetune_round(messy_ws)
        assert str(version.path) in str(err.value)
    assert messy_ws.rounds("train") == []  # refused before anything was recorded or trained
    assert messy_ws.integrity_check() == []

