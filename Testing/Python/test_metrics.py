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
