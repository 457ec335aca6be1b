"""Running one (setting, seed) unit: the foundation, the cold start, each arm's rounds, the upper bound.

A simulated annotator drives the product's own workspace, scoring, ranking
and fine-tuning; each finished arm is written to ``<out>/units/`` at once, so
an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import copy
import dataclasses
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ... import strategies
from ...metrics import dice_per_class
from ...settings import Settings
from .. import write_json
from .protocol import EVAL_CLASSES, RANDOM_QUERY_ARM, SCANNERS, STRATEGIES, Prepared, Profile, Strategy, TargetCase


@dataclass
class RunConfig:
    """Run-wide choices: where, how much, with which base settings."""

    out: Path
    profile: Profile
    base: Settings
    progress: Callable[[str], None] = print
    foundation: str = "self-supervised"   # protocol.FOUNDATIONS
    cold_start: str | None = None         # replaces the cold start of the ATSQ family (an ablation)
    variant: str = ""                     # names base-settings changes of an ablation (``--set``)

    def unit_name(self, setting: str, seed: int, evaluation: str = "test") -> str:
        """The unit file's stem: the default run keeps the historical name; other runs add what differs."""
        extra = [x for x, default in ((self.foundation, "self-supervised"), (evaluation, "test")) if x != default]
        if self.cold_start:
            extra.append(f"cold-{self.cold_start}")
        if self.variant:
            extra.append(self.variant)
        return "_".join([setting, *extra, f"seed{seed}"])


def _settings_for(cfg: RunConfig, seed: int, strategy: Strategy | None, steps: int, ssft: bool) -> Settings:
    query = strategy.query if strategy is not None else "random"
    mc = cfg.profile.mc_dropout_samples if strategies.get(query).mc_dropout else 0
    return cfg.base.replace(seed=seed, strategy=query, steps=steps, use_ssft=ssft, budget=cfg.profile.budget,
                            mc_dropout_samples=mc)


def pretrained_model(cfg: RunConfig, seed: int, source_images: Sequence[Path]) -> Path:
    """The foundation model of one seed: ``pretrain`` on the source images, cached by its inputs."""
    from ...training import pretrain
    key = zlib.crc32(("|".join(map(str, source_images)) + f"|{cfg.profile.pretrain_steps}|{seed}").encode())
    path = cfg.out / "cache" / "foundation" / f"pretrained_seed{seed}_{key:08x}.pt"
    if not path.exists():
        cfg.progress(f"pretraining the foundation model (seed {seed}, {len(source_images)} source images)")
        settings = cfg.base.replace(seed=seed, pretrain_steps=cfg.profile.pretrain_steps)
        pretrain([Path(p) for p in source_images], path, settings)
    return path


def supervised_model(cfg: RunConfig, seed: int, prepared: Prepared) -> Path:
    """A model trained elsewhere: the seed's self-supervised foundation fine-tuned on the labeled source cases.

    The source images are unshifted (the other site's scanner); it is trained
    with the product's own recipe on all their labels, cached by its inputs.
    """
    from ...training import train_supervised
    base = pretrained_model(cfg, seed, prepared.source_images)
    steps = cfg.profile.supervised_steps
    key = zlib.crc32(f"{base.name}|{prepared.source_folder}|{cfg.base.scoring_hash()}|{steps}".encode())
    path = cfg.out / "cache" / "foundation" / f"supervised_seed{seed}_{key:08x}.pt"
    if path.exists():
        return path
    cfg.progress(f"training the supervised foundation (seed {seed}, {len(prepared.source_images)} labeled source "
                 "cases)")
    return train_supervised(prepared.source_folder, base, path, cfg.base.replace(seed=seed, steps=steps),
                            work=cfg.out / "cache" / "foundation" / f"supervised_seed{seed}_ws")


def foundation_model(cfg: RunConfig, seed: int, prepared: Prepared) -> Path:
    """The model every arm of one seed starts from, as ``cfg.foundation`` says."""
    if cfg.foundation == "supervised":
        return supervised_model(cfg, seed, prepared)
    return pretrained_model(cfg, seed, prepared.source_images)


def cold_start_rule(cfg: RunConfig, strategy: Strategy) -> str:
    """The rule of a strategy's first query: its own when the foundation has a head, else its cold-start rule.

    ``cfg.cold_start`` replaces the cold start of the ATSQ family (ATSQ, ASSFT, DKD, and ASSFT with a random
    query) for an ablation.
    """
    if cfg.foundation == "supervised":
        return strategy.query
    if cfg.cold_start and (strategy.query in ("atsq", "dkd") or strategy.name == RANDOM_QUERY_ARM.name):
        return cfg.cold_start
    return strategy.cold_start


def _new_workspace(folder: Path, prepared: Prepared, settings: Settings, foundation: Path):
    from ...workspace import Workspace
    if folder.exists():
        shutil.rmtree(folder)
    ws = Workspace.create(folder, dataset=prepared.pool_folder, settings=settings, import_labels=False)
    ws.register_model(foundation, kind="foundation")
    return ws


def annotate(ws, case_ids: Sequence[str]) -> None:
    """The simulated annotator: save each case's hidden reference label as its label."""
    from ...volumes import read_volume
    for cid in case_ids:
        ref = read_volume(ws.case(cid).reference_label, kind="label")
        ws.save_label(cid, ref.array, affine=ref.affine, user="simulated-annotator", source="benchmark")


def query_round(ws, settings: Settings) -> list[str]:
    """Score the pool with the current model (cached) and return the ``budget`` case ids the product ranks first.

    Every strategy scores: ``rank_cases`` ranks cached cases only, and SSFT
    reads the same cache for confidence and embeddings.
    """
    from ... import scoring
    scoring.score_cases(ws, settings=settings)
    return list(scoring.rank_cases(ws, settings=settings).picked)[: settings.budget]


def _evaluate(model_path: Path, test: Sequence[TargetCase], settings: Settings) -> dict:
    """Test Dice of one checkpoint: mean over :data:`EVAL_CLASSES`, overall, per class and per scanner."""
    from ...volumes import read_volume
    from ...inference import predict_probs
    from ...models import load_model
    model = load_model(model_path)
    per_case = {}
    for t in test:
        probs = predict_probs(model, read_volume(t.image, kind="image"), settings)
        truth = read_volume(t.label, kind="label").array
        d = dice_per_class(np.argmax(probs, axis=0), truth, probs.shape[0])
        per_case[t.case_id] = [float(d[k - 1]) for k in EVAL_CLASSES]
    return summarize_dice(per_case, {t.case_id: t.scanner for t in test})


def summarize_dice(per_case: dict[str, list[float]], scanner: dict[str, str]) -> dict:
    """Mean Dice overall, per class and per scanner from per-case per-class Dice."""
    arr = np.array(list(per_case.values()))
    by_scanner = {}
    for name, _, _ in SCANNERS:
        rows = [np.mean(v) for c, v in per_case.items() if scanner[c] == name]
        if rows:
            by_scanner[name] = float(np.mean(rows))
    return {"dice": float(arr.mean()), "dice_per_class": arr.mean(axis=0).tolist(), "dice_per_scanner": by_scanner,
            "per_case": per_case}


def pseudo_quality(teacher: Path, admitted: Sequence[str], ws, settings: Settings) -> dict:
    """Dice against the hidden truth of the pseudo-labels an SSFT round admitted.

    teacher: the checkpoint current when the round started (it made the
    pseudo-labels: argmax of its test-time averaged probabilities, as training does).
    """
    from ...volumes import read_volume
    from ...inference import predict_probs
    from ...models import load_model
    from ...ssft import pseudo_target
    dice = {}
    model = load_model(teacher) if admitted else None
    for cid in admitted:
        label, _ = pseudo_target(predict_probs(model, read_volume(ws.image_path(cid)), settings),
                                 settings.voxel_confidence)
        truth = read_volume(ws.case(cid).reference_label, kind="label").array
        d = dice_per_class(label, truth, len(ws.classes))
        dice[cid] = float(np.mean([d[k - 1] for k in EVAL_CLASSES]))
    return {"admitted": len(admitted), "dice": dice,
            "mean_dice": float(np.mean(list(dice.values()))) if dice else None}


def _finetune(ws, settings: Settings) -> tuple[object, float]:
    from ...training import finetune_round
    start = time.perf_counter()
    result = finetune_round(ws, settings)
    return result, time.perf_counter() - start


@dataclass
class ColdStart:
    """The replayable outcome of a cold-start round."""

    picked: list[str]
    model: Path
    scores: dict = field(default_factory=dict)   # settings hash -> {case_id: record}
    record: dict = field(default_factory=dict)


def cold_ssft(cfg: RunConfig, strategy: Strategy) -> bool:
    """Whether a strategy's first round trains with SSFT: when it uses SSFT and the foundation has a head.

    As a user's first ``assft train`` does: with a model trained elsewhere, the
    foundation's confident predictions are pseudo-label candidates from the
    first round on; a self-supervised foundation has no head to make them.
    """
    return cfg.foundation == "supervised" and strategy.ssft


def cold_start(cfg: RunConfig, run_dir: Path, prepared: Prepared, seed: int, rule: str,
               foundation: Path, ssft: bool = False) -> ColdStart:
    """The cold-start round for one rule: query b volumes with the foundation, label, fine-tune.

    ssft: train with SSFT (:func:`cold_ssft`); the round then records the
    admitted pseudo-labels' true Dice, as later rounds do.
    """
    settings = _settings_for(cfg, seed, STRATEGIES[rule], cfg.profile.cold_steps, ssft=ssft)
    ws = _new_workspace(run_dir / (f"cold_{rule}" + ("_ssft" if ssft else "")), prepared, settings, foundation)
    t0 = time.perf_counter()
    picked = query_round(ws, settings)
    t_query = time.perf_counter() - t0
    annotate(ws, picked)
    result, t_train = _finetune(ws, settings)
    model = ws.current_model().path
    record = {"round": 0, "labels": len(picked), "picked": picked, "query_seconds": t_query,
              "train_seconds": t_train, **_evaluate(model, prepared.test, settings)}
    if ssft:
        record["pseudo"] = pseudo_quality(foundation, result["metrics"]["pseudo_ids"], ws, settings)
    record.update(_quality(result))
    ws.close()
    return ColdStart(picked, model, {}, record)


def _quality(result: dict) -> dict:
    """The round's quality signals, as the product records them.

    ``quality`` when the round held labels out (off in the benchmark unless asked for): which, their Dice,
    how many labels trained, and whether the model was made current. ``new_label_dice`` when the model
    the round started from had not trained on some labels (from the second round on): its mean Dice on
    them and per case, to set against the test Dice of that model (the previous round's)."""
    metrics, out = result["metrics"], {}
    if metrics.get("heldout"):
        out["quality"] = {"heldout": metrics["heldout"], "heldout_dice": metrics.get("heldout_dice"),
                          "train_labels": metrics.get("train_labels"),
                          "made_current": result.get("made_current", True)}
    if metrics.get("new_label_dice") is not None:
        out["new_label_dice"] = {"mean": metrics["new_label_dice"], "per_case": metrics["new_label_dice_per_case"]}
    return out


def _replay(ws, cold: ColdStart) -> None:
    """Put a cold-start round's labels, model and cached scores into a fresh workspace."""
    annotate(ws, cold.picked)
    admitted = sorted(((cold.record.get("pseudo") or {}).get("dice") or {}))  # its pseudo-labeled volumes
    model = ws.register_model(cold.model, kind="finetuned", metrics={"replayed_cold_start": True,
                                                                     "trained_on": list(cold.picked),
                                                                     "pseudo_ids": admitted})
    for settings_hash, records in cold.scores.items():
        ws.put_scores(model.checksum, settings_hash, records)


def run_strategy(cfg: RunConfig, run_dir: Path, prepared: Prepared, seed: int, strategy: Strategy,
                 foundation: Path, cold: ColdStart) -> dict:
    """Cold start (replayed), then ``rounds`` query/label/fine-tune rounds; the curve of one strategy."""
    p = cfg.profile
    settings = _settings_for(cfg, seed, strategy, p.round_steps, ssft=strategy.ssft)
    ws = _new_workspace(run_dir / strategy.name.replace("+", "_"), prepared, settings, foundation)
    _replay(ws, cold)
    rounds = [copy.deepcopy(cold.record)]
    for r in range(1, p.rounds + 1):
        t0 = time.perf_counter()
        cold_checksum = ws.current_model().checksum
        picked = query_round(ws, settings.replace(seed=seed * 1000 + r))
        t_query = time.perf_counter() - t0
        if r == 1:  # the first scoring of the replayed cold model serves the whole cold-start group
            round_hash = settings.replace(seed=seed * 1000 + r).scoring_hash()  # the seed is part of the key
            cold.scores[round_hash] = ws.get_scores(cold_checksum, round_hash)
        annotate(ws, picked)
        teacher = ws.current_model().path
        result, t_train = _finetune(ws, settings.replace(seed=seed * 1000 + r))
        rec = {"round": r, "labels": len(ws.labeled_ids()), "picked": picked, "query_seconds": t_query,
               "train_seconds": t_train, **_evaluate(ws.current_model().path, prepared.test, settings)}
        if strategy.ssft:
            rec["pseudo"] = pseudo_quality(teacher, result["metrics"]["pseudo_ids"], ws, settings)
        rec.update(_quality(result))
        rounds.append(rec)
        cfg.progress(f"  {prepared.setting} seed {seed} {strategy.name:<12} labels {rec['labels']:>3}: "
                     f"Dice {rec['dice']:.3f}" + (f", pseudo {rec['pseudo']['admitted']}" if rec.get("pseudo") else ""))
    ws.close()
    return {"strategy": strategy.name, "query": strategy.query, "ssft": strategy.ssft,
            "cold_start": strategy.cold_start, "rounds": rounds}


def upper_bound(cfg: RunConfig, run_dir: Path, prepared: Prepared, seed: int, foundation: Path) -> dict:
    """Fine-tune on all pool labels: as many steps as a strategy gets in all its rounds, or the product's recipe."""
    settings = _settings_for(cfg, seed, None, cfg.profile.upper_steps, ssft=False)
    ws = _new_workspace(run_dir / "upper_bound", prepared, settings, foundation)
    annotate(ws, ws.unlabeled_ids())
    result, t_train = _finetune(ws, settings)
    rec = {"labels": len(ws.labeled_ids()), "steps": result["metrics"]["steps"], "train_seconds": t_train,
           **_evaluate(ws.current_model().path, prepared.test, settings)}
    ws.close()
    return rec


def unit_pending(cfg: RunConfig, setting: str, seed: int, evaluation: str = "test") -> dict[str, bool]:
    """What one (setting, seed) unit still has to run: ``{"arms": ..., "upper_bound": ...}``.

    Read from its unit file alone, so a rerun can skip a finished unit without
    building its foundation model.
    """
    unit = _read_unit(cfg.out / "units" / f"{cfg.unit_name(setting, seed, evaluation)}.json")
    if unit is None:
        return {"arms": True, "upper_bound": True}
    arms = cfg.foundation == "supervised" and unit.get("foundation_eval") is None
    for name in cfg.profile.strategies:
        if seed < cfg.profile.seeds_of(name):
            done = unit["strategies"].get(name)
            arms = arms or done is None or _stale(cfg, name, done)
    return {"arms": arms, "upper_bound": unit.get("upper_bound") is None}


def run_unit(cfg: RunConfig, prepared: Prepared, seed: int, foundation: Path, upper: bool = True) -> dict:
    """Every strategy of the profile and (``upper``) the upper bound, for one setting and seed.

    The partial result is rewritten after each strategy, so an interrupted run
    keeps (and on restart skips) what finished.
    """
    name_ = cfg.unit_name(prepared.setting, seed, prepared.evaluation)
    unit_path = cfg.out / "units" / f"{name_}.json"
    run_dir = cfg.out / "runs" / name_
    unit = _read_unit(unit_path) or {"setting": prepared.setting, "seed": seed, "strategies": {}, "upper_bound": None,
                                     "foundation": cfg.foundation, "evaluation": prepared.evaluation}
    if unit.get("foundation_eval") is None and cfg.foundation == "supervised":
        # where the curves start: the model trained elsewhere, on the target scanners, before any target label
        unit["foundation_eval"] = {"labels": 0, **_evaluate(foundation, prepared.test, cfg.base.replace(seed=seed))}
        write_json(unit_path, unit)
    colds: dict[tuple, ColdStart] = {}
    for name in cfg.profile.strategies:
        strategy = STRATEGIES[name]
        done = supersede_stale(cfg, unit, name)
        if done is not None or seed >= cfg.profile.seeds_of(name):
            continue
        rule = cold_start_rule(cfg, strategy)
        group = (rule, cold_ssft(cfg, strategy))
        if group not in colds:
            cfg.progress(f"  {prepared.setting} seed {seed}: cold start by {rule}" + (" with SSFT" if group[1] else ""))
            colds[group] = cold_start(cfg, run_dir, prepared, seed, rule, foundation, ssft=group[1])
        t0 = time.perf_counter()
        res = run_strategy(cfg, run_dir, prepared, seed, strategy, foundation, colds[group])
        res["cold_start"] = rule
        res["cold_ssft"] = group[1]
        res["seconds"] = time.perf_counter() - t0
        unit["strategies"][name] = res
        write_json(unit_path, unit)
    if not upper:
        return unit
    if unit["upper_bound"] is None and cfg.cold_start and not cfg.variant:
        # the upper bound does not depend on the cold start: the run without the ablation may have it
        without = dataclasses.replace(cfg, cold_start=None).unit_name(prepared.setting, seed, prepared.evaluation)
        unit["upper_bound"] = (_read_unit(cfg.out / "units" / f"{without}.json") or {}).get("upper_bound")
        if unit["upper_bound"] is not None:
            write_json(unit_path, unit)
    if unit["upper_bound"] is None:
        cfg.progress(f"  {prepared.setting} seed {seed}: upper bound (all pool labels)")
        unit["upper_bound"] = upper_bound(cfg, run_dir, prepared, seed, foundation)
        write_json(unit_path, unit)
    return unit


def supersede_stale(cfg: RunConfig, unit: dict, name: str) -> dict | None:
    """The unit's result for arm ``name``, or None when it must run (again).

    A result made before an SSFT arm's first round trained with SSFT under a
    headed foundation (:func:`cold_ssft`, a protocol change) is moved to
    ``unit["superseded"]`` (kept for the record, not reported) and runs again.
    """
    done = unit["strategies"].get(name)
    if done is not None and _stale(cfg, name, done):
        unit.setdefault("superseded", {})[name] = unit["strategies"].pop(name)
        return None
    return done


def _stale(cfg: RunConfig, name: str, done: dict) -> bool:
    """Whether arm ``name``'s finished result predates SSFT in the first round under a headed foundation."""
    return cold_ssft(cfg, STRATEGIES[name]) and not done.get("cold_ssft")


def _read_unit(path: Path) -> dict | None:
    import json
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


