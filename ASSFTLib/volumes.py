"""Volumes: reading and writing them, their geometry, and checking labels against them.

Conventions (``docs/architecture.md``):

- A volume is a numpy array in file index order ``(X, Y, Z)`` (nibabel's order)
  with a 4x4 **RAS** voxel-to-world ``affine`` in millimetres.
- Images are ``float32`` whatever their stored type; labels are integer class
  indices (``uint8`` when they fit, else ``int16``/``int32``).
- Formats are entries of :data:`FORMATS`. NIfTI (``.nii``, ``.nii.gz``) is read with nibabel; NRRD (``.nrrd``, ``.nhdr``)
  with SimpleITK, whose LPS geometry is converted to RAS, so the NIfTI and the
  NRRD of one volume give the same affine.
- Every failure on bad input raises a :class:`~ASSFTLib.errors.ASSFTError`
  subclass naming the file and saying what to do.

Finding the cases of a dataset folder is :mod:`ASSFTLib.dataset`'s job.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from .errors import GeometryError, LabelError, VolumeError
from .filecheck import check_regular_file, detached_data_files
from .fileutil import atomic_path

#: Geometry tolerance: relative for spacing, in voxels for origin, absolute for direction
#: cosines.  NIfTI stores geometry in float32, so exact float64 equality is too strict.
GEOMETRY_TOLERANCE = 1e-4

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_CHANNEL_SUFFIX = re.compile(r"_0000$")
#: What a damaged file makes nibabel/numpy raise; a corrupt header can declare negative or absurd
#: dimensions (OverflowError from the memory map, MemoryError from the allocation).
_NIBABEL_READ_ERRORS = (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError,
                        OSError, EOFError, ValueError, zlib.error, OverflowError, MemoryError)


@dataclass
class Volume:
    """A 3D volume: ``array`` (X, Y, Z), ``affine`` 4x4 RAS voxel-to-world, source ``path``."""

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D (X, Y, Z), got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got shape {self.affine.shape}")
        if self.path is not None:
            self.path = Path(self.path)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along X, Y, Z (the column norms of the affine), shape (3,)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """RAS position in mm of the centre of voxel (0, 0, 0), shape (3,)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """Unit RAS direction of each voxel axis as columns, shape (3, 3)."""
        return self.affine[:3, :3] / self.spacing


# ----------------------------------------------------------------------------
# file names
def volume_suffix(path: str | Path) -> str | None:
    """The supported volume suffix of ``path`` (lower case), or None."""
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)


def case_id_from_path(path: str | Path) -> str:
    """Case id of a volume file: its name without the volume suffix and without the
    nnU-Net/MSD first-channel suffix ``_0000`` (``liver_7_0000.nii.gz`` -> ``liver_7``)."""
    name = Path(path).name
    suffix = volume_suffix(name)
    stem = name[: len(name) - len(suffix)] if suffix else name
    return _CHANNEL_SUFFIX.sub("", stem)


def find_volume_files(folder: str | Path) -> list[Path]:
    """The volume files directly inside ``folder``, sorted by name.

    Hidden files (names starting with ``.``: temporary files of atomic writes,
    macOS ``._`` resource forks) are skipped.  A missing folder gives ``[]``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and volume_suffix(p) and p.is_file())


# ----------------------------------------------------------------------------
# reading
def read_volume(path: str | Path, kind: str = "image", root: str | Path | None = None) -> Volume:
    """Read a 3D volume.

    ``kind="image"`` gives ``float32`` intensities and rejects NaN/Inf voxels;
    ``kind="label"`` gives integer class indices and rejects non-integer values.
    A 4D file with one trailing volume is squeezed to 3D.

    Raises :class:`VolumeError` (naming the file) when it is missing, unreadable,
    truncated, of an unsupported type, not 3D, empty, or holds invalid values.
    """
    if kind not in ("image", "label"):
        raise ValueError(f"kind must be 'image' or 'label', got {kind!r}")
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None:
        raise VolumeError(f"unsupported file type {''.join(path.suffixes) or '(no extension)'!r}", path=path,
                          hint=f"save the volume as one of {SUPPORTED_TEXT}")
    check_regular_file(path, root=root)  # ``root``: the dataset folder the file must stay in
    if suffix == ".nhdr":
        detached_data_files(path)
    check_volume_size(path, suffix)
    try:
        array, affine = _FORMAT_OF[suffix].read(path, kind)
    except MemoryError as exc:
        raise VolumeError("is too large to read into memory", path=path,
                          hint="crop or downsample the volume, or use a machine with more memory") from exc
    array = _as_3d(array, path)
    _check_geometry(affine, path)
    array = _as_image(array, path) if kind == "image" else _as_label(array, path)
    return Volume(array, affine, path)


def _check_geometry(affine: np.ndarray, path: Path) -> None:
    """A grid labels can be drawn on: a finite affine with non-zero, invertible voxel axes."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    hint = "fix the volume's header (spacing, origin, orientation) in the program that exported it"
    if not np.isfinite(affine).all():
        raise VolumeError("has a geometry (affine) with NaN or infinite values", path=path, hint=hint)
    spacing = np.linalg.norm(linear, axis=0)
    if (spacing <= 1e-6).any():
        raise VolumeError(f"has zero voxel spacing ({_fmt(spacing)} mm)", path=path, hint=hint)
    if abs(np.linalg.det(linear / spacing)) < 1e-6:
        raise VolumeError("has a singular orientation: its voxel axes are not independent", path=path, hint=hint)


#: Largest volume read, in voxels (2**31: an 1290^3 grid); a header declaring more is refused before allocating.
MAX_VOXELS = 2 ** 31


def check_volume_size(path: Path, suffix: str) -> None:
    """Refuse a file whose header declares more voxels than :data:`MAX_VOXELS` (or than memory could
    hold) before anything is allocated: one bad case must not stop a whole scoring run."""
    try:
        if suffix in (".nii", ".nii.gz"):
            shape = nib.load(str(path)).header.get_data_shape()
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            shape = tuple(reader.GetSize()) + (reader.GetNumberOfComponents(),)
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the reader itself
        return
    voxels = 1
    for n in shape:
        voxels *= max(int(n), 1)
    memory = _physical_memory()
    if memory and voxels * 8 > memory:  # float32 plus the file's own type: more than the machine holds
        raise VolumeError(f"declares {voxels:,} voxels (shape {tuple(int(n) for n in shape)}): about "
                          f"{voxels * 8 / 2 ** 30:.1f} GiB to read, more than this machine's "
                          f"{memory / 2 ** 30:.1f} GiB of memory", path=path,
                          hint="crop or downsample the volume, or use a machine with more memory")
    if voxels > MAX_VOXELS:
        raise VolumeError(f"declares {voxels:,} voxels (shape {tuple(int(n) for n in shape)}), more than ASSFT "
                          f"reads ({MAX_VOXELS:,})", path=path,
                          hint="crop or downsample the volume; a corrupt header can also declare this")


def _physical_memory() -> int:
    """Bytes of physical memory, or 0 when the system does not say."""
    try:
        import os
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def _read_nifti(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(path))
        dtype = np.dtype(img.get_data_dtype())
        _check_pixel_type(dtype, path)
        if kind == "image" and dtype.kind in "iu" and dtype.itemsize == 8:
            raw = img.dataobj.get_unscaled() if hasattr(img.dataobj, "get_unscaled") else np.asanyarray(img.dataobj)
            _check_pixel_type(raw.dtype, path, raw)
            del raw
        # Force the read here: nibabel loads lazily and a truncated file fails only now.
        array = img.get_fdata(dtype=np.float32) if kind == "image" else np.asanyarray(img.dataobj)
    except _NIBABEL_READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    return array, np.asarray(img.affine, dtype=np.float64)


def _read_itk(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(img)
    except (RuntimeError, OverflowError, MemoryError) as exc:
        raise _unreadable(path, exc) from exc
    _check_pixel_type(array.dtype, path, array if kind == "image" else None)

    ndim = img.GetDimension()
    if img.GetNumberOfComponentsPerPixel() > 1:  # vector pixels: (..., C) after the spatial axes
        array = np.moveaxis(array, -1, 0)
    array = array.transpose(tuple(range(array.ndim))[::-1])  # ITK (Z, Y, X) -> (X, Y, Z)
    if ndim < 3:
        return array, np.eye(4)  # rejected as 2D by _as_3d
    spacing = np.asarray(img.GetSpacing()[:3])
    origin = np.asarray(img.GetOrigin()[:3])
    direction = np.asarray(img.GetDirection()).reshape(ndim, ndim)[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ origin
    return array, affine


#: Integers above this lose their value as float32 (the network's type).
_FLOAT32_EXACT = 2 ** 24


def _check_pixel_type(dtype: np.dtype, path: Path, array: np.ndarray | None = None) -> None:
    """Refuse pixel types the network cannot use faithfully: RGB(A), complex, 64-bit integers beyond float32."""
    dtype = np.dtype(dtype)
    if dtype.fields is not None or dtype.kind == "V":
        raise VolumeError(f"holds colour (RGB) or compound pixels ({dtype}), not one intensity per voxel", path=path,
                          hint="convert the volume to a single-channel (greyscale) image and save it again")
    if dtype.kind == "c":
        raise VolumeError(f"holds complex pixels ({dtype})", path=path,
                          hint="save the magnitude image (a real-valued volume) instead")
    if dtype.kind not in "biuf":
        raise VolumeError(f"has pixel type {dtype}, which is not a number", path=path,
                          hint="save the volume with a numeric pixel type")
    if array is not None and dtype.kind in "iu" and dtype.itemsize == 8 and array.size:
        big = int(max(abs(int(array.min())), abs(int(array.max()))))
        if big > _FLOAT32_EXACT:
            raise VolumeError(f"holds 64-bit integers up to {big}, beyond what float32 keeps exactly", path=path,
                              hint="rescale the intensities (e.g. to int16 or float32) and save the volume again")


def _unreadable(path: Path, exc: BaseException) -> VolumeError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return VolumeError(f"cannot be read, the file may be truncated or corrupt ({detail})", path=path,
                       hint="re-export or re-download the file")


def _as_3d(array: np.ndarray, path: Path) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    shape = tuple(int(s) for s in array.shape)
    if array.ndim > 3:
        raise VolumeError(f"is {array.ndim}D (shape {shape}), ASSFT needs one 3D volume per file", path=path,
                          hint="extract one time point or channel and save it as a 3D volume")
    if array.size == 0:
        raise VolumeError(f"holds no voxels (shape {shape})", path=path,
                          hint="re-export the volume; the file has an empty image")
    if array.ndim < 3 or min(shape) == 1:
        raise VolumeError(f"is 2D (shape {shape}), ASSFT needs a 3D volume", path=path,
                          hint="load the whole 3D series rather than a single slice")
    return array


def _as_image(array: np.ndarray, path: Path) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise VolumeError(f"{bad} of {array.size} voxels are NaN or infinite", path=path,
                          hint="replace them with a finite value (for example the background intensity) "
                               "and save the volume again")
    return array


def _as_label(array: np.ndarray, path: Path) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        integral = finite & (array == np.round(array))
        if not integral.all():
            examples = np.unique(array[~integral])[:5]
            raise VolumeError(f"is not a label map: {int((~integral).sum())} voxels hold non-integer values "
                              f"(for example {', '.join(f'{v:g}' for v in examples)})", path=path,
                              hint="choose the label (segmentation) file, not the image")
    elif array.dtype.kind not in "iu":
        raise VolumeError(f"has pixel type {array.dtype}, not integer class indices", path=path,
                          hint="save the label as an integer (for example uint8) volume")
    return array.astype(_smallest_int_dtype(array), copy=False)


def _smallest_int_dtype(array: np.ndarray) -> np.dtype:
    lo, hi = (array.min(), array.max()) if array.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


# ----------------------------------------------------------------------------
# writing
def write_volume(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` (X, Y, Z) with RAS ``affine`` (4x4) atomically; return the path.

    The type follows the suffix (``.nii.gz``, ``.nii``, ``.nrrd``).  Floating
    arrays are stored as ``float32``, booleans as ``uint8``, other integers in the
    smallest of ``uint8``/``int16``/``int32`` that holds them, so labels stay labels.
    Geometry read back with :func:`read_volume` equals ``affine`` (to float32
    precision for NIfTI, which stores it so).
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise VolumeError(f"cannot write file type {''.join(path.suffixes) or '(no extension)'!r}", path=path,
                          hint=f"use one of {', '.join(WRITE_SUFFIXES)}")
    array = np.asarray(array)
    affine = np.asarray(affine, dtype=np.float64)
    if array.ndim != 3 or array.size == 0:
        raise VolumeError(f"cannot write an array of shape {array.shape}: a volume is 3D (X, Y, Z)", path=path)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError("cannot write: the affine must be a finite, invertible 4x4 matrix", path=path)
    array = _storable(array)
    try:
        with atomic_path(path) as tmp:
            _FORMAT_OF[suffix].write(tmp, array, affine)
    except (OSError, RuntimeError) as exc:  # a full disk, no permission (ITK reports both as RuntimeError)
        detail = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VolumeError(f"cannot be written ({detail}); the previous version, if any, is unchanged", path=path,
                          hint="free disk space or check that the folder is writable, then save again") from exc
    return path


def _storable(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    if array.dtype.kind in "iu":
        return array.astype(_smallest_int_dtype(array), copy=False)
    raise TypeError(f"cannot store an array of type {array.dtype} as a volume")


def _to_nifti(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(array, affine)
    img.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm")
    # Both codes set: readers that prefer the qform (ITK, Slicer) and the sform agree.
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    return img


def _to_itk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))  # (X,Y,Z) -> ITK (Z,Y,X)
    linear = _LPS_TO_RAS @ affine[:3, :3]  # RAS -> LPS (the flip is its own inverse)
    spacing = np.linalg.norm(linear, axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetDirection((linear / spacing).ravel().tolist())
    img.SetOrigin((_LPS_TO_RAS @ affine[:3, 3]).tolist())
    return img


# ----------------------------------------------------------------------------
# checks
def check_same_geometry(a: Volume, b: Volume, what: str = "") -> None:
    """Raise :class:`GeometryError` unless ``a`` and ``b`` share shape, spacing, origin
    and direction (within :data:`GEOMETRY_TOLERANCE`); the message names each
    attribute that differs with both values."""
    tol = GEOMETRY_TOLERANCE
    voxel = float(min(a.spacing.min(), b.spacing.min()))
    # NIfTI stores the origin in float32: far from 0 (CT tables) its rounding exceeds tol * a small voxel.
    far = float(max(np.abs(a.origin).max(), np.abs(b.origin).max()))
    origin_tol = tol * voxel + 4 * float(np.finfo(np.float32).eps) * far
    checks = (
        ("shape", a.shape, b.shape, lambda x, y: x == y),
        ("spacing", a.spacing, b.spacing, lambda x, y: np.allclose(x, y, rtol=tol, atol=0)),
        ("origin", a.origin, b.origin, lambda x, y: np.allclose(x, y, rtol=0, atol=origin_tol)),
        ("direction", a.direction, b.direction, lambda x, y: np.allclose(x, y, rtol=0, atol=tol)),
    )
    diffs = [f"{name} {_fmt(x)} vs {_fmt(y)}" for name, x, y, same in checks if not same(x, y)]
    if diffs:
        subject = what or f"{a.path.name if a.path else 'first volume'} and {b.path.name if b.path else 'second'}"
        raise GeometryError(f"{subject} do not share geometry: " + "; ".join(diffs), path=b.path or a.path,
                            hint="resample the label onto the image grid (in Slicer: export the segmentation "
                                 "with the image as reference geometry)")


def _fmt(value) -> str:
    if isinstance(value, tuple):
        return str(value)
    return np.array2string(np.asarray(value), precision=4, suppress_small=True, separator=", ").replace("\n", "")


def check_label_values(array: np.ndarray, num_classes: int, path: str | Path | None = None) -> None:
    """Raise :class:`LabelError` listing the values of ``array`` outside ``0..num_classes-1``."""
    array = np.asarray(array)
    if array.size == 0 or (array.dtype.kind in "iub" and array.min() >= 0 and array.max() < num_classes):
        return
    values, counts = np.unique(array, return_counts=True)
    bad = (values < 0) | (values >= num_classes) | (values != np.round(values))
    if bad.any():
        listed = ", ".join(f"{v:g} ({c} voxels)" for v, c in zip(values[bad][:10], counts[bad][:10]))
        more = f" and {int(bad.sum()) - 10} more" if bad.sum() > 10 else ""
        raise LabelError(f"label values outside 0..{num_classes - 1}: {listed}{more}", path=path,
                         hint=f"the task has {num_classes} classes; relabel these voxels or choose the right file")


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(_to_nifti(array, affine), str(path))


def _write_nrrd(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    sitk.WriteImage(_to_itk(array, affine), str(path), useCompression=True)


# ----------------------------------------------------------------------------
# the format registry: a new file format is one entry here plus its reader (and writer)
@dataclass(frozen=True)
class VolumeFormat:
    """A file format: its suffixes, ``read(path, kind) -> (array (X, Y, Z), RAS affine)``, and
    ``write(path, array, affine)`` or None when ASSFT only reads it."""

    name: str
    suffixes: Tuple[str, ...]
    read: Callable[[Path, str], Tuple[np.ndarray, np.ndarray]]
    write: Optional[Callable[[Path, np.ndarray, np.ndarray], None]]


FORMATS = (
    VolumeFormat("NIfTI", (".nii.gz", ".nii"), _read_nifti, _write_nifti),
    VolumeFormat("NRRD", (".nrrd",), _read_itk, _write_nrrd),
    # a detached header cannot be renamed atomically together with its data file: read only
    VolumeFormat("NRRD, detached header", (".nhdr",), _read_itk, None),
)
_FORMAT_OF = {suffix: f for f in FORMATS for suffix in f.suffixes}
#: Suffixes read, longest first so ``.nii.gz`` wins over ``.gz``.
VOLUME_SUFFIXES = tuple(sorted(_FORMAT_OF, key=len, reverse=True))
#: Suffixes written.
WRITE_SUFFIXES = tuple(s for s in VOLUME_SUFFIXES if _FORMAT_OF[s].write is not None)
SUPPORTED_TEXT = ", ".join(VOLUME_SUFFIXES)
