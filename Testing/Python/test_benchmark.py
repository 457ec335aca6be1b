"""Benchmarks: the split rule, the summary arithmetic, and both commands end to end.

The end-to-end tests run the real pipeline (workspace, scoring, ranking,
fine-tuning, evaluation) on tiny budgets and check that every number is
well-formed; they assert no particular Dice and no timing.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from collections import Counter

import numpy as np
import pytest

from ASSFTLib.benchmark import label_efficiency as le
from ASSFTLib.errors import DatasetError

IDS = [f"hippocampus_{i:03d}" for i in range(260)]


def test_split_sizes_disjoint_and_fixed():
    split = le.make_split(IDS[:220])
    assert (len(split.source), len(split.pool), len(split.test)) == (60, 120, 40)
    assert len(set(split.source) | set(split.pool) | set(split.test)) == 220
    assert set(split.scanner) == set(split.pool) | set(split.test)
    again = le.make_split(list(reversed(IDS[:220])))
    assert again == split, "the split must depend on the case ids only, not their order"
    assert le.make_split(IDS[:220], seed=le.SPLIT_SEED + 1).pool != split.pool


def test_scanner_shares_are_exact_in_pool_and_test():
    split = le.make_split(IDS[:220])
    pool = Counter(split.scanner[c] for c in split.pool)
    test = Counter(split.scanner[c] for c in split.test)
    assert [pool[n] for n, _, _ in le.SCANNERS] == [72, 36, 12]
    assert [test[n] for n, _, _ in le.SCANNERS] == [24, 12, 4]


def test_assign_scanners_largest_remainder():
    counts = Counter(le.assign_scanners([str(i) for i in range(7)], np.random.default_rng(0)).values())
    assert sum(counts.values()) == 7
    assert counts["scanner_A"] == 4 and counts["scanner_B"] == 2 and counts["scanner_C"] == 1


def test_subset_split_is_a_prefix_of_the_full_one():
    full = le.make_split(IDS[:220])
    small = le.make_split(IDS[:220], {"source": 3, "pool": 5, "test": 2})
    assert small.pool == full.pool[:5] and small.test == full.test[:2] and small.source == full.source[:3]


def test_split_refuses_too_few_cases():
    with pytest.raises(DatasetError, match="220"):
        le.make_split(IDS[:100])


def _unit(setting, seed, dices, upper):
    rounds = [{"labels": 2 * (i + 1), "dice": d, "dice_per_scanner": {"scanner_A": d, "scanner_B": d / 2}}
              for i, d in enumerate(dices)]
    return {"setting": setting, "seed": seed, "upper_bound": {"dice": upper, "labels": 120},
            "strategies": {"random": {"rounds": rounds}}}


def test_summary_means_spread_auc_and_labels_to_target():
    units = [_unit("plain", 0, [0.2, 0.5, 0.8], 0.8), _unit("plain", 1, [0.4, 0.7, 0.7], 0.8)]
    s = le.summarize(units)["plain"]["strategies"]["random"]
    assert s["labels"] == [2, 4, 6]
    assert s["dice_mean"] == pytest.approx([0.3, 0.6, 0.75])
    assert s["dice_sd"] == pytest.approx([0.1, 0.1, 0.05])
    # trapezoid / span: seed 0 (0.35 + 0.65) / 2 = 0.5, seed 1 (0.55 + 0.7) / 2 = 0.625
    assert s["nauc"]["mean"] == pytest.approx(0.5625)
    # 95 % of 0.8 = 0.76: seed 0 reaches it at 6 labels, seed 1 never
    assert s["labels_to_95"]["per_seed"] == [6.0, None] and s["labels_to_95"]["reached"] == 1
    assert s["dice_per_scanner"]["scanner_B"]["mean"] == pytest.approx([0.15, 0.3, 0.375])
    table = le.format_table(le.summarize(units))
    assert "hippo-plain" in table and "random" in table and "6 (1/2)" in table
    assert s["nauc_vs_random"] is None  # random is the reference
    # a seed whose upper bound has not run yet counts neither way: out of the seeds that have one
    units.append(dict(_unit("plain", 2, [0.8, 0.8, 0.8], 0.8), upper_bound=None))
    s = le.summarize(units)["plain"]["strategies"]["random"]
    table = le.format_table(le.summarize(units))
    assert s["labels_to_95"]["of"] == 2 and s["n_seeds"] == 3 and "6 (1/2)" in table and "in 2 of the 3 seeds" in table
    assert re.search(r"random\s+3\s+0\.", table), "each arm's row says how many seeds it ran"


def test_table_prints_a_half_label_mean_as_it_is_not_rounded_to_a_count():
    # each seed reaches 95 % of its upper bound (0.8) at the label count given: 6, 8, 8, 8 average 7.5 and
    # 2, 2, 2, 4 average 2.5, which Python's round printed as "8" and "2"
    def unit(seed, reach_at):
        dices = [0.9 if 2 * (i + 1) >= reach_at else 0.5 for i in range(5)]
        return _unit("plain", seed, dices, 0.8)
    table = le.format_table(le.summarize([unit(s, r) for s, r in enumerate([6, 8, 8, 8])]))
    assert "7.5 (4/4)" in table
    table = le.format_table(le.summarize([unit(s, r) for s, r in enumerate([2, 2, 2, 4])]))
    assert "2.5 (4/4)" in table
    table = le.format_table(le.summarize([unit(s, r) for s, r in enumerate([6, 8])]))
    assert "7 (2/2)" in table and "7.0 (2/2)" not in table


def test_summary_pairs_each_arm_with_random_by_seed():
    units = [_unit("plain", 0, [0.2, 0.5, 0.8], 0.8), _unit("plain", 1, [0.4, 0.7, 0.7], 0.8)]
    better = {0: [0.3, 0.6, 0.8], 1: [0.4, 0.8, 0.8]}  # nAUC 0.575 and 0.7 vs random's 0.5 and 0.625
    for u in units:
        u["strategies"]["assft"] = {"rounds": [dict(r, dice=d) for r, d in
                                               zip(u["strategies"]["random"]["rounds"], better[u["seed"]])]}
    s = le.summarize(units)["plain"]["strategies"]["assft"]
    assert s["nauc_vs_random"]["differences"] == pytest.approx([0.075, 0.075])
    assert s["nauc_vs_random"]["mean"] == pytest.approx(0.075)
    assert "+0.075 [+0.075, +0.075]" in le.format_table(le.summarize(units))


def _check_round(r, n_scanners, test_ids=None, scanner=None):
    assert 0.0 <= r["dice"] <= 1.0
    assert len(r["dice_per_class"]) == len(le.EVAL_CLASSES)
    assert all(0.0 <= v <= 1.0 for v in r["dice_per_class"])
    assert 1 <= len(r["dice_per_scanner"]) <= n_scanners
    assert all(0.0 <= v <= 1.0 for v in r["dice_per_scanner"].values())
    if test_ids is None:
        return
    # every aggregate is recomputed here from the raw per-case, per-class Dice
    per_case = r["per_case"]
    assert sorted(per_case) == sorted(test_ids)
    rows = np.array([per_case[c] for c in test_ids])
    assert rows.shape == (len(test_ids), len(le.EVAL_CLASSES))
    assert r["dice"] == pytest.approx(rows.mean())
    assert r["dice_per_class"] == pytest.approx(rows.mean(axis=0).tolist())
    by_scanner = {}
    for c in test_ids:
        by_scanner.setdefault(scanner[c], []).append(np.mean(per_case[c]))
    assert r["dice_per_scanner"] == pytest.approx({k: float(np.mean(v)) for k, v in by_scanner.items()})


@pytest.mark.torch
def test_label_efficiency_quick_end_to_end(hippo_dir, tmp_path):
    profile = dataclasses.replace(le.PROFILES["quick"], pretrain_steps=2, cold_steps=2, round_steps=2)
    result = le.run(hippo_dir, tmp_path, profile, ("multisite",), progress=lambda _: None)
    assert (tmp_path / "label_efficiency_quick.png").stat().st_size > 0
    on_disk = json.loads((tmp_path / "label_efficiency_quick.json").read_text())
    assert on_disk["summary"] == json.loads(json.dumps(result["summary"]))
    for key in ("machine", "command", "date", "commit", "split", "protocol", "profile"):
        assert key in on_disk
    assert len(on_disk["split"]["pool"]) == profile.sizes["pool"]

    # the shifted images live in the cache with the original geometry
    from ASSFTLib.volumes import read_volume
    case = on_disk["split"]["pool"][0]
    shifted = read_volume(tmp_path / "cache" / "multisite" / "pool" / "imagesTr" / f"{case}.nii.gz")
    original = read_volume(hippo_dir / "imagesTr" / f"{case}.nii.gz")
    assert np.allclose(shifted.affine, original.affine, atol=1e-4) and shifted.shape == original.shape
    assert not np.allclose(shifted.array, original.array)

    (unit,) = result["units"]
    assert set(unit["strategies"]) == set(profile.strategies)
    labels_expected = [profile.budget * (r + 1) for r in range(profile.rounds + 1)]
    picked_by = {}
    for name, s in unit["strategies"].items():
        assert [r["labels"] for r in s["rounds"]] == labels_expected
        for r in s["rounds"]:
            _check_round(r, len(le.SCANNERS), on_disk["split"]["test"], on_disk["split"]["scanner"])
            assert len(r["picked"]) == profile.budget
        all_picked = [c for r in s["rounds"] for c in r["picked"]]
        assert len(set(all_picked)) == len(all_picked), "a volume was labeled twice"
        assert set(all_picked) <= set(on_disk["split"]["pool"])
        picked_by[name] = all_picked
        if le.STRATEGIES[name].ssft:
            for r in s["rounds"][1:]:
                p = r["pseudo"]
                assert 0 <= p["admitted"] <= 2 * (r["labels"] - profile.budget)
                assert len(p["dice"]) == p["admitted"] and all(0.0 <= d <= 1.0 for d in p["dice"].values())
    # ATSQ and ASSFT replay the same (typical) cold start
    assert unit["strategies"]["atsq"]["rounds"][0] == unit["strategies"]["assft"]["rounds"][0]
    ub = unit["upper_bound"]
    assert ub["labels"] == profile.sizes["pool"] and ub["steps"] == profile.upper_steps
    _check_round(ub, len(le.SCANNERS), on_disk["split"]["test"], on_disk["split"]["scanner"])

    summary = result["summary"]["multisite"]
    for name in profile.strategies:
        s = summary["strategies"][name]
        assert s["n_seeds"] == 1 and s["labels"] == labels_expected
        # the summary of one seed is that seed's raw rounds: recompute it by hand
        x = np.array([r["labels"] for r in unit["strategies"][name]["rounds"]], float)
        y = np.array([r["dice"] for r in unit["strategies"][name]["rounds"]])
        assert s["dice_mean"] == pytest.approx(y.tolist()) and s["dice_sd"] == pytest.approx([0.0] * len(y))
        trapezoid = sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))
        assert s["nauc"]["mean"] == pytest.approx(trapezoid / (x[-1] - x[0]))
        reached = [x[i] for i in range(len(x)) if y[i] >= le.TARGET_FRACTION * ub["dice"]]
        assert s["labels_to_95"]["per_seed"] == [reached[0] if reached else None]
    assert summary["upper_bound"]["mean"] == pytest.approx(ub["dice"])


@pytest.mark.torch
def test_a_sitting_goes_on_from_the_committed_result_on_a_new_machine(hippo_dir, tmp_path, monkeypatch):
    """Units live in a git-ignored folder that a new machine lacks; the committed result file carries them."""
    from ASSFTLib.errors import ASSFTError
    profile = dataclasses.replace(le.PROFILES["quick"], seeds=2, strategies=("random",), pretrain_steps=2,
                                  cold_steps=2, round_steps=2)
    said: list[str] = []
    first = le.run(hippo_dir, tmp_path / "a", profile, ("multisite",), progress=said.append)
    # every seed's arms run before any upper bound, so a sitting stopped part-way has the paired arms
    arms = [i for i, m in enumerate(said) if "cold start" in m]
    uppers = [i for i, m in enumerate(said) if "upper bound" in m]
    assert len(arms) == len(uppers) == 2 and max(arms) < min(uppers)

    # a sitting that stopped after seed 0's arms committed this; the next machine has no --out
    earlier = json.loads(json.dumps(first))
    seed0 = next(u for u in earlier["units"] if u["seed"] == 0)
    seed0["upper_bound"] = None
    earlier["units"] = [seed0]
    committed = tmp_path / "label_efficiency_quick.json"
    committed.write_text(json.dumps(earlier))
    said.clear()
    second = le.run(hippo_dir, tmp_path / "b", profile, ("multisite",), progress=said.append, resume_from=committed)
    assert said[0].startswith("resumed 1 (setting, seed) units")
    assert [m for m in said if "cold start" in m] == ["  multisite seed 1: cold start by random"]
    assert len([m for m in said if "upper bound" in m]) == 2
    by_seed = {u["seed"]: u for u in second["units"]}
    assert by_seed[0]["strategies"] == seed0["strategies"], "seed 0's arms were run again"
    assert second["complete"] and all(u["upper_bound"] for u in second["units"])

    # finished units need no foundation model: a third machine only summarises
    def no_foundation(*_args, **_kw):
        raise AssertionError("a foundation model was built for finished units")
    monkeypatch.setattr(le, "foundation_model", no_foundation)
    committed.write_text(json.dumps(second))
    third = le.run(hippo_dir, tmp_path / "c", profile, ("multisite",), progress=lambda _: None, resume_from=committed)
    assert third["summary"] == json.loads(json.dumps(second["summary"]))
    # a unit already in --out is kept: it is at least as far along as a result file's copy
    stale = dict(seed0, strategies={})
    # nor does a unit whose seed is not a whole number name a file (a result file may come from someone else)
    committed.write_text(json.dumps(dict(earlier, units=[stale, dict(seed0, seed="../../x"), dict(seed0, seed=True)])))
    assert le.restore_units(le.RunConfig(tmp_path / "c", profile, le.Settings()), committed, ("multisite",),
                            "test", le.make_split(sorted(le._dataset_cases(hippo_dir)), profile.sizes)) == 0

    # a result of other options or another split would not be paired with this run's arms: refused
    with pytest.raises(ASSFTError, match="foundation"):
        le.run(hippo_dir, tmp_path / "d", profile, ("multisite",), progress=lambda _: None, resume_from=committed,
               foundation="supervised", report_only=True)
    committed.write_text(json.dumps(dict(earlier, split=dict(earlier["split"], test=earlier["split"]["test"][::-1]))))
    with pytest.raises(ASSFTError, match="split"):
        le.run(hippo_dir, tmp_path / "d", profile, ("multisite",), progress=lambda _: None, resume_from=committed,
               report_only=True)
    (tmp_path / "other.json").write_text(json.dumps({"volumes": []}))
    with pytest.raises(ASSFTError, match="not a label-efficiency result"):
        le.run(hippo_dir, tmp_path / "d", profile, ("multisite",), progress=lambda _: None,
               resume_from=tmp_path / "other.json", report_only=True)


@pytest.mark.torch
def test_the_quality_signal_hold_out_is_off_unless_asked_for_and_then_recorded(hippo_dir, tmp_path):
    profile = dataclasses.replace(le.PROFILES["quick"], strategies=("random",), pretrain_steps=2, cold_steps=2,
                                  round_steps=2)
    base = le.Settings(kfold_min_labels=2)  # a fold out of every round from 2 labels (the product: from 5)
    plain = le.run(hippo_dir, tmp_path / "off", profile, ("multisite",), progress=lambda _: None, base=base,
                   upper_bound=False)
    assert all("quality" not in r for r in plain["units"][0]["strategies"]["random"]["rounds"])
    # the label-free signal: the replayed cold-start model's Dice on the volumes the next round labeled
    cold, later = plain["units"][0]["strategies"]["random"]["rounds"]
    assert "new_label_dice" not in cold and sorted(later["new_label_dice"]["per_case"]) == sorted(later["picked"])
    assert 0.0 <= later["new_label_dice"]["mean"] <= 1.0
    assert plain["units"][0]["upper_bound"] is None and not plain["complete"]  # arms only: a later run adds it
    kept = le.run(hippo_dir, tmp_path / "on", profile, ("multisite",), progress=lambda _: None,
                  base=base.replace(query_weight=0.8), quality_holdout=True,
                  variant="set-kfold_min_labels=2,query_weight=0.8")
    assert kept["base_settings"]["kfold_min_labels"] == 2
    # a dot in the variant's name is kept in the file names (two variants must not share one file)
    assert sorted(p.name for p in (tmp_path / "on").glob("label_efficiency_*")) == [
        "label_efficiency_quick_set-kfold_min_labels=2,query_weight=0.8.json",
        "label_efficiency_quick_set-kfold_min_labels=2,query_weight=0.8.png"]
    cold, later = kept["units"][0]["strategies"]["random"]["rounds"]
    assert cold["quality"]["train_labels"] == 1 and len(cold["quality"]["heldout"]) == 1  # 2 labels in 2 folds
    q = later["quality"]
    assert len(q["heldout"]) == 2 and q["train_labels"] == later["labels"] - 2  # 4 labels in 2 folds
    assert set(q["heldout"]) <= set(kept["units"][0]["strategies"]["random"]["rounds"][0]["picked"] + later["picked"])
    assert 0.0 <= q["heldout_dice"] <= 1.0


@pytest.mark.torch
def test_label_efficiency_command_keeps_the_hold_out_when_set_and_can_skip_the_upper_bound(hippo_dir, tmp_path,
                                                                                         capsys):
    from ASSFTLib import cli
    args = ["benchmark", "label-efficiency", "--data", str(hippo_dir), "--profile", "quick", "--setting", "multisite",
            "--strategies", "random", "--pretrain-steps", "2", "--cold-steps", "2", "--round-steps", "2",
            "--threads", "1", "--out", str(tmp_path), "--set", "kfold_min_labels=2", "--no-upper-bound"]
    assert cli.main(args) == 0
    result = json.loads((tmp_path / "label_efficiency_quick_set-kfold_min_labels=2.json").read_text())
    assert result["base_settings"]["kfold_min_labels"] == 2 and result["protocol"]["variant"]
    (unit,) = result["units"]
    assert unit["upper_bound"] is None and not result["complete"]
    assert all(r["quality"]["train_labels"] == r["labels"] // 2 for r in unit["strategies"]["random"]["rounds"])
    # the next sitting, without --no-upper-bound, adds the upper bound to the same unit and runs no arm again
    assert cli.main([a for a in args if a != "--no-upper-bound"]) == 0
    again = json.loads((tmp_path / "label_efficiency_quick_set-kfold_min_labels=2.json").read_text())
    assert again["units"][0]["strategies"] == unit["strategies"] and again["units"][0]["upper_bound"]["labels"] == 10
    assert "upper bound" in capsys.readouterr().out


@pytest.mark.torch
def test_speed_end_to_end(tmp_path):
    from ASSFTLib.benchmark import speed
    from ASSFTLib.settings import Settings
    result = speed.run(tmp_path, Settings(device="cpu"), n_volumes=2, volume_size=(24, 32, 24), pool_size=30,
                       train_steps=2, large_size=(40, 48, 40), patch_size=(16, 24, 16), progress=lambda _: None)
    on_disk = json.loads((tmp_path / "speed_cpu.json").read_text())
    assert on_disk["scoring"]["volumes"] == 2 and on_disk["rerank"]["pool"] == 30
    for key in ("atsq_full_vol_per_s", "plain_passes_vol_per_s", "monai_label_mc5_vol_per_s",
                "atsq_overhead_vs_plain", "atsq_speedup_vs_monai_label_mc5"):
        v = result["scoring"][key]
        assert math.isfinite(v) and v > 0
    assert result["rerank"]["rerank_seconds_median"] > 0
    sc = result["scoring"]
    assert sc["atsq_overhead_vs_plain"] == pytest.approx(sc["plain_passes_vol_per_s"] / sc["atsq_full_vol_per_s"])
    assert sc["atsq_speedup_vs_monai_label_mc5"] == pytest.approx(
        sc["atsq_full_vol_per_s"] / sc["monai_label_mc5_vol_per_s"])
    for key in ("atsq_overhead_vs_plain_cpu", "atsq_later_rounds_overhead_vs_plain_cpu",
                "atsq_speedup_vs_monai_label_mc5_cpu"):  # on the CPU the ratios in CPU time too
        assert math.isfinite(sc[key]) and sc[key] > 0
    assert result["rerank"]["repeats"] == 10
    assert result["rerank"]["rerank_seconds_max"] >= result["rerank"]["rerank_seconds_median"]
    ft = result["finetune"]
    assert ft["steps_per_s"] > 0 and ft["steps_timed"] == 2 and ft["patch_size"] == [16, 24, 16]
    assert ft["voxels_per_s"] == pytest.approx(ft["batch_size"] * 16 * 24 * 16 * ft["steps_per_s"])
    for part in (ft, result["large_volume"]):  # on this CPU run: resident memory, the mechanism tested below
        assert part["peak_memory_kind"] == "process RSS above baseline" and math.isfinite(part["peak_memory_mib"])
    assert result["large_volume"]["shape"] == [40, 48, 40] and result["large_volume"]["seconds"] > 0
    assert result["large_volume"]["voxels"] == 40 * 48 * 40
    assert "machine" in on_disk and "commit" in on_disk
    assert "vol/s" in speed.format_table(result)


@pytest.mark.torch
def test_peak_memory_counts_what_the_block_allocates_above_the_baseline():
    from ASSFTLib.benchmark.speed import PeakMemory
    ballast = np.ones(32 * 2 ** 20 // 8)  # resident before the block: part of the baseline, not of the peak
    with PeakMemory("cpu") as idle:
        pass
    with PeakMemory("cpu") as busy:
        block = np.ones(96 * 2 ** 20 // 8)  # 96 MiB, every page touched
        block[::512] += 1.0
    assert busy.kind == "process RSS above baseline"
    assert busy.peak >= 80 * 2 ** 20, busy.peak / 2 ** 20
    assert idle.peak < 16 * 2 ** 20 < busy.peak
    assert block.sum() > 0 and ballast.sum() > 0


def test_validation_split_is_carved_from_the_pool_never_the_test_cases():
    split = le.make_split([f"hippocampus_{i:03d}" for i in range(260)])
    pool, val = le.validation_split(split)
    a, b = le.VALIDATION_SLICE
    assert val == split.pool[a:b] and len(pool) + len(val) == len(split.pool)
    assert not set(val) & set(pool) and not set(val) & set(split.test) and not set(val) & set(split.source)
    small = le.make_split([f"hippocampus_{i:03d}" for i in range(260)], le.PROFILES["quick"].sizes)
    pool, val = le.validation_split(small)
    assert val == small.pool[-2:] and pool == small.pool[:-2]


@pytest.mark.torch
def test_supervised_foundation_on_the_validation_split_end_to_end(hippo_dir, tmp_path):
    """The model-from-another-site foundation: a head from round 0, so every arm starts with its own rule."""
    profile = dataclasses.replace(le.PROFILES["quick"], strategies=("random", "assft"), pretrain_steps=2,
                                  cold_steps=2, round_steps=2)
    profile = dataclasses.replace(profile, supervised_steps=2)
    result = le.run(hippo_dir, tmp_path, profile, ("plain",), progress=lambda _: None, foundation="supervised",
                    evaluation="validation")
    assert (tmp_path / "label_efficiency_quick_supervised_validation.json").exists()
    assert result["protocol"]["foundation"] == "supervised" and result["protocol"]["evaluation"] == "validation"
    split = result["split"]
    _, val = le.validation_split(le.Split(split["source"], split["pool"], split["test"], split["scanner"]))
    (unit,) = result["units"]
    assert unit["foundation"] == "supervised" and unit["evaluation"] == "validation"
    assert sorted(unit["foundation_eval"]["per_case"]) == sorted(val)
    assert result["summary"]["plain"]["foundation_dice"]["mean"] == pytest.approx(unit["foundation_eval"]["dice"])
    for name, s in unit["strategies"].items():
        # the foundation segments already: the cold start is the arm's own query rule, not DKD
        assert s["cold_start"] == le.STRATEGIES[name].query
        # ... and an SSFT arm's first round trains with SSFT, as a user's first `assft train` would
        assert s["cold_ssft"] is le.STRATEGIES[name].ssft
        assert ("pseudo" in s["rounds"][0]) is le.STRATEGIES[name].ssft
        for r in s["rounds"]:
            assert sorted(r["per_case"]) == sorted(val)
            assert not set(r["picked"]) & set(val), "a validation case was offered to the annotator"
    # the supervised foundation was trained on the labeled, unshifted source cases
    (model,) = (tmp_path / "cache" / "foundation").glob("supervised_seed0_*.pt")
    from ASSFTLib.models import load_model
    assert load_model(model).spec.has_task_head


def test_cold_ssft_only_for_ssft_arms_with_a_headed_foundation(tmp_path):
    from ASSFTLib.benchmark.label_efficiency.rounds import RunConfig, cold_ssft
    profile = le.PROFILES["quick"]
    selfsup = RunConfig(tmp_path, profile, le.Settings())
    supervised = RunConfig(tmp_path, profile, le.Settings(), foundation="supervised")
    names = ("random", "random+ssft", "atsq", "assft")
    assert [cold_ssft(selfsup, le.STRATEGIES[n]) for n in names] == [False] * 4
    assert [cold_ssft(supervised, le.STRATEGIES[n]) for n in names] == [False, True, False, True]
    # a supervised ASSFT result from before this rule is set aside and runs again; random's is kept
    from ASSFTLib.benchmark.label_efficiency.rounds import supersede_stale
    unit = {"strategies": {"random": {"rounds": []}, "assft": {"rounds": [1]}, "random+ssft": {"cold_ssft": True}}}
    assert supersede_stale(supervised, unit, "random") == {"rounds": []}
    assert supersede_stale(supervised, unit, "assft") is None
    assert unit["superseded"] == {"assft": {"rounds": [1]}} and "assft" not in unit["strategies"]
    assert supersede_stale(supervised, unit, "random+ssft") == {"cold_ssft": True}
    assert supersede_stale(selfsup, {"strategies": {"assft": {"rounds": []}}}, "assft") == {"rounds": []}


def test_cold_start_rule_by_foundation_and_ablation(tmp_path):
    from ASSFTLib.benchmark.label_efficiency.rounds import RunConfig
    profile = le.PROFILES["quick"]
    plain = RunConfig(tmp_path, profile, le.Settings())
    assert [le.cold_start_rule(plain, le.STRATEGIES[n]) for n in ("random", "coreset", "atsq", "assft", "asd", "dkd")] \
        == ["random", "coreset", "typical", "typical", "random", "dkd"]
    ablation = RunConfig(tmp_path, profile, le.Settings(), cold_start="dkd")
    assert [le.cold_start_rule(ablation, le.STRATEGIES[n]) for n in ("random", "coreset", "atsq", "assft", "dkd")] \
        == ["random", "coreset", "dkd", "dkd", "dkd"]
    supervised = RunConfig(tmp_path, profile, le.Settings(), foundation="supervised")
    assert [le.cold_start_rule(supervised, le.STRATEGIES[n]) for n in ("random", "asd", "assft")] == \
        ["random", "asd", "atsq"]
    # ASSFT with a random query: ASSFT's cold start (and its ablations) and SSFT, random where ASSFT ranks by ATSQ
    arm, assft = le.STRATEGIES["assft-random-query"], le.STRATEGIES["assft"]
    assert (arm.query, arm.ssft) == ("random", True) and arm.name not in le.PROFILES["full"].strategies
    assert [le.cold_start_rule(c, arm) for c in (plain, ablation, supervised)] == \
        [le.cold_start_rule(plain, assft), le.cold_start_rule(ablation, assft), "random"]
    # each variant has its own unit files and result files, so one --out holds them all
    names = {plain.unit_name("multisite", 0), ablation.unit_name("multisite", 0),
             supervised.unit_name("multisite", 0), supervised.unit_name("multisite", 0, "validation")}
    assert plain.unit_name("multisite", 0) == "multisite_seed0" and len(names) == 4
    assert le.result_stem("medium", "supervised", "validation", "dkd") == \
        "label_efficiency_medium_supervised_validation_cold-dkd"


def test_full_profile_runs_five_seeds_of_the_method_and_anchors_and_three_of_the_rest():
    full = le.PROFILES["full"]
    five = {n for n in full.strategies if full.seeds_of(n) == 5}
    assert five == {"random", "coreset", "asd", "atsq", "assft"}
    assert all(full.seeds_of(n) == 3 for n in set(full.strategies) - five)
    assert le.PROFILES["medium"].seeds_of("assft") == le.PROFILES["medium"].seeds


def test_set_overrides_change_the_base_settings_and_name_the_variant():
    from ASSFTLib.commands.benchmark import _overrides
    from ASSFTLib.errors import ASSFTError
    base, variant = _overrides(le.Settings(), ["diversity_scale=rank", "query_weight=0.3"])
    assert base.diversity_scale == "rank" and base.query_weight == 0.3
    assert variant == "set-diversity_scale=rank,query_weight=0.3"
    assert _overrides(le.Settings(), []) == (le.Settings(), "")
    for bad in (["no_equals"], ["not_a_setting=1"], ["diversity_scale=sideways"]):
        with pytest.raises(ASSFTError):
            _overrides(le.Settings(), bad)


def test_dice_axis_is_zoomed_to_the_curves_on_a_tenth_grid():
    from ASSFTLib.benchmark.plotting import dice_axis_range
    assert dice_axis_range([0.785, 0.858, float("nan"), None]) == pytest.approx((0.7, 0.9))
    assert dice_axis_range([0.01, 0.995]) == pytest.approx((0.0, 1.0))   # clipped to [0, 1]
    assert dice_axis_range([0.99, 0.995]) == pytest.approx((0.9, 1.0))   # never thinner than 0.1
    assert dice_axis_range([]) == (0.0, 1.0)


def test_the_dice_axis_says_validation_when_the_curves_are_on_the_validation_split(tmp_path, monkeypatch):
    # a validation run's plot said "test Dice" on its axis
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from ASSFTLib.benchmark.plotting import plot_label_efficiency
    units = [_unit("multisite", 0, [0.5, 0.6, 0.7], 0.8)]
    seen, real_savefig = [], plt.Figure.savefig

    def savefig(fig, *args, **kwargs):  # read the axis the figure is saved with
        seen.append(fig.axes[0].get_ylabel())
        return real_savefig(fig, *args, **kwargs)
    monkeypatch.setattr(plt.Figure, "savefig", savefig)
    plot_label_efficiency(le.summarize(units), tmp_path / "v.png", evaluation="validation")
    plot_label_efficiency(le.summarize(units), tmp_path / "t.png")
    assert seen[0].startswith("validation Dice") and seen[1].startswith("test Dice")
    assert (tmp_path / "v.png").stat().st_size > 0


def test_panel_title_counts_the_seeds_that_have_curves_not_the_seeds_started():
    """A partial run: seeds 1-2 have a foundation but no arm yet; the curves are over one seed."""
    from ASSFTLib.benchmark.plotting import panel_title
    partial = {"seeds": [0, 1, 2], "strategies": {"random": {"n_seeds": 1}, "assft": {"n_seeds": 1}}}
    assert panel_title("plain", partial) == "hippo-plain (seeds: 1 with arms, 3 started)"
    done = {"seeds": [0, 1, 2], "strategies": {"random": {"n_seeds": 3}, "assft": {"n_seeds": 2}}}
    assert panel_title("multisite", done) == "hippo-multisite (seeds: 3)"
    assert panel_title("plain", {"seeds": [0], "strategies": {}}) == "hippo-plain (seeds: 0 with arms, 1 started)"


def test_ablation_table_pairs_every_variant_arm_with_the_default_random_by_seed(tmp_path):
    """Testing/benchmarks/ablation_table.py: a variant that changes training (warm_lr_ratio) changes random's
    curve too, so random under a variant is a row of its own, paired with the default random seed by seed."""
    import importlib.util
    from pathlib import Path
    from ASSFTLib.metrics import normalized_auc
    spec = importlib.util.spec_from_file_location(
        "ablation_table", Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    (tmp_path / "units").mkdir()
    labels = [2, 4, 6, 8, 10]

    def arm(dice):
        return {"cold_start": "random", "rounds": [{"labels": n, "dice": d} for n, d in zip(labels, dice)]}

    base = {0: [0.80, 0.81, 0.82, 0.83, 0.84], 1: [0.70, 0.72, 0.74, 0.76, 0.78]}
    for seed in (0, 1):
        for variant, lift in (("", 0.0), ("_set-warm_lr_ratio=0.1", 0.01 * (seed + 1))):
            unit = {"foundation": "supervised", "strategies": {"random": arm([d + lift for d in base[seed]])}}
            if variant:
                unit["strategies"]["assft"] = arm([d + 0.05 for d in base[seed]])
            (tmp_path / "units" / f"multisite_supervised_validation{variant}_seed{seed}.json").write_text(
                json.dumps(unit))
    rows = {(r["variant"], r["arm"]): r for r in table.rows(table.load(tmp_path))}
    assert set(rows) == {("default", "random"), ("set-warm_lr_ratio=0.1", "random"),
                         ("set-warm_lr_ratio=0.1", "assft")}
    assert rows[("default", "random")]["nauc_vs_random"] is None
    # the variant's random is 0.01 / 0.02 above the default's: a mean paired difference of 0.015
    assert rows[("set-warm_lr_ratio=0.1", "random")]["nauc_vs_random"]["mean"] == pytest.approx(0.015)
    assert rows[("set-warm_lr_ratio=0.1", "assft")]["nauc_vs_random"]["mean"] == pytest.approx(0.05)
    assert rows[("default", "random")]["nauc_per_seed"] == pytest.approx(
        [normalized_auc(np.array(labels, float), np.array(base[s])) for s in (0, 1)])


def _children(pid: int) -> set[int]:
    """PIDs whose parent is ``pid`` (Linux /proc)."""
    from pathlib import Path
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    from pathlib import Path
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.torch
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the unit processes from /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_stopped_parallel_run_stops_its_unit_processes_too(hippo_dir, tmp_path, how):
    """With --jobs 2 a stop used to wait for every queued unit (hours on `full`): the pool swallowed the signal.

    Two seeds make four units for two processes: the signal comes once seed 0's units run and seed 1's wait in
    the queue (their foundation is built), and seed 1's must then never start."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path
    args = [sys.executable, "-m", "ASSFTLib.cli", "benchmark", "label-efficiency", "--data", str(hippo_dir),
            "--profile", "quick", "--seeds", "2", "--strategies", "random,assft", "--threads", "1", "--jobs", "2",
            "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    err_path = tmp_path / "stderr.txt"  # a file, not a pipe: stdout alone is read while the run goes on
    # a terminal's foreground run has Ctrl-C at its default; a suite started in the background by a
    # non-interactive shell (`... &`) has SIGINT ignored, which the CLI would inherit (Python then installs no
    # handler for it). Caught here for the moment of the start, it is at its default in the child after exec
    # (no preexec_fn: not safe in a process with threads, as this one with torch's).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(err_path, "w") as err_file:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err_file, text=True, env=env,
                                    cwd=Path(__file__).resolve().parents[2], start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        started = set()
        for line in proc.stdout:  # seed 0's units are running in their processes once each reports its cold start
            if "seed 0: cold start by" in line:
                started.add(line.split()[0])
            if len(started) == 2:
                break
        units = _children(proc.pid)
        assert len(started) == 2 and len(units) == 2, (started, units)
        for _ in range(600):  # seed 1's units are queued as soon as its foundation is built
            if list((tmp_path / "cache" / "foundation").glob("pretrained_seed1_*.pt")):
                break
            time.sleep(0.5)
        time.sleep(1.0)
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C reaches every process of the foreground group
            os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = err_path.read_text()
    assert proc.returncode == (143 if how == "SIGTERM" else 130), err
    assert ("stopped (SIGTERM)" if how == "SIGTERM" else "interrupted") in err
    assert "run the same command again to continue" in err
    assert "seed 1: cold start" not in out  # the queued units were cancelled, not run
    assert not {pid for pid in units if _running(pid)}  # no unit process left running
    # stopped, not finished: no unit got as far as its upper bound
    for unit in (tmp_path / "units").glob("*.json"):
        assert not json.loads(unit.read_text()).get("upper_bound")
