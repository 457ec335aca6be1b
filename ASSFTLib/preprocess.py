"""Intensity normalisation and resampling of one image before the network, and the way back.

A model stores its *preprocessing* dict so that every image it sees is prepared
the same way (``docs/architecture.md``)::

    {"normalize": "zscore" | "none" | "ct" | "ct_zscore",  # intensity normalisation
     "clip": [lo, hi] | None,                  # clip intensities first (required for "ct", "ct_zscore")
     "mean": m | None, "std": s | None,        # the foundation's intensity statistics ("ct_zscore")
     "target_spacing": [sx, sy, sz] | None}    # resample to this voxel size in mm

- ``zscore``: (x - mean) / std over the nonzero voxels of each volume (MONAI
  ``NormalizeIntensity(nonzero=True)``): the MR scheme; zero voxels stay 0, a constant image becomes 0.
- ``ct``: clip to ``[lo, hi]`` then scale linearly to [0, 1] (MONAI ``ScaleIntensityRange``).
- ``ct_zscore``: clip to ``[lo, hi]`` HU then ``(x - mean) / std`` with the *foundation's*
  statistics (nnU-Net's CT scheme: one fixed mapping of Hounsfield units for every volume,
  so intensities keep their physical meaning), as MONAI ``NormalizeIntensity(subtrahend, divisor)``.
- ``none``: intensities as they are (after the optional clip).

Where the numbers come from: a checkpoint stores the dict in its spec; a MONAI
bundle's ``ScaleIntensityRanged``, ``NormalizeIntensityd`` and ``Spacingd``
preprocessing entries are read into it (``models.bundle``).

Normalisation happens on the original grid, then the image is resampled
(trilinear, corners aligned with the field of view) when ``target_spacing`` is set.
``restore`` maps a network output on that grid back to the original one:
trilinear for probabilities, nearest for integer labels.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ASSFTError
from .volumes import Volume

ArrayLike = Union[np.ndarray, torch.Tensor]

NORMALIZATIONS = ("zscore", "none", "ct", "ct_zscore")


def default_preprocessing() -> dict[str, Any]:
    """Z-score over nonzero voxels, no clip, no resampling: right for MR crops such as the hippocampus."""
    return {"normalize": "zscore", "clip": None, "mean": None, "std": None, "target_spacing": None}


def validate_preprocessing(prep: dict[str, Any] | None) -> dict[str, Any]:
    """A complete, checked copy of ``prep`` (missing keys take the defaults).

    Raises :class:`ASSFTError` for unknown keys or invalid values.
    """
    prep = dict(prep or {})
    unknown = sorted(set(prep) - set(default_preprocessing()))
    if unknown:
        raise _invalid(f"unknown keys {unknown}")
    prep = {**default_preprocessing(), **prep}
    if prep["normalize"] not in NORMALIZATIONS:
        raise _invalid(f"normalize={prep['normalize']!r} (use one of {', '.join(NORMALIZATIONS)})")
    if prep["clip"] is not None:
        clip = [float(v) for v in prep["clip"]]
        if len(clip) != 2 or not np.isfinite(clip).all() or clip[0] >= clip[1]:
            raise _invalid(f"clip={prep['clip']!r} must be two finite numbers lo < hi")
        prep["clip"] = clip
    elif prep["normalize"] in ("ct", "ct_zscore"):
        raise _invalid(f'normalize="{prep["normalize"]}" needs clip=[lo, hi] (for example [-1000, 1000] HU)')
    for key in ("mean", "std"):
        if prep[key] is not None:
            prep[key] = float(prep[key])
            if not np.isfinite(prep[key]):
                raise _invalid(f"{key}={prep[key]!r} must be a finite number")
    if prep["normalize"] == "ct_zscore" and (prep["mean"] is None or prep["std"] is None or prep["std"] <= 0):
        raise _invalid('normalize="ct_zscore" needs the foundation\'s mean and std (> 0) of the clipped HU')
    if prep["target_spacing"] is not None:
        spacing = [float(v) for v in prep["target_spacing"]]
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise _invalid(f"target_spacing={prep['target_spacing']!r} must be three positive sizes in mm")
        prep["target_spacing"] = spacing
    return prep


def prepare_image(volume: Volume, prep: dict[str, Any] | None) -> tuple[torch.Tensor, "Restorer"]:
    """Normalise and resample ``volume.array`` (X, Y, Z) for the network.

    Returns ``(tensor, restore)``: ``tensor`` is float32 ``(1, 1, X', Y', Z')`` on the
    CPU; ``restore`` (a :class:`Restorer`) takes a ``(C, X', Y', Z')`` probability map
    (float, trilinear) or a ``(X', Y', Z')`` / ``(C, X', Y', Z')`` label (integer or bool,
    nearest) as numpy or torch and returns it on the original ``(X, Y, Z)`` grid, same
    type, dtype and device.  A resampled image is computed slab by slab from the
    volume's own array: no float32 copy of the whole original grid is made.
    """
    prep = validate_preprocessing(prep)
    original = tuple(volume.shape)
    target = original
    if prep["target_spacing"] is not None:
        target = resampled_shape(original, volume.spacing, prep["target_spacing"])
    if target == original:
        image = torch.from_numpy(np.array(volume.array, dtype=np.float32))[None]  # (1, X, Y, Z), a private copy
        return _normalize(image, prep)[None].contiguous(), Restorer(target, original)
    stats = _zscore_stats(volume.array, prep)

    def rows(a: int, b: int) -> torch.Tensor:
        block = torch.from_numpy(np.array(volume.array[a:b], dtype=np.float32))[None]
        return _normalize(block, prep, stats)

    out = torch.empty((1, 1, *target), dtype=torch.float32)
    for i, j in row_slabs(target):
        out[0, :, i:j] = resample_rows(rows, original, target, i, j)
    return out, Restorer(target, original)


def normalized_region(array: np.ndarray, prep: dict[str, Any]) -> Callable[[tuple], torch.Tensor]:
    """``region(slices) -> (1, x, y, z)`` float32: the region of ``array`` (X, Y, Z) normalised as
    :func:`prepare_image` does (the same numbers, one region at a time), for a volume the network
    sees on its own grid: sliding windows read it without a float32 copy of the whole volume."""
    prep = validate_preprocessing(prep)
    stats = _zscore_stats(array, prep)

    def region(slices: tuple) -> torch.Tensor:
        return _normalize(torch.from_numpy(np.array(array[slices], dtype=np.float32))[None], prep, stats)

    return region


def target_shape(volume: Volume, prep: dict[str, Any] | None) -> tuple[int, ...]:
    """The network's grid for ``volume`` under ``prep`` (its own shape when nothing is resampled)."""
    prep = validate_preprocessing(prep)
    if prep["target_spacing"] is None:
        return tuple(volume.shape)
    return resampled_shape(tuple(volume.shape), volume.spacing, prep["target_spacing"])


#: Voxels per slab when resampling (about 8 MB per float32 channel).
SLAB_VOXELS = 1 << 21


def row_slabs(shape: tuple[int, ...]):
    step = max(1, SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    for i in range(0, int(shape[0]), step):
        yield i, min(int(shape[0]), i + step)


def _linear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, lambda1) per output index: ``torch``'s linear interpolation, ``align_corners=False``."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, np.clip(src - i0, 0.0, 1.0)


def resample_rows(rows: Callable[[int, int], torch.Tensor], shape_in: tuple[int, ...], shape_out: tuple[int, ...],
                  i: int, j: int) -> torch.Tensor:
    """Rows ``i:j`` (first spatial axis) of the trilinear resampling (``align_corners=False``) of a
    ``(C, *shape_in)`` map to ``shape_out``, reading only the input rows they need (``rows(a, b)`` ->
    ``(C, b - a, Y', Z')`` float32): linear along the first axis, then bilinear in each plane.  The
    same numbers as ``F.interpolate(mode="trilinear")`` on the whole map up to float32 rounding."""
    i0, i1, lam = (v[i:j] for v in _linear_axis(int(shape_in[0]), int(shape_out[0])))
    a, b = int(i0.min()), int(i1.max()) + 1
    block = rows(a, b)
    if shape_in[0] == shape_out[0]:
        plane = block
    else:
        w1 = torch.as_tensor(lam, dtype=block.dtype).view(1, -1, 1, 1)
        lo, hi = block[:, torch.as_tensor(i0 - a)], block[:, torch.as_tensor(i1 - a)]
        plane = lo + (hi - lo) * w1
    del block
    if tuple(shape_in[1:]) == tuple(shape_out[1:]):
        return plane
    c, n = plane.shape[:2]
    out = F.interpolate(plane.reshape(1, c * n, *plane.shape[2:]), size=tuple(shape_out[1:]), mode="bilinear",
                        align_corners=False)
    return out.reshape(c, n, *shape_out[1:])


def resampled_shape(shape: tuple[int, ...], spacing: np.ndarray, target_spacing: list[float]) -> tuple[int, ...]:
    """Grid size covering the same field of view at ``target_spacing`` (at least one voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


def _normalize(image: torch.Tensor, prep: dict[str, Any], stats: tuple[float, float] | None = None) -> torch.Tensor:
    """``image`` (1, X, Y, Z) float32, a private copy, normalised in place -> the same tensor.

    The numbers of MONAI's ``ScaleIntensityRange(clip=True)`` and ``NormalizeIntensity``
    (``nonzero=True``: mean and population std of the nonzero voxels, zeros stay 0, a zero
    std divides by 1; with ``subtrahend``/``divisor`` for ``ct_zscore``), computed in place:
    MONAI's transforms hold about ten copies of the volume at once (3 GB for a 512x512x300
    CT), these one mask.  ``test_foundation_preprocessing`` checks them against MONAI's.
    stats: ``zscore``'s (mean, std) of the whole volume (:func:`_zscore_stats`) when ``image``
    is one part of it; computed from ``image`` when None.  Every step is per voxel, so a part
    normalised with the whole volume's statistics has the whole volume's numbers.
    """
    clip = prep["clip"]
    if clip is not None:
        image.clamp_(*clip)
    if prep["normalize"] == "ct":
        lo, hi = clip
        image.sub_(lo).div_(hi - lo)
    elif prep["normalize"] == "ct_zscore":
        image.sub_(prep["mean"]).div_(prep["std"])
    elif prep["normalize"] == "zscore":
        mean, std = stats if stats is not None else _zscore_stats(image[0].numpy(), prep)
        zero = image == 0
        image.sub_(mean).div_(std)
        image.masked_fill_(zero, 0.0)
    return image


def _zscore_stats(array: np.ndarray, prep: dict[str, Any]) -> tuple[float, float] | None:
    """(mean, std or 1) of the nonzero voxels of ``array`` (X, Y, Z) after the clip, read slab by slab
    (``zscore`` only; None otherwise).  No nonzero voxel: (0, 1), which leaves the image as it is."""
    if prep["normalize"] != "zscore":
        return None
    shape = tuple(array.shape)
    step = max(1, (1 << 22) // max(1, int(np.prod(shape[1:]))))
    n, total, squares = 0, 0.0, 0.0
    for a in range(0, shape[0], step):
        # the same float64 sums over the same slabs as ever (the numbers stay identical), with fewer
        # temporaries: no copy of a float32 slab that is not clipped, the squares in place
        slab = np.asarray(array[a:a + step], dtype=np.float32)
        if prep["clip"] is not None:
            slab = np.clip(slab, *prep["clip"])
        values = slab[slab != 0].astype(np.float64)
        del slab
        values = torch.from_numpy(values)
        n, total = n + values.numel(), total + float(values.sum())
        squares += float(values.pow_(2).sum())
        del values
    if not n:
        return 0.0, 1.0
    mean = total / n
    std = max(squares / n - mean ** 2, 0.0) ** 0.5
    return mean, (std if std > 0 else 1.0)


class Restorer:
    """Maps a network output on the prepared grid back to the original one (see :func:`prepare_image`).

    ``restore(array)``: the whole map, filled slab by slab (no whole-volume float
    intermediate besides the result); :meth:`rows`: a few rows of it; :meth:`view`: an
    array-like whose ``[:, i:j]`` / ``[c, i:j]`` slabs are restored when read, for
    reductions that never need the whole restored map (``reductions``).
    """

    def __init__(self, prepared: tuple[int, ...], original: tuple[int, ...]) -> None:
        self.prepared, self.original = tuple(prepared), tuple(original)
        self.identity = self.prepared == self.original

    def _check(self, array: ArrayLike) -> None:
        if array.ndim not in (3, 4) or tuple(array.shape[-3:]) != self.prepared:
            raise ValueError(f"restore expects (C, {self.prepared}) or {self.prepared}, "
                             f"got shape {tuple(array.shape)}")

    def __call__(self, array: ArrayLike) -> ArrayLike:
        self._check(array)
        if self.identity:
            return array
        is_numpy = isinstance(array, np.ndarray)
        tensor = torch.from_numpy(np.ascontiguousarray(array)) if is_numpy else array
        if not tensor.is_floating_point():
            out = tensor[(Ellipsis, *self._nearest_index(tensor.device))]
        else:
            out = tensor.new_empty((*tensor.shape[:-3], *self.original))
            flat = out.reshape(-1, *self.original)
            for i, j in row_slabs(self.original):
                flat[:, i:j] = self.rows(tensor, i, j)
        return out.numpy() if is_numpy else out

    def _nearest_index(self, device) -> tuple[torch.Tensor, ...]:
        """Per-axis source indices of ``F.interpolate(mode="nearest-exact")`` (its own, read off a ramp),
        shaped to broadcast over (X, Y, Z)."""
        out = []
        for k, (n_in, n_out) in enumerate(zip(self.prepared, self.original)):
            ramp = torch.arange(n_in, dtype=torch.float64).view(1, 1, -1)
            idx = F.interpolate(ramp, size=n_out, mode="nearest-exact")[0, 0].long().to(device)
            out.append(idx.view(*[-1 if a == k else 1 for a in range(3)]))
        return tuple(out)

    def rows(self, array: ArrayLike, i: int, j: int, channels: slice | int = slice(None)) -> torch.Tensor:
        """Rows ``i:j`` (first spatial axis, original grid) of the restored float map ``array``
        ``(C, X', Y', Z')``: ``(C, j - i, Y, Z)`` float32 (``channels`` picks some of C)."""
        tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
        tensor = tensor.reshape(-1, *self.prepared)[channels]
        if tensor.ndim == 3:
            tensor = tensor[None]
        if self.identity:
            return tensor[:, i:j]
        return resample_rows(lambda a, b: tensor[:, a:b].float(), self.prepared, self.original, i, j)

    def view(self, array: ArrayLike) -> "RestoredView":
        """The restored ``(C, X, Y, Z)`` map of ``array``, computed slab by slab as it is read."""
        self._check(array)
        return RestoredView(self, array)


class RestoredView:
    """Read-only ``(C, X, Y, Z)`` float32 array-like over a restored map: ``view[:, i:j]`` and
    ``view[c, i:j]`` return numpy slabs restored on demand (the last one read is kept)."""

    ndim = 4
    dtype = np.dtype(np.float32)

    def __init__(self, restorer: Restorer, array: ArrayLike) -> None:
        self._restorer, self._array = restorer, array
        self.shape = (int(array.shape[0]), *restorer.original)
        self._last: tuple | None = None

    def __getitem__(self, key) -> np.ndarray:
        if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], slice) and key[1].step is None
                and (isinstance(key[0], int) or key[0] == slice(None))):
            raise IndexError("a restored view reads [:, i:j] or [c, i:j] slabs only")
        i, j, _ = key[1].indices(self.shape[1])
        cache_key = (key[0] if isinstance(key[0], int) else None, i, j)
        if self._last is not None and self._last[0] == cache_key:
            return self._last[1]
        out = self._restorer.rows(self._array, i, j, key[0]).cpu().numpy()
        out = out[0] if isinstance(key[0], int) else out
        self._last = (cache_key, out)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.asarray(self._restorer(self._array))
        return out if dtype is None else out.astype(dtype)


def _invalid(what: str) -> ASSFTError:
    return ASSFTError(f"invalid preprocessing: {what}",
                      hint="fix the model's preprocessing settings (normalize, clip, target_spacing)")
