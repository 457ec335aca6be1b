"""Finding the cases of a dataset folder and reading dataset.json (real hippocampus folder and broken copies)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ASSFTLib.dataset import dataset_classes, load_dataset, task_classes
from ASSFTLib.errors import ASSFTError, DatasetError
from ASSFTLib.volumes import find_volume_files, read_volume, write_volume


def test_load_dataset_real_folder(hippo_dir):
    cases, problems = load_dataset(hippo_dir)
    listed = json.loads((hippo_dir / "dataset.json").read_text())["training"]
    assert problems == []
    assert len(cases) == len(listed) == 220
    assert len({c.case_id for c in cases}) == len(cases)
    assert all(c.label is not None and c.label.is_file() and c.image.is_file() for c in cases)
    assert all(c.label.parent.name == "labelsTr" and c.label.name == c.image.name for c in cases)


def _tiny(path: Path, value: int = 1) -> Path:
    return write_volume(path, np.full((3, 4, 5), value, np.uint8), np.eye(4))


def _msd(folder: Path, names: list[str]) -> Path:
    for name in names:
        _tiny(folder / "imagesTr" / name)
        _tiny(folder / "labelsTr" / name)
    return folder


def test_load_dataset_reports_lies_duplicates_escapes_and_keeps_odd_names(tmp_path):
    folder = _msd(tmp_path / "Task Ω", ["good 1.nii.gz", "é病例_2.nii.gz", "dup.nii.gz", "dup.nrrd"])
    _tiny(tmp_path / "outside.nii.gz")
    (folder / "labelsTr" / "é病例_2.nii.gz").unlink()
    training = [
        {"image": "./imagesTr/good 1.nii.gz", "label": "./labelsTr/good 1.nii.gz", "profile": "clean"},
        {"image": "./imagesTr/é病例_2.nii.gz", "label": "./labelsTr/é病例_2.nii.gz"},
        {"image": "./imagesTr/gone.nii.gz", "label": "./labelsTr/gone.nii.gz"},
        {"image": "./imagesTr/dup.nii.gz", "label": "./labelsTr/dup.nii.gz"},
        {"image": "./imagesTr/dup.nrrd", "label": "./labelsTr/dup.nrrd"},
        {"image": "../outside.nii.gz"},
        {"label": "./labelsTr/good 1.nii.gz"},
    ]
    (folder / "dataset.json").write_text(json.dumps({"training": training, "test": ["./imagesTr/dup.nrrd"]},
                                                    ensure_ascii=False), encoding="utf-8")
    cases, problems = load_dataset(folder)
    assert [c.case_id for c in cases] == ["good 1", "é病例_2", "dup"]
    assert cases[0].label == folder / "labelsTr" / "good 1.nii.gz" and cases[0].profile == "clean"
    assert cases[1].label is None and cases[1].profile is None
    assert cases[2].image.name == "dup.nii.gz"
    messages = [str(p) for p in problems]
    assert len(messages) == 6, messages
    assert any("é病例_2.nii.gz" in m and "kept without a label" in m for m in messages)
    assert any("gone.nii.gz" in m and "missing" in m for m in messages)
    assert sum("duplicate case id 'dup'" in m for m in messages) == 2  # training .nrrd and the test entry
    assert any("'../outside.nii.gz' leaves the dataset folder" in m for m in messages)
    assert any('no "image"' in m for m in messages)
    # every case found can really be read
    for case in cases:
        read_volume(case.image)


def test_load_dataset_unreadable_json_falls_back_to_scanning(tmp_path):
    folder = _msd(tmp_path / "ds", ["a.nii.gz", "b_0000.nii.gz"])
    write_volume(folder / "labelsTr" / "b.nii.gz", np.zeros((3, 4, 5), np.uint8), np.eye(4))
    (folder / "labelsTr" / "b_0000.nii.gz").unlink()
    _tiny(folder / "labelsTr" / "orphan.nii.gz")
    _tiny(folder / "imagesTs" / "t.nii.gz")
    (folder / "dataset.json").write_text('{"training": [ broken')
    cases, problems = load_dataset(folder)
    assert [(c.case_id, c.label.name if c.label else None) for c in cases] == [
        ("a", "a.nii.gz"), ("b", "b.nii.gz"), ("t", None)]
    assert len(problems) == 2
    assert problems[0].path == folder / "dataset.json" and "scanned imagesTr" in problems[0].message
    assert problems[1].path.name == "orphan.nii.gz"


def test_load_dataset_plain_folder_with_and_without_labels(tmp_path):
    for name in ("p 1.nii.gz", "p2.nrrd"):
        _tiny(tmp_path / "plain" / name)
    _tiny(tmp_path / "plain" / "labelsTr" / "p2.nii.gz")
    cases, problems = load_dataset(tmp_path / "plain")
    assert problems == []
    assert [(c.case_id, c.label.name if c.label else None) for c in cases] == [("p 1", None), ("p2", "p2.nii.gz")]


def test_load_dataset_raises_only_without_any_volume(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no volumes")
    with pytest.raises(DatasetError, match="no usable volumes"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "liar").mkdir()
    (tmp_path / "liar" / "dataset.json").write_text(json.dumps({"training": [{"image": "./imagesTr/x.nii.gz"}]}))
    with pytest.raises(DatasetError, match="missing") as err:
        load_dataset(tmp_path / "liar")
    assert isinstance(err.value, ASSFTError)


def test_load_dataset_on_a_corrupted_copy_of_the_real_folder(hippo_dir, tmp_path):
    folder = tmp_path / "Hippo copy"
    shutil.copytree(hippo_dir, folder)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    victims = find_volume_files(folder / "imagesTr")[:3]
    victims[0].unlink()
    victims[1].rename(victims[1].with_name("renamed é.nii.gz"))
    cases, problems = load_dataset(folder)
    assert len(cases) == 218 and len(problems) == 2
    assert {p.path.name for p in problems} == {victims[0].name, victims[1].name}
    assert victims[2] in {c.image for c in cases}


# ----------------------------------------------------------------------------
# classes from dataset.json
def test_dataset_classes_real_folder_and_both_label_styles(hippo_dir, tmp_path):
    assert dataset_classes(hippo_dir) == ["background", "Anterior", "Posterior"]
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "dataset.json").write_text(json.dumps({"labels": {"liver": 1, "background": 0}}))
    assert dataset_classes(tmp_path / "v2") == ["background", "liver"]
    assert dataset_classes(tmp_path / "absent") is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "dataset.json").write_text("[1, 2")
    with pytest.raises(DatasetError, match="--classes"):  # guessing 2 classes would train the wrong task
        dataset_classes(tmp_path / "broken")
    (tmp_path / "gap").mkdir()
    (tmp_path / "gap" / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "2": "x"}}))
    with pytest.raises(DatasetError, match="without gaps"):
        dataset_classes(tmp_path / "gap")


def test_task_classes_prefers_given_names_then_dataset_then_default(hippo_dir, tmp_path):
    assert task_classes(hippo_dir, ["bg", "a"]) == ["bg", "a"]
    assert task_classes(hippo_dir) == ["background", "Anterior", "Posterior"]
    assert task_classes(tmp_path) == ["background", "foreground"]
    assert task_classes(None) == ["background", "foreground"]
    with pytest.raises(DatasetError, match="at least two classes"):
        task_classes(None, ["only"])
