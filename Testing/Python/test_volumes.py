"""Reading, writing and checking volumes; volume file names (real hippocampus files and broken copies)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from ASSFTLib import volumes
from ASSFTLib.dataset import load_dataset
from ASSFTLib.errors import GeometryError, LabelError, VolumeError


def _oblique_affine() -> np.ndarray:
    """Rotated, anisotropic, shifted RAS affine whose entries are exact in float32 (NIfTI stores float32)."""
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [10.5, -20.25, 33.0]
    return affine.astype(np.float32).astype(np.float64)


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def _stored_dtype(path: Path) -> np.dtype:
    return nib.load(str(path)).get_data_dtype()


# ----------------------------------------------------------------------------
# real files
def test_hippocampus_mixed_dtypes_read_as_float32_images_and_integer_labels(hippo_dir):
    images = volumes.find_volume_files(hippo_dir / "imagesTr")
    by_dtype = {}
    for path in images:
        by_dtype.setdefault(_stored_dtype(path), path)
    assert len(by_dtype) >= 2, f"expected mixed stored dtypes, found {sorted(map(str, by_dtype))}"
    for stored, path in by_dtype.items():
        vol = volumes.read_volume(path)
        assert vol.array.dtype == np.float32, stored
        raw = np.asanyarray(nib.load(str(path)).dataobj)
        np.testing.assert_array_equal(vol.array, raw.astype(np.float32))
    float_labels = [p for p in volumes.find_volume_files(hippo_dir / "labelsTr") if _stored_dtype(p).kind == "f"]
    assert float_labels, "the data set has float-stored labels; this test checks they become integers"
    for path in float_labels[:2] + volumes.find_volume_files(hippo_dir / "labelsTr")[:2]:
        lab = volumes.read_volume(path, kind="label")
        assert lab.array.dtype == np.uint8
        assert set(np.unique(lab.array)) <= {0, 1, 2}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_hippocampus_label_round_trip_keeps_geometry_and_values(hippo_dir, tmp_path, suffix):
    case = load_dataset(hippo_dir)[0][1]
    image = volumes.read_volume(case.image)
    label = volumes.read_volume(case.label, kind="label")
    volumes.check_same_geometry(image, label, "image and label")
    out = volumes.write_volume(tmp_path / f"lab el é{suffix}", label.array, image.affine)
    back = volumes.read_volume(out, kind="label")
    np.testing.assert_array_equal(back.array, label.array)
    assert back.array.dtype == np.uint8
    np.testing.assert_allclose(back.affine, image.affine, rtol=0, atol=1e-12)
    volumes.check_same_geometry(image, back, "image and written label")
    assert [p.name for p in tmp_path.iterdir()] == [out.name], "no temporary file may remain"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_write_read_oblique_geometry_exactly(tmp_path, suffix):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(5, 6, 7)).astype(np.float32)
    affine = _oblique_affine()
    back = volumes.read_volume(volumes.write_volume(tmp_path / f"x{suffix}", array, affine))
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, affine, rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.spacing, [0.8, 0.9, 2.5], rtol=1e-6)


def test_nrrd_and_nifti_of_one_volume_give_the_same_affine(tmp_path):
    """Convert with SimpleITK itself (not our writer) so the LPS<->RAS handling is checked independently."""
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nifti = _save_nifti(tmp_path / "v.nii.gz", array, _oblique_affine())
    sitk.WriteImage(sitk.ReadImage(str(nifti)), str(tmp_path / "v.nrrd"))
    a = volumes.read_volume(nifti)
    b = volumes.read_volume(tmp_path / "v.nrrd")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    volumes.check_same_geometry(a, b)


def test_written_nrrd_has_lps_geometry_for_itk(tmp_path):
    affine = _oblique_affine()
    img = sitk.ReadImage(str(volumes.write_volume(tmp_path / "v.nrrd", np.zeros((3, 4, 5), np.uint8), affine)))
    assert img.GetSize() == (3, 4, 5)
    np.testing.assert_allclose(img.GetOrigin(), [-10.5, 20.25, 33.0])
    # The RAS direction with x and y flipped is ITK's LPS direction.
    lps = np.diag([-1, -1, 1]) @ (affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0))
    np.testing.assert_allclose(np.asarray(img.GetDirection()).reshape(3, 3), lps, atol=1e-12)


# ----------------------------------------------------------------------------
# broken files
@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.98])
def test_truncated_nii_gz_names_the_file(hippo_dir, tmp_path, fraction):
    source = volumes.find_volume_files(hippo_dir / "imagesTr")[0]
    data = source.read_bytes()
    broken = tmp_path / "broken case.nii.gz"
    broken.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(VolumeError) as err:
        volumes.read_volume(broken)
    assert "broken case.nii.gz" in str(err.value) and "truncated or corrupt" in str(err.value)
    assert err.value.hint


def test_truncated_uncompressed_nii_and_garbage_nrrd(tmp_path):
    full = _save_nifti(tmp_path / "full.nii", np.ones((8, 8, 8), np.float32)).read_bytes()
    (tmp_path / "cut.nii").write_bytes(full[: len(full) - 100])
    (tmp_path / "junk.nrrd").write_bytes(b"not a volume at all" * 10)
    for name in ("cut.nii", "junk.nrrd"):
        with pytest.raises(VolumeError, match=name):
            volumes.read_volume(tmp_path / name)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(VolumeError, match="not found") as err:
        volumes.read_volume(tmp_path / "absent.nii.gz")
    assert "absent.nii.gz" in str(err.value)
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    with pytest.raises(VolumeError, match="unsupported file type '.png'"):
        volumes.read_volume(tmp_path / "photo.png")
    with pytest.raises(VolumeError, match="cannot write"):
        volumes.write_volume(tmp_path / "x.nhdr", np.zeros((2, 2, 2)), np.eye(4))


def test_nan_and_inf_voxels_are_counted(tmp_path):
    array = np.ones((4, 4, 4), np.float32)
    array[0, 0, 0] = np.nan
    array[1, 2, 3] = np.inf
    path = _save_nifti(tmp_path / "nan.nii.gz", array)
    with pytest.raises(VolumeError, match="2 of 64 voxels are NaN or infinite") as err:
        volumes.read_volume(path)
    assert "nan.nii.gz" in str(err.value) and "replace" in err.value.hint
    with pytest.raises(VolumeError, match="non-integer"):
        volumes.read_volume(path, kind="label")


def test_4d_is_refused_but_a_trailing_singleton_is_squeezed(tmp_path):
    with pytest.raises(VolumeError, match=r"4D \(shape \(4, 5, 6, 3\)\)"):
        volumes.read_volume(_save_nifti(tmp_path / "t.nii.gz", np.zeros((4, 5, 6, 3), np.float32)))
    vector = sitk.GetImageFromArray(np.zeros((6, 5, 4, 3), np.float32), isVector=True)  # ITK (Z, Y, X) x 3
    sitk.WriteImage(vector, str(tmp_path / "vector.nrrd"))
    with pytest.raises(VolumeError, match=r"4D \(shape \(4, 5, 6, 3\)\)"):
        volumes.read_volume(tmp_path / "vector.nrrd")
    vol = volumes.read_volume(_save_nifti(tmp_path / "s.nii.gz", np.ones((4, 5, 6, 1), np.float32), _oblique_affine()))
    assert vol.shape == (4, 5, 6)
    np.testing.assert_allclose(vol.affine, _oblique_affine())


def test_2d_and_empty_volumes_are_refused(tmp_path):
    with pytest.raises(VolumeError, match="is 2D"):
        volumes.read_volume(_save_nifti(tmp_path / "slice.nii.gz", np.zeros((8, 9), np.float32)))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), np.uint8)), str(tmp_path / "slice.nrrd"))
    with pytest.raises(VolumeError, match="is 2D"):
        volumes.read_volume(tmp_path / "slice.nrrd")
    with pytest.raises(VolumeError, match="no voxels"):
        volumes.read_volume(_save_nifti(tmp_path / "empty.nii.gz", np.zeros((0, 4, 4), np.float32)))


def test_image_as_label_is_refused(tmp_path):
    path = _save_nifti(tmp_path / "img.nii.gz", np.linspace(0, 3, 64, dtype=np.float32).reshape(4, 4, 4))
    with pytest.raises(VolumeError, match="not a label map"):
        volumes.read_volume(path, kind="label")


# ----------------------------------------------------------------------------
# checks
def test_check_label_values_lists_offending_values():
    good = np.array([0, 1, 2, 2], np.uint8).reshape(1, 2, 2)
    volumes.check_label_values(good, 3, "ok.nii.gz")
    bad = np.array([0, 1, 5, 5, -1, 2], np.int16).reshape(1, 2, 3)
    with pytest.raises(LabelError) as err:
        volumes.check_label_values(bad, 3, "bad.nii.gz")
    text = str(err.value)
    assert "bad.nii.gz" in text and "5 (2 voxels)" in text and "-1 (1 voxels)" in text
    assert "0 (" not in text and "2 (" not in text


@pytest.mark.parametrize("attribute", ["shape", "spacing", "origin", "direction"])
def test_check_same_geometry_names_what_differs(attribute):
    base = volumes.Volume(np.zeros((4, 5, 6), np.float32), _oblique_affine(), Path("image.nii.gz"))
    array, affine = base.array, base.affine.copy()
    if attribute == "shape":
        array = np.zeros((4, 5, 7), np.float32)
    elif attribute == "spacing":
        affine[:3, 0] *= 1.5
    elif attribute == "origin":
        affine[:3, 3] += [0.0, 0.0, 1.0]
    else:
        c, s = np.cos(0.05), np.sin(0.05)  # a small extra rotation: same spacing and origin
        affine[:3, :3] = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ affine[:3, :3]
    other = volumes.Volume(array, affine, Path("label.nii.gz"))
    with pytest.raises(GeometryError) as err:
        volumes.check_same_geometry(base, other, "image and label")
    text = str(err.value)
    assert f"{attribute} " in text and "label.nii.gz" in text
    named = [a for a in ("shape", "spacing", "origin", "direction") if f"{a} " in text.split(":", 1)[1]]
    assert named == [attribute]


def test_check_same_geometry_tolerates_float32_rounding():
    a = volumes.Volume(np.zeros((3, 3, 3)), _oblique_affine())
    b = volumes.Volume(np.zeros((3, 3, 3)), _oblique_affine() * (1 + 1e-7))
    volumes.check_same_geometry(a, b)


def test_volume_properties():
    vol = volumes.Volume(np.zeros((2, 3, 4)), _oblique_affine())
    np.testing.assert_allclose(vol.spacing, [0.8, 0.9, 2.5], rtol=1e-6)
    np.testing.assert_allclose(vol.origin, [10.5, -20.25, 33.0])
    np.testing.assert_allclose(vol.direction.T @ vol.direction, np.eye(3), atol=1e-6)


# ----------------------------------------------------------------------------
# names
@pytest.mark.parametrize("name, case_id", [
    ("hippocampus_001.nii.gz", "hippocampus_001"), ("liver_7_0000.nii.gz", "liver_7"),
    ("a.b.NII.GZ", "a.b"), ("scan 1 é.nrrd", "scan 1 é"), ("x.nhdr", "x"), ("y.nii", "y"),
    ("case_0001.nii.gz", "case_0001"),
])
def test_case_id_from_path(name, case_id):
    assert volumes.case_id_from_path(Path("/some/dir") / name) == case_id


def test_find_volume_files_skips_hidden_and_other_files(tmp_path):
    for name in ("b.nii.gz", "a.nrrd", ".a.nii.gz.tmp.nii.gz", "notes.txt", "c.mha"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.nii.gz").mkdir()
    assert [p.name for p in volumes.find_volume_files(tmp_path)] == ["a.nrrd", "b.nii.gz"]
    assert volumes.find_volume_files(tmp_path / "absent") == []
