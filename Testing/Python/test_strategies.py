"""The strategy registry (ASSFTLib.strategies): every reader sees the same strategies."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ASSFTLib import query, scoring, strategies
from ASSFTLib.benchmark import label_efficiency as le
from ASSFTLib.benchmark.plotting import colors
from ASSFTLib.errors import ASSFTError
from ASSFTLib.settings import Settings


def _records(n: int, dim: int = 5, seed: int = 0) -> list[dict]:
    """``n`` cached score records with every measurement a strategy may read."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, dim))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return [{"K": {"bnstats": float(rng.random())}, "zt": z[i].tolist(), "z0": z[i].tolist(), "has_task_head": True,
             "asd": float(rng.random()), "entropy": float(rng.random()), "bald": float(rng.random()),
             "confidence": float(rng.random())} for i in range(n)]


@pytest.mark.parametrize("name", strategies.names())
def test_every_registered_strategy_selects_a_valid_order(name):
    records = _records(7)
    labeled = np.asarray(_records(2, seed=1)[0]["zt"])[None]
    sel = scoring.select(name, records, labeled, 3, Settings(), "bnstats")
    assert sorted(sel.order) == list(range(7)) and sel.picked == sel.order[:3]
    empty = scoring.select(name, [], np.zeros((0, 5)), 3, Settings(), None)
    assert empty.order == [] and empty.picked == []
    # the same pure selector on the same arrays gives the same ranking (one path, no special case)
    again = scoring.select(name, records, labeled, 3, Settings(), "bnstats")
    assert again.order == sel.order


@pytest.mark.parametrize("name", [n for n in strategies.names() if strategies.get(n).needs])
def test_a_missing_required_measurement_is_named(name):
    entry = strategies.get(name)
    records = _records(4)
    for r in records:
        for m in entry.needs:
            if m == "K":
                r["K"] = {}
            else:
                r[m] = None
    with pytest.raises(ASSFTError, match="needs " + strategies.MEASUREMENTS[entry.needs[0]][0]):
        scoring.select(name, records, np.zeros((0, 5)), 2, Settings(), None)


def test_registry_matches_the_selectors_it_wraps():
    records = _records(6)
    labeled = np.zeros((0, 5))
    zt = np.asarray([r["zt"] for r in records])
    K = np.asarray([r["K"]["bnstats"] for r in records])
    s = Settings(query_weight=0.3, diversity_gamma=2.0, seed=4)
    expected = {
        "atsq": query.atsq_select(K, [r["asd"] for r in records], zt, labeled, 2, 0.3, 2.0),
        "dkd": query.dkd_select(K, zt, labeled, 2, 2.0),
        "random": query.random_select(6, 2, 4),
        "bald": query.bald_select([r["bald"] for r in records], 2),
        "coreset": query.coreset_select(zt, labeled, 2),
        "typical": query.typical_select(zt, labeled, 2, 4),
    }
    for name, sel in expected.items():
        assert scoring.select(name, records, labeled, 2, s, "bnstats").order == sel.order, name


def test_every_measurement_read_is_a_case_scores_field():
    fields = {f.name for f in dataclasses.fields(scoring.CaseScores)}
    assert set(strategies.MEASUREMENTS) <= fields
    for entry in strategies.REGISTRY.values():
        assert set(entry.reads) <= set(strategies.MEASUREMENTS), entry.name


def test_one_registry_entry_reaches_settings_ranking_benchmark_and_plot(monkeypatch):
    """Adding a strategy is one entry: validation, select, the benchmark arms and the colours all see it."""
    monkeypatch.setitem(strategies.REGISTRY, "lowest_asd", strategies.Strategy(
        "lowest_asd", lambda pool, p: query.asd_select(-pool.get("asd"), p.budget), ("asd",), (),
        "lowest ASD first", "#000000", ssft_arm="lowest_asd+ssft", ssft_color="#111111"))
    records = _records(5)
    sel = scoring.select(Settings(strategy="lowest_asd").strategy, records, np.zeros((0, 5)), 2, Settings(), None)
    assert sel.order == np.argsort([r["asd"] for r in records], kind="stable").tolist()
    arms = le.arms()
    assert arms["lowest_asd"].query == "lowest_asd" and arms["lowest_asd+ssft"].ssft
    assert colors()["lowest_asd"] == "#000000" and colors()["lowest_asd+ssft"] == "#111111"
    monkeypatch.delitem(strategies.REGISTRY, "lowest_asd")
    with pytest.raises(ASSFTError, match="strategy"):
        Settings(strategy="lowest_asd")


def test_benchmark_arms_are_the_registry_plus_ssft_variants():
    # plus one ablation arm that no profile runs by default: ASSFT with a random query
    assert list(le.STRATEGIES) == ["random", "entropy", "bald", "coreset", "typical", "dkd", "asd", "atsq",
                                   "random+ssft", "assft", "assft-random-query"]
    assert le.STRATEGIES["assft"] == le.Strategy("assft", "atsq", True, "typical")
    assert {a.cold_start for a in le.STRATEGIES.values()} <= set(strategies.names())
    with pytest.raises(ValueError, match="unknown measurements"):
        strategies.register(strategies.Strategy("x", lambda pool, p: None, ("dice",), (), "", ""))


def test_atsq_cold_start_is_typical_by_default_and_dkd_on_request():
    """Without a task head ATSQ picks typical volumes (the validation-split choice); cold_start=dkd is SPEC's rule."""
    records = [dict(r, has_task_head=False, asd=None) for r in _records(12)]
    zt = np.asarray([r["zt"] for r in records])
    K = np.asarray([r["K"]["bnstats"] for r in records])
    none = np.zeros((0, 5))
    s = Settings(seed=3)
    assert scoring.select("atsq", records, none, 2, s, "bnstats").order == \
        query.typical_select(zt, none, 2, 3).order
    assert scoring.select("atsq", records, none, 2, s.replace(cold_start="dkd"), "bnstats").order == \
        query.dkd_select(K, zt, none, 2).order
    # with a head, the setting changes nothing
    headed = _records(12)
    assert scoring.select("atsq", headed, none, 2, s, "bnstats").order == \
        scoring.select("atsq", headed, none, 2, s.replace(cold_start="dkd"), "bnstats").order
    with pytest.raises(ASSFTError, match="cold_start"):
        Settings(cold_start="sideways")
