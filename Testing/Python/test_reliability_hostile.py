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
def test_a_workspace_never_chooses_the_program_that_runs_its_jobs(tmp_path, tiny_dataset):  # noqa: F811
    ws = Workspace.create(tmp_path / "ws", tiny_dataset)  # no model: the job ends at once, after choosing its Python
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
    assert job.wait(timeout=120) == 1
    assert any(e.get("event") == "error" and "no model" in e.get("message", "") for e in job.poll())
    assert job.process.args[0] == sys.executable
    assert not marker.exists()
    with pytest.raises(ASSFTError, match="not a Python interpreter"):  # the caller's own choice, checked
        Job.start("score", ws.folder, python=str(tmp_path / "no-such-python"), job_dir=tmp_path / "job2")
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


# ------------------------------------------------------------------ 2. reading outside the dataset
def _good(folder: Path, name: str = "good.nii.gz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    return volumes.write_volume(folder / name, rng.normal(size=(8, 9, 10)).astype(np.float32), np.diag([1.0, 1, 2, 1]))


def _nhdr(path: Path, data_file: str) -> Path:
    path.write_text("NRRD0004\ntype: unsigned char\ndimension: 3\nspace: left-posterior-superior\nsizes: 8 8 8\n"
                    "space directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nencoding: raw\n"
                    f"space origin: (0,0,0)\ndata file: {data_file}\n\n")
    return path


def test_detached_headers_and_links_never_read_outside_the_dataset(tmp_path):
    ds = tmp_path / "ds"
    _good(ds)
    outside = tmp_path / "secret.raw"
    outside.write_bytes(bytes(512))
    _nhdr(ds / "abs.nhdr", "/etc/passwd")
    _nhdr(ds / "up.nhdr", "../secret.raw")
    os.mkfifo(ds / "pipe.raw")
    _nhdr(ds / "fifo.nhdr", "pipe.raw")  # reading it would hang `assft score` for ever
    _nhdr(ds / "list.nhdr", "LIST\nsecret.raw")
    (ds / "inside.raw").write_bytes(bytes(512))
    _nhdr(ds / "fine.nhdr", "inside.raw")
    os.symlink(tmp_path / "nowhere.nii.gz", ds / "dangling.nii.gz")
    os.symlink(ds / "loop_b.nii.gz", ds / "loop_a.nii.gz")
    os.symlink(ds / "loop_a.nii.gz", ds / "loop_b.nii.gz")
    os.symlink("/dev/zero", ds / "zero.nii.gz")
    os.symlink(_good(tmp_path / "elsewhere"), ds / "out_link.nii.gz")
    os.mkfifo(ds / "fifo_image.nii.gz")
    (ds / "folder.nii.gz").mkdir()

    from ASSFTLib.dataset import load_dataset
    cases, problems = load_dataset(ds)
    assert sorted(c.case_id for c in cases) == ["fine", "good"]
    said = {p.path.name: p.message for p in problems}
    expect = {"abs.nhdr": "absolute", "up.nhdr": "outside the dataset", "fifo.nhdr": "pipe",
              "list.nhdr": "several", "dangling.nii.gz": "does not exist", "loop_a.nii.gz": "cannot be opened",
              "zero.nii.gz": "device", "out_link.nii.gz": "outside the dataset", "fifo_image.nii.gz": "pipe",
              "folder.nii.gz": "folder"}
    for name, words in expect.items():
        assert words in said.get(name, ""), (name, said.get(name))
        assert _hinted(said[name])
    for name in ("abs.nhdr", "up.nhdr", "fifo.nhdr", "zero.nii.gz", "fifo_image.nii.gz"):
        with pytest.raises(VolumeError):
            volumes.read_volume(ds / name)
    assert volumes.read_volume(ds / "fine.nhdr").shape == (8, 8, 8)


def test_init_lists_hostile_entries_as_problems_and_scores_nothing_outside(tmp_path, tiny_dataset, capsys):  # noqa: F811
    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds)
    _nhdr(ds / "imagesTr" / "leak.nhdr", "/etc/passwd")
    meta = json.loads((ds / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/leak.nhdr"})
    meta["training"].append({"image": "./imagesTr/.a.tmp.nii.gz"})
    volumes.write_volume(ds / "imagesTr" / ".a.tmp.nii.gz", np.ones((8, 8, 8), np.float32), np.eye(4))
    (ds / "dataset.json").write_text(json.dumps(meta))
    assert cli.main(["init", str(tmp_path / "ws"), "--dataset", str(ds)]) == 0
    out = capsys.readouterr().out
    assert "leak.nhdr" in out and "absolute" in out and "'.a.tmp'" in out
    with Workspace.open(tmp_path / "ws") as w:
        assert "leak" not in {c.case_id for c in w.cases()} and ".a.tmp" not in {c.case_id for c in w.cases()}


# ------------------------------------------------------------------ pixel types and geometry no label can match
def test_unusable_pixel_types_and_geometry_are_refused_with_what_to_do(tmp_path):
    a = np.eye(4)
    rgb = np.zeros((6, 7, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, a), str(tmp_path / "rgb.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((6, 7, 8), np.complex64), a), str(tmp_path / "complex.nii.gz"))
    big = np.full((6, 7, 8), 2 ** 40, np.int64)
    nib.save(nib.Nifti1Image(big, a, dtype=np.int64), str(tmp_path / "int64.nii.gz"))
    nib.save(nib.Nifti1Image(np.full((6, 7, 8), 1000, np.int64), a, dtype=np.int64), str(tmp_path / "small64.nii.gz"))
    singular, nan_affine = np.eye(4), np.eye(4)
    singular[:3, 1] = singular[:3, 0]
    nan_affine[0, 3] = np.nan
    for name, affine in (("zero_spacing", np.diag([1.0, 0.0, 1.0, 1.0])), ("singular", singular),
                         ("nan_affine", nan_affine)):
        img = nib.Nifti1Image(np.ones((6, 7, 8), np.float32), None)
        img.header.set_sform(affine, code=1)  # as a broken exporter writes it (nibabel's own writer refuses)
        nib.save(img, str(tmp_path / f"{name}.nii.gz"))
    for name, words in (("rgb", "RGB"), ("complex", "complex"), ("int64", "64-bit"), ("zero_spacing", "zero"),
                        ("singular", "singular"), ("nan_affine", "NaN")):
        with pytest.raises(VolumeError, match=words) as err:
            volumes.read_volume(tmp_path / f"{name}.nii.gz")
        assert _hinted(str(err.value)) and f"{name}.nii.gz" in str(err.value)
    assert volumes.read_volume(tmp_path / "small64.nii.gz").array.max() == 1000


def test_dataset_json_of_the_wrong_shape_or_encoding(tmp_path, tiny_dataset):  # noqa: F811
    from ASSFTLib.dataset import load_dataset, task_classes
    from ASSFTLib.errors import DatasetError
    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds)
    meta = json.loads((ds / "dataset.json").read_text())
    for labels, words in (([1, 2], "must be an object"), ({"0": "bg", "x": "y"}, "neither")):
        (ds / "dataset.json").write_text(json.dumps({**meta, "labels": labels}))
        with pytest.raises(DatasetError, match=words) as err:
            task_classes(ds)
        assert "--classes" in str(err.value)
        assert cli.main(["init", str(tmp_path / f"ws{len(words)}"), "--dataset", str(ds)]) == 1
        assert not (tmp_path / f"ws{len(words)}").exists()
    (ds / "dataset.json").write_text(json.dumps(meta), encoding="utf-16")
    with pytest.raises(DatasetError, match="UTF-8"):
        task_classes(ds)
    cases, problems = load_dataset(ds)  # the cases are still found by scanning, and the file is named
    assert cases and any("dataset.json" in str(p.path) for p in problems)
    (ds / "dataset.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(meta).encode())  # a BOM is fine
    assert task_classes(ds) == meta_classes(meta)


def meta_classes(meta: dict) -> list[str]:
    return [name for _, name in sorted((int(k), v) for k, v in meta["labels"].items())]


# ------------------------------------------------------------------ 3. a job deletes only what it created
def test_a_job_folder_never_deletes_or_overwrites_what_it_did_not_create(ws, tmp_path):
    current = ws.current_model()
    before = current.path.read_bytes()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", str(ws.folder), "--job-dir", str(ws.paths.models), "--steps", "2"])
    assert exit_.value.code == 2
    for protected in (ws.folder, ws.paths.labels, ws.paths.jobs, ws.paths.models / "sub"):
        with pytest.raises(SystemExit):
            cli.main(["train", str(ws.folder), "--job-dir", str(protected), "--steps", "2"])
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "model.pt").write_bytes(b"a colleague's model")
    (theirs / "state.pt").write_bytes(b"a colleague's state")
    with pytest.raises(SystemExit):
        cli.main(["train", str(ws.folder), "--job-dir", str(theirs), "--steps", "2"])
    from ASSFTLib import training
    with pytest.raises(WorkspaceError, match="already holds"):  # the library call refuses it too
        training.finetune_round(ws, ws.settings, job_dir=theirs)
    with pytest.raises(WorkspaceError, match="models folder"):
        training.finetune_round(ws, ws.settings, job_dir=ws.paths.models)
    assert (theirs / "model.pt").read_bytes() == b"a colleague's model"
    assert (theirs / "state.pt").read_bytes() == b"a colleague's state"
    assert ws.current_model().id == current.id and current.path.read_bytes() == before
    assert [p.name for p in ws.paths.models.iterdir()] == [current.path.name]


# ------------------------------------------------------------------ 4. labels are never lost to the sweep or to name clashes
def test_a_case_named_like_a_temporary_keeps_its_label_and_fast_saves_keep_every_version(ws, monkeypatch):
    import sqlite3
    import time
    from ASSFTLib.workspace import cases as cases_module
    first = ws.cases()[0]
    conn = sqlite3.connect(ws.paths.db)  # a case of an older release (init now refuses ids starting with '.')
    with conn:
        for fake in (".a.tmp", ".assft-tmp-abcdefgh.tmp"):
            conn.execute("INSERT INTO cases(case_id, image_path, status, position) VALUES (?, ?, 'unlabeled', 99)",
                         (fake, str(first.image_path)))
    conn.close()
    shape = volumes.read_volume(first.image_path).shape
    saved = {}
    for fake in (".a.tmp", ".assft-tmp-abcdefgh.tmp"):
        saved[fake] = ws.save_label(fake, np.ones(shape, np.uint8))
        old = time.time() - 7200
        os.utime(saved[fake], (old, old))
    with ws.job_lock():  # sweeps hidden temporaries older than an hour
        pass
    for fake, path in saved.items():
        assert path.exists() and volumes.read_volume(path, kind="label").array.max() == 1, fake

    monkeypatch.setattr(cases_module, "now", lambda: "2026-01-01T00:00:00.000+00:00")  # five saves in one ms
    for value in range(5):
        ws.save_label(first.case_id, np.full(shape, value % 2, np.uint8))
    history = sorted(ws.paths.label_history.glob(f"{first.case_id}.*"))
    assert len(history) == 5 - (first.label_path is None or first.label_path.parent != ws.paths.labels)
    assert all(not p.name.startswith(".") for p in history)


# ------------------------------------------------------------------ 6. init is all or nothing
def test_init_with_a_monai_bundle_works_and_a_failed_or_interrupted_init_leaves_nothing(tmp_path, tiny_dataset,
                                                                                        monkeypatch, capsys):  # noqa: F811
    import torch
    from test_models import tiny_spec, write_bundle
    from ASSFTLib.models import build_network
    spec = tiny_spec("UNet", classes=["background", "a", "b"])
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.kwargs.items()}
    torch.manual_seed(0)
    bundle = write_bundle(tmp_path / "bundle", build_network(spec),
                          {"_target_": "monai.networks.nets.UNet", **kwargs, "out_channels": "@num_classes"},
                          num_classes=3)
    code = cli.main(["init", str(tmp_path / "ws_bundle"), "--dataset", str(tiny_dataset), "--model", str(bundle),
                     "--classes", "background,a,b"])
    assert code == 0, capsys.readouterr()
    with Workspace.open(tmp_path / "ws_bundle") as w:
        model = w.current_model()
        assert model.path.is_dir() and model.path.parent == w.paths.models and w.integrity_check() == []

    parent = tmp_path / "interrupted"
    parent.mkdir()
    target = parent / "ws"
    real_register = Workspace.register_model

    def ctrl_c(self, *a, **k):  # stands in for the user's Ctrl-C arriving while the model is copied
        real_register(self, *a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(Workspace, "register_model", ctrl_c)
    assert cli.main(["init", str(target), "--dataset", str(tiny_dataset), "--model", str(bundle),
                     "--classes", "background,a,b"]) == 130
    assert list(parent.iterdir()) == []  # neither the workspace nor the hidden folder it was built in
    monkeypatch.setattr(Workspace, "register_model", real_register)
    assert cli.main(["init", str(target), "--dataset", str(tiny_dataset), "--model", str(bundle),
                     "--classes", "background,a,b"]) == 0
    assert cli.main(["init", str(target), "--dataset", str(tiny_dataset)]) == 1  # a second init: clear refusal
    assert "already exists" in capsys.readouterr().err
    with Workspace.open(target) as w:
        assert w.current_model() is not None


def test_a_non_utf8_file_name_is_a_problem_not_a_broken_workspace(tmp_path, tiny_dataset, capsys):  # noqa: F811
    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset / "imagesTr", ds)
    src = sorted(ds.iterdir())[0]
    os.rename(src, os.path.join(os.fsencode(ds), b"caf\xe9.nii.gz"))  # Latin-1 bytes from an old share
    assert cli.main(["init", str(tmp_path / "ws"), "--dataset", str(ds)]) == 0
    assert "UTF-8" in capsys.readouterr().out
    assert cli.main(["status", str(tmp_path / "ws")]) == 0


def test_two_inits_into_one_folder_give_one_workspace_and_a_clear_refusal(tmp_path, tiny_dataset):  # noqa: F811
    import subprocess
    target = tmp_path / "ws"
    cmd = [sys.executable, "-m", "ASSFTLib.cli", "init", str(target), "--dataset", str(tiny_dataset)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1], results
    assert any("workspace" in err and "Traceback" not in err for code, err in results if code == 1)
    with Workspace.open(target) as w:
        assert w.integrity_check() == [] and len(w.cases()) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["ws"]


def test_a_moved_workspace_keeps_its_labels_and_models(ws, tmp_path):
    first = ws.cases()[0]
    shape = volumes.read_volume(first.image_path).shape
    ws.save_label(first.case_id, np.ones(shape, np.uint8))
    ws.close()
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(ws.folder, moved)
    shutil.rmtree(ws.folder)
    with Workspace.open(moved) as w:
        assert w.integrity_check() == []
        assert w.label_path(first.case_id).parent == w.paths.labels and w.read_label(first.case_id).max() == 1
        assert w.current_model().path.parent == w.paths.models


def test_an_old_workspace_with_absolute_paths_is_migrated_and_can_move(ws, tmp_path):
    import sqlite3
    first = ws.cases()[0]
    ws.save_label(first.case_id, np.ones(volumes.read_volume(first.image_path).shape, np.uint8))
    ws.close()
    conn = sqlite3.connect(ws.paths.db)  # as the release before migration 3 wrote it
    with conn:
        conn.execute("UPDATE cases SET label_path = ? WHERE case_id = ?",
                     (str(ws.paths.label(first.case_id)), first.case_id))
        conn.execute("UPDATE models SET path = ? || '/' || path", (str(ws.folder),))
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    moved = tmp_path / "moved"
    shutil.move(str(ws.folder), moved)
    with Workspace.open(moved) as w:
        assert w.integrity_check() == []
        assert w.label_path(first.case_id) == w.paths.label(first.case_id)
        assert w.current_model().path.parent == w.paths.models


# ------------------------------------------------------------------ 5. one bad case never stops `assft score`
def test_one_bad_case_is_recorded_with_its_reason_and_the_rest_are_scored(tmp_path, tiny_dataset, foundation_file,
                                                                           monkeypatch, capsys):  # noqa: F811
    from ASSFTLib import scoring
    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds)
    rgb = np.zeros((24, 24, 24), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    (ds / "imagesTs").mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(ds / "imagesTs" / "colour.nii.gz"))  # DTypePromotionError before
    meta = json.loads((ds / "dataset.json").read_text())
    meta["test"] = list(meta.get("test", [])) + ["./imagesTs/colour.nii.gz"]
    (ds / "dataset.json").write_text(json.dumps(meta))
    ws_dir = tmp_path / "ws"
    assert cli.main(["init", str(ws_dir), "--dataset", str(ds), "--model", str(foundation_file)]) == 0
    with Workspace.open(ws_dir) as w:
        w.save_settings(tiny_settings())
        victim = w.cases()[1].case_id
    real = scoring.score_volume

    def oom_on_one(model, foundation, volume, settings, **kw):  # stands in for a real out-of-memory on one volume
        if volume.path is not None and volume.path.name.startswith(victim):
            raise MemoryError()
        return real(model, foundation, volume, settings, **kw)
    monkeypatch.setattr(scoring, "score_volume", oom_on_one)
    capsys.readouterr()
    assert cli.main(["score", str(ws_dir)]) == 1  # finishes, with errors
    with Workspace.open(ws_dir) as w:
        cur = w.current_model()
        failures = w.score_failures(cur.checksum, w.settings.scoring_hash())
        assert set(failures) == {"colour", victim}
        assert "RGB" in failures["colour"] and "memory" in failures[victim]
        scored = w.get_scores(cur.checksum, w.settings.scoring_hash())
        assert len([r for r in scored.values() if "error" not in r]) == len(w.cases()) - 2
    capsys.readouterr()
    assert cli.main(["rank", str(ws_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 cases could not be scored" in out and "colour" in out and "RGB" in out
    assert cli.main(["status", str(ws_dir)]) == 0
    out = capsys.readouterr().out
    assert "failed" in out and victim in out and "memory" in out


@pytest.mark.parametrize("change,words", [
    ({"kwargs": {"spatial_dims": 2}}, "2-D"),
    ({"preprocessing": {"normalize": "zscore", "clip": None, "target_spacing": [1e-4, 1e-4, 1e-4]}}, "resamples"),
    ({"kwargs": {"channels": [16, 4096], "strides": [2]}}, "channels"),
])
def test_init_refuses_checkpoints_no_volume_can_run(tmp_path, tiny_dataset, change, words, capsys):  # noqa: F811
    from ASSFTLib.models import build_network, default_spec, save_checkpoint
    spec = default_spec(["background", "foreground"])
    d = spec.to_dict()
    for key, value in change.items():
        d[key] = {**d[key], **value} if key == "kwargs" else value
    spec = type(spec).from_dict(d)
    path = tmp_path / "odd.pt"
    save_checkpoint(path, build_network(spec), spec)
    assert cli.main(["init", str(tmp_path / "ws"), "--dataset", str(tiny_dataset), "--model", str(path),
                     "--classes", "background,foreground"]) == 1
    err = capsys.readouterr().err
    assert words in err and "odd.pt" in err
    assert not (tmp_path / "ws").exists()


def test_two_assft_score_at_once_the_second_is_told(ws, capsys):
    with ws.job_lock():  # a first `assft score` (or any job) holds the workspace
        assert cli.main(["score", str(ws.folder)]) == 1
    assert "another ASSFT job is running" in capsys.readouterr().err


# ------------------------------------------------------------------ 7. silent garbage: diverged rounds, changed files
def _overflow_after_training(monkeypatch, module, value: float) -> None:
    """``module.run_steps`` trains, then sets a weight to ``value``: stands in for an optimizer that overflowed
    the weights while the loss stayed finite."""
    import torch
    real = module.run_steps

    def blow_up(job, *a, **k):
        loss = real(job, *a, **k)
        with torch.no_grad():
            next(job.network.parameters()).fill_(value)
        return loss
    monkeypatch.setattr(module, "run_steps", blow_up)


def test_a_diverged_round_never_becomes_current(ws, monkeypatch):
    from ASSFTLib import training
    from ASSFTLib.training import finetune
    before = ws.current_model()
    _overflow_after_training(monkeypatch, finetune, float("inf"))
    with pytest.raises(ASSFTError, match="diverged"):
        training.finetune_round(ws, ws.settings)
    assert ws.current_model().id == before.id and len(ws.models()) == 1
    assert ws.rounds("train")[-1].status == "failed"


def test_a_diverged_pretraining_writes_no_foundation(tmp_path, tiny_dataset, monkeypatch):  # noqa: F811
    from ASSFTLib import training
    from ASSFTLib.training import pretraining
    _overflow_after_training(monkeypatch, pretraining, float("nan"))
    out = tmp_path / "foundation.pt"
    with pytest.raises(ASSFTError, match=f"diverged.*no foundation model was written to {out}"):
        training.pretrain(training.expand_image_paths([tiny_dataset]), out, tiny_settings(pretrain_steps=2))
    assert not out.exists()


def test_a_collapsed_round_is_kept_but_not_current_and_use_model_goes_back(ws, foundation_file, capsys):
    from ASSFTLib import training
    good = ws.register_model(foundation_file, kind="finetuned", metrics={"heldout_dice": 0.95})
    ws.save_settings(tiny_settings(kfold_min_labels=2, steps=1))
    with pytest.warns(training.TrainingWarning, match="NOT made current"):
        result = training.finetune_round(ws, ws.settings)
    assert result["made_current"] is False and ws.current_model().id == good.id
    new = result["model_id"]
    assert cli.main(["use-model", str(ws.folder), str(new)]) == 0 and ws.current_model().id == new
    assert cli.main(["use-model", str(ws.folder), str(good.id)]) == 0 and ws.current_model().id == good.id
    assert cli.main(["use-model", str(ws.folder)]) == 0
    assert f"* #{good.id}" in capsys.readouterr().out


def test_a_model_file_whose_bytes_changed_is_never_used(ws, capsys):
    from ASSFTLib import scoring
    cur = ws.current_model()
    with open(cur.path, "ab") as fh:
        fh.write(b"\0")  # still loads with torch, but is not the registered model
    with pytest.raises(WorkspaceError, match="changed since it was registered"):
        scoring.score_cases(ws, ws.settings)
    assert cli.main(["status", str(ws.folder)]) == 0
    assert "WARNING" in capsys.readouterr().out
    assert any("changed" in p for p in ws.integrity_check())


# ------------------------------------------------------------------ the database: damaged, read-only
def test_a_damaged_database_is_named_and_a_read_only_one_is_never_called_damaged(ws, tmp_path, capsys):
    import sqlite3
    from ASSFTLib.workspace.schema import database_error
    for i in range(30):  # enough rows for several pages
        ws.put_scores("x" * 64, "h", {f"c{i}": {"zt": list(range(200))}})
    ws.close()
    db = ws.paths.db
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 3 * page
    data[2 * page: 3 * page] = os.urandom(page)  # one damaged page in the middle
    db.write_bytes(bytes(data))
    assert cli.main(["status", str(ws.folder)]) == 1
    err = capsys.readouterr().err
    assert "damaged" in err and "assft.db" in err and "backup" in err and "Traceback" not in err

    ro_db = tmp_path / "ro.db"
    sqlite3.connect(ro_db).execute("CREATE TABLE t(x)").connection.commit()
    conn = sqlite3.connect(f"file:{ro_db}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as real:  # SQLite's own error for a read-only database
        conn.execute("INSERT INTO t VALUES (1)")
    message = str(database_error(real.value, ro_db, "written"))
    assert "read-only" in message and "backup" not in message and "not damaged" in message


def test_output_paths_that_are_folders_or_too_long_are_clear(ws, tmp_path, capsys):
    from ASSFTLib import scoring
    from ASSFTLib.fileutil import atomic_write_text
    scoring.score_cases(ws, ws.settings)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert cli.main(["rank", str(ws.folder), "--csv", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "is a folder" in err and str(folder) in err and folder.is_dir() and list(folder.iterdir()) == []
    assert cli.main(["report", str(ws.folder), "--out", str(folder), "--no-score", "--top", "1"]) == 1
    assert "is a folder" in capsys.readouterr().err and list(folder.iterdir()) == []
    with pytest.raises(ASSFTError, match="bytes long"):
        atomic_write_text(tmp_path / ("x" * 300 + ".csv"), "a")
    deep = tmp_path / ("d" * 250) / ("e" * 250)
    assert cli.main(["init", str(deep / ("w" * 300)), "--dataset", str(ws.dataset)]) == 1
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------ families, with hypothesis (ASSFT_FUZZ_EXAMPLES)
from hypothesis import HealthCheck, given, settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("ASSFT_FUZZ_EXAMPLES", "60"))
FUZZ = hsettings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10 ** 12, 10 ** 12) | st.floats(allow_nan=True)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4), max_leaves=6)
_FIELDS = sorted(Settings().to_dict()) + ["python_executable", "extra", "unknown_knob"]


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=4))
def test_fuzz_settings_files_load_or_say_why(changes):
    """Any settings.json content: valid settings of the right types, or a SettingsError naming the field."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SettingsNote)
        try:
            s = Settings.from_dict({**Settings().to_dict(), **changes})
        except SettingsError as exc:
            assert _hinted(str(exc))
            return
    for name, default in Settings().to_dict().items():
        value = getattr(s, name)
        if isinstance(default, bool):
            assert isinstance(value, bool), name
        elif isinstance(default, (int, float)):
            assert not isinstance(value, bool) and math.isfinite(value), name
    assert not hasattr(s, "python_executable")


_NAME = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=40)


@FUZZ
@given(case_id=_NAME)
def test_fuzz_no_case_id_is_ever_taken_for_a_temporary(case_id):
    """Whatever a case is called, its label file and its history copies are never named like a temporary."""
    from ASSFTLib.fileutil import is_temporary
    from ASSFTLib.workspace.paths import LABEL_SUFFIX, WorkspacePaths
    from ASSFTLib.dataset import _unique_cases, DatasetCase
    problems: list = []
    kept = _unique_cases([DatasetCase(case_id, Path(f"{case_id}.nii.gz"))], problems)
    if not kept:
        assert case_id.startswith(".") and problems
        return
    label = WorkspacePaths(Path("/ws")).label(case_id)
    assert not is_temporary(label.name)
    assert not is_temporary(f"{case_id}.20260101T000000.000Z.3{LABEL_SUFFIX}")


@FUZZ
@given(data_file=st.one_of(st.sampled_from(["/etc/passwd", "../secret.raw", "../../x", "sub/../../secret.raw",
                                            "LIST", "x%03d.raw 1 3 1", "pipe.raw", "inside.raw", "./inside.raw",
                                            "link.raw", "sub/inside.raw"]),
                           _NAME.map(lambda s: s.replace("\n", "").replace("\r", "")).filter(lambda s: s.strip())),
       key=st.sampled_from(["data file", "datafile", "DATA FILE", "data  file"]))
def test_fuzz_detached_headers_read_only_their_own_folder(tmp_path_factory, data_file, key):
    """Any ``data file:`` line: the data file read is a regular file in the header's folder, or a VolumeError."""
    root = tmp_path_factory.mktemp("nhdr")
    ds = root / "ds"
    (ds / "sub").mkdir(parents=True)
    (root / "secret.raw").write_bytes(b"S" * 512)
    (ds / "inside.raw").write_bytes(bytes(512))
    (ds / "sub" / "inside.raw").write_bytes(bytes(512))
    os.mkfifo(ds / "pipe.raw")
    os.symlink(root / "secret.raw", ds / "link.raw")
    header = _nhdr(ds / "h.nhdr", data_file).read_text().replace("data file:", f"{key}:")
    (ds / "h.nhdr").write_text(header)
    try:
        files = volumes.detached_data_files(ds / "h.nhdr")
    except VolumeError as exc:
        assert "h.nhdr" in str(exc)
        return
    for f in files:
        real = Path(os.path.realpath(f))
        assert ds.resolve() in real.parents and stat.S_ISREG(os.stat(real).st_mode)


def test_a_colleagues_database_pointing_outside_is_refused_or_reported(ws, tmp_path, foundation_file):
    import sqlite3
    from ASSFTLib import scoring
    outside = tmp_path / "elsewhere.pt"
    shutil.copyfile(foundation_file, outside)
    conn = sqlite3.connect(ws.paths.db)
    with conn:
        conn.execute("UPDATE models SET path = ?", (str(outside),))
        conn.execute("UPDATE cases SET label_path = ? WHERE position = 0", (str(tmp_path / "x.nii.gz"),))
    conn.close()
    with pytest.raises(WorkspaceError, match="outside the workspace's models"):
        scoring.score_cases(ws, ws.settings)
    problems = ws.integrity_check()
    assert any("outside the workspace and its dataset" in p for p in problems)


def test_a_case_with_the_longest_possible_name_keeps_its_history(tmp_path, tiny_dataset):  # noqa: F811
    ds = tmp_path / "ds"
    ds.mkdir()
    src = sorted((tiny_dataset / "imagesTr").iterdir())[0]
    long_id = "é" * 120 + "x" * 8  # 248 bytes: with .nii.gz the longest name a file system allows
    shutil.copyfile(src, ds / f"{long_id}.nii.gz")
    with Workspace.create(tmp_path / "ws", ds) as w:
        shape = volumes.read_volume(w.image_path(long_id)).shape
        for value in (1, 0, 1):
            w.save_label(long_id, np.full(shape, value, np.uint8))
        assert len(list(w.paths.label_history.iterdir())) == 2
        assert w.read_label(long_id).max() == 1


def test_an_image_swapped_for_an_outside_link_after_init_is_not_read(ws, tmp_path):
    from ASSFTLib import scoring
    case = ws.cases()[0]
    outside = _good(tmp_path / "private", "other_patient.nii.gz")
    dataset_copy = tmp_path / "image_backup.nii.gz"
    shutil.copyfile(case.image_path, dataset_copy)
    case.image_path.unlink()
    os.symlink(outside, case.image_path)
    try:
        result = scoring.score_cases(ws, ws.settings)
    finally:
        case.image_path.unlink()
        shutil.copyfile(dataset_copy, case.image_path)  # the dataset fixture is shared by the session
    assert "outside the dataset folder" in result["errors"][case.case_id]
    assert result["scored"] == len(ws.cases()) - 1


def test_a_header_declaring_more_than_memory_is_refused_before_allocating(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((4096, 4096, 4096))  # 256 GiB of float32, in a file of a few bytes
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    nib.save(img, str(tmp_path / "small.nii"))
    raw = bytearray((tmp_path / "small.nii").read_bytes())
    raw[:348] = hdr.binaryblock  # the header of a huge volume over a tiny file (a lying or damaged header)
    (tmp_path / "huge.nii").write_bytes(bytes(raw))
    with pytest.raises(VolumeError, match="voxels") as err:
        volumes.read_volume(tmp_path / "huge.nii")
    assert _hinted(str(err.value)) and "huge.nii" in str(err.value)


def test_the_demo_split_of_a_real_dataset_stays_inside_its_folders(hippo_dir, tmp_path):
    """`assft demo --dataset` splits a user's dataset into folders of its own: hard links or copies, since a
    dataset's symbolic links must stay inside it (they used to be links into the user's dataset)."""
    from ASSFTLib.dataset import load_dataset
    from ASSFTLib.demo import prepare_data
    data = prepare_data(tmp_path, hippo_dir, n_pool=6, n_test=3, seed=0, n_source=2)
    for folder, n in ((data.pool, 6), (data.test, 3), (data.source, 2)):
        cases, problems = load_dataset(folder)
        assert problems == [] and len(cases) >= n
        assert not any(c.image.is_symlink() for c in cases)
