"""SSFT selection on constructed arrays: confidence, semantic distance, cap, QA, ramp."""
from __future__ import annotations

import numpy as np
import pytest

from ASSFTLib import query
from ASSFTLib.errors import ArrayError, ASSFTError
from ASSFTLib.query import diversity
from ASSFTLib.settings import Settings
from ASSFTLib.ssft import cosine_distance, distance_bound, pseudo_target, pseudo_weight, select_pseudo


def _rule(s: Settings) -> dict:
    """SSFT's admission thresholds of ``s``, as the trainer passes them."""
    return {"tau_c": s.confidence_threshold, "distance_percentile": s.distance_percentile, "rho": s.pseudo_ratio}


def _cluster(rng: np.random.Generator, direction: np.ndarray, n: int, spread: float) -> np.ndarray:
    """n unit embeddings scattered around ``direction``."""
    x = direction[None, :] + spread * rng.standard_normal((n, direction.size))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def site():
    """Labeled volumes from one acquisition profile, candidates from it and from another."""
    rng = np.random.default_rng(0)
    dim = 16
    profile_a = np.eye(dim)[0]
    profile_b = np.eye(dim)[5]
    labeled = _cluster(rng, profile_a, 4, 0.15)
    near = _cluster(rng, profile_a, 1, 0.02)       # sits inside the labeled cluster
    unlike = _cluster(rng, profile_b, 1, 0.02)     # another scanner: far from every labeled volume
    near_unsure = _cluster(rng, profile_a, 1, 0.02)
    emb = np.concatenate([near, unlike, near_unsure])
    return ["near", "unlike", "near_unsure"], emb, labeled


def test_admits_confident_near_volume_and_refuses_unlike_profile(site):
    ids, emb, labeled = site
    sel = select_pseudo(ids, [0.97, 0.99, 0.6], emb, labeled, **_rule(Settings()))
    assert sel.selected == ["near"]
    why = {d.case_id: d for d in sel.decisions}
    assert why["near"].selected and why["near"].reason == ""
    assert "distance" in why["unlike"].reason and why["unlike"].distance > sel.tau_d
    assert "confidence" in why["near_unsure"].reason
    # the bound is what the labeled volumes show among themselves
    d = cosine_distance(labeled, labeled)
    np.fill_diagonal(d, np.inf)
    assert sel.tau_d == pytest.approx(np.percentile(d.min(axis=1), 90))


def test_cap_and_priority_order():
    rng = np.random.default_rng(1)
    labeled = _cluster(rng, np.eye(8)[0], 2, 0.2)
    cands = _cluster(rng, np.eye(8)[0], 6, 0.01)
    conf = np.array([0.91, 0.99, 0.95, 0.93, 0.97, 0.92])
    settings = Settings(pseudo_ratio=1.0)
    sel = select_pseudo([f"c{i}" for i in range(6)], conf, cands, labeled, **_rule(settings))
    assert sel.cap == 2 and len(sel.selected) == 2
    prio = conf * (1 - diversity(cands, labeled))
    expected = [f"c{i}" for i in np.argsort(-prio)[:2]]
    assert sel.selected == expected
    over = [d for d in sel.decisions if "cap" in d.reason]
    assert len(over) == 4 and not any(d.selected for d in over)


def test_rejected_and_unscored_never_selected(site):
    ids, emb, labeled = site
    emb = emb.copy()
    emb[2] = np.nan
    sel = select_pseudo(ids, [0.99, 0.99, 0.99], emb, labeled, **_rule(Settings()), rejected=["near"])
    assert sel.selected == []
    why = {d.case_id: d.reason for d in sel.decisions}
    assert why["near"] == "rejected in QA"
    assert "no confidence" in why["near_unsure"]


def test_no_labels_admits_nothing():
    emb = np.eye(4)[:2]
    sel = select_pseudo(["a", "b"], [0.99, 0.99], emb, np.zeros((0, 4)), **_rule(Settings()))
    assert sel.selected == [] and sel.cap == 0
    assert all(d.reason for d in sel.decisions)


def test_single_labeled_volume_uses_median_candidate_distance():
    labeled = np.eye(3)[:1]
    angles = np.array([0.1, 0.4, 0.8, 1.2])
    cands = np.stack([np.cos(angles), np.sin(angles), np.zeros(4)], axis=1)
    bound, rule = distance_bound(labeled, 90, diversity(cands, labeled))
    assert bound == pytest.approx(np.median(1 - np.cos(angles)))
    assert "median" in rule
    sel = select_pseudo(list("abcd"), np.full(4, 0.99), cands, labeled, **_rule(Settings(pseudo_ratio=4)))
    assert sel.selected == ["a", "b"]


def test_pseudo_target_ignores_unsure_voxels():
    probs = np.zeros((3, 2, 2, 1), dtype=np.float32)
    probs[:, 0, 0, 0] = [0.1, 0.8, 0.1]
    probs[:, 0, 1, 0] = [0.4, 0.3, 0.3]
    probs[:, 1, 0, 0] = [0.05, 0.05, 0.9]
    probs[:, 1, 1, 0] = [0.69, 0.3, 0.01]
    label, ignore = pseudo_target(probs, 0.7)
    assert label.dtype == np.uint8 and label.shape == (2, 2, 1)
    assert label[:, :, 0].tolist() == [[1, 0], [2, 0]]
    assert ignore[:, :, 0].tolist() == [[False, True], [False, True]]


def test_pseudo_weight_ramps_linearly_then_holds():
    s = Settings(pseudo_weight_max=0.5, pseudo_ramp_fraction=0.2)
    total = 100
    values = [pseudo_weight(t, total, s.pseudo_weight_max, s.pseudo_ramp_fraction) for t in range(total)]
    assert values[0] == 0.0
    assert values[10] == pytest.approx(0.25)
    assert all(v == pytest.approx(0.5) for v in values[20:])
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert pseudo_weight(0, total, s.pseudo_weight_max, 0.0) == pytest.approx(0.5)


def test_a_volume_with_no_predicted_foreground_is_never_a_pseudo_label():
    """Its c(x) comes from the fallback ROI, where the model is confidently *background*: c ~ 1, label empty.

    Found by the label-efficiency benchmark (multisite, seed 2): such volumes were admitted in
    three rounds, each with true Dice 0 (test Dice 0.08 at 8 labels against 0.28 without SSFT)."""
    labeled = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]])
    emb = np.array([[1.0, 0.0, 0.0], [0.95, 0.05, 0.0]])  # both as close to L as L is to itself
    settings = Settings()
    both = select_pseudo(["empty", "real"], [0.999, 0.95], emb, labeled, **_rule(settings))
    assert both.selected == ["empty", "real"]  # without the flag the empty one even ranks first
    sel = select_pseudo(["empty", "real"], [0.999, 0.95], emb, labeled, **_rule(settings),
                        no_foreground=[True, False])
    assert sel.selected == ["real"]
    refused = {d.case_id: d.reason for d in sel.decisions}
    assert "no predicted foreground" in refused["empty"]


def test_bad_arrays_raise_the_one_array_error_in_ssft_and_query():
    """query and ssft report a malformed array the same way: an ArrayError (an ASSFTError and a ValueError)."""
    labeled = np.eye(3)[:2]
    raised = []
    for call in (lambda: select_pseudo(["a", "b"], [0.9], np.eye(3)[:2], labeled, **_rule(Settings())),
                 lambda: select_pseudo(["a"], [0.9], np.eye(3)[:1], labeled, **_rule(Settings()),
                                       no_foreground=[True, False]),
                 lambda: pseudo_target(np.ones((2, 3, 3)), 0.5),
                 lambda: pseudo_target(np.ones((300, 1, 1, 1)), 0.5),
                 lambda: query.asd_from_probs(np.ones((2, 3, 3)), 0.5, 1, 0.001, 0.005),
                 lambda: query.entropy_select([0.1, np.nan], 1),
                 lambda: query.diversity(np.eye(3), np.eye(4))):
        with pytest.raises(ArrayError) as err:
            call()
        raised.append(err.value)
    assert all(isinstance(e, ASSFTError) and isinstance(e, ValueError) for e in raised)
    assert "1 candidates need 1 no_foreground flags, got 2" in str(raised[1])
