"""Synthetic hippocampus-like cases and documented acquisition shifts.

A case is a T1-like crop ``(X, Y, Z)`` of textured tissue (grey/white matter
patches, dark fluid pockets) holding two adjacent labelled structures that
resemble the hippocampus: class 1 a rounded *head*, class 2 a thinner, curved
*body* behind it, with random position, size, orientation and a smooth elastic
deformation.  Intensities are in the range of the MSD hippocampus images
(structures darker than the surrounding tissue).

:data:`PROFILES` are scanner/acquisition shifts applied to the image only
(:func:`apply_shift`), usable on real images too: the benchmark applies them to
hippocampus images to make a shifted target site.  Everything is deterministic
given the seed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.interpolate import make_interp_spline
from scipy.spatial.transform import Rotation

from .errors import ASSFTError
from .fileutil import atomic_write_text
from .volumes import write_volume

CLASSES = ("background", "head", "body")


@dataclass(frozen=True)
class AcquisitionShift:
    """One scanner profile.  Intensities are first mapped to ``x`` in [0, ~1] by the
    image's minimum and 99.5th percentile, shifted in this order, then mapped back:

    - ``contrast``: piecewise-linear tone curve ``(knots_in, knots_out)`` on ``x``;
    - ``gamma``: ``x ** gamma``;
    - ``bias``: multiply by ``exp(bias * f)``, ``f`` a smooth random field of unit std;
    - ``slice_factor``: thick slices along ``slice_axis``: Gaussian blur of
      ``slice_factor / 2`` voxels, keep every ``slice_factor``-th slice, linear
      interpolation back to the original grid;
    - ``noise``: additive Gaussian noise of this std (fraction of the intensity range).
    """

    description: str
    contrast: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    gamma: float = 1.0
    bias: float = 0.0
    slice_factor: int = 1
    slice_axis: int = 2
    noise: float = 0.0


PROFILES: dict[str, AcquisitionShift] = {
    "clean": AcquisitionShift("no shift: the image as acquired"),
    "gamma_noise": AcquisitionShift("mild gamma (0.7, brighter mid-tones) and 3% Gaussian noise",
                                    gamma=0.7, noise=0.03),
    "bias_contrast": AcquisitionShift("strong smooth multiplicative bias field (log-std 0.35) and a steeper "
                                      "mid-tone contrast curve",
                                      contrast=((0.0, 0.35, 0.65, 1.0), (0.0, 0.15, 0.85, 1.0)), bias=0.35),
    "thick_slices": AcquisitionShift("3x thicker slices along Z (through-plane blur, down- and upsampling) "
                                     "and 2% Gaussian noise", slice_factor=3, slice_axis=2, noise=0.02),
    "t2_like": AcquisitionShift("another sequence, T2-weighted-like: the tone curve inverted (fluid bright, the "
                                "structures brighter than the tissue around them) and 2% Gaussian noise",
                                contrast=((0.0, 1.0), (1.0, 0.0)), noise=0.02),
}


def apply_shift(image: np.ndarray, profile: str, rng: np.random.Generator) -> np.ndarray:
    """Apply the acquisition shift ``PROFILES[profile]`` to ``image`` (X, Y, Z); returns float32.

    Works on any intensity range (the shift acts on intensities relative to the
    image's own range); ``rng`` draws the bias field and the noise.
    """
    shift = _profile(profile)
    image = np.asarray(image, dtype=np.float64)
    if shift == PROFILES["clean"]:
        return image.astype(np.float32)
    lo = float(image.min())
    scale = max(float(np.percentile(image, 99.5)) - lo, 1e-6)
    x = (image - lo) / scale
    if shift.contrast is not None:
        knots_in, knots_out = shift.contrast
        x = np.interp(x, knots_in, knots_out)
    if shift.gamma != 1.0:
        x = x ** shift.gamma
    if shift.bias:
        x = x * np.exp(shift.bias * _smooth_field(x.shape, rng))
    if shift.slice_factor > 1:
        x = _thick_slices(x, shift.slice_factor, shift.slice_axis)
    if shift.noise:
        x = x + rng.normal(0.0, shift.noise, size=x.shape)
    return (lo + x * scale).astype(np.float32)


def make_case(seed: int | Sequence[int], profile: str = "clean",
              shape: Sequence[int] = (36, 48, 36)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic case: ``(image float32 (X,Y,Z), label uint8 (X,Y,Z) in {0,1,2}, affine 4x4 RAS)``.

    The anatomy depends on ``seed`` only, so the same seed under different
    profiles gives the same label and differently shifted images.
    """
    _profile(profile)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8, got {shape}")
    anatomy_seq, shift_seq = np.random.SeedSequence(seed).spawn(2)
    anatomy = np.random.default_rng(anatomy_seq)
    label = _structures(shape, anatomy)
    image = _tissue(label, anatomy)
    image = apply_shift(image, profile, np.random.default_rng(shift_seq))
    affine = np.eye(4)
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0  # 1 mm voxels, centred on the world origin
    return image, label, affine


def make_dataset(folder: str | Path, n_cases: int, profiles: Sequence[str] = ("clean",), seed: int = 0,
                 with_labels: bool = True, shape: Sequence[int] = (36, 48, 36)) -> Path:
    """Write an MSD-layout dataset: ``dataset.json``, ``imagesTr/``, ``labelsTr/``.

    Case ``i`` is ``synth_{i:03d}`` made from seed ``(seed, i)`` under profile
    ``profiles[i % len(profiles)]``, recorded as ``"profile"`` in its training
    entry.  Returns ``folder``.
    """
    for name in profiles:
        _profile(name)
    if n_cases < 1 or not profiles:
        raise ValueError("make_dataset needs at least one case and one profile")
    folder = Path(folder)
    training = []
    for i in range(n_cases):
        profile = profiles[i % len(profiles)]
        image, label, affine = make_case((seed, i), profile, shape)
        name = f"synth_{i:03d}.nii.gz"
        write_volume(folder / "imagesTr" / name, image, affine)
        entry = {"image": f"./imagesTr/{name}", "profile": profile}
        if with_labels:
            write_volume(folder / "labelsTr" / name, label, affine)
            entry["label"] = f"./labelsTr/{name}"
        training.append(entry)
    meta = {
        "name": "ASSFTSynthetic",
        "description": "Synthetic hippocampus-like structures (ASSFTLib.synthetic)",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {str(i): c for i, c in enumerate(CLASSES)},
        "profiles": {p: PROFILES[p].description for p in dict.fromkeys(profiles)},
        "seed": seed,
        "numTraining": n_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    atomic_write_text(folder / "dataset.json", json.dumps(meta, indent=1) + "\n")
    return folder


# ----------------------------------------------------------------------------
def _profile(name: str) -> AcquisitionShift:
    try:
        return PROFILES[name]
    except KeyError:
        raise ASSFTError(f"unknown acquisition profile {name!r}", hint=f"use one of {', '.join(PROFILES)}") from None


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, coarse: int = 4) -> np.ndarray:
    """Low-frequency random field of zero mean and unit std: a (coarse,)*3 grid, cubic-upsampled."""
    field = ndimage.zoom(rng.normal(size=(coarse,) * 3), [s / coarse for s in shape], order=3, mode="nearest",
                         grid_mode=True)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _thick_slices(x: np.ndarray, factor: int, axis: int) -> np.ndarray:
    blurred = ndimage.gaussian_filter1d(x, sigma=factor / 2.0, axis=axis, mode="nearest")
    kept = np.arange(0, x.shape[axis], factor)
    if kept.size < 2:
        return blurred
    spline = make_interp_spline(kept, np.take(blurred, kept, axis=axis), k=1, axis=axis)
    return spline(np.clip(np.arange(x.shape[axis]), kept[0], kept[-1]))


def _structures(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Label (X, Y, Z) uint8: class 1 head and class 2 curved body along a rotated long axis (Y)."""
    size = np.asarray(shape, dtype=np.float64)
    scale = rng.uniform(0.8, 1.1) * size / np.array([36.0, 48.0, 36.0])
    head_radii = np.array([6.0, 8.0, 7.5]) * scale * rng.uniform(0.9, 1.1, 3)
    body_radii = np.array([4.5, 12.0, 6.5]) * scale * rng.uniform(0.9, 1.1, 3)
    head_y, body_y = -0.5 * head_radii[1], 0.8 * body_radii[1]
    extent_mid = ((head_y - head_radii[1]) + (body_y + body_radii[1])) / 2.0
    centre = (size - 1) / 2.0 + rng.uniform(-0.06, 0.06, 3) * size
    rotation = Rotation.from_euler("xyz", rng.uniform(-0.3, 0.3, 3)).as_matrix()

    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), axis=-1)
    warp = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), sigma=4.0) for _ in range(3)], axis=-1)
    warp *= 1.5 / max(float(np.abs(warp).max()), 1e-6)  # at most 1.5 voxels of elastic deformation
    local = (grid + warp - centre) @ rotation + np.array([0.0, extent_mid, 0.0])

    curvature = rng.uniform(0.01, 0.03) * rng.choice([-1.0, 1.0])
    head = np.sum(((local - [0.0, head_y, 0.0]) / head_radii) ** 2, axis=-1) <= 1.0
    body_local = local - [0.0, body_y, 0.0]
    body_local[..., 0] -= curvature * (local[..., 1] - head_y) ** 2  # the body bends sideways
    body = np.sum((body_local / body_radii) ** 2, axis=-1) <= 1.0
    label = np.zeros(shape, dtype=np.uint8)
    label[body] = 2
    label[head] = 1
    return label


def _tissue(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """T1-like intensities (X, Y, Z) float32: grey/white matter patches, dark fluid, darker structures."""
    shape = label.shape

    def smooth_noise(sigma: float) -> np.ndarray:
        field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=sigma)
        return (field - field.mean()) / max(float(field.std()), 1e-6)

    white = ndimage.gaussian_filter((smooth_noise(3.0) > 0.2).astype(np.float64), 1.0)
    fluid = ndimage.gaussian_filter((smooth_noise(4.0) > 1.6).astype(np.float64), 1.0)
    tissue = 0.8 + 0.45 * white - 0.55 * fluid + 0.06 * smooth_noise(1.0)
    structure_level = np.array([0.0, rng.uniform(0.60, 0.68), rng.uniform(0.56, 0.64)])
    inside = ndimage.gaussian_filter((label > 0).astype(np.float64), 0.7)  # partial volume at the border
    level = np.where(label > 0, structure_level[label], structure_level[1:].mean())
    image = (1 - inside) * tissue + inside * (level + 0.04 * smooth_noise(1.0))
    image += rng.normal(0.0, 0.02, size=shape)
    return np.clip(500.0 * image, 0.0, None).astype(np.float32)


# ----------------------------------------------------------------------------
# CT-like volumes of clinical size (the scale benchmark)
CT_CLASSES = ("background", "liver", "kidney", "spleen")
#: (class, Hounsfield units, radii as fractions of the body's half-axes (x, y) and of Z, centre (x, y, z) fractions)
_CT_ORGANS = ((1, 60, (0.45, 0.45, 0.30), (0.32, 0.42, 0.55)),    # liver: large, right-anterior (low x = right)
              (2, 160, (0.10, 0.16, 0.12), (0.30, 0.66, 0.42)),    # kidneys (enhanced cortex), both sides
              (2, 160, (0.10, 0.16, 0.12), (0.70, 0.66, 0.40)),
              (3, 50, (0.16, 0.22, 0.15), (0.72, 0.52, 0.58)))     # spleen: left-posterior


def make_ct_case(seed, shape: Sequence[int] = (512, 512, 300),
                 spacing: Sequence[float] = (0.8, 0.8, 1.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An abdominal-CT-like volume: ``(image int16 HU, label uint8 (CT_CLASSES), RAS affine)``.

    Air (-1000 HU) around an elliptic body outline (subcutaneous fat -100 HU, soft
    tissue 40 HU), a vertebral body (bone 400-700 HU) behind, liver (60 HU), two
    contrast-enhanced kidneys (160 HU) and a spleen (50 HU) as ellipsoids with seeded
    size and position, Gaussian noise of 12 HU.  Organs are drawn in their bounding boxes
    and noise is added slab by slab, so a 512x512x300 case needs ~0.5 GB and a few seconds.
    """
    rng = np.random.default_rng(seed)
    X, Y, Z = (int(s) for s in shape)
    ax, ay = 0.44 * X * rng.uniform(0.9, 1.0), 0.34 * Y * rng.uniform(0.85, 1.0)
    cx, cy = X / 2 + rng.uniform(-0.02, 0.02) * X, Y / 2 + rng.uniform(-0.02, 0.02) * Y
    u = (np.arange(X) - cx)[:, None] / ax
    v = (np.arange(Y) - cy)[None, :] / ay
    r2 = u ** 2 + v ** 2
    plane = np.full((X, Y), -1000, np.int16)
    plane[r2 <= 1.0] = -100
    plane[r2 <= 0.86 ** 2] = 40
    spine = ((np.arange(X) - cx)[:, None] ** 2 + (np.arange(Y) - (cy + 0.62 * ay))[None, :] ** 2) <= (0.13 * ay) ** 2
    plane[spine] = 500
    image = np.repeat(plane[:, :, None], Z, axis=2)
    label = np.zeros((X, Y, Z), np.uint8)
    for cls, hu, radii, centre in _CT_ORGANS:
        rad = np.array([radii[0] * ax, radii[1] * ay, radii[2] * Z]) * rng.uniform(0.85, 1.15, 3)
        ctr = np.array([cx - ax + 2 * ax * centre[0], cy - ay + 2 * ay * centre[1], Z * centre[2]])
        ctr += rng.uniform(-0.04, 0.04, 3) * np.array([ax, ay, Z])
        lo = np.maximum(np.floor(ctr - rad).astype(int), 0)
        hi = np.minimum(np.ceil(ctr + rad).astype(int) + 1, [X, Y, Z])
        if np.any(hi <= lo):
            continue
        g = [((np.arange(lo[k], hi[k]) - ctr[k]) / rad[k]) for k in range(3)]
        inside = (g[0][:, None, None] ** 2 + g[1][None, :, None] ** 2 + g[2][None, None, :] ** 2) <= 1.0
        box = tuple(slice(lo[k], hi[k]) for k in range(3))
        image[box][inside] = hu
        label[box][inside] = cls
    step = max(1, (1 << 22) // max(1, X * Y))
    for z in range(0, Z, step):
        slab = image[:, :, z:z + step]
        noise = rng.standard_normal(slab.shape, dtype=np.float32) * 12.0
        np.add(slab, noise, out=noise)
        slab[...] = np.clip(noise, -1024, 3071).astype(np.int16)
    affine = np.diag([float(spacing[0]), float(spacing[1]), float(spacing[2]), 1.0])
    return image, label, affine


def make_ct_dataset(folder: str | Path, n_cases: int, shape: Sequence[int] = (512, 512, 300),
                    spacing: Sequence[float] = (0.8, 0.8, 1.0), seed: int = 0, start: int = 0,
                    suffix: str = ".nii.gz") -> Path:
    """Write (or complete) an MSD-layout folder of ``n_cases`` :func:`make_ct_case` volumes (int16, uint8 labels).

    Case ``i`` is ``ct_{i:03d}`` from seed ``(seed, i)``; cases ``< start`` or already on disk
    are not rewritten, so a larger pool extends a smaller one.  Returns ``folder``.
    """
    folder = Path(folder)
    training = []
    for i in range(n_cases):
        name = f"ct_{i:03d}{suffix}"
        img, lab = folder / "imagesTr" / name, folder / "labelsTr" / name
        if i >= start and not (img.is_file() and lab.is_file()):
            image, label, affine = make_ct_case((seed, i), shape, spacing)
            write_volume(lab, label, affine)
            write_volume(img, image, affine)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "ASSFTSyntheticCT", "description": "Synthetic abdominal-CT-like volumes (ASSFTLib.synthetic)",
            "tensorImageSize": "3D", "modality": {"0": "CT"}, "labels": {str(i): c for i, c in enumerate(CT_CLASSES)},
            "seed": seed, "numTraining": n_cases, "numTest": 0, "training": training, "test": []}
    atomic_write_text(folder / "dataset.json", json.dumps(meta, indent=1) + "\n")
    return folder
