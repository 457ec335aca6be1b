"""Preprocessing as the foundation expects it: CT clip + z-score with the foundation's statistics,
MR per-volume z-score, target spacing read from a real bundle folder, and the way back to the image's grid."""
from __future__ import annotations

import json

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")

from ASSFTLib import models, synthetic
from ASSFTLib.errors import ASSFTError, CheckpointError
from ASSFTLib.inference import predict_probs
from ASSFTLib.preprocess import prepare_image, validate_preprocessing
from ASSFTLib.settings import Settings
from ASSFTLib.volumes import Volume

CT = {"normalize": "ct_zscore", "clip": [-1000.0, 1000.0], "mean": 40.0, "std": 200.0}


def test_ct_zscore_uses_the_foundations_statistics_not_the_volumes():
    hu = np.array([-2000, -1000, 0, 40, 240, 3000], np.float32).reshape(6, 1, 1)
    t, _ = prepare_image(Volume(hu, np.eye(4)), CT)
    np.testing.assert_allclose(np.asarray(t).ravel(), [-5.2, -5.2, -0.2, 0.0, 1.0, 4.8], atol=1e-6)
    # the same tissue maps to the same value whatever else the volume holds (unlike a per-volume z-score)
    t2, _ = prepare_image(Volume(np.full((6, 1, 1), 40.0, np.float32), np.eye(4)), CT)
    assert np.allclose(np.asarray(t2), 0.0)


@pytest.mark.parametrize("prep, message", [
    ({"normalize": "ct_zscore", "clip": [-1000, 1000]}, "mean and std"),
    ({"normalize": "ct_zscore", "clip": [-1000, 1000], "mean": 0, "std": 0}, "mean and std"),
    ({"normalize": "ct_zscore", "mean": 0, "std": 1}, "needs clip"),
    ({"mean": float("nan")}, "finite"),
])
def test_bad_ct_statistics_are_a_clear_error(prep, message):
    with pytest.raises(ASSFTError, match=message):
        validate_preprocessing(prep)


def _bundle(folder, transforms):
    torch.manual_seed(0)
    spec = models.default_spec(["background", "organ"], patch_size=(16, 16, 16))
    spec = spec.replace(kwargs={**spec.kwargs, "channels": [4, 8, 16], "strides": [2, 2]})
    net = models.build_network(spec)
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.kwargs.items()}
    config = {"network_def": {"_target_": "UNet", **kwargs},
              "preprocessing": {"_target_": "Compose", "transforms": transforms},
              "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16]}}
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def test_bundle_ct_preprocessing_and_spacing_are_read_and_predictions_come_back_on_the_image_grid(tmp_path):
    folder = _bundle(tmp_path / "b", [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 3.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 1000, "b_min": 0.0,
         "b_max": 1.0, "clip": True},
        {"_target_": "NormalizeIntensityd", "keys": "image", "subtrahend": 0.52, "divisor": 0.1},
    ])
    loaded = models.load_model(folder)
    prep = loaded.spec.preprocessing
    assert prep["target_spacing"] == [2.0, 2.0, 3.0]
    assert prep["normalize"] == "ct_zscore" and prep["clip"] == [-1000.0, 1000.0]
    assert (prep["mean"], prep["std"]) == (0.52, 0.1)
    image, _, _ = synthetic.make_case(0, shape=(30, 26, 20))
    volume = Volume(image * 300 - 500, np.diag([1.0, 1.0, 1.5, 1.0]))
    x, _ = prepare_image(volume, prep)
    assert tuple(x.shape[2:]) == (15, 13, 10)  # the network runs on the bundle's spacing
    probs = predict_probs(loaded, volume, Settings(tta_flips=False))
    assert probs.shape == (2, 30, 26, 20)  # ... and the radiologist sees the image's own grid
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_bundle_mr_zscore_and_no_preprocessing(tmp_path):
    mr = models.load_model(_bundle(tmp_path / "mr", [{"_target_": "NormalizeIntensityd", "keys": "image",
                                                       "nonzero": True}]))
    assert mr.spec.preprocessing["normalize"] == "zscore" and mr.spec.preprocessing["target_spacing"] is None
    with pytest.raises(CheckpointError, match=r"reproduces only \[0, 1\]"):
        models.load_model(_bundle(tmp_path / "odd", [{"_target_": "ScaleIntensityRanged", "keys": "image",
                                                       "a_min": 0, "a_max": 1, "b_min": -1, "b_max": 1}]))


@pytest.mark.parametrize("prep", [{"normalize": "zscore"}, {"normalize": "zscore", "clip": [0, 300]},
                                  {"normalize": "ct", "clip": [-200, 300]}, CT, {"normalize": "none", "clip": [0, 1]}])
def test_in_place_normalisation_gives_monais_numbers(prep):
    """prepare_image normalises in place (one copy of the volume); MONAI's transforms are the reference."""
    from monai.transforms import NormalizeIntensity, ScaleIntensityRange
    rng = np.random.default_rng(3)
    hu = rng.normal(0, 400, size=(40, 30, 20)).astype(np.float32)
    hu[:5] = 0  # zero voxels (outside an MR crop) stay 0 under zscore
    volume = Volume(hu.copy(), np.eye(4))
    got, _ = prepare_image(volume, prep)
    np.testing.assert_array_equal(volume.array, hu)  # the caller's array is untouched
    full = validate_preprocessing(prep)
    x = torch.from_numpy(hu.copy())[None]
    if full["normalize"] == "ct":
        ref = ScaleIntensityRange(*full["clip"], 0.0, 1.0, clip=True)(x)
    else:
        x = x.clamp(*full["clip"]) if full["clip"] else x
        ref = (NormalizeIntensity(nonzero=True)(x) if full["normalize"] == "zscore" else
               NormalizeIntensity(subtrahend=full["mean"], divisor=full["std"])(x)
               if full["normalize"] == "ct_zscore" else x)
    np.testing.assert_allclose(np.asarray(got)[0], np.asarray(ref), atol=2e-5, rtol=1e-5)
