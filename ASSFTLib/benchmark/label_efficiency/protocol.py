"""The fixed protocol of the label-efficiency benchmark: constants, arms, profiles, split, target data.

Everything a result file names as its protocol lives here; nothing here runs a
network.  The target folders (shifted images, hidden labels) are written once
and cached under ``<out>/cache``.
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ... import strategies
from ...errors import DatasetError


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
#: Pool cases held out as the validation split (``--evaluate validation``): the same cases the
#: recipe sweep validated on.  Method choices are tuned there, never on the test cases.
VALIDATION_SLICE = (80, 100)
#: Where the curves are evaluated: on the test cases (reported), or on the validation split
#: (for tuning; the pool then loses those cases).
EVALUATIONS = ("test", "validation")
#: The foundation model every arm starts from (both are measured):
#: self-supervised: ``pretrain`` on the source images, no labels, no head (the paper's setting);
#: supervised: that model then fine-tuned with labels on the (unshifted) source cases, so it has a
#: head from round 0: a model trained elsewhere, adapted to the shifted target scanners.
FOUNDATIONS = ("self-supervised", "supervised")


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


#: An ablation arm, in no profile's default list: ASSFT with random in place of the ATSQ query (the same
#: cold start and SSFT), so that ASSFT minus it is what the query of the later rounds adds.
RANDOM_QUERY_ARM = Strategy("assft-random-query", "random", True, "typical")

STRATEGIES = {**arms(), RANDOM_QUERY_ARM.name: RANDOM_QUERY_ARM}


@dataclass(frozen=True)
class Profile:
    """How much of the protocol to run.

    sizes: cases taken from the front of each part of the split (None: all).
    patch_size: training and sliding-window patch; (40, 56, 48) holds most
        hippocampus crops (~35x50x36, at most 43x59x47) in one window.
    rounds: query rounds after the cold start (labels = budget * (1 + rounds)).
    cold_steps, round_steps: fine-tuning steps of the cold-start round and of
        each later round; 0 (the converged profiles) trains with the product's
        own automatic recipe (``Settings.round_steps``), as a user's rounds do.
    settings: the settings (``multisite``, ``plain``) the profile runs by default.
    supervised_steps: training steps of the supervised foundation on the labeled
        source cases (0: the product's automatic recipe).
    arm_seeds: fewer seeds for some arms (the weaker baselines), the first ones of ``seeds``.
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
    settings: tuple = SETTINGS
    supervised_steps: int = 0
    arm_seeds: dict | None = None

    def seeds_of(self, strategy: str) -> int:
        """Seeds a strategy runs: ``arm_seeds`` where it names it, else all of ``seeds``."""
        return min(self.seeds, (self.arm_seeds or {}).get(strategy, self.seeds))

    @property
    def upper_steps(self) -> int:
        """Steps of the all-labels upper bound: all the rounds' steps, or 0 (automatic) with the product recipe."""
        if not self.cold_steps or not self.round_steps:
            return 0
        return self.cold_steps + self.rounds * self.round_steps


PROFILES = {
    "quick": Profile("quick", seeds=1, strategies=("random", "atsq", "assft"), rounds=1, budget=2,
                     pretrain_steps=6, cold_steps=6, round_steps=6,
                     sizes={"source": 6, "pool": 10, "test": 4}, patch_size=(32, 48, 32), mc_dropout_samples=2,
                     supervised_steps=6),
    # a re-check in the converged regime (the product's recipe, at its default patch) on 2 cores
    "medium": Profile("medium", seeds=2, strategies=("random", "coreset", "assft"), rounds=4, budget=2,
                      pretrain_steps=1000, cold_steps=0, round_steps=0, sizes=None, settings=("multisite",),
                      patch_size=(32, 48, 32)),
    # the method and its two anchors first, so that an interrupted run has them; 5 seeds for the method, its
    # parts and the two anchors, 3 for the other baselines
    "full": Profile("full", seeds=5, strategies=("random", "assft", "atsq", "coreset", "asd", "random+ssft", "dkd",
                                                 "entropy", "bald"), rounds=4, budget=2,
                    pretrain_steps=1000, cold_steps=0, round_steps=0, sizes=None,
                    arm_seeds={"random+ssft": 3, "dkd": 3, "entropy": 3, "bald": 3}),
}


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

    from ...volumes import read_volume, write_volume
    from ...fileutil import atomic_write_text
    out = []
    for c in cases:
        img_path = folder / "imagesTr" / f"{c.case_id}.nii.gz"
        lab_path = folder / "labelsTr" / f"{c.case_id}.nii.gz"
        if not img_path.exists():
            vol = read_volume(c.image, kind="image")
            profile = _shift_profile(setting, scanner[c.case_id])
            array = vol.array
            if profile is not None:
                from ... import synthetic
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
    """Everything one setting needs: source images, the pool folder, the evaluation cases.

    test: the cases the curves are evaluated on (the test split, or the validation split).
    source_folder: the source cases with their labels, unshifted (the supervised foundation's data).
    """

    setting: str
    source_images: list[Path]
    pool_folder: Path
    pool: list[TargetCase]
    test: list[TargetCase]
    source_folder: Path | None = None
    evaluation: str = "test"


def _dataset_cases(folder: Path) -> dict:
    from ...dataset import load_dataset
    cases, _ = load_dataset(folder)
    labeled = {c.case_id: c for c in cases if c.label is not None}
    if not labeled:
        raise DatasetError("no labeled cases found", path=folder,
                           hint="the benchmark needs an MSD folder with labelsTr/")
    return labeled


def validation_split(split: Split) -> tuple[list[str], list[str]]:
    """(pool, validation) case ids of the validation mode: :data:`VALIDATION_SLICE` of the pool held out.

    A pool smaller than the slice (the quick profile) holds out its last fifth.
    """
    a, b = VALIDATION_SLICE
    if len(split.pool) < b:
        k = max(1, len(split.pool) // 5)
        return split.pool[:-k], split.pool[-k:]
    return split.pool[:a] + split.pool[b:], split.pool[a:b]


def prepare(data: Path, out: Path, setting: str, split: Split, test_data: Path | None = None,
            evaluation: str = "test") -> Prepared:
    """Write (or reuse) the cached target folders of one setting.

    evaluation: ``test`` evaluates on the test split (or ``test_data``);
    ``validation`` on :data:`VALIDATION_SLICE` of the pool, which the pool then lacks.
    """
    if evaluation not in EVALUATIONS:
        raise ValueError(f"evaluation must be one of {EVALUATIONS}, not {evaluation!r}")
    cases = _dataset_cases(data)
    cache = out / "cache" / setting
    source_folder = out / "cache" / "source_labeled"
    write_target_folder(source_folder, [cases[c] for c in split.source], {c: SCANNERS[0][0] for c in split.source},
                        "plain")
    if evaluation == "validation":
        if test_data is not None:
            raise ValueError("--test-data evaluates on other cases; it cannot be combined with validation")
        pool_ids, val_ids = validation_split(split)
        pool = write_target_folder(cache / "pool_dev", [cases[c] for c in pool_ids], split.scanner, setting)
        val = write_target_folder(cache / "validation", [cases[c] for c in val_ids], split.scanner, setting)
        return Prepared(setting, [cases[c].image for c in split.source], cache / "pool_dev", pool, val,
                        source_folder, evaluation)
    pool = write_target_folder(cache / "pool", [cases[c] for c in split.pool], split.scanner, setting)
    if test_data is None:
        test = write_target_folder(cache / "test", [cases[c] for c in split.test], split.scanner, setting)
    else:
        ext = _dataset_cases(test_data)
        ids = sorted(ext)
        scanner = assign_scanners(ids, np.random.default_rng(SPLIT_SEED + 1))
        test = write_target_folder(cache / "test_external", [ext[c] for c in ids], scanner, setting)
    return Prepared(setting, [cases[c].image for c in split.source], cache / "pool", pool, test, source_folder)


