"""The training-data cache (ASSFTLib.training.cache): real NIfTI files, real .npy entries, the real sampler."""
from __future__ import annotations

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")

from ASSFTLib.errors import LabelError
from ASSFTLib.training import cache
from ASSFTLib.training.data import PatchSampler, load_labeled_case
from ASSFTLib.volumes import write_volume

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _files(tmp_path, shape=(20, 26, 14), border=0, seed=0, name="a"):
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 20.0, size=shape).astype(np.float32)
    if border:
        image[:border] = 0
        image[:, -border:] = 0
    label = np.zeros(shape, np.uint8)
    label[8:12, 10:15, 4:9] = 1
    label[13:15, 5:8, 2:4] = 2
    write_volume(tmp_path / f"{name}_img.nii.gz", image, AFFINE)
    write_volume(tmp_path / f"{name}_lab.nii.gz", label, AFFINE)
    return tmp_path / f"{name}_img.nii.gz", tmp_path / f"{name}_lab.nii.gz"


PREP = {"normalize": "zscore"}


def test_cached_patches_are_the_in_memory_patches(tmp_path):
    """Same seed, same patches: the sampler on a cache entry matches the sampler on the loaded case
    (no border to crop; float16 storage of the normalised image is the only difference)."""
    img, lab = _files(tmp_path)
    entry = cache.cached_labeled_case(tmp_path / "cache", "a", img, lab, PREP, 3)
    memory = load_labeled_case("a", img, lab, PREP, 3)
    assert entry.shape == tuple(memory.image.shape[1:]) and entry.n_foreground == int((memory.label > 0).sum())
    for patch in [(8, 8, 8), (24, 16, 16)]:  # the second is larger than the volume on one axis: padded
        sampler_a = PatchSampler(patch, seed=1, fg_fraction=0.5, augment=True)
        sampler_b = PatchSampler(patch, seed=1, fg_fraction=0.5, augment=True)
        a = sampler_a.batch([sampler_a.prepare(entry)], 6, np.random.default_rng(4))
        b = sampler_b.batch([sampler_b.prepare(memory)], 6, np.random.default_rng(4))
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["weight"], b["weight"])
        assert torch.allclose(a["image"], b["image"], atol=4e-3)
        assert a["image"].dtype == torch.float32 and a["label"].dtype == torch.int64


def test_entry_is_compact_cropped_and_keeps_every_label(tmp_path):
    img, lab = _files(tmp_path, shape=(20, 26, 14), border=3)
    entry = cache.cached_labeled_case(tmp_path / "cache", "a", img, lab, PREP, 3)
    assert entry.shape == (17, 23, 14)  # the zero slabs before axis 0 and after axis 1 are cut
    stored = {n: np.load(entry.folder / f"{n}.npy") for n in ("image", "label", "foreground")}
    assert stored["image"].dtype == np.float16 and stored["label"].dtype == np.uint8
    assert int((stored["label"] > 0).sum()) == 4 * 5 * 5 + 2 * 3 * 2
    assert len(stored["foreground"]) == entry.n_foreground == int((stored["label"] > 0).sum())


def test_ct_body_box_cuts_the_air_but_never_a_label():
    raw = np.full((30, 30, 10), -1000.0, np.float32)
    raw[10:20, 8:22, :] = 40.0       # the body
    label = np.zeros(raw.shape, np.uint8)
    label[2, 5, 5] = 1               # a labeled voxel in the air (a mistake, but kept)
    box = cache.body_box(raw, label, {"normalize": "ct", "clip": [-1000, 1000]})
    assert box == (slice(2, 20), slice(5, 22), slice(0, 10))
    assert cache.body_box(raw, None, {"normalize": "ct"}) == (slice(10, 20), slice(8, 22), slice(0, 10))


def test_a_hit_reuses_the_entry_and_a_changed_label_makes_a_new_one(tmp_path):
    img, lab = _files(tmp_path)
    folder = tmp_path / "cache"
    first = cache.cached_labeled_case(folder, "a", img, lab, PREP, 3)
    stamp = (first.folder / "image.npy").stat().st_mtime_ns
    again = cache.cached_labeled_case(folder, "a", img, lab, PREP, 3)
    assert again.folder == first.folder and (again.folder / "image.npy").stat().st_mtime_ns == stamp
    assert cache.cached_labeled_case(folder, "a", img, lab, {"normalize": "none"}, 3).folder != first.folder
    label = np.zeros((20, 26, 14), np.uint8)
    label[1:3, 1:3, 1:3] = 1
    write_volume(lab, label, AFFINE)  # the radiologist edits the label
    edited = cache.cached_labeled_case(folder, "a", img, lab, PREP, 3)
    assert edited.folder != first.folder and edited.n_foreground == 8
    other_img, other_lab = _files(tmp_path, seed=1, name="b")
    other = cache.cached_labeled_case(folder, "b", other_img, other_lab, PREP, 3)  # held out this round: kept
    (folder / ".tmp-dead-writer").mkdir()
    assert cache.prune(folder, [edited]) == 2  # the old label's entry and the "none" variant of case a
    assert sorted(p.name for p in folder.iterdir()) == sorted([edited.folder.name, other.folder.name])


def test_a_bad_label_is_refused_and_leaves_no_entry(tmp_path):
    img, lab = _files(tmp_path)
    with pytest.raises(LabelError):
        cache.cached_labeled_case(tmp_path / "cache", "a", img, lab, PREP, 2)  # class 2 does not exist
    assert not any((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True


def test_large_foreground_is_subsampled_reproducibly(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "MAX_FOREGROUND", 50)
    img, lab = _files(tmp_path)
    a = cache.cached_labeled_case(tmp_path / "c1", "a", img, lab, PREP, 3)
    b = cache.cached_labeled_case(tmp_path / "c2", "a", img, lab, PREP, 3)
    fa, fb = np.load(a.folder / "foreground.npy"), np.load(b.folder / "foreground.npy")
    assert a.n_foreground == 50 and np.array_equal(fa, fb)
    label = np.load(a.folder / "label.npy")
    assert (label[tuple(fa.T)] > 0).all()


def test_an_incomplete_entry_is_rebuilt(tmp_path):
    img, lab = _files(tmp_path)
    entry = cache.cached_labeled_case(tmp_path / "cache", "a", img, lab, PREP, 3)
    (entry.folder / "label.npy").unlink()
    again = cache.cached_labeled_case(tmp_path / "cache", "a", img, lab, PREP, 3)
    assert again.folder == entry.folder and (again.folder / "label.npy").is_file()
