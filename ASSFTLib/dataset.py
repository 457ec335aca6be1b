"""Input datasets: finding the cases of a dataset folder, and the one reader of ``dataset.json``.

Layouts: MSD / nnU-Net (``dataset.json`` with ``imagesTr/``, ``labelsTr/``,
``imagesTs/``), a folder with ``imagesTr/`` but no usable ``dataset.json``
(scanned), or a plain folder of volumes.  Bad entries become
:class:`DatasetProblem` s instead of failing on the first one; files are not
opened here (:func:`ASSFTLib.volumes.read_volume` checks them when used).
The task's class names come from ``dataset.json`` too (:func:`task_classes`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import DatasetError, VolumeError
from .filecheck import check_regular_file, detached_data_files
from .volumes import SUPPORTED_TEXT, case_id_from_path, volume_suffix

DATASET_JSON = "dataset.json"


@dataclass(frozen=True)
class DatasetCase:
    """One case of an input dataset; ``meta`` holds other keys of its dataset.json entry."""

    case_id: str
    image: Path
    label: Path | None = None
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def profile(self) -> str | None:
        """The acquisition profile of a synthetic or benchmark case, if its entry names one."""
        return self.meta.get("profile")


@dataclass(frozen=True)
class DatasetProblem:
    """Something wrong with one entry of a dataset; the rest of the dataset is usable."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def load_dataset(folder: str | Path) -> tuple[list[DatasetCase], list[DatasetProblem]]:
    """Find the cases of a dataset folder.

    Layouts: MSD / nnU-Net (``dataset.json`` whose ``"training"`` entries name
    ``./imagesTr/x.nii.gz`` and ``./labelsTr/x.nii.gz``, ``"test"`` entries name
    images only), a folder with ``imagesTr/`` (and ``labelsTr/``) but no usable
    ``dataset.json`` (scanned), or a plain folder of volumes (labels optionally
    in ``labelsTr/`` beside them, matched by case id).

    Bad entries (missing files, duplicate case ids, paths leaving the folder, an
    unreadable dataset.json) become :class:`DatasetProblem` s; :class:`DatasetError`
    is raised only when the folder does not exist or holds no volumes at all.
    Files are not opened here: :func:`read_volume` checks them when they are used.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError("dataset folder not found" if not folder.exists() else "is not a folder", path=folder,
                           hint="choose the folder that holds dataset.json and imagesTr, or a folder of volumes")
    problems: list[DatasetProblem] = []
    entries = _msd_entries(folder, problems)
    if entries is None:
        entries = _scanned_entries(folder, problems)
    cases = _unique_cases(entries, problems)
    if not cases:
        raise DatasetError(f"no usable volumes ({SUPPORTED_TEXT}) found"
                           + (f"; {len(problems)} problems, first: {problems[0]}" if problems else ""), path=folder,
                           hint="choose an MSD dataset folder (dataset.json, imagesTr, labelsTr) or a folder of volumes")
    return cases, problems


def _msd_entries(folder: Path, problems: list[DatasetProblem]) -> list[DatasetCase] | None:
    """Cases listed in dataset.json, or None when there is no usable list (then scan)."""
    json_path = folder / DATASET_JSON
    try:
        data = read_dataset_json(folder)
        if data is None:
            return None
        if not isinstance(data.get("training", []), list) or not isinstance(data.get("test", []), list):
            raise ValueError('"training" and "test" must be lists')
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problems.append(DatasetProblem(json_path, f"cannot be read ({exc}); scanned imagesTr instead"))
        return None
    if "training" not in data and "test" not in data:
        return None  # nnU-Net v2 style: the files define the cases
    listed = [(e, True) for e in data.get("training", [])] + [(e, False) for e in data.get("test", [])]
    cases = []
    for entry, has_label in listed:
        if isinstance(entry, str):
            entry = {"image": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            problems.append(DatasetProblem(json_path, f"entry {entry!r} has no \"image\" path; ignored"))
            continue
        image = _inside(folder, entry["image"], problems, json_path)
        if image is None:
            continue
        if not os.path.lexists(image):
            problems.append(DatasetProblem(image, "listed in dataset.json but missing; case ignored"))
            continue
        if not _usable(folder, image, problems, "case ignored"):
            continue
        label = None
        if has_label and isinstance(entry.get("label"), str):
            label = _inside(folder, entry["label"], problems, json_path)
            if label is not None and not os.path.lexists(label):
                problems.append(DatasetProblem(label, "label listed in dataset.json but missing; "
                                                      "the case is kept without a label"))
                label = None
            elif label is not None and not _usable(folder, label, problems, "the case is kept without a label"):
                label = None
        meta = {k: v for k, v in entry.items() if k not in ("image", "label")}
        cases.append(DatasetCase(case_id_from_path(image), image, label, meta))
    return cases


def _inside(folder: Path, relative: str, problems: list[DatasetProblem], source: Path) -> Path | None:
    """``folder / relative`` if it stays inside ``folder`` (textually: symlinked data is fine)."""
    path = Path(os.path.normpath(folder / relative))
    root = Path(os.path.normpath(folder))
    if path != root and root in path.parents:
        return path
    problems.append(DatasetProblem(source, f"path {relative!r} leaves the dataset folder; ignored"))
    return None


def _scanned_entries(folder: Path, problems: list[DatasetProblem]) -> list[DatasetCase]:
    """Cases from the files: ``imagesTr`` (labels from ``labelsTr``) and ``imagesTs``, else ``folder`` itself."""
    labels: dict[str, Path] = {}
    for path in _scan(folder, folder / "labelsTr", problems):
        labels.setdefault(case_id_from_path(path), path)
    labelled_dir = folder / "imagesTr" if (folder / "imagesTr").is_dir() else folder
    cases = [DatasetCase(case_id_from_path(p), p, labels.pop(case_id_from_path(p), None))
             for p in _scan(folder, labelled_dir, problems)]
    cases += [DatasetCase(case_id_from_path(p), p) for p in _scan(folder, folder / "imagesTs", problems)]
    problems.extend(DatasetProblem(path, "label without an image; ignored") for path in labels.values())
    return cases


def _scan(root: Path, folder: Path, problems: list[DatasetProblem]) -> list[Path]:
    """The usable volume files directly in ``folder``; volume-named entries that are not usable (dangling,
    looping or outside links, FIFOs, devices, folders, detached headers pointing elsewhere) are problems,
    not silently skipped.  Hidden names (``.x``: temporaries, macOS ``._`` forks) are skipped."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not volume_suffix(path):
            continue
        if _usable(root, path, problems, "ignored"):
            found.append(path)
    return found


def _usable(root: Path, path: Path, problems: list[DatasetProblem], consequence: str) -> bool:
    """Whether ``path`` is a regular file (or a link to one) inside ``root`` whose name the workspace can
    store; a detached NRRD header's data file must be inside too.  Otherwise a problem is recorded."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        problems.append(DatasetProblem(Path(os.fsdecode(os.fsencode(path)).encode("utf-8", "replace")
                                            .decode("utf-8")),
                                       f"its name is not valid UTF-8; {consequence} (rename the file)"))
        return False
    try:
        check_regular_file(path, root=root)
        if volume_suffix(path) == ".nhdr":
            detached_data_files(path)
    except VolumeError as exc:
        problems.append(DatasetProblem(path, f"{exc.message}; {consequence} ({exc.hint})"))
        return False
    return True


def _unique_cases(cases: list[DatasetCase], problems: list[DatasetProblem]) -> list[DatasetCase]:
    seen: dict[str, DatasetCase] = {}
    for case in cases:
        if case.case_id.startswith("."):
            problems.append(DatasetProblem(case.image, f"case id {case.case_id!r} starts with '.', which marks "
                                                       "hidden and temporary files; ignored (rename the file)"))
            continue
        if case.case_id in seen:
            problems.append(DatasetProblem(case.image, f"duplicate case id {case.case_id!r} "
                                                       f"(already used by {seen[case.case_id].image.name}); ignored"))
            continue
        seen[case.case_id] = case
    return list(seen.values())


# ----------------------------------------------------------------------------
# dataset.json
def read_dataset_json(folder: str | Path) -> dict | None:
    """The parsed ``dataset.json`` of ``folder``, or None when there is none.

    Raises ``OSError``/``UnicodeDecodeError``/``ValueError`` when it exists but
    cannot be read, is not JSON, or its top level is not an object; callers
    decide whether that is a problem to report or a reason to use defaults.
    """
    json_path = Path(folder) / DATASET_JSON
    if not json_path.is_file():
        return None
    data = json.loads(json_path.read_text(encoding="utf-8-sig"))  # a BOM is fine
    if not isinstance(data, dict):
        raise ValueError("the top level is not an object")
    return data


def dataset_classes(folder: str | Path) -> list[str] | None:
    """Class names from an MSD ``dataset.json`` (``labels``: {"0": "background", ...}), if present."""
    json_path = Path(folder) / DATASET_JSON
    try:
        data = read_dataset_json(folder)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        # guessing two classes here would silently train the wrong task
        raise DatasetError(f"cannot be read, so the task's classes are unknown ({exc})", path=json_path,
                           hint="save it as a UTF-8 JSON object, or pass the classes with --classes") from exc
    labels = None if data is None else data.get("labels")
    if labels is not None and not isinstance(labels, dict):
        raise DatasetError(f"'labels' must be an object such as {{\"0\": \"background\", \"1\": \"liver\"}}, "
                           f"not {type(labels).__name__}", path=json_path,
                           hint="fix the labels entry, or pass the classes with --classes")
    if not labels:
        return None
    try:
        try:
            items = sorted((int(k), str(v)) for k, v in labels.items())
        except (TypeError, ValueError):  # nnU-Net v2 style: {"background": 0, ...}
            items = sorted((int(v), str(k)) for k, v in labels.items())
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"'labels' maps neither numbers to names nor names to numbers ({exc})", path=json_path,
                           hint="fix the labels entry, or pass the classes with --classes") from exc
    if [i for i, _ in items] != list(range(len(items))):
        raise DatasetError("dataset.json 'labels' must number the classes 0..C-1 without gaps",
                           path=json_path, hint="fix the labels entry")
    return [name for _, name in items]


def task_classes(dataset: str | Path | None, classes: Sequence[str] | None = None) -> list[str]:
    """The task's class names: ``classes`` if given, else the dataset.json ``labels``, else background/foreground."""
    found = dataset_classes(Path(dataset)) if dataset is not None and not classes else None
    names = list(classes or found or ["background", "foreground"])
    if len(names) < 2:
        raise DatasetError("a segmentation task needs at least two classes (background and one structure)",
                           path=dataset, hint="pass --classes background,NAME")
    return names
