"""The training-data cache: each training volume prepared once, on disk, read a patch at a time.

A fine-tuning round used to hold every training volume in memory as float32
(one 512x512x300 CT is 315 MB: 60 labeled CTs exceed a workstation).  Now
each labeled, promoted or pseudo-labeled volume is prepared once
(``preprocess.prepare_image``: normalised and resampled onto the network's
grid; the label put on that grid and checked) into ``<workspace>/cache/train/<key>/``:

- ``image.npy`` float16 (normalised intensities: float16 keeps ~3 significant
  digits, far below the augmentations' noise), ``label.npy`` uint8 (int16 above
  255 classes), ``weight.npy`` uint8 (pseudo-labels only: 0 where a voxel is ignored),
  ``foreground.npy`` int32 ``(n, 3)``: the voxels patches may be centred on
  (at most :data:`MAX_FOREGROUND`, a seeded subset above that), ``meta.json``;
- cropped to the body: the bounding box of the image's nonzero voxels
  (``ct``: of voxels above :data:`CT_BODY_HU`, air is about -1000 HU), always
  including every labeled foreground voxel, as nnU-Net crops to the nonzero region;
- keyed by the sha256 of the image and label files, the preprocessing, the
  number of classes and :data:`CACHE_VERSION` (pseudo-labels: the teacher's checksum
  and the settings that shape its prediction), so a changed file or setting is
  a new entry and an entry is never stale;
- written into a hidden folder and renamed into place (a killed writer leaves no entry).

:meth:`CachedCase.window` opens the arrays memory-mapped for one patch and
closes them again, so a round's resident memory is one volume while the cache
is built and a few patches while it trains, whatever the number of volumes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

CACHE_VERSION = 1
MAX_FOREGROUND = 200_000
CT_BODY_HU = -500.0
ARRAYS = ("image", "label", "weight", "foreground")


@dataclass
class CachedCase:
    """One prepared training volume in the cache; ``lo`` is the zero padding before each axis (see :meth:`padded`)."""

    case_id: str
    folder: Path
    shape: Tuple[int, int, int]          # cached (cropped) grid
    n_foreground: int
    has_weight: bool
    lo: Tuple[int, int, int] = (0, 0, 0)
    padded_shape: Optional[Tuple[int, int, int]] = None

    def padded(self, patch: Sequence[int]) -> "CachedCase":
        """This case zero-padded (virtually) to at least ``patch``, as MONAI's ``SpatialPad`` pads: half before."""
        shape = tuple(max(s, int(p)) for s, p in zip(self.shape, patch))
        lo = tuple((n - s) // 2 for n, s in zip(shape, self.shape))
        return CachedCase(self.case_id, self.folder, self.shape, self.n_foreground, self.has_weight, lo, shape)

    def _load(self, name: str) -> np.ndarray:
        return np.load(self.folder / f"{name}.npy", mmap_mode="r")

    def foreground(self, index: int) -> list:
        """The ``index``-th foreground voxel, in padded coordinates."""
        row = np.asarray(self._load("foreground")[int(index)], dtype=np.int64)
        return [int(r) + o for r, o in zip(row, self.lo)]

    def window(self, start: Sequence[int], size: Sequence[int]) -> Dict[str, torch.Tensor]:
        """{"image" float32, "label" int64, "weight" float32}, each ``(1, *size)`` at ``start`` (padded coordinates)."""
        src, dst = [], []
        for a, w, lo, s in zip(start, size, self.lo, self.shape):
            b0, b1 = max(a - lo, 0), min(a - lo + w, s)
            src.append(slice(b0, max(b0, b1)))
            dst.append(slice(b0 - (a - lo), b0 - (a - lo) + max(0, b1 - b0)))
        src, dst = tuple(src), tuple(dst)
        out = {}
        for name, dtype, fill in (("image", np.float32, 0.0), ("label", np.int64, 0), ("weight", np.float32, 1.0)):
            arr = np.zeros(tuple(int(w) for w in size), dtype)
            if name == "weight" and not self.has_weight:
                arr[dst] = 1.0
            else:
                arr[dst] = self._load(name)[src]
            out[name] = torch.from_numpy(arr)[None]
        return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(parts: dict) -> str:
    payload = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def body_box(raw: np.ndarray, label: Optional[np.ndarray], prep: dict) -> Tuple[slice, ...]:
    """The bounding box (original grid) of the body (module docstring) and every labeled foreground voxel."""
    body = raw > CT_BODY_HU if prep.get("normalize") == "ct" else raw != 0
    if label is not None:
        body = body | (label > 0)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(body.any(axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1) if len(hit) else slice(0, raw.shape[axis]))
    return tuple(box)


def _on_grid_box(box: Tuple[slice, ...], original: Sequence[int], grid: Sequence[int]) -> Tuple[slice, ...]:
    """``box`` on the original grid as a box on the (resampled) network grid, rounded outwards."""
    out = []
    for sl, n, m in zip(box, original, grid):
        out.append(slice(int(np.floor(sl.start * m / n)), min(m, int(np.ceil(sl.stop * m / n)))))
    return tuple(out)


def _write_entry(final: Path, case_id: str, arrays: Dict[str, np.ndarray], meta: dict) -> None:
    """Write the arrays into a hidden sibling folder, then rename it into place (first writer wins)."""
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr)
        (tmp / "meta.json").write_text(json.dumps({"case_id": case_id, **meta}, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open(final: Path, case_id: str) -> Optional[CachedCase]:
    try:
        meta = json.loads((final / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not all((final / f"{n}.npy").is_file() for n in ("image", "label", "foreground")):
        return None
    return CachedCase(case_id, final, tuple(meta["shape"]), int(meta["n_foreground"]), bool(meta["has_weight"]))


def _store(folder: Path, key: str, case_id: str, image: np.ndarray, label: np.ndarray,
           weight: Optional[np.ndarray], seed_parts: str, kind: str) -> CachedCase:
    """Compact dtypes, the foreground list, written atomically; returns the entry."""
    keep = label > 0 if weight is None else (label > 0) & (weight > 0)
    fg = np.argwhere(keep).astype(np.int32)
    if len(fg) > MAX_FOREGROUND:
        rng = np.random.default_rng(int(hashlib.sha256(seed_parts.encode()).hexdigest()[:8], 16))
        fg = fg[np.sort(rng.choice(len(fg), MAX_FOREGROUND, replace=False))]
    arrays = {"image": image.astype(np.float16),
              "label": label.astype(np.uint8 if int(label.max(initial=0)) < 256 else np.int16),
              "foreground": fg}
    if weight is not None:
        arrays["weight"] = (weight > 0).astype(np.uint8)
    meta = {"shape": list(image.shape), "n_foreground": int(len(fg)), "has_weight": weight is not None,
            "version": CACHE_VERSION, "kind": kind}
    final = Path(folder) / key
    if final.exists() and _open(final, case_id) is None:
        shutil.rmtree(final)  # an incomplete entry (a file deleted by hand): rebuilt
    _write_entry(final, case_id, arrays, meta)
    entry = _open(final, case_id)
    if entry is None:
        raise OSError(f"the training cache entry {final} could not be written")
    return entry


def cached_labeled_case(folder: str | Path, case_id: str, image_path: str | Path, label_path: str | Path,
                        preprocessing: dict, num_classes: int) -> CachedCase:
    """The labeled volume's cache entry, built (and its label checked) on a miss."""
    from ..preprocess import prepare_image, validate_preprocessing
    from ..volumes import check_label_values, check_same_geometry, read_volume
    prep = validate_preprocessing(preprocessing)
    key = cache_key({"image": _sha256(Path(image_path)), "label": _sha256(Path(label_path)), "prep": prep,
                     "classes": int(num_classes), "kind": "labeled"})
    found = _open(Path(folder) / key, case_id)
    if found is not None:
        return found
    volume = read_volume(image_path, kind="image")
    label = read_volume(label_path, kind="label")
    check_same_geometry(volume, label, what=f"label of {case_id}")
    check_label_values(label.array, num_classes, path=label_path)
    box = body_box(volume.array, label.array, prep)
    tensor, _ = prepare_image(volume, prep)
    grid = tuple(tensor.shape[2:])
    del volume
    target = _label_on_grid(label.array, grid)
    gbox = _on_grid_box(box, label.array.shape, grid)
    image = tensor[0, 0].numpy()[gbox]
    return _store(folder, key, case_id, image, target[gbox], None, key, "labeled")


def cached_pseudo_case(folder: str | Path, case_id: str, image_path: str | Path, teacher, settings,
                       preprocessing: dict) -> CachedCase:
    """A pseudo-labeled volume's entry: the teacher's argmax, voxels below ``tau_v`` weighted 0.

    The teacher's prediction is the costly part; the key holds what shapes it, so a
    resumed round reuses it.
    """
    from ..inference import predict_label
    from ..preprocess import prepare_image, validate_preprocessing
    from ..volumes import read_volume
    prep = validate_preprocessing(preprocessing)
    key = cache_key({"image": _sha256(Path(image_path)), "teacher": teacher.checksum, "prep": prep,
                     "tau_v": float(settings.voxel_confidence), "tta": bool(settings.tta_flips),
                     "overlap": float(settings.sw_overlap), "kind": "pseudo"})
    found = _open(Path(folder) / key, case_id)
    if found is not None:
        return found
    volume = read_volume(image_path, kind="image")
    # ssft.pseudo_target's label and ignore mask, restored to the image's grid slab by slab
    label, confidence = predict_label(teacher, volume, settings)
    ignore = confidence < settings.voxel_confidence
    del confidence
    box = body_box(volume.array, label, prep)
    tensor, _ = prepare_image(volume, prep)
    grid = tuple(tensor.shape[2:])
    gbox = _on_grid_box(box, label.shape, grid)
    image = tensor[0, 0].numpy()[gbox]
    target = _label_on_grid(label, grid)[gbox]
    weight = _label_on_grid((~ignore).astype(np.uint8), grid)[gbox]
    return _store(folder, key, case_id, image, target, weight, key, "pseudo")


def _label_on_grid(array: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Class indices (X, Y, Z) on the network grid (nearest neighbour when preprocessing resampled)."""
    if tuple(array.shape) == tuple(grid):
        return np.asarray(array)
    t = torch.as_tensor(np.ascontiguousarray(array).astype(np.int16))[None, None].float()
    return torch.nn.functional.interpolate(t, size=tuple(grid), mode="nearest")[0, 0].numpy().astype(np.int16)


def prune(folder: str | Path, used: Sequence[CachedCase]) -> int:
    """Remove entries a round can no longer use: other versions of the ``used`` cases (an edited label,
    an earlier teacher's pseudo-label), pseudo-label entries not used, a killed writer's hidden folders.

    Entries of labeled cases outside ``used`` (this round's held-out fold) stay for the next rounds.
    Returns the number of entries removed.
    """
    folder = Path(folder)
    keep = {c.folder.name for c in used}
    cases = {c.case_id for c in used}
    removed = 0
    for entry in folder.iterdir() if folder.is_dir() else []:
        if entry.name in keep or not entry.is_dir():
            continue
        if entry.name.startswith(".tmp-"):
            shutil.rmtree(entry, ignore_errors=True)
            continue
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {"kind": "pseudo"}  # unreadable: nothing can use it
        if meta.get("kind") == "pseudo" or meta.get("case_id") in cases:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed
