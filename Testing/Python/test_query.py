"""Acquisition strategies (ASSFTLib.query): pure array functions, hand-computable cases."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from hypothesis.extra import numpy as hnp

from ASSFTLib import query
from ASSFTLib.errors import ASSFTError
from ASSFTLib.settings import Settings


def _entropy2(p: float) -> float:
    """Normalised binary entropy."""
    return float(-(p * np.log(p) + (1 - p) * np.log(1 - p)) / np.log(2))


def _roi(s: Settings) -> tuple:
    """The foreground-ROI parameters of ``s``, as scoring passes them."""
    return s.fg_threshold, s.roi_dilation, s.roi_min_fraction, s.roi_fallback_fraction


def _two_class(fg: np.ndarray) -> np.ndarray:
    """(2, X, Y, Z) probabilities from a foreground-probability map."""
    return np.stack([1.0 - fg, fg]).astype(np.float32)


# ----------------------------------------------------------------------------
# rank_normalize
@given(hnp.arrays(np.float64, st.integers(2, 40), elements=st.floats(-1e6, 1e6)))
def test_rank_normalize_is_a_monotone_map_onto_unit_interval(values):
    r = query.rank_normalize(values)
    assert r.shape == values.shape
    assert np.all((r >= 0) & (r <= 1))
    i, j = np.meshgrid(np.arange(len(values)), np.arange(len(values)))
    assert np.all(r[i][values[i] < values[j]] < r[j][values[i] < values[j]])
    assert np.all(r[i][values[i] == values[j]] == r[j][values[i] == values[j]])
    if np.sum(values == values.min()) == 1:
        assert r[np.argmin(values)] == 0.0
    if np.sum(values == values.max()) == 1:
        assert r[np.argmax(values)] == 1.0


def test_rank_normalize_ties_and_degenerate_pools():
    np.testing.assert_allclose(query.rank_normalize([3.0, 1.0, 1.0, 2.0]), [1.0, 1 / 6, 1 / 6, 2 / 3])
    np.testing.assert_allclose(query.rank_normalize([7.0, 7.0, 7.0]), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(query.rank_normalize([4.0]), [0.5])
    assert query.rank_normalize([]).shape == (0,)
    with pytest.raises(ASSFTError, match="not finite"):
        query.rank_normalize([1.0, np.nan])


# ----------------------------------------------------------------------------
# knowledge divergence, distances
def test_bnstats_divergence_is_zero_when_volume_stats_equal_running_stats():
    rng = np.random.default_rng(0)
    running = [(rng.normal(size=8), rng.uniform(0.5, 2, size=8)), (rng.normal(size=16), rng.uniform(0.5, 2, size=16))]
    assert query.knowledge_divergence_bnstats(running, running) == pytest.approx(0.0, abs=1e-12)
    shifted = [(mu + 1.0, var) for mu, var in running]
    assert query.knowledge_divergence_bnstats(shifted, running) > 0


def test_symmetric_kl_matches_closed_form():
    # N(0,1) vs N(1,1): KL = 0.5 each way -> symmetric 1.0; N(0,1) vs N(0,4): 0.5*(1/4+4)-1
    assert query.symmetric_gaussian_kl(0.0, 1.0, 1.0, 1.0) == pytest.approx(1.0)
    assert query.symmetric_gaussian_kl(0.0, 1.0, 0.0, 4.0) == pytest.approx(0.5 * (0.25 + 4.0) - 1.0)
    assert query.symmetric_gaussian_kl(0.0, 4.0, 0.0, 1.0) == pytest.approx(0.5 * (0.25 + 4.0) - 1.0)


def test_diversity_is_one_without_reference_and_min_cosine_distance_otherwise():
    z = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(query.diversity(z, np.zeros((0, 2))), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(query.diversity(z, [[1.0, 0.0], [-1.0, 0.0]]),
                               [0.0, 1.0, 1.0 - 1.0 / np.sqrt(2.0)], atol=1e-12)


# ----------------------------------------------------------------------------
# ASD
def test_background_only_uncertainty_scores_low_asd_and_high_whole_volume_entropy():
    shape = (24, 24, 24)
    blob = np.zeros(shape, bool)
    blob[10:14, 10:14, 10:14] = True
    near = np.zeros(shape, bool)
    near[6:18, 6:18, 6:18] = True
    # A: confident organ, confident surroundings, uncertain far background
    fg_a = np.where(blob, 0.98, np.where(near, 0.02, 0.45))
    # B: uncertain organ, confident background everywhere
    fg_b = np.where(blob, 0.55, 0.01)
    s = Settings()
    a = query.asd_from_probs(_two_class(fg_a), *_roi(s))
    b = query.asd_from_probs(_two_class(fg_b), *_roi(s))
    assert a.asd == pytest.approx(_entropy2(0.02), rel=1e-4)
    assert a.entropy > b.entropy
    assert a.asd < b.asd
    assert not a.roi_fallback and not b.roi_fallback
    assert a.fg_fraction == pytest.approx(blob.mean())
    assert a.confidence == pytest.approx(0.98, rel=1e-5)


def test_roi_is_dilated_by_a_ball_of_r_voxels():
    fg = np.zeros((15, 15, 15))
    fg[7, 7, 7] = 0.9
    roi, fallback, _ = query.foreground_roi(_two_class(fg), *_roi(Settings(roi_dilation=2, roi_min_fraction=1e-4)))
    assert not fallback
    # voxels within Euclidean distance 2 of the centre: 33
    assert roi.sum() == 33 and roi[7, 7, 9] and not roi[7, 9, 9]


def test_empty_foreground_falls_back_to_top_fraction_by_foreground_probability():
    shape = (20, 20, 20)
    s = Settings(roi_fallback_fraction=0.005)
    k = int(np.ceil(0.005 * np.prod(shape)))  # 40 voxels
    fg = np.full(shape, 0.05)
    flat = fg.reshape(-1)
    top = np.random.default_rng(1).choice(flat.size, size=k, replace=False)
    flat[top] = 0.3  # the most foreground-like voxels, still below tau_fg
    r = query.asd_from_probs(_two_class(fg), *_roi(s))
    assert r.roi_fallback and r.roi_voxels == k and r.fg_fraction == 0.0
    assert r.asd == pytest.approx(_entropy2(0.3), rel=1e-4)


def test_asd_rejects_nan_and_bad_shapes():
    probs = _two_class(np.full((4, 4, 4), 0.5))
    probs[1, 0, 0, 0] = np.nan
    with pytest.raises(ASSFTError, match="not finite"):
        query.asd_from_probs(probs, *_roi(Settings()))
    with pytest.raises(ASSFTError, match="shape"):
        query.asd_from_probs(np.ones((2, 4, 4)), *_roi(Settings()))


def test_bald_is_zero_for_agreeing_samples_and_one_for_confident_disagreement():
    p = _two_class(np.full((3, 3, 3), 0.3))
    assert query.bald_from_samples(np.stack([p, p, p])) == pytest.approx(0.0, abs=1e-9)
    a, b = _two_class(np.zeros((3, 3, 3))), _two_class(np.ones((3, 3, 3)))
    assert query.bald_from_samples(np.stack([a, b])) == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------
# selectors
def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_cold_start_ignores_asd_and_equals_dkd():
    rng = np.random.default_rng(3)
    K, asd, z = rng.random(12), rng.random(12), _unit(rng.normal(size=(12, 5)))
    cold = query.atsq_select(K, asd, z, np.zeros((0, 5)), 4, weight=0.5, has_task_head=False)
    dkd = query.dkd_select(K, z, np.zeros((0, 5)), 4)
    assert cold.order == dkd.order
    np.testing.assert_array_equal(cold.components["ASD_hat"], 0.0)
    np.testing.assert_allclose(cold.components["base"], query.rank_normalize(K))
    # with a head the ASD changes the choice: the first pick is argmax of (K_hat + ASD_hat) / 2
    warm = query.atsq_select(K, asd, z, np.zeros((0, 5)), 4, weight=0.5)
    assert warm.picked[0] == int(np.argmax(query.rank_normalize(K) + query.rank_normalize(asd)))


def test_first_pick_is_argmax_q_and_q_is_the_product_of_utility_and_diversity():
    z = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    K = np.array([0.1, 0.4, 0.3, 0.2])
    labeled = _unit([[0, 1, 0.01]])  # L sits on case 1: Div(1) ~ 0
    sel = query.atsq_select(K, None, z, labeled, 1, has_task_head=False)
    div = query.diversity(z, labeled)
    expected_q = query.rank_normalize(K) * div
    assert sel.picked == [int(np.argmax(expected_q))] == [2]
    np.testing.assert_allclose(sel.components["div_at_pick"][2], div[2])
    q = sel.components["q"]
    assert q[1] < 1e-3 and all(q[i] > q[1] for i in (2, 3))  # the near-duplicate of L ranks low


def test_budget_larger_than_pool_empty_pool_and_single_case():
    z = _unit(np.random.default_rng(0).normal(size=(3, 4)))
    for sel in (query.atsq_select([1, 2, 3], [3, 2, 1], z, [], 10),
                query.coreset_select(z, [], 10), query.entropy_select([1, 2, 3], 10),
                query.random_select(3, 10), query.bald_select([0.1, 0.2, 0.3], 10)):
        assert sorted(sel.order) == [0, 1, 2] and sel.picked == sel.order
    for sel in (query.atsq_select([], [], np.zeros((0, 4)), [], 2), query.coreset_select(np.zeros((0, 4)), [], 2),
                query.entropy_select([], 2), query.random_select(0, 2), query.dkd_select([], [], [], 2)):
        assert sel.order == [] and sel.picked == []
    single = query.atsq_select([5.0], [0.2], z[:1], [], 2)
    assert single.order == single.picked == [0]
    with pytest.raises(ASSFTError, match="negative"):
        query.atsq_select([1.0], [1.0], z[:1], [], -1)


def test_all_equal_scores_still_give_a_full_diverse_batch():
    z = _unit(np.random.default_rng(5).normal(size=(8, 6)))
    sel = query.atsq_select(np.ones(8), np.ones(8), z, [], 3)
    assert len(set(sel.picked)) == 3 and sorted(sel.order) == list(range(8))
    # equal utilities: the greedy is farthest-point, each pick maximises its distance to the earlier ones
    for t in range(1, 3):
        d = query.diversity(z, z[sel.picked[:t]])
        d[sel.picked[:t]] = -1
        assert d[sel.picked[t]] == pytest.approx(d.max())


def test_nan_inputs_are_rejected_with_a_clear_error():
    z = np.eye(3)
    with pytest.raises(ASSFTError, match="K is not finite.*\\[1\\]"):
        query.atsq_select([0.1, np.nan, 0.3], [0.1, 0.2, 0.3], z, [], 1)
    with pytest.raises(ASSFTError, match="not finite"):
        query.coreset_select(np.array([[np.nan, 1.0, 0.0]]), [], 1)
    with pytest.raises(ASSFTError, match="pool of 3"):
        query.atsq_select([0.1, 0.2], [0.1, 0.2, 0.3], z, [], 1)


@hsettings(max_examples=60, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(2, 6), st.integers(1, 5), st.sampled_from([0.0, 1.0, 2.0]))
def test_duplicate_volumes_are_never_both_picked(seed, n_distinct, budget, gamma):
    rng = np.random.default_rng(seed)
    base = _unit(rng.normal(size=(n_distinct, 4)))
    copies = rng.integers(1, 4, size=n_distinct)
    z = np.repeat(base, copies, axis=0)
    group = np.repeat(np.arange(n_distinct), copies)
    K = rng.random(len(z))
    K[group == group[np.argmax(K)]] = K.max()  # the best case has exact duplicates with the same score
    for sel in (query.atsq_select(K, rng.random(len(z)), z, [], budget, gamma=gamma),
                query.dkd_select(K, z, [], budget, gamma=gamma), query.coreset_select(z, [], budget)):
        picked_groups = group[sel.picked]
        assert len(set(picked_groups)) == min(len(sel.picked), n_distinct)


def test_atsq_batch_covers_three_acquisition_profiles_where_entropy_does_not():
    """Profiles A (6 cases, noisiest), B, C (3 each) form three tight embedding clusters."""
    rng = np.random.default_rng(7)
    centres = _unit(np.eye(3) + 0.1)
    profile = np.array([0] * 6 + [1] * 3 + [2] * 3)
    z = _unit(centres[profile] + 0.02 * rng.normal(size=(12, 3)))
    entropy = np.where(profile == 0, 0.8, 0.3) + 0.01 * rng.random(12)   # A is noisy everywhere
    asd = np.where(profile == 0, 0.6, 0.4) + 0.05 * rng.random(12)        # foreground difficulty differs less
    K = np.where(profile == 0, 3.0, np.where(profile == 1, 2.0, 1.5)) + 0.1 * rng.random(12)
    top_entropy = query.entropy_select(entropy, 3).picked
    atsq = query.atsq_select(K, asd, z, np.zeros((0, 3)), 3)
    assert set(profile[top_entropy]) == {0}
    assert set(profile[atsq.picked]) == {0, 1, 2}
    assert atsq.picked[0] == int(np.argmax(atsq.components["base"]))


def test_coreset_picks_the_case_farthest_from_labeled_centres():
    z = _unit([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1], [0, 1, 0]])
    sel = query.coreset_select(z, _unit([[1, 0, 0.0], [0, 0.05, 1]]), 2)
    assert sel.picked == [3, 1]
    # empty L: the first centre is the 1-center of the pool
    sel = query.coreset_select(z, [], 1)
    assert sel.picked == [int(np.argmin(query.cosine_distance(z, z).max(axis=1)))]


def test_random_select_is_a_seeded_permutation():
    a, b, c = query.random_select(20, 5, seed=1), query.random_select(20, 5, seed=1), query.random_select(20, 5, seed=2)
    assert a.order == b.order and a.order != c.order and sorted(a.order) == list(range(20))
    assert a.picked == a.order[:5]


def _blobs(sizes, spread=0.05, seed=0):
    """Unit embeddings in tight blobs around orthogonal directions, with one far outlier per blob."""
    rng = np.random.default_rng(seed)
    rows, blob = [], []
    for b, size in enumerate(sizes):
        centre = np.zeros(len(sizes) + 1)
        centre[b] = 1.0
        for _ in range(size):
            rows.append(centre + spread * rng.standard_normal(centre.size))
            blob.append(b)
    return _unit(np.array(rows)), np.array(blob)


def test_typicality_is_high_in_dense_regions_and_low_for_outliers():
    z, _ = _blobs([12])
    outlier = _unit([[0.3, 1.0]])
    t = query.typicality(np.concatenate([z, outlier]), neighbours=5)
    assert t[-1] < t[:-1].min()


def test_typical_select_takes_the_most_typical_case_of_each_uncovered_cluster():
    z, blob = _blobs([20, 12, 6])
    sel = query.typical_select(z, np.zeros((0, z.shape[1])), 3, seed=0, neighbours=5)
    assert sorted(blob[sel.picked].tolist()) == [0, 1, 2], "one pick per cluster"
    assert blob[sel.picked[0]] == 0, "the largest cluster first"
    typ = query.typicality(z, 5)
    for i in sel.picked:   # within its cluster, the pick is the most typical case
        assert typ[i] == pytest.approx(typ[blob == blob[i]].max())
    assert sorted(sel.order) == list(range(len(z)))
    # a labeled case covers its cluster: the next picks come from the others
    labeled = z[blob == 0][:1]
    sel = query.typical_select(z, labeled, 2, seed=0, neighbours=5)
    assert sorted(blob[sel.picked].tolist()) == [1, 2]
    # deterministic for a seed
    assert query.typical_select(z, [], 3, seed=3).order == query.typical_select(z, [], 3, seed=3).order


def test_rank_scaled_diversity_lets_the_base_score_count_as_much_as_distance():
    # three candidates: a high base close to L, a low base far from L, a middle one
    labeled = _unit([[1.0, 0.0, 0.0]])
    z = _unit([[1.0, 0.12, 0.0], [0.0, 1.0, 0.0], [1.0, 0.5, 0.0]])
    base = np.array([1.0, 0.2, 0.9])
    raw = query.greedy_diversified(base, z, labeled, 1)
    ranked = query.greedy_diversified(base, z, labeled, 1, diversity_scale="rank")
    div = query.diversity(z, labeled)
    # with raw distances the far case wins although its base is lowest ...
    assert raw.picked == [int(np.argmax(base * div))] == [1]
    # ... rank-scaled, distance ranks (0, 1, 0.5) weigh the same as the base: the middle case wins
    assert ranked.picked == [2]
    # with L ∪ S empty diversity is constant and both scales pick the highest base
    empty = np.zeros((0, 3))
    assert query.greedy_diversified(base, z, empty, 1, diversity_scale="rank").picked == [0]
    assert query.atsq_select([3, 1, 2], None, z, labeled, 2, has_task_head=False, diversity_scale="rank").picked \
        == query.dkd_select([3, 1, 2], z, labeled, 2, diversity_scale="rank").picked


def test_cluster_coverage_takes_an_informative_typical_case_of_each_uncovered_cluster_not_the_outlier():
    z, blob = _blobs([20, 12, 6])
    outlier = _unit([[0.2, 0.2, 0.2, 1.0]])              # far from every blob
    z = np.concatenate([z, outlier])
    blob = np.append(blob, -1)
    rng = np.random.default_rng(1)
    base = 0.5 * rng.random(len(z))
    base[-1] = 1.0                                        # the outlier has the highest utility
    labeled = z[blob == 0][:1]                            # the largest blob is covered
    distance = query.greedy_diversified(base, z, labeled, 2)
    assert distance.picked[0] == len(z) - 1, "base · Div takes the outlier first"
    sel = query.clustered_select(base, z, labeled, 2, seed=0)
    picked_blobs = blob[sel.picked].tolist()
    assert -1 not in picked_blobs and sorted(picked_blobs) == [1, 2], "one pick in each uncovered blob"
    q = sel.components["q"]
    np.testing.assert_allclose(q, base * query.rank_normalize(query.typicality(z)))
    assert q[-1] == 0.0, "the outlier is the least typical case"
    for i in sel.picked:                                  # within its blob, the highest base · typicality rank
        assert q[i] == q[blob == blob[i]].max()
    assert sorted(sel.order) == list(range(len(z)))
    rest = sel.order[2:]
    assert all(q[a] >= q[b] for a, b in zip(rest, rest[1:])), "the rest by base · typicality rank"
    # ATSQ with diversity_scale clusters is this selection on its utility, seeded
    K, asd = rng.random(len(z)), rng.random(len(z))
    atsq = query.atsq_select(K, asd, z, labeled, 2, diversity_scale="clusters", seed=4)
    assert atsq.picked == query.clustered_select(atsq.components["base"], z, labeled, 2, seed=4).picked
    assert atsq.order == query.atsq_select(K, asd, z, labeled, 2, diversity_scale="clusters", seed=4).order
