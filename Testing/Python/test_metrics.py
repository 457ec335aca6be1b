import numpy as np
import pytest

from ASSFTLib.metrics import dice_per_class, labels_to_reach, mean_dice, normalized_auc


def test_dice_hand_computed():
    truth = np.zeros((4, 4, 4), np.uint8)
    truth[:2] = 1            # 32 voxels of class 1
    truth[3, :, :2] = 2      # 8 voxels of class 2
    pred = np.zeros_like(truth)
    pred[:1] = 1             # 16 voxels, all inside class 1
    # class 2 predicted nowhere
    np.testing.assert_allclose(dice_per_class(pred, truth, 3), [2 * 16 / 48, 0.0])
    assert mean_dice(truth, truth, 3) == 1.0
    # a class absent from both counts as perfect
    assert dice_per_class(np.zeros_like(truth), np.zeros_like(truth), 2)[0] == 1.0
    with pytest.raises(ValueError):
        dice_per_class(pred[:2], truth, 3)


def test_auc_and_labels_to_reach():
    x = np.array([0, 2, 4])
    assert normalized_auc(x, np.array([0.0, 1.0, 1.0])) == pytest.approx(0.75)
    assert labels_to_reach(x, np.array([0.1, 0.5, 0.9]), 0.5) == 2.0
    assert labels_to_reach(x, np.array([0.1, 0.5, 0.9]), 0.95) is None
    with pytest.raises(ValueError):
        normalized_auc(np.array([2, 0]), np.array([1.0, 1.0]))


def test_auc_is_the_hand_computed_trapezoid_area_on_any_numpy(monkeypatch):
    """Uneven label steps, a dip: (3*1.0 + 1*1.3 + 4*1.4) / 2 = 4.95 over a span of 8.

    Without NumPy's own trapezoid functions (``np.trapezoid`` is NumPy >= 2 only, Slicer 5.8 ships
    NumPy 1.26 whose ``np.trapz`` NumPy 2 deprecates) the result is the same.
    """
    x, y = np.array([2, 5, 6, 10]), np.array([0.2, 0.8, 0.5, 0.9])
    assert normalized_auc(x, y) == pytest.approx(4.95 / 8, abs=1e-12)
    monkeypatch.delattr(np, "trapezoid", raising=False)
    monkeypatch.delattr(np, "trapz", raising=False)
    assert normalized_auc(x, y) == pytest.approx(4.95 / 8, abs=1e-12)
    assert normalized_auc(np.array([3]), np.array([0.4])) == 0.4
    assert normalized_auc(np.array([0, 1]), np.array([1.0, 0.0])) == pytest.approx(0.5)


def test_paired_bootstrap_mean_interval_and_pairing():
    from ASSFTLib.metrics import paired_bootstrap
    a, b = np.array([0.6, 0.7, 0.5, 0.8]), np.array([0.5, 0.5, 0.5, 0.5])
    r = paired_bootstrap(a, b, n_boot=4000, seed=1)
    assert r["n"] == 4 and r["differences"] == pytest.approx([0.1, 0.2, 0.0, 0.3])
    assert r["mean"] == pytest.approx(0.15)
    assert 0.0 <= r["lo"] < 0.15 < r["hi"] <= 0.3  # resampled means lie between the extreme differences
    # pairing matters: the same values shuffled against each other give other differences
    assert paired_bootstrap(a, b[::-1] + np.array([0, 0.1, 0.2, 0.3]))["mean"] != pytest.approx(r["mean"])
    two = paired_bootstrap([0.3, 0.5], [0.2, 0.2])
    assert (two["lo"], two["hi"]) == pytest.approx((0.1, 0.3))  # two pairs: the interval spans both differences
    one = paired_bootstrap([0.7], [0.65])  # one seed (the quick profile): the difference itself
    assert (one["mean"], one["lo"], one["hi"], one["n"]) == pytest.approx((0.05, 0.05, 0.05, 1))
    with pytest.raises(ValueError):
        paired_bootstrap([], [])
