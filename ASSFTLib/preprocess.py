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
Restore = Callable[[ArrayLike], ArrayLike]

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


def prepare_image(volume: Volume, prep: dict[str, Any] | None) -> tuple[torch.Tensor, Restore]:
    """Normalise and resample ``volume.array`` (X, Y, Z) for the network.

    Returns ``(tensor, restore)``: ``tensor`` is float32 ``(1, 1, X', Y', Z')`` on the
    CPU; ``restore(array)`` takes a ``(C, X', Y', Z')`` probability map (float,
    trilinear) or a ``(X', Y', Z')`` / ``(C, X', Y', Z')`` label (integer or bool,
    nearest) as numpy or torch and returns it on the original ``(X, Y, Z)`` grid,
    same type, dtype and device.
    """
    prep = validate_preprocessing(prep)
    image = torch.from_numpy(np.array(volume.array, dtype=np.float32))[None]  # (1, X, Y, Z), a private copy
    image = _normalize(image, prep)
    original = tuple(volume.shape)
    target = original
    if prep["target_spacing"] is not None:
        target = resampled_shape(original, volume.spacing, prep["target_spacing"])
    tensor = image[None]  # (1, 1, X, Y, Z)
    if target != original:
        tensor = F.interpolate(tensor, size=target, mode="trilinear", align_corners=False)
    return tensor.contiguous(), _restorer(target, original)


def resampled_shape(shape: tuple[int, ...], spacing: np.ndarray, target_spacing: list[float]) -> tuple[int, ...]:
    """Grid size covering the same field of view at ``target_spacing`` (at least one voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


def _normalize(image: torch.Tensor, prep: dict[str, Any]) -> torch.Tensor:
    """``image`` (1, X, Y, Z) float32, a private copy, normalised in place -> the same tensor.

    The numbers of MONAI's ``ScaleIntensityRange(clip=True)`` and ``NormalizeIntensity``
    (``nonzero=True``: mean and population std of the nonzero voxels, zeros stay 0, a zero
    std divides by 1; with ``subtrahend``/``divisor`` for ``ct_zscore``), computed in place:
    MONAI's transforms hold about ten copies of the volume at once (3 GB for a 512x512x300
    CT), these one mask.  ``test_foundation_preprocessing`` checks them against MONAI's.
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
        zero = image == 0
        n, total, squares = 0, 0.0, 0.0
        for slab in image[0].split(max(1, (1 << 22) // max(1, image[0, 0].numel()))):
            values = slab[slab != 0].double()
            n, total, squares = n + values.numel(), total + float(values.sum()), squares + float((values ** 2).sum())
        if n:
            mean = total / n
            std = max(squares / n - mean ** 2, 0.0) ** 0.5
            image.sub_(mean).div_(std if std > 0 else 1.0)
            image.masked_fill_(zero, 0.0)
    return image


def _restorer(prepared: tuple[int, ...], original: tuple[int, ...]) -> Restore:
    def restore(array: ArrayLike) -> ArrayLike:
        spatial = tuple(array.shape[-3:])
        if array.ndim not in (3, 4) or spatial != prepared:
            raise ValueError(f"restore expects (C, {prepared}) or {prepared}, got shape {tuple(array.shape)}")
        if prepared == original:
            return array
        is_numpy = isinstance(array, np.ndarray)
        tensor = torch.from_numpy(np.ascontiguousarray(array)) if is_numpy else array
        categorical = not tensor.is_floating_point()
        batch = tensor.reshape(1, -1, *prepared)
        if categorical:
            out = F.interpolate(batch.float(), size=original, mode="nearest-exact").to(tensor.dtype)
        else:
            out = F.interpolate(batch, size=original, mode="trilinear", align_corners=False)
        out = out.reshape(*tensor.shape[:-3], *original)
        return out.numpy() if is_numpy else out

    return restore


def _invalid(what: str) -> ASSFTError:
    return ASSFTError(f"invalid preprocessing: {what}",
                      hint="fix the model's preprocessing settings (normalize, clip, target_spacing)")
