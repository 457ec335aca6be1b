"""Bringing labels made in another tool (ITK-SNAP, Slicer without the module, a colleague's folder) into a workspace.

Each file is matched to a case by its name (``hippocampus_001.nii.gz``, also
``hippocampus_001_seg.nii.gz``, ``hippocampus_001-label.nrrd``, ...), read as a
label, and saved through :meth:`Workspace.save_label` with ``source="imported"``,
which checks its geometry against the case's image and its values against the
workspace's classes before anything is written.  A file that fails any check is
refused with the reason; nothing already saved is touched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .errors import ASSFTError
from .volumes import case_id_from_path, find_volume_files, read_volume, volume_suffix

#: Name endings other tools add to a label file, tried (after the exact name) to find its case.
LABEL_NAME_ENDINGS = re.compile(r"([_.-](seg|segmentation|label|labels|labelmap|mask|gt))+$", re.IGNORECASE)


@dataclass
class ImportOutcome:
    """What happened to one file: ``imported``, ``skipped`` (already this case's label) or ``refused``."""

    path: Path
    status: str
    case_id: str | None = None
    message: str = ""
    hint: str = ""


@dataclass
class ImportResult:
    outcomes: list[ImportOutcome] = field(default_factory=list)

    def _of(self, status: str) -> list[ImportOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def imported(self) -> list[ImportOutcome]:
        return self._of("imported")

    @property
    def refused(self) -> list[ImportOutcome]:
        return self._of("refused")

    @property
    def skipped(self) -> list[ImportOutcome]:
        return self._of("skipped")


def expand_label_paths(items: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders as the volume files directly inside them (hidden files skipped)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        out.extend(find_volume_files(p) if p.is_dir() else [p])
    return out


def match_case(path: str | Path, case_ids: Sequence[str]) -> str | None:
    """The case a label file belongs to: its exact case id, else the id without a tool's ending (``_seg``...)."""
    known = set(case_ids)
    stem = case_id_from_path(path)
    if stem in known:
        return stem
    trimmed = LABEL_NAME_ENDINGS.sub("", stem)
    return trimmed if trimmed in known else None


def import_labels(ws, items: Iterable[str | Path], case: str | None = None, replace: bool = False,
                  user: str | None = None, progress: Callable[[int, int, dict], None] | None = None) -> ImportResult:
    """Import label files (or folders of them) into ``ws``; one :class:`ImportOutcome` per file.

    ``case`` names the case for a single file whose name does not match.  A case that
    already has a label is refused unless ``replace`` (the old label then goes to
    ``labels/.history/``, as with any save).
    """
    paths = expand_label_paths(items)
    result = ImportResult()
    if case is not None and len(paths) != 1:
        result.outcomes.append(ImportOutcome(Path(case), "refused", None,
                                             f"--case names one case, but {len(paths)} files were given",
                                             "give exactly one label file with --case"))
        return result
    cases = {c.case_id: c for c in ws.cases()}
    seen: dict[str, Path] = {}
    for i, path in enumerate(paths, start=1):
        if progress is not None:
            progress(i - 1, len(paths), {"case": path.name})
        result.outcomes.append(_import_one(ws, path, cases, seen, case, replace, user))
    if progress is not None and paths:
        progress(len(paths), len(paths), {})
    return result


def _import_one(ws, path: Path, cases: dict, seen: dict, case: str | None, replace: bool,
                user: str | None) -> ImportOutcome:
    if not path.is_file():
        return ImportOutcome(path, "refused", None, "no such file", "check the path")
    if not volume_suffix(path):
        return ImportOutcome(path, "refused", None, "not a NIfTI or NRRD file",
                             "save the label as .nii.gz, .nii or .nrrd")
    case_id = case if case is not None else match_case(path, list(cases))
    if case_id is None or case_id not in cases:
        return ImportOutcome(path, "refused", case_id,
                             f"no case named {case_id or case_id_from_path(path)!r} in this workspace",
                             "name the file after its image (`assft status WORKSPACE --cases` lists the cases), "
                             "or give one file with --case CASE")
    if case_id in seen:
        return ImportOutcome(path, "refused", case_id, f"{seen[case_id].name} in this import is already for this case",
                             "keep one label file per case")
    seen[case_id] = path
    current = cases[case_id]
    if current.label_path is not None and Path(current.label_path).resolve() == path.resolve():
        return ImportOutcome(path, "skipped", case_id, "already this case's label")
    if current.is_labeled and not replace:
        return ImportOutcome(path, "refused", case_id,
                             f"the case already has a label (by {current.labeled_by or '?'}, {current.labeled_at or '?'})",
                             "add --replace to replace it (the old label is kept in labels/.history/)")
    try:
        label = read_volume(path, kind="label")
        ws.save_label(case_id, label.array, affine=label.affine, user=user, source="imported")
    except ASSFTError as exc:
        return ImportOutcome(path, "refused", case_id, exc.message, exc.hint or "")
    note = "" if label.array.any() else "imported, but it has no foreground voxels"
    return ImportOutcome(path, "imported", case_id, note)


def unregistered_label_files(ws) -> list[Path]:
    """Volume files in ``labels/`` that are no case's registered label (dropped there by hand, say)."""
    registered = {Path(c.label_path).resolve() for c in ws.cases() if c.label_path is not None}
    return [p for p in find_volume_files(ws.paths.labels) if p.resolve() not in registered]
