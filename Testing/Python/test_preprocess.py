"""Normalisation and resampling before the network, and restoring outputs to the original grid."""
from __future__ import annotations

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")

from ASSFTLib import volumes
from ASSFTLib.dataset import load_dataset
from ASSFTLib import synthetic
from ASSFTLib.errors import ASSFTError
from ASSFTLib.preprocess import default_preprocessing, prepare_image, resampled_shape, validate_preprocessing

torch.set_num_threads(1)


def _volume(array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> volumes.Volume:
    return volumes.Volume(np.asarray(array, dtype=np.float32), np.diag([*spacing, 1.0]))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_zscore_on_a_real_image_uses_nonzero_voxels(hippo_dir):
    case = load_dataset(hippo_dir)[0][0]
    volume = volumes.read_volume(case.image)
    tensor, restore = prepare_image(volume, default_preprocessing())
    assert tensor.shape == (1, 1, *volume.shape) and tensor.dtype == torch.float32
    nonzero = volume.array != 0
    values = tensor[0, 0].numpy()
    assert abs(values[nonzero].mean()) < 1e-4 and abs(values[nonzero].std() - 1) < 1e-3
    np.testing.assert_array_equal(values[~nonzero], 0)
    expected = (volume.array - volume.array[nonzero].mean()) / volume.array[nonzero].std()
    np.testing.assert_allclose(values[nonzero], expected[nonzero], atol=1e-4)
    probs = np.random.default_rng(0).random((3, *volume.shape)).astype(np.float32)
    assert restore(probs) is probs  # nothing to undo without resampling


@pytest.mark.parametrize("value", [0.0, 7.5])
def test_zscore_is_robust_to_a_constant_image(value):
    tensor, _ = prepare_image(_volume(np.full((6, 7, 8), value)), {"normalize": "zscore"})
    assert torch.isfinite(tensor).all() and tensor.abs().max() == 0


def test_ct_clips_then_scales_to_unit_range():
    hu = np.linspace(-2000, 3000, 6 * 7 * 8).reshape(6, 7, 8)
    tensor, _ = prepare_image(_volume(hu), {"normalize": "ct", "clip": [-1000, 1000], "target_spacing": None})
    expected = (np.clip(hu, -1000, 1000) + 1000) / 2000
    np.testing.assert_allclose(tensor[0, 0].numpy(), expected, atol=1e-6)


def test_none_keeps_intensities_and_applies_the_clip():
    array = np.random.default_rng(1).normal(100, 50, (5, 6, 7))
    tensor, _ = prepare_image(_volume(array), {"normalize": "none", "clip": [50, 150]})
    np.testing.assert_allclose(tensor[0, 0].numpy(), np.clip(array, 50, 150).astype(np.float32))


def test_resampling_to_target_spacing_and_back():
    image, label, _ = synthetic.make_case(5, shape=(24, 32, 24))
    # pretend the case was acquired with 2 mm slices along Z and resample to 1 mm
    volume = _volume(image, spacing=(1.0, 1.0, 2.0))
    prep = {"normalize": "zscore", "clip": None, "target_spacing": [1.0, 1.0, 1.0]}
    tensor, restore = prepare_image(volume, prep)
    assert tensor.shape == (1, 1, 24, 32, 48)
    assert resampled_shape((24, 32, 24), np.array([1.0, 1.0, 2.0]), [1.0, 1.0, 1.0]) == (24, 32, 48)

    # one-hot probabilities resampled like an image, then restored: the label comes back
    onehot = np.stack([(label == k).astype(np.float32) for k in range(3)])
    resampled = np.stack([prepare_image(_volume(ch, (1.0, 1.0, 2.0)), {**prep, "normalize": "none"})[0][0, 0].numpy()
                          for ch in onehot])
    probs_back = restore(resampled)
    assert probs_back.shape == (3, 24, 32, 24) and isinstance(probs_back, np.ndarray)
    np.testing.assert_allclose(probs_back.sum(0), 1.0, atol=1e-5)
    for k in (1, 2):
        assert _dice(probs_back.argmax(0) == k, label == k) > 0.9

    # an integer label on the resampled grid comes back with nearest interpolation
    coarse_label = resampled.argmax(0).astype(np.uint8)
    label_back = restore(coarse_label)
    assert label_back.dtype == np.uint8 and label_back.shape == label.shape
    assert set(np.unique(label_back)) <= {0, 1, 2}
    for k in (1, 2):
        assert _dice(label_back == k, label == k) > 0.9

    # torch in, torch out (with a channel axis)
    restored = restore(torch.from_numpy(resampled))
    assert isinstance(restored, torch.Tensor) and restored.shape == (3, 24, 32, 24)
    np.testing.assert_allclose(restored.numpy(), probs_back, atol=1e-6)


def test_restore_refuses_the_wrong_grid():
    _, restore = prepare_image(_volume(np.ones((8, 8, 4)), (1.0, 1.0, 2.0)), {"target_spacing": [1, 1, 1]})
    restore(np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="restore expects"):
        restore(np.zeros((8, 8, 4), np.uint8))


@pytest.mark.parametrize("prep, message", [
    ({"normalize": "minmax"}, "normalize='minmax'"),
    ({"normalise": "zscore"}, "unknown keys"),
    ({"normalize": "ct"}, "needs clip"),
    ({"clip": [5, 1]}, "lo < hi"),
    ({"target_spacing": [1, 0, 1]}, "three positive sizes"),
    ({"target_spacing": [1, 1]}, "three positive sizes"),
])
def test_invalid_preprocessing_is_a_clear_error(prep, message):
    with pytest.raises(ASSFTError, match="invalid preprocessing") as err:
        validate_preprocessing(prep)
    assert message in str(err.value)


def test_validate_fills_defaults():
    assert validate_preprocessing({}) == default_preprocessing()
    assert validate_preprocessing({"clip": (0, 1)})["clip"] == [0.0, 1.0]
