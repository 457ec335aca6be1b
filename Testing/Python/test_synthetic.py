"""Synthetic cases: deterministic, realistic label layout, profiles that shift intensities only."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from ASSFTLib import volumes
from ASSFTLib.dataset import load_dataset
from ASSFTLib import synthetic
from ASSFTLib.errors import ASSFTError


def test_make_case_is_deterministic_and_seed_dependent():
    a = synthetic.make_case(3, "bias_contrast")
    b = synthetic.make_case(3, "bias_contrast")
    c = synthetic.make_case(4, "bias_contrast")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1]) and not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("seed", range(4))
def test_case_has_two_adjacent_compact_structures(seed):
    image, label, affine = synthetic.make_case(seed, shape=(36, 48, 36))
    assert image.shape == label.shape == (36, 48, 36)
    assert image.dtype == np.float32 and label.dtype == np.uint8 and affine.shape == (4, 4)
    assert set(np.unique(label)) == {0, 1, 2}
    for cls in (1, 2):
        fraction = float((label == cls).mean())
        assert 0.005 < fraction < 0.1, (cls, fraction)  # like the real hippocampus crops (~2.5% each)
        assert ndimage.label(label == cls)[1] == 1, "each structure is one connected piece"
    touching = ndimage.binary_dilation(label == 1) & (label == 2)
    assert touching.any(), "head and body are adjacent"
    # structures are darker than their surroundings, as the hippocampus in T1
    ring = ndimage.binary_dilation(label > 0, iterations=3) & (label == 0)
    assert image[label > 0].mean() < image[ring].mean()


def test_profiles_change_intensities_but_not_labels():
    clean, label, affine = synthetic.make_case(7, "clean")
    for name in synthetic.PROFILES:
        image, other_label, other_affine = synthetic.make_case(7, name)
        np.testing.assert_array_equal(other_label, label)
        np.testing.assert_array_equal(other_affine, affine)
        if name != "clean":
            assert np.abs(image - clean).mean() > 0.02 * np.abs(clean).mean(), name


def _relative(image: np.ndarray) -> np.ndarray:
    return (image - image.mean()) / image.std()


def test_each_profile_shifts_the_statistic_it_documents():
    clean, label, _ = synthetic.make_case(11, "clean")
    shifted = {name: synthetic.make_case(11, name)[0] for name in synthetic.PROFILES if name != "clean"}

    def fine_noise(img):  # high-frequency energy: residual after light smoothing
        return float(np.std(_relative(img) - ndimage.gaussian_filter(_relative(img), 1.0)))

    def multiplicative_field(img):  # slow spatial variation of log(shifted / clean): a bias field
        ratio = np.log(np.clip(img, 1.0, None) / np.clip(clean, 1.0, None))
        return float(np.std(ndimage.gaussian_filter(ratio, 6.0)))

    def through_plane_sharpness(img):  # gradient energy along Z relative to X
        rel = _relative(img)
        return float(np.mean(np.diff(rel, axis=2) ** 2) / np.mean(np.diff(rel, axis=0) ** 2))

    assert fine_noise(shifted["gamma_noise"]) > 1.2 * fine_noise(clean)
    bias = multiplicative_field(shifted["bias_contrast"])
    assert bias > 3 * max(multiplicative_field(shifted["gamma_noise"]), multiplicative_field(shifted["thick_slices"]))
    assert through_plane_sharpness(shifted["thick_slices"]) < 0.7 * through_plane_sharpness(clean)
    # gamma < 1 raises mid-tones: the median moves up within the intensity range
    lo, hi = clean.min(), np.percentile(clean, 99.5)
    g = shifted["gamma_noise"]
    assert np.median((g - g.min()) / (np.percentile(g, 99.5) - g.min())) > np.median((clean - lo) / (hi - lo))
    # the T2-like sequence inverts the tone curve: the structures turn brighter than the tissue around them
    ring = ndimage.binary_dilation(label > 0, iterations=3) & (label == 0)
    t2 = shifted["t2_like"]
    assert clean[label > 0].mean() < clean[ring].mean()
    assert t2[label > 0].mean() > t2[ring].mean() + 0.1 * t2.std()
    assert np.corrcoef(_relative(t2).ravel(), _relative(clean).ravel())[0, 1] < -0.8


def test_apply_shift_on_a_real_image(hippo_dir):
    case = load_dataset(hippo_dir)[0][0]
    image = volumes.read_volume(case.image).array
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(synthetic.apply_shift(image, "clean", rng), image)
    for name in ("gamma_noise", "bias_contrast", "thick_slices"):
        out = synthetic.apply_shift(image, name, np.random.default_rng(0))
        assert out.shape == image.shape and out.dtype == np.float32 and np.isfinite(out).all()
        np.testing.assert_array_equal(out, synthetic.apply_shift(image, name, np.random.default_rng(0)))
        corr = np.corrcoef(out.ravel(), image.ravel())[0, 1]
        assert 0.5 < corr < 0.999, (name, corr)  # changed, yet still the same anatomy


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ASSFTError, match="unknown acquisition profile 'mri7t'"):
        synthetic.make_case(0, "mri7t")


def test_make_dataset_writes_a_readable_msd_folder(tmp_path):
    folder = synthetic.make_dataset(tmp_path / "ds", 5, profiles=("clean", "thick_slices"), seed=2,
                                    shape=(16, 20, 16))
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 5 and set(meta["profiles"]) == {"clean", "thick_slices"}
    cases, problems = load_dataset(folder)
    assert problems == [] and len(cases) == 5
    assert [c.profile for c in cases] == ["clean", "thick_slices", "clean", "thick_slices", "clean"]
    for i, case in enumerate(cases):
        image, label = volumes.read_volume(case.image), volumes.read_volume(case.label, kind="label")
        volumes.check_same_geometry(image, label)
        expected_image, expected_label, _ = synthetic.make_case((2, i), case.profile, (16, 20, 16))
        np.testing.assert_array_equal(image.array, expected_image)
        np.testing.assert_array_equal(label.array, expected_label)
    again = synthetic.make_dataset(tmp_path / "again", 5, profiles=("clean", "thick_slices"), seed=2,
                                   shape=(16, 20, 16))
    np.testing.assert_array_equal(volumes.read_volume(again / "imagesTr" / "synth_004.nii.gz").array,
                                  volumes.read_volume(folder / "imagesTr" / "synth_004.nii.gz").array)


def test_make_dataset_without_labels(tmp_path):
    folder = synthetic.make_dataset(tmp_path / "u", 2, seed=0, with_labels=False, shape=(12, 12, 12))
    cases, problems = load_dataset(folder)
    assert problems == [] and [c.label for c in cases] == [None, None]
    assert not (folder / "labelsTr").exists()
