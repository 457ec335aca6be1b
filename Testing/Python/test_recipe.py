"""The default training recipe's parts: automatic round length, foreground-oversampled patches, poly decay."""
from __future__ import annotations

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")

from ASSFTLib.errors import ASSFTError
from ASSFTLib.settings import Settings
from ASSFTLib.training.data import PatchSampler, TrainCase
from ASSFTLib.training.loop import StepJob, lr_schedule, run_steps


def test_round_steps_grow_with_the_labels_within_bounds():
    s = Settings(steps=0, steps_per_label=40, min_steps=250, max_steps=2000)
    assert [s.round_steps(n) for n in (1, 2, 6, 10, 32, 60)] == [250, 250, 250, 400, 1280, 2000]
    assert Settings(steps=77).round_steps(32) == 77  # an explicit count wins
    with pytest.raises(ASSFTError, match="max_steps"):
        Settings(min_steps=300, max_steps=200)


def _case(shape=(20, 30, 24), fg_box=((2, 4), (3, 5), (20, 22))) -> TrainCase:
    image = torch.randn(1, *shape)
    label = torch.zeros(1, *shape, dtype=torch.int64)
    label[0, fg_box[0][0]:fg_box[0][1], fg_box[1][0]:fg_box[1][1], fg_box[2][0]:fg_box[2][1]] = 2
    return TrainCase("c", image, label, torch.ones_like(image))


def test_foreground_oversampling_puts_the_structure_in_every_patch():
    patch = (8, 8, 8)
    always = PatchSampler(patch, seed=0, fg_fraction=1.0)
    never = PatchSampler(patch, seed=0, fg_fraction=0.0)
    case = always.prepare(_case())
    assert case.foreground is not None and len(case.foreground) == 2 * 2 * 2
    rng = np.random.default_rng(0)
    hits = [bool((always.patch_of(case, rng)["label"] > 0).any()) for _ in range(40)]
    assert all(hits)
    plain = never.prepare(_case())
    rng = np.random.default_rng(0)
    uniform_hits = sum(bool((never.patch_of(plain, rng)["label"] > 0).any()) for _ in range(200))
    # a uniform 8^3 patch holds this 2^3 corner structure with p = 3/13 * 5/23 * 4/17 ~ 0.012 (~2 of 200)
    assert uniform_hits < 20


def test_ignored_pseudo_label_voxels_are_not_foreground_centres():
    case = _case()
    case.weight[0, 2:4, 3:5, 20:22] = 0.0  # the whole structure is low-confidence pseudo-label
    prepared = PatchSampler((8, 8, 8), seed=0, fg_fraction=1.0).prepare(case)
    assert len(prepared.foreground) == 0


def test_patches_are_padded_seeded_and_augmented_consistently():
    small = _case(shape=(6, 30, 24))  # smaller than the patch on one axis: padded once
    a = PatchSampler((8, 16, 16), seed=3, fg_fraction=0.5, augment=True)
    b = PatchSampler((8, 16, 16), seed=3, fg_fraction=0.5, augment=True)
    ca, cb = a.prepare(small), b.prepare(small)
    assert tuple(ca.image.shape) == (1, 8, 30, 24)
    ba = a.batch([ca], 3, np.random.default_rng([1, 2]))
    bb = b.batch([cb], 3, np.random.default_rng([1, 2]))
    assert ba["image"].shape == (3, 1, 8, 16, 16) and ba["label"].dtype == torch.int64
    assert torch.equal(ba["image"], bb["image"]) and torch.equal(ba["label"], bb["label"])
    assert set(ba["label"].unique().tolist()) <= {0, 2}  # nearest-neighbour: labels stay class indices


def test_poly_schedule_decays_the_learning_rate_of_every_group():
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD([{"params": [net.weight], "lr": 1.0, "initial_lr": 1.0},
                           {"params": [net.bias], "lr": 0.1, "initial_lr": 0.1}], lr=1.0)
    seen = []

    def loss(step):
        seen.append([g["lr"] for g in opt.param_groups])
        return net(torch.ones(1, 2)).sum(), {}

    job = StepJob(net, opt, torch.amp.GradScaler("cuda", enabled=False), None, {},
                  lr_scale=lr_schedule("poly", 10))
    run_steps(job, 0, 10, "train", loss)
    assert seen[0] == [1.0, 0.1]
    assert seen[5] == pytest.approx([0.5 ** 0.9, 0.1 * 0.5 ** 0.9])
    assert all(x[0] > y[0] for x, y in zip(seen, seen[1:]))
    assert lr_schedule("constant", 10) is None
