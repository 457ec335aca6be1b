"""Label efficiency on real data: ``hippo-multisite`` and ``hippo-plain`` (BENCHMARK.md).

A simulated annotator runs the product's own loop: a :class:`~ASSFTLib.workspace.Workspace`
over the target pool (dataset labels kept only as hidden reference labels),
:func:`ASSFTLib.scoring.score_cases` + :func:`ASSFTLib.scoring.rank_cases` to
pick the next volumes, :meth:`Workspace.save_label` with the reference label,
and :func:`ASSFTLib.training.finetune_round` to adapt the model.  After each
round the current model is evaluated on held-out test cases with
:func:`ASSFTLib.inference.predict_probs`.

Protocol (fixed in code, written to the result file):

- split: the MSD cases, sorted by id, are permuted with :data:`SPLIT_SEED`
  into source 60 / target pool 120 / target test 40;
- scanner profiles: pool and test cases are each assigned, in exact
  proportions 60/30/10 % (largest remainder), to three scanners by a second
  permutation; each scanner applies one fixed :mod:`ASSFTLib.synthetic` shift
  to the image only (:data:`SCANNERS`); ``plain`` applies none.  The shifted
  images are written once, with the original geometry, to ``<out>/cache``;
- foundation model: the project's own self-supervised
  :func:`ASSFTLib.training.pretrain` on the 60 source images (no labels),
  one per seed, cached and shared by both settings;
- budget: a cold-start round of ``b = 2`` labels, then rounds of ``b = 2`` up
  to 10 labels; the all-labels upper bound fine-tunes on all 120 pool labels
  for as many steps as a strategy gets over all its rounds;
- the cold-start round is computed once per distinct cold-start rule and
  replayed (same labels, same checkpoint, same cached scores) into each
  strategy's workspace: strategies that need a segmentation head (entropy,
  BALD, ASD) start like random, ATSQ and ATSQ+SSFT start like DKD (SPEC.md:
  cold start uses DKD only), core-set starts with its own rule.  No SSFT in the
  cold round: there are no labeled volumes to compare with before it.
"""
from __future__ import annotations

import copy
import math
import shutil
import time
import zlib
from datetime import datetime, timezone
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import strategies
from ..errors import DatasetError
from ..metrics import dice_per_class, labels_to_reach, normalized_auc
from ..settings import Settings
from . import provenance, write_json

#: Seed of the split and scanner assignment (never varied: every seed sees the same split).
SPLIT_SEED = 20250910
#: Cases per part of the split.
SPLIT_SIZES = {"source": 60, "pool": 120, "test": 40}
#: (scanner name, synthetic.apply_shift profile, share of target cases).
SCANNERS = (("scanner_A", "gamma_noise", 0.6), ("scanner_B", "bias_contrast", 0.3), ("scanner_C", "thick_slices", 0.1))
SETTINGS = ("multisite", "plain")
#: Foreground classes whose Dice is averaged (MSD Task04: 1 anterior, 2 posterior).
EVAL_CLASSES = (1, 2)
#: Labels at which the summary table reports Dice.
TABLE_LABELS = (2, 4, 6, 10)
#: Fraction of the upper bound that "labels to reach" targets.
TARGET_FRACTION = 0.95


@dataclass(frozen=True)
class Strategy:
    """One arm of the benchmark: a query rule (``Settings.strategy``), with or without SSFT.

    cold_start: the query rule of the cold-start round (no segmentation head yet).
    """

    name: str
    query: str
    ssft: bool
    cold_start: str


def arms() -> dict[str, Strategy]:
    """The benchmark arms from the strategy registry: each benchmark strategy, then the SSFT variants."""
    entries = [s for s in strategies.REGISTRY.values() if s.benchmark]
    plain = [Strategy(s.name, s.name, False, s.cold_start) for s in entries]
    with_ssft = [Strategy(s.ssft_arm, s.name, True, s.cold_start) for s in entries if s.ssft_arm]
    return {a.name: a for a in plain + with_ssft}


STRATEGIES = arms()


@dataclass(frozen=True)
class Profile:
    """How much of the protocol to run.

    sizes: cases taken from the front of each part of the split (None: all).
    patch_size: training and sliding-window patch; (40, 56, 48) holds most
        hippocampus crops (~35x50x36, at most 43x59x47) in one window.
    rounds: query rounds after the cold start (labels = budget * (1 + rounds)).
    """

    name: str
    seeds: int
    strategies: tuple
    rounds: int
    budget: int
    pretrain_steps: int
    cold_steps: int
    round_steps: int
    sizes: dict | None
    patch_size: tuple = (40, 56, 48)
    mc_dropout_samples: int = 5

    @property
    def upper_steps(self) -> int:
        return self.cold_steps + self.rounds * self.round_steps


PROFILES = {
    "quick": Profile("quick", seeds=1, strategies=("random", "atsq", "assft"), rounds=1, budget=2,
                     pretrain_steps=6, cold_steps=6, round_steps=6,
                     sizes={"source": 6, "pool": 10, "test": 4}, patch_size=(32, 48, 32), mc_dropout_samples=2),
    # the method and its two anchors first, so that an interrupted run has them
    "full": Profile("full", seeds=3, strategies=("random", "assft", "atsq", "random+ssft", "dkd", "asd", "entropy",
                                                 "bald", "coreset"), rounds=4, budget=2,
                    pretrain_steps=300, cold_steps=60, round_steps=40, sizes=None),
}


# ----------------------------------------------------------------------------
# split and data
@dataclass
class Split:
    """Case ids per part and the scanner of each target case."""

    source: list[str]
    pool: list[str]
    test: list[str]
    scanner: dict[str, str]

    def to_dict(self) -> dict:
        return asdict(self)


def assign_scanners(case_ids: Sequence[str], rng: np.random.Generator) -> dict[str, str]:
    """Scanner of each case, in exact :data:`SCANNERS` proportions (largest remainder), permuted by ``rng``."""
    n = len(case_ids)
    shares = np.array([s for _, _, s in SCANNERS])
    counts = np.floor(shares * n).astype(int)
    for i in np.argsort(-(shares * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    names = np.repeat([name for name, _, _ in SCANNERS], counts)
    return dict(zip(case_ids, rng.permutation(names).tolist()))


def make_split(case_ids: Sequence[str], sizes: dict | None = None, seed: int = SPLIT_SEED) -> Split:
    """The fixed split of ``case_ids`` (any order) into source / pool / test, with scanners.

    sizes: optional smaller counts per part, taken from the front of the full
    split (the quick profile); the full split needs 220 cases.
    """
    ids = sorted(case_ids)
    need = sum(SPLIT_SIZES.values())
    if len(ids) < need:
        raise DatasetError(f"the benchmark split needs {need} cases, the dataset has {len(ids)}",
                           hint="use the MSD Task04_Hippocampus training set (220 cases)")
    rng = np.random.default_rng(seed)
    perm = [ids[i] for i in rng.permutation(len(ids))]
    a, b = SPLIT_SIZES["source"], SPLIT_SIZES["source"] + SPLIT_SIZES["pool"]
    source, pool, test = perm[:a], perm[a:b], perm[b:need]
    scanner = {**assign_scanners(pool, rng), **assign_scanners(test, rng)}
    if sizes:
        source, pool, test = source[:sizes["source"]], pool[:sizes["pool"]], test[:sizes["test"]]
        scanner = {c: scanner[c] for c in pool + test}
    return Split(source, pool, test, scanner)


def _shift_rng(case_id: str) -> np.random.Generator:
    """The fixed random stream of one case's acquisition shift."""
    return np.random.default_rng([SPLIT_SEED, zlib.crc32(case_id.encode())])


def _shift_profile(setting: str, scanner: str) -> str | None:
    if setting == "plain":
        return None
    return {name: prof for name, prof, _ in SCANNERS}[scanner]


@dataclass
class TargetCase:
    """A target case as the benchmark uses it: (shifted) image, hidden truth, scanner."""

    case_id: str
    image: Path
    label: Path
    scanner: str


def write_target_folder(folder: Path, cases: Sequence, scanner: dict[str, str], setting: str) -> list[TargetCase]:
    """Write ``cases`` (``dataset.DatasetCase``) as an MSD folder of (shifted) images and their labels.

    Images get the scanner's shift (none for ``plain``), labels are copied;
    geometry is the original's.  Files already present are kept (the cache).
    """
    import json

    from ..volumes import read_volume, write_volume
    from ..fileutil import atomic_write_text
    out = []
    for c in cases:
        img_path = folder / "imagesTr" / f"{c.case_id}.nii.gz"
        lab_path = folder / "labelsTr" / f"{c.case_id}.nii.gz"
        if not img_path.exists():
            vol = read_volume(c.image, kind="image")
            profile = _shift_profile(setting, scanner[c.case_id])
            array = vol.array
            if profile is not None:
                from .. import synthetic
                array = synthetic.apply_shift(array, profile, _shift_rng(c.case_id))
            write_volume(img_path, np.asarray(array, np.float32), vol.affine)
        if not lab_path.exists():
            lab = read_volume(c.label, kind="label")
            write_volume(lab_path, lab.array, lab.affine)
        out.append(TargetCase(c.case_id, img_path, lab_path, scanner[c.case_id]))
    meta = {"name": f"hippo-{setting}", "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
            "numTraining": len(out),
            "training": [{"image": f"./imagesTr/{t.case_id}.nii.gz", "label": f"./labelsTr/{t.case_id}.nii.gz"}
                         for t in out]}
    atomic_write_text(folder / "dataset.json", json.dumps(meta, indent=1) + "\n")
    return out


@dataclass
class Prepared:
    """Everything one setting needs: source images, the pool folder, the test cases."""

    setting: str
    source_images: list[Path]
    pool_folder: Path
    pool: list[TargetCase]
    test: list[TargetCase]


def _dataset_cases(folder: Path) -> dict:
    from ..dataset import load_dataset
    cases, _ = load_dataset(folder)
    labeled = {c.case_id: c for c in cases if c.label is not None}
    if not labeled:
        raise DatasetError("no labeled cases found", path=folder,
                           hint="the benchmark needs an MSD folder with labelsTr/")
    return labeled


def prepare(data: Path, out: Path, setting: str, split: Split, test_data: Path | None = None) -> Prepared:
    """Write (or reuse) the cached target folders of one setting."""
    cases = _dataset_cases(data)
    cache = out / "cache" / setting
    pool = write_target_folder(cache / "pool", [cases[c] for c in split.pool], split.scanner, setting)
    if test_data is None:
        test = write_target_folder(cache / "test", [cases[c] for c in split.test], split.scanner, setting)
    else:
        ext = _dataset_cases(test_data)
        ids = sorted(ext)
        scanner = assign_scanners(ids, np.random.default_rng(SPLIT_SEED + 1))
        test = write_target_folder(cache / "test_external", [ext[c] for c in ids], scanner, setting)
    return Prepared(setting, [cases[c].image for c in split.source], cache / "pool", pool, test)


# ----------------------------------------------------------------------------
# one seed
@dataclass
class RunConfig:
    """Run-wide choices: where, how much, with which base settings."""

    out: Path
    profile: Profile
    base: Settings
    progress: Callable[[str], None] = print


def _settings_for(cfg: RunConfig, seed: int, strategy: Strategy | None, steps: int, ssft: bool) -> Settings:
    query = strategy.query if strategy is not None else "random"
    mc = cfg.profile.mc_dropout_samples if strategies.get(query).mc_dropout else 0
    return cfg.base.replace(seed=seed, strategy=query, steps=steps, use_ssft=ssft, budget=cfg.profile.budget,
                            mc_dropout_samples=mc)


def pretrained_model(cfg: RunConfig, seed: int, source_images: Sequence[Path]) -> Path:
    """The foundation model of one seed: ``pretrain`` on the source images, cached by its inputs."""
    from ..training import pretrain
    key = zlib.crc32(("|".join(map(str, source_images)) + f"|{cfg.profile.pretrain_steps}|{seed}").encode())
    path = cfg.out / "cache" / "foundation" / f"pretrained_seed{seed}_{key:08x}.pt"
    if not path.exists():
        cfg.progress(f"pretraining the foundation model (seed {seed}, {len(source_images)} source images)")
        settings = cfg.base.replace(seed=seed, steps=cfg.profile.pretrain_steps)
        pretrain([Path(p) for p in source_images], path, settings)
    return path


def _new_workspace(folder: Path, prepared: Prepared, settings: Settings, foundation: Path):
    from ..workspace import Workspace
    if folder.exists():
        shutil.rmtree(folder)
    ws = Workspace.create(folder, dataset=prepared.pool_folder, settings=settings, import_labels=False)
    ws.register_model(foundation, kind="foundation")
    return ws


def annotate(ws, case_ids: Sequence[str]) -> None:
    """The simulated annotator: save each case's hidden reference label as its label."""
    from ..volumes import read_volume
    for cid in case_ids:
        ref = read_volume(ws.case(cid).reference_label, kind="label")
        ws.save_label(cid, ref.array, affine=ref.affine, user="simulated-annotator", source="benchmark")


def query_round(ws, settings: Settings) -> list[str]:
    """Score the pool with the current model (cached) and return the ``budget`` case ids the product ranks first.

    Every strategy scores: ``rank_cases`` ranks cached cases only, and SSFT
    reads the same cache for confidence and embeddings.
    """
    from .. import scoring
    scoring.score_cases(ws, settings=settings)
    return list(scoring.rank_cases(ws, settings=settings).picked)[: settings.budget]


def _evaluate(model_path: Path, test: Sequence[TargetCase], settings: Settings) -> dict:
    """Test Dice of one checkpoint: mean over :data:`EVAL_CLASSES`, overall, per class and per scanner."""
    from ..volumes import read_volume
    from ..inference import predict_probs
    from ..models import load_model
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
    from ..volumes import read_volume
    from ..inference import predict_probs
    from ..models import load_model
    from ..ssft import pseudo_target
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
    from ..training import finetune_round
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


def cold_start(cfg: RunConfig, run_dir: Path, prepared: Prepared, seed: int, rule: str,
               foundation: Path) -> ColdStart:
    """The cold-start round for one rule: query b volumes with the foundation, label, fine-tune (no SSFT)."""
    settings = _settings_for(cfg, seed, STRATEGIES[rule], cfg.profile.cold_steps, ssft=False)
    ws = _new_workspace(run_dir / f"cold_{rule}", prepared, settings, foundation)
    t0 = time.perf_counter()
    picked = query_round(ws, settings)
    t_query = time.perf_counter() - t0
    annotate(ws, picked)
    _, t_train = _finetune(ws, settings)
    model = ws.current_model().path
    record = {"round": 0, "labels": len(picked), "picked": picked, "query_seconds": t_query,
              "train_seconds": t_train, **_evaluate(model, prepared.test, settings)}
    ws.close()
    return ColdStart(picked, model, {}, record)


def _replay(ws, cold: ColdStart) -> None:
    """Put a cold-start round's labels, model and cached scores into a fresh workspace."""
    annotate(ws, cold.picked)
    model = ws.register_model(cold.model, kind="finetuned", metrics={"replayed_cold_start": True})
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
        rounds.append(rec)
        cfg.progress(f"  {prepared.setting} seed {seed} {strategy.name:<12} labels {rec['labels']:>3}: "
                     f"Dice {rec['dice']:.3f}" + (f", pseudo {rec['pseudo']['admitted']}" if rec.get("pseudo") else ""))
    ws.close()
    return {"strategy": strategy.name, "query": strategy.query, "ssft": strategy.ssft,
            "cold_start": strategy.cold_start, "rounds": rounds}


def upper_bound(cfg: RunConfig, run_dir: Path, prepared: Prepared, seed: int, foundation: Path) -> dict:
    """Fine-tune on all pool labels for as many steps as a strategy gets in all its rounds."""
    settings = _settings_for(cfg, seed, None, cfg.profile.upper_steps, ssft=False)
    ws = _new_workspace(run_dir / "upper_bound", prepared, settings, foundation)
    annotate(ws, ws.unlabeled_ids())
    _, t_train = _finetune(ws, settings)
    rec = {"labels": len(ws.labeled_ids()), "steps": settings.steps, "train_seconds": t_train,
           **_evaluate(ws.current_model().path, prepared.test, settings)}
    ws.close()
    return rec


def run_unit(cfg: RunConfig, prepared: Prepared, seed: int, foundation: Path) -> dict:
    """Every strategy of the profile and the upper bound, for one setting and seed.

    The partial result is rewritten after each strategy, so an interrupted run
    keeps (and on restart skips) what finished.
    """
    unit_path = cfg.out / "units" / f"{prepared.setting}_seed{seed}.json"
    run_dir = cfg.out / "runs" / f"{prepared.setting}_seed{seed}"
    unit = _read_unit(unit_path) or {"setting": prepared.setting, "seed": seed, "strategies": {}, "upper_bound": None}
    colds: dict[str, ColdStart] = {}
    for name in cfg.profile.strategies:
        if name in unit["strategies"]:
            continue
        strategy = STRATEGIES[name]
        if strategy.cold_start not in colds:
            cfg.progress(f"  {prepared.setting} seed {seed}: cold start by {strategy.cold_start}")
            colds[strategy.cold_start] = cold_start(cfg, run_dir, prepared, seed, strategy.cold_start, foundation)
        t0 = time.perf_counter()
        res = run_strategy(cfg, run_dir, prepared, seed, strategy, foundation, colds[strategy.cold_start])
        res["seconds"] = time.perf_counter() - t0
        unit["strategies"][name] = res
        write_json(unit_path, unit)
    if unit["upper_bound"] is None:
        cfg.progress(f"  {prepared.setting} seed {seed}: upper bound (all pool labels)")
        unit["upper_bound"] = upper_bound(cfg, run_dir, prepared, seed, foundation)
        write_json(unit_path, unit)
    return unit


def _read_unit(path: Path) -> dict | None:
    import json
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------
# summary
def curve(strategy_result: dict) -> tuple[np.ndarray, np.ndarray]:
    """(labels, test Dice) of one strategy's rounds."""
    rounds = strategy_result["rounds"]
    return np.array([r["labels"] for r in rounds], float), np.array([r["dice"] for r in rounds], float)


def summarize(units: Sequence[dict]) -> dict:
    """Per setting and strategy: mean and spread over seeds of every reported figure.

    nAUC: normalised area under Dice vs labels (:func:`metrics.normalized_auc`);
    labels_to_95: first label count reaching 95 % of the same seed's upper bound
    (None in a seed where it is never reached; ``reached`` counts the seeds that did).
    """
    out: dict = {}
    for setting in sorted({u["setting"] for u in units}):
        mine = [u for u in units if u["setting"] == setting]
        uppers = [u["upper_bound"]["dice"] for u in mine if u.get("upper_bound")]
        entry = {"seeds": [u["seed"] for u in mine], "upper_bound": _mean_sd(uppers),
                 "upper_bound_labels": max((u["upper_bound"]["labels"] for u in mine if u.get("upper_bound")),
                                           default=None), "strategies": {}}
        names = [n for n in STRATEGIES if any(n in u["strategies"] for u in mine)]
        for name in names:
            per_seed = [(u, u["strategies"][name]) for u in mine if name in u["strategies"]]
            labels, _ = curve(per_seed[0][1])
            dices = np.array([curve(s)[1] for _, s in per_seed])
            nauc = [normalized_auc(*curve(s)) for _, s in per_seed]
            reach = [labels_to_reach(*curve(s), TARGET_FRACTION * u["upper_bound"]["dice"])
                     for u, s in per_seed if u.get("upper_bound")]
            scanners = sorted({k for _, s in per_seed for r in s["rounds"] for k in r["dice_per_scanner"]})
            per_scanner = {k: _mean_sd_curve([[r["dice_per_scanner"].get(k, math.nan) for r in s["rounds"]]
                                              for _, s in per_seed]) for k in scanners}
            pseudo = [[(r.get("pseudo") or {}).get("admitted") for r in s["rounds"]] for _, s in per_seed]
            pseudo_dice = [[(r.get("pseudo") or {}).get("mean_dice") for r in s["rounds"]] for _, s in per_seed]
            entry["strategies"][name] = {
                "n_seeds": len(per_seed), "labels": labels.tolist(),
                "dice_mean": dices.mean(axis=0).tolist(), "dice_sd": dices.std(axis=0).tolist(),
                "dice_per_scanner": per_scanner,
                "nauc": _mean_sd(nauc),
                "dice_at": {str(n): _mean_sd(dices[:, labels == n].ravel().tolist()) for n in TABLE_LABELS
                            if n in labels},
                "labels_to_95": {"per_seed": reach, "reached": sum(r is not None for r in reach),
                                 "mean_when_reached": _mean_or_none([r for r in reach if r is not None])},
                "pseudo_admitted": pseudo if STRATEGIES[name].ssft else None,
                "pseudo_mean_dice": pseudo_dice if STRATEGIES[name].ssft else None,
            }
        out[setting] = entry
    return out


def _mean_sd(values: Sequence[float]) -> dict:
    v = np.asarray([x for x in values if x is not None], float)
    return {"mean": float(v.mean()) if v.size else None, "sd": float(v.std()) if v.size else None, "n": int(v.size)}


def _mean_sd_curve(rows: Sequence[Sequence[float]]) -> dict:
    a = np.asarray(rows, float)
    return {"mean": np.nanmean(a, axis=0).tolist(), "sd": np.nanstd(a, axis=0).tolist()}


def _mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def format_table(summary: dict) -> str:
    """The printed summary: nAUC, Dice at 2/4/6/10 labels and labels to 95 % of the upper bound."""
    lines = []
    for setting, entry in summary.items():
        ub = entry["upper_bound"]
        ub_text = "n/a" if ub["mean"] is None else f"{ub['mean']:.3f} ± {ub['sd']:.3f}"
        lines.append(f"hippo-{setting}  (seeds {entry['seeds']}, upper bound with all pool labels: Dice {ub_text})")
        head = f"  {'strategy':<12} {'nAUC':>13}" + "".join(f" {'Dice@' + str(n):>13}" for n in TABLE_LABELS)
        lines.append(head + f" {'labels→95%UB':>14}")
        for name, s in entry["strategies"].items():
            row = f"  {name:<12} {_fmt(s['nauc']):>13}"
            for n in TABLE_LABELS:
                row += f" {_fmt(s['dice_at'].get(str(n))):>13}"
            reach = s["labels_to_95"]
            text = (f"{reach['mean_when_reached']:.0f} ({reach['reached']}/{s['n_seeds']})"
                    if reach["reached"] else f"> {int(max(s['labels']))} (0/{s['n_seeds']})")
            lines.append(row + f" {text:>14}")
        lines.append("")
    return "\n".join(lines)


def _fmt(stat: dict | None) -> str:
    if not stat or stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.3f}±{stat['sd']:.3f}"


# ----------------------------------------------------------------------------
# entry point
def run(data: Path, out: Path, profile: Profile, settings_names: Sequence[str] = SETTINGS,
        test_data: Path | None = None, base: Settings | None = None, jobs: int = 1,
        progress: Callable[[str], None] = print, command: list[str] | None = None,
        results: Path | None = None, report_only: bool = False) -> dict:
    """Run the benchmark and write ``label_efficiency_<profile>.json`` and ``.png`` under ``results``.

    out: the working folder (image cache, foundation models, workspaces, one
    JSON per finished (setting, seed) unit, so a rerun resumes); results:
    where the result files go (default ``out``).  Returns the result dict.
    ``jobs > 1`` runs (setting, seed) units in that many processes.
    report_only: run nothing; summarise the units (finished or partial) already in ``out``.
    """
    from .plotting import plot_label_efficiency
    out = Path(out)
    base = (base or Settings()).replace(use_ssft=False, kfold_min_labels=0, patch_size=profile.patch_size)
    all_ids = sorted(_dataset_cases(Path(data)))
    split = make_split(all_ids, profile.sizes)
    cfg = RunConfig(out, profile, base, progress)
    started, prov = time.perf_counter(), provenance(command)  # the commit that runs, not the one at the end
    prepared = {s: prepare(Path(data), out, s, split, test_data) for s in settings_names}
    source = prepared[settings_names[0]].source_images
    if report_only:
        units = [u for seed in range(profile.seeds) for s in settings_names
                 if (u := _read_unit(out / "units" / f"{s}_seed{seed}.json")) is not None]
    elif jobs > 1:
        # seed-major: the foundation of seed s+1 is pretrained while the units of seed s run
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = []
            for seed in range(profile.seeds):
                foundation = pretrained_model(cfg, seed, source)
                futures += [pool.submit(_unit_in_process, out, profile, base, prepared[s], seed, foundation)
                            for s in settings_names]
            units = [f.result() for f in futures]
    else:
        units = [run_unit(cfg, prepared[s], seed, pretrained_model(cfg, seed, source))
                 for seed in range(profile.seeds) for s in settings_names]
    summary = summarize(units)
    result = {"benchmark": "label-efficiency", "profile": asdict(profile), "settings_run": list(settings_names),
              **prov, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "protocol": {"split_seed": SPLIT_SEED, "split_sizes": SPLIT_SIZES, "scanners": SCANNERS,
                           "eval_classes": EVAL_CLASSES, "target_fraction": TARGET_FRACTION,
                           "data": str(data), "test_data": str(test_data) if test_data else None,
                           "strategies": {n: asdict(STRATEGIES[n]) for n in profile.strategies}},
              "split": split.to_dict(), "base_settings": base.to_dict(),
              "report_only": report_only,
              "wall_seconds": None if report_only else time.perf_counter() - started,
              "complete": all(u.get("upper_bound") and len(u["strategies"]) == len(profile.strategies)
                              for u in units) and len(units) == profile.seeds * len(settings_names),
              "summary": summary, "units": units}
    stem = Path(results or out) / f"label_efficiency_{profile.name}"
    write_json(stem.with_suffix(".json"), result)
    plot_label_efficiency(summary, stem.with_suffix(".png"), title=f"label efficiency ({profile.name} profile)")
    return result


def _unit_in_process(out: Path, profile: Profile, base: Settings, prepared: Prepared, seed: int,
                     foundation: Path) -> dict:
    import torch
    torch.set_num_threads(1)
    return run_unit(RunConfig(out, profile, base.replace(num_threads=1)), prepared, seed, foundation)
