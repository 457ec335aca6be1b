"""What the trainer reads: volumes on the network's grid, checked labels, pseudo-labels and random patches.

- :class:`TrainCase`: one training volume (image, class indices, voxel weights);
- :func:`load_labeled_case`, :func:`pseudo_case`: a labeled / pseudo-labeled case;
- :func:`label_problems`, :func:`raise_label_problems`: every unusable label of a
  round, found before the first step;
- :class:`PatchSampler`: seeded random patches, nnU-Net style: a share of them
  centred on a labeled foreground voxel, then flips, a small rotation/scaling
  and intensity changes;
- :func:`expand_image_paths`: volume files from files and (MSD) folders.

Tensors: volumes ``(1, X, Y, Z)`` per case, batches ``(B, 1, X, Y, Z)``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (Compose, RandAffined, RandFlipd, RandGaussianNoised, RandScaleIntensityd,
                              RandShiftIntensityd, SpatialPad)

from .. import ssft
from ..errors import ASSFTError, GeometryError, LabelError, VolumeError
from .cache import CachedCase


@dataclass
class TrainCase:
    """One training volume on the network's grid.

    image: (1, X, Y, Z) float32; label: (1, X, Y, Z) int64 class indices;
    weight: (1, X, Y, Z) float32, 0 where a pseudo-label voxel is ignored.
    foreground: (n, 3) int64 indices of the voxels whose (kept) label is not
        background; filled by :meth:`PatchSampler.prepare`.
    """

    case_id: str
    image: torch.Tensor
    label: torch.Tensor
    weight: torch.Tensor
    foreground: Optional[torch.Tensor] = None


def prepared_image(path: str | Path, preprocessing: dict) -> Tuple[torch.Tensor, object]:
    """Read and normalise an image -> ((1, X, Y, Z) float32 tensor on the network grid, the Volume read)."""
    from ..preprocess import prepare_image
    from ..volumes import read_volume
    volume = read_volume(path, kind="image")
    tensor, _ = prepare_image(volume, preprocessing)
    return torch.as_tensor(tensor, dtype=torch.float32).reshape(1, *tensor.shape[-3:]), volume


def _on_grid(array: np.ndarray, shape: Sequence[int], mode: str = "nearest") -> torch.Tensor:
    """(X, Y, Z) array -> (1, *shape) tensor; nearest-neighbour resampling when preprocessing changed the grid."""
    t = torch.as_tensor(np.ascontiguousarray(array))
    if tuple(t.shape) == tuple(shape):
        return t[None]
    return F.interpolate(t[None, None].float(), size=tuple(shape), mode=mode)[0].to(t.dtype)


def load_labeled_case(case_id: str, image_path: str | Path, label_path: str | Path, preprocessing: dict,
                      num_classes: int) -> TrainCase:
    """A labeled volume, checked (same grid as its image, classes 0..C-1), ready to train on."""
    from ..volumes import check_label_values, check_same_geometry, read_volume
    image, volume = prepared_image(image_path, preprocessing)
    label = read_volume(label_path, kind="label")
    check_same_geometry(volume, label, what=f"label of {case_id}")
    check_label_values(label.array, num_classes, path=label_path)
    target = _on_grid(label.array.astype(np.int64), image.shape[1:])
    return TrainCase(case_id, image, target, torch.ones_like(image))


def pseudo_case(case_id: str, image_path: str | Path, probs: np.ndarray, preprocessing: dict,
                tau_v: float) -> TrainCase:
    """A pseudo-labeled volume: argmax of ``probs`` (C, X, Y, Z), voxels below ``tau_v`` weighted 0."""
    image, _ = prepared_image(image_path, preprocessing)
    label, ignore = ssft.pseudo_target(probs, tau_v)
    target = _on_grid(label.astype(np.int64), image.shape[1:])
    weight = _on_grid((~ignore).astype(np.float32), image.shape[1:])
    return TrainCase(case_id, image, target, weight)


def label_problems(ws, case_ids: Sequence[str], num_classes: int) -> List[ASSFTError]:
    """Check labels that are not loaded for training (the held-out fold), so a bad one fails the round at once."""
    from ..volumes import check_label_values, check_same_geometry, read_volume
    problems = []
    for case_id in case_ids:
        try:
            label = read_volume(ws.label_path(case_id), kind="label")
            check_same_geometry(read_volume(ws.image_path(case_id)), label, what=f"label of {case_id}")
            check_label_values(label.array, num_classes, path=label.path)
        except (VolumeError, GeometryError, LabelError) as exc:
            problems.append(exc)
    return problems


def raise_label_problems(problems: Sequence[ASSFTError]) -> None:
    """Fail the round before any step, naming every labeled case that cannot be used (not only the first)."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise LabelError(f"{len(problems)} labeled cases cannot be used for training: "
                         + "; ".join(str(p) for p in problems), path=problems[0].path,
                         hint="fix or re-save each of these labels (or remove the cases), then train again")


class PatchSampler:
    """Seeded random training patches of ``patch_size`` from a list of cases.

    As nnU-Net does: each patch is centred on a random labeled foreground voxel
    with probability ``fg_fraction`` (small structures are seen in every
    batch, not only when a uniform crop happens to hit them), else placed
    uniformly; then flipped on each axis, and with ``augment`` also slightly
    rotated/scaled and changed in contrast, brightness and noise (the shifts
    between scanners that a site's volumes show). Which case and where come
    from the ``rng`` handed to :meth:`batch`; the augmentations from ``seed``.
    Only the foreground voxels are listed, once per case (:meth:`prepare`):
    MONAI's ``RandCropByPosNegLabeld`` would also list or rescan every
    background voxel, hundreds of MB or a full pass per patch on a CT volume.
    """

    def __init__(self, patch_size: Sequence[int], seed: int, fg_fraction: float = 0.0, augment: bool = False):
        self.patch = tuple(int(p) for p in patch_size)
        self.fg_fraction = float(fg_fraction)
        keys = ["image", "label", "weight"]
        steps = []
        if augment:
            steps.append(RandAffined(keys, prob=0.2, rotate_range=(0.26, 0.26, 0.26), scale_range=(0.15, 0.15, 0.15),
                                     mode=("bilinear", "nearest", "nearest"), padding_mode="zeros"))
        steps += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
        if augment:
            steps += [RandScaleIntensityd("image", factors=0.2, prob=0.3),
                      RandShiftIntensityd("image", offsets=0.2, prob=0.3),
                      RandGaussianNoised("image", prob=0.15, std=0.1)]
        self.transform = Compose(steps)
        self.transform.set_random_state(seed=seed)

    def prepare(self, case):
        """``case`` zero-padded to at least the patch size, with its foreground voxels listed (done once per case).

        A :class:`~ASSFTLib.training.cache.CachedCase` stays on disk: it is padded virtually and its
        foreground list is the cache's; patches are read from it one at a time.
        """
        if isinstance(case, CachedCase):
            return case.padded(self.patch)
        pad = SpatialPad(self.patch)
        image, label, weight = (_plain(pad(t)) for t in (case.image, case.label, case.weight))
        foreground = torch.nonzero((label[0] > 0) & (weight[0] > 0)) if self.fg_fraction > 0 else None
        return TrainCase(case.case_id, image, label, weight, foreground)

    def _start(self, case, rng: np.random.Generator) -> List[int]:
        cached = isinstance(case, CachedCase)
        shape = case.padded_shape if cached else case.image.shape[1:]
        high = [s - p for s, p in zip(shape, self.patch)]
        n_fg = (case.n_foreground if self.fg_fraction > 0 else 0) if cached else (
            0 if case.foreground is None else len(case.foreground))
        if n_fg and rng.random() < self.fg_fraction:
            i = int(rng.integers(n_fg))
            centre = case.foreground(i) if cached else case.foreground[i].tolist()
            return [int(min(max(c - p // 2, 0), h)) for c, p, h in zip(centre, self.patch, high)]
        return [int(rng.integers(h + 1)) for h in high]

    def patch_of(self, case, rng: np.random.Generator) -> Dict[str, torch.Tensor]:
        """One augmented patch of a prepared case: {"image", "label", "weight"}, each (1, *patch_size)."""
        start = self._start(case, rng)
        if isinstance(case, CachedCase):
            item = case.window(start, self.patch)
        else:
            window = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, self.patch))
            item = {"image": case.image[window], "label": case.label[window], "weight": case.weight[window]}
        return {k: _plain(v) for k, v in self.transform(item).items()}

    def batch(self, cases: Sequence[TrainCase], batch_size: int,
              rng: np.random.Generator) -> Dict[str, torch.Tensor]:
        """``batch_size`` patches of random prepared cases -> {"image": (B,1,...) float, "label": (B,1,...) long,
        "weight": (B,1,...)}.

        Everything random comes from ``rng`` (the augmentations are reseeded from it first), so a
        batch depends on ``rng`` alone: the same in any process, whatever batches came before.
        """
        self.transform.set_random_state(seed=int(rng.integers(2 ** 32)))
        items = [self.patch_of(cases[int(i)], rng) for i in rng.integers(0, len(cases), size=batch_size)]
        out = {k: torch.stack([it[k] for it in items]) for k in ("image", "label", "weight")}
        out["label"] = out["label"].long()
        return out


class StepBatches(torch.utils.data.Dataset):
    """Item ``i`` is step ``first + i``'s batch: for each non-empty group of cases (labeled, then
    pseudo-labeled), ``batch_size`` patches drawn with ``np.random.default_rng([seed, step])``,
    concatenated; ``"step"`` says which step it is.

    A step's batch depends on (seed, step) only, so it is the same whether it is built here,
    in any DataLoader worker, or after a resume.  Everything it holds pickles (cache entries
    are paths; in-memory cases are tensors), as workers started with ``spawn`` (Windows, macOS) need.
    """

    def __init__(self, sampler: PatchSampler, groups: Sequence[Sequence], batch_size: int, seed: int, first: int,
                 total: int) -> None:
        self.sampler, self.groups = sampler, [list(g) for g in groups if len(g)]
        self.batch_size, self.seed, self.first, self.total = int(batch_size), int(seed), int(first), int(total)

    def __len__(self) -> int:
        return max(0, self.total - self.first)

    def __getitem__(self, index: int) -> dict:
        step = self.first + int(index)
        rng = np.random.default_rng([self.seed, step])
        parts = [self.sampler.batch(cases, self.batch_size, rng) for cases in self.groups]
        out: dict = {k: torch.cat([p[k] for p in parts]) for k in ("image", "label", "weight")}
        out["step"] = step
        return out


@contextlib.contextmanager
def step_batches(batches: StepBatches, workers: int, pin_memory: bool = False,
                 context=None) -> Iterator[Callable[[int], dict]]:
    """``next_batch(step)`` for the steps of ``batches`` in order, built by ``workers`` processes
    (DataLoader; none: here, when asked).

    The workers are joined when the block ends, however it ends (cancel, error, the last step):
    none outlives the round.  context: a multiprocessing context or its name (``"spawn"``,
    ``"fork"``); None is the platform's default (spawn on Windows and macOS).
    """
    if int(workers) <= 0:
        yield lambda step: batches[step - batches.first]
        return
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=int(workers),
                                         pin_memory=pin_memory, multiprocessing_context=context)
    iterator = iter(loader)

    def next_batch(step: int) -> dict:
        batch = next(iterator)
        if batch["step"] != step:
            raise RuntimeError(f"the patch loader gave step {batch['step']}'s batch for step {step}")
        return batch

    try:
        yield next_batch
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # joins the worker processes now
        if shutdown is not None:
            shutdown()
        del iterator


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def expand_image_paths(paths: Sequence[str | Path]) -> List[Path]:
    """Volume files from a mix of files and folders (MSD folders: their ``imagesTr``)."""
    from ..volumes import find_volume_files
    out: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += find_volume_files(p / "imagesTr" if (p / "imagesTr").is_dir() else p)
        else:
            out.append(p)
    return out
