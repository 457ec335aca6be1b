"""The scale benchmark's synthetic CT and its resumable units, at a tiny size (real files, processes, workspaces)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ASSFTLib import synthetic
from ASSFTLib.benchmark import scale

pytestmark = pytest.mark.torch  # the units score and train in subprocesses


def test_ct_case_has_hounsfield_tissues_and_organ_labels():
    image, label, affine = synthetic.make_ct_case(0, (96, 96, 40))
    assert image.dtype == np.int16 and label.dtype == np.uint8 and image.shape == label.shape == (96, 96, 40)
    assert np.allclose(np.diag(affine)[:3], (0.8, 0.8, 1.0))
    assert set(np.unique(label)) == {0, 1, 2, 3}
    medians = {k: float(np.median(image[label == k])) for k in (1, 2, 3)}
    assert abs(medians[1] - 60) < 10 and abs(medians[2] - 160) < 10 and abs(medians[3] - 50) < 10
    assert np.median(image[0]) < -950            # air outside the body
    again, _, _ = synthetic.make_ct_case(0, (96, 96, 40))
    assert np.array_equal(image, again)          # seeded


def test_scale_units_run_in_processes_resume_and_fill_the_result_fields(tmp_path):
    kwargs = dict(pools=(2,), shape=(40, 40, 24), clinical_shape=None, steps=2, score_volumes=1,
                  patch=(16, 16, 16))
    result = scale.run(tmp_path / "out", tmp_path / "work", progress=lambda _: None, **kwargs)
    saved = json.loads((tmp_path / "out" / "scale_cpu.json").read_text())
    assert saved["pool_sizes"] == [2] and saved["commit"] is not None and saved["machine"]
    for key in ("score_peak_rss_mib", "train_peak_rss_mib", "score_seconds_per_volume", "train_steps_per_second"):
        assert len(saved[key]) == 1 and all(v is not None and v > 0 for v in saved[key]), key
    assert result["units"]["train_2"]["cache_mib"] > 0
    # the training cache holds each labeled volume once, compactly
    entries = list((tmp_path / "work" / "ws_2" / "cache" / "train").glob("*/image.npy"))
    assert len(entries) == 2 and np.load(entries[0], mmap_mode="r").dtype == np.float16
    ran = []
    again = scale.run(tmp_path / "out", tmp_path / "work", progress=ran.append, **kwargs)
    assert ran == [] and again["units"] == result["units"]  # every unit finished: nothing runs again
