"""Scoring in bounded memory gives the numbers of the full-map implementation it replaced.

The reference below is the previous implementation, kept here verbatim in
substance: MONAI's ``sliding_window_inference`` on the flipped image per
test-time flip, the maps averaged, then ``query.asd_from_probs`` on the whole map.
"""
from __future__ import annotations

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")
from monai.inferers import sliding_window_inference

from ASSFTLib import inference, models, preprocess, query, reductions, scoring, stitching, synthetic
from ASSFTLib.settings import Settings
from ASSFTLib.volumes import Volume


def _net(classes=3, patch=(16, 16, 16), seed=0):
    torch.manual_seed(seed)
    spec = models.default_spec(["background"] + [f"c{i}" for i in range(1, classes)], patch_size=patch)
    spec = spec.replace(kwargs={**spec.kwargs, "channels": [4, 8, 16], "strides": [2, 2]})
    return models.LoadedModel(models.build_network(spec).eval(), spec, models.LoadReport([], [], [], []), "x", None,
                              "assft")


def _reference_probs(loaded, volume, settings, window):
    """The previous forward_volume's test-time mean: one MONAI pass per flipped image."""
    x, restore = preprocess.prepare_image(volume, loaded.spec.preprocessing)
    total = 0
    flips = [(), (2,), (3,), (4,)] if settings.tta_flips else [()]
    with torch.inference_mode():
        for dims in flips:
            p = sliding_window_inference(torch.flip(x, dims) if dims else x, window, settings.sw_batch_size,
                                         lambda t: torch.softmax(loaded.network(t).float(), 1),
                                         overlap=settings.sw_overlap, mode="gaussian")
            total = total + (torch.flip(p, dims) if dims else p)
    return np.asarray(restore((total[0] / len(flips)).numpy()), np.float32)


@pytest.mark.parametrize("shape, overlap", [((37, 29, 45), 0.25), ((23, 40, 17), 0.5), ((16, 16, 16), 0.25)])
def test_flip_mean_equals_monai_per_flipped_image(shape, overlap):
    """Uneven shapes: MONAI's window grid on a flipped image is not the mirror of the unflipped one."""
    loaded = _net()
    image, _, affine = synthetic.make_case((5, 2), "clean", shape)
    volume = Volume(image, affine)
    settings = Settings(sw_overlap=overlap, sw_batch_size=3)
    window = inference.window_size(loaded.spec, shape)
    got = inference.forward_volume(loaded, volume, settings).probs
    np.testing.assert_allclose(got, _reference_probs(loaded, volume, settings, window), atol=2e-6)


def test_window_starts_mirror_monai_grid_for_a_flip():
    starts = stitching.window_starts((37, 20, 16), (16, 16, 16), 0.25)
    flipped = stitching.window_starts((37, 20, 16), (16, 16, 16), 0.25, flip_axes=(0,))
    assert sorted({s[0] for s in starts}) == [0, 12, 21]         # MONAI: 0, 12, then clamped to 37 - 16
    assert sorted({s[0] for s in flipped}) == [0, 9, 21]         # the flipped grid, mirrored back: not the same
    padded = stitching.window_starts((10, 16, 16), (16, 16, 16), 0.25)
    assert {s[0] for s in padded} == {-3}                        # MONAI pads 3 before, 3 after


def _random_probs(rng, shape, classes, fg_scale):
    logits = rng.normal(size=(classes, *shape)).astype(np.float32)
    logits[0] += fg_scale
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


@pytest.mark.parametrize("fg_scale, dilation", [(0.0, 2), (1.5, 1), (0.5, 0), (6.0, 2)])
def test_streaming_asd_equals_the_definition(monkeypatch, fg_scale, dilation):
    """Many slabs (SLAB_VOXELS small) so the halo of the dilation is crossed; 6.0 forces the fallback ROI."""
    monkeypatch.setattr(reductions, "SLAB_VOXELS", 3 * 17 * 11)
    rng = np.random.default_rng(int(fg_scale * 10) + dilation)
    probs = _random_probs(rng, (30, 17, 11), 3, fg_scale)
    args = (0.5, dilation, 0.01, 0.005)
    ref = query.asd_from_probs(probs, *args)
    got = reductions.asd_from_probs_streaming(probs, *args)
    assert got.roi_fallback == ref.roi_fallback and got.roi_voxels == ref.roi_voxels
    assert got.fg_fraction == pytest.approx(ref.fg_fraction, abs=1e-12)
    for name in ("asd", "confidence", "entropy"):
        assert getattr(got, name) == pytest.approx(getattr(ref, name), rel=1e-5, abs=1e-7), name
    if fg_scale == 6.0:
        assert ref.roi_fallback


def test_streaming_fallback_takes_exactly_k_voxels_among_ties():
    probs = np.zeros((2, 10, 10, 10), np.float32)
    probs[0] = 1.0  # every voxel ties at foreground probability 0
    got = reductions.asd_from_probs_streaming(probs, 0.5, 2, 0.01, 0.005)
    assert got.roi_fallback and got.roi_voxels == 5  # ceil(0.005 * 1000)


def test_streaming_asd_rejects_non_finite():
    probs = np.full((2, 4, 4, 4), 0.5, np.float32)
    probs[1, 2, 2, 2] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        reductions.asd_from_probs_streaming(probs, 0.5, 1, 0.001, 0.005)


def test_scores_match_the_full_map_implementation():
    """score_volume now vs the previous pipeline (MONAI per flip + query.asd_from_probs) on one small volume."""
    model = _net(seed=1)
    image, _, affine = synthetic.make_case((7, 3), "clean", (33, 41, 27))
    volume = Volume(image, affine)
    settings = Settings()
    new = scoring.score_volume(model, model, volume, settings)
    ref_probs = _reference_probs(model, volume, settings, inference.window_size(model.spec, image.shape))
    ref = query.asd_from_probs(ref_probs, settings.fg_threshold, settings.roi_dilation, settings.roi_min_fraction,
                               settings.roi_fallback_fraction)
    assert new.roi_voxels == ref.roi_voxels and new.roi_fallback == ref.roi_fallback
    for name in ("asd", "confidence", "entropy"):
        assert getattr(new, name) == pytest.approx(getattr(ref, name), rel=1e-5), name


def test_low_precision_network_outputs_are_accumulated_in_float32():
    """What a CUDA autocast pass hands the stitcher (bfloat16 softmax) is averaged in float32 (runs on the CPU)."""
    torch.manual_seed(0)
    image = torch.randn(1, 1, 30, 22, 19)

    def predictor(x):
        p = torch.softmax(torch.cat([x, -x, 0.5 * x], dim=1), dim=1)
        return p.to(torch.bfloat16)

    full = stitching.flip_mean(image, (16, 16, 16), 0.25, 2, lambda x: predictor(x).float(), flips=[(), (0,), (2,)])
    low = stitching.flip_mean(image, (16, 16, 16), 0.25, 2, predictor, flips=[(), (0,), (2,)])
    assert low.dtype == torch.float32 and low.shape == (3, 30, 22, 19)
    torch.testing.assert_close(low, full)
    torch.testing.assert_close(low.sum(0), torch.ones(30, 22, 19), atol=1e-2, rtol=0)
