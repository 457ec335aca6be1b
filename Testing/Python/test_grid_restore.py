"""Scoring never restores a full-grid probability map; predictions are restored slab by slab.

- On a volume the network sees on its own grid (hippocampus, every benchmark) the
  scores are *identical* to the previous pipeline: the whole normalised image, a whole
  count map per pass, the whole map reduced (``_previous_scores`` below, that code in
  substance).
- On a resampled volume the test-time mean is restored to the image's grid slab by slab
  inside the reduction (``preprocess.RestoredView``); the numbers match the previous
  full-grid computation (whole-volume ``F.interpolate`` both ways) within float32
  rounding of the interpolation: 1e-5 relative on ASD, confidence and entropy.
"""
from __future__ import annotations

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")
import torch.nn.functional as F

from ASSFTLib import inference, models, preprocess, query, reductions, scoring, stitching, synthetic, volumes
from ASSFTLib.dataset import load_dataset
from ASSFTLib.settings import Settings
from ASSFTLib.volumes import Volume

RESAMPLE = {"normalize": "ct_zscore", "clip": [-200.0, 300.0], "mean": 50.0, "std": 100.0,
            "target_spacing": [1.5, 1.5, 2.0]}


def _net(prep=None, classes=3, patch=(16, 16, 16), seed=0):
    torch.manual_seed(seed)
    spec = models.default_spec(["background"] + [f"c{i}" for i in range(1, classes)], patch_size=patch)
    spec = spec.replace(kwargs={**spec.kwargs, "channels": [4, 8, 16], "strides": [2, 2]})
    if prep is not None:
        spec = spec.replace(preprocessing=prep)
    return models.LoadedModel(models.build_network(spec).eval(), spec, models.LoadReport([], [], [], []), "x", None,
                              "assft")


def _previous_flip_mean(image, window, overlap, batch, predictor, flips):
    """stitching.flip_mean before this change: a whole (X, Y, Z) count map per pass."""
    vol, shape = image[0], tuple(image.shape[2:])
    weight = stitching.importance(window, image.device)
    mean, count = None, torch.zeros(shape)
    for flip in flips:
        dims = [k + 2 for k in flip]
        starts = stitching.window_starts(shape, window, overlap, flip)
        count.zero_()
        for a in starts:
            img, win = stitching._clip(a, window, shape)
            count[img] += weight[win]
        for i in range(0, len(starts), batch):
            group = starts[i:i + batch]
            x = torch.stack([stitching._crop(vol, a, window) for a in group])
            p = predictor(torch.flip(x, dims) if dims else x).float()
            p = torch.flip(p, dims) if dims else p
            mean = torch.zeros((p.shape[1], *shape)) if mean is None else mean
            for a, pw in zip(group, p):
                img, win = stitching._clip(a, window, shape)
                mean[(slice(None),) + img] += pw[(slice(None),) + win] * (weight[win] / count[img])
    return mean / len(flips) if len(flips) > 1 else mean


def _previous_probs(loaded, volume, settings, full_patch=False):
    """The previous forward_volume's map: whole prepared image (whole-volume F.interpolate), whole restore."""
    prep = preprocess.validate_preprocessing(loaded.spec.preprocessing)
    image = preprocess._normalize(torch.from_numpy(np.array(volume.array, np.float32))[None], prep)[None]
    original = tuple(volume.shape)
    target = preprocess.target_shape(volume, prep)
    if target != original:
        image = F.interpolate(image, size=target, mode="trilinear", align_corners=False)
    window = tuple(loaded.spec.patch_size) if full_patch else inference.window_size(loaded.spec, target)
    net = loaded.network.eval()
    with torch.inference_mode():
        mean = _previous_flip_mean(image, window, settings.sw_overlap, settings.sw_batch_size,
                                   lambda x: torch.softmax(net(x).float(), 1), [(), (0,), (1,), (2,)])
    if target != original:
        mean = F.interpolate(mean[None], size=original, mode="trilinear", align_corners=False)[0]
    return mean.numpy()


def _asd(probs, s):
    return reductions.asd_from_probs_streaming(probs, s.fg_threshold, s.roi_dilation, s.roi_min_fraction,
                                               s.roi_fallback_fraction)


def test_scores_on_the_own_grid_are_identical_to_the_previous_pipeline(hippo_dir):
    """A real hippocampus volume (no resampling): every number equal, not merely close."""
    case = load_dataset(hippo_dir)[0][0]
    volume = volumes.read_volume(case.image)
    model = _net(seed=2)
    settings = Settings()
    got = scoring.score_volume(model, model, volume, settings)
    ref = _asd(_previous_probs(model, volume, settings), settings)
    assert (got.asd, got.confidence, got.entropy, got.fg_fraction, got.roi_voxels, got.roi_fallback) == (
        ref.asd, ref.confidence, ref.entropy, ref.fg_fraction, ref.roi_voxels, ref.roi_fallback)
    probs = inference.predict_probs(model, volume, settings)
    np.testing.assert_array_equal(probs, _previous_probs(model, volume, settings, full_patch=True))
    label, confidence = inference.predict_label(model, volume, settings)
    np.testing.assert_array_equal(label, probs.argmax(0))
    np.testing.assert_array_equal(confidence, probs.max(0))


def _ct_volume(shape=(41, 37, 19), spacing=(0.8, 0.8, 1.0)):
    image, _, affine = synthetic.make_ct_case((3, 1), shape, spacing)
    return Volume(image, affine)


def test_scores_of_a_resampled_volume_match_the_full_grid_computation(monkeypatch):
    """A CT resampled to 1.5 x 1.5 x 2 mm, with slabs small enough that the ROI's halo crosses them;
    the whole restored map is never built while scoring (Restorer.__call__ would raise)."""
    volume = _ct_volume()
    model = _net(RESAMPLE, seed=3)
    settings = Settings(roi_dilation=2)
    ref_probs = _previous_probs(model, volume, settings)
    ref = _asd(ref_probs, settings)
    monkeypatch.setattr(reductions, "SLAB_VOXELS", 37 * 19 * 3)

    def no_full_restore(self, array):
        raise AssertionError("scoring restored the whole map")

    monkeypatch.setattr(preprocess.Restorer, "__call__", no_full_restore)
    got = scoring.score_volume(model, model, volume, settings)
    assert got.roi_fallback == ref.roi_fallback
    assert abs(got.roi_voxels - ref.roi_voxels) <= 2  # a voxel at the threshold may fall either way
    for name in ("asd", "confidence", "entropy", "fg_fraction"):
        assert getattr(got, name) == pytest.approx(getattr(ref, name), rel=1e-5), name
    monkeypatch.undo()
    probs = inference.predict_probs(model, volume, settings)
    np.testing.assert_allclose(probs, _previous_probs(model, volume, settings, full_patch=True), atol=1e-5)
    label, confidence = inference.predict_label(model, volume, settings)
    np.testing.assert_array_equal(label, probs.argmax(0))
    np.testing.assert_array_equal(confidence, probs.max(0))


@pytest.mark.parametrize("prepared, original", [((11, 13, 9), (20, 25, 17)), ((30, 20, 10), (17, 41, 10)),
                                                ((5, 6, 7), (5, 6, 7))])
def test_restore_slab_by_slab_equals_whole_volume_interpolation(monkeypatch, prepared, original):
    monkeypatch.setattr(preprocess, "SLAB_VOXELS", 2 * original[1] * original[2])  # two rows a slab
    rng = np.random.default_rng(0)
    restore = preprocess.Restorer(prepared, original)
    probs = rng.random((3, *prepared)).astype(np.float32)
    whole = F.interpolate(torch.from_numpy(probs)[None], size=original, mode="trilinear", align_corners=False)[0]
    np.testing.assert_allclose(restore(probs), whole.numpy(), atol=2e-6)
    view = restore.view(probs)
    assert view.shape == (3, *original) and view.ndim == 4
    np.testing.assert_allclose(view[:, 3:7], whole[:, 3:7].numpy(), atol=2e-6)
    np.testing.assert_allclose(view[1, 2:5], whole[1, 2:5].numpy(), atol=2e-6)
    with pytest.raises(IndexError):
        view[:, :, 2]
    label = rng.integers(0, 4, prepared).astype(np.uint8)
    nearest = F.interpolate(torch.from_numpy(label)[None, None].float(), size=original, mode="nearest-exact")
    np.testing.assert_array_equal(restore(label), nearest[0, 0].to(torch.uint8).numpy())
    assert restore(label).dtype == np.uint8


@pytest.mark.parametrize("normalize", ["zscore", "ct_zscore", "ct", "none"])
def test_resampled_image_prepared_slab_by_slab_equals_whole_volume_interpolation(monkeypatch, normalize):
    monkeypatch.setattr(preprocess, "SLAB_VOXELS", 3 * 22 * 46)
    rng = np.random.default_rng(1)
    array = rng.normal(0, 300, (40, 37, 23)).astype(np.int16)
    array[:5] = 0
    volume = Volume(array, np.diag([0.8, 0.9, 2.0, 1.0]))
    prep = {"normalize": normalize, "clip": None if normalize == "zscore" else [-200.0, 300.0], "mean": 50.0,
            "std": 100.0, "target_spacing": [1.5, 1.5, 1.0]}
    got, _ = preprocess.prepare_image(volume, prep)
    whole = preprocess._normalize(torch.from_numpy(array.astype(np.float32))[None],
                                  preprocess.validate_preprocessing(prep))[None]
    whole = F.interpolate(whole, size=got.shape[2:], mode="trilinear", align_corners=False)
    assert got.shape == (1, 1, 21, 22, 46)
    scale = float(whole.abs().max())
    torch.testing.assert_close(got, whole, atol=1e-5 * scale, rtol=0)  # float32 rounding of the weights


def test_a_volume_on_its_own_grid_is_read_window_by_window_with_the_same_numbers(hippo_dir):
    """stitching.Region (normalised per window) gives the whole prepared image's mean bit for bit."""
    volume = volumes.read_volume(load_dataset(hippo_dir)[0][1].image)
    model = _net(seed=4)
    image, _ = preprocess.prepare_image(volume, model.spec.preprocessing)
    region, restore = inference.network_input(volume, model.spec.preprocessing, "cpu")
    assert isinstance(region, stitching.Region) and restore.identity
    predictor = lambda x: torch.softmax(model.network(x), 1)  # noqa: E731
    with torch.inference_mode():
        a = stitching.flip_mean(image, (16, 16, 16), 0.25, 2, predictor, [(), (1,)])
        b = stitching.flip_mean(region, (16, 16, 16), 0.25, 2, predictor, [(), (1,)])
        c = _previous_flip_mean(image, (16, 16, 16), 0.25, 2, predictor, [(), (1,)])
    assert torch.equal(a, b) and torch.equal(a, c)
