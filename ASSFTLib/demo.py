"""The main job on a built-in default: a short adaptation loop with a simulated annotator.

It uses the product's own pieces end to end (workspace, pretraining, the
scoring pass, the ATSQ ranking, label saving, SSFT fine-tuning rounds) and
only stands in for the radiologist: the "annotator" saves the reference label
of each volume the ranking asks for.  Dice is measured on held-out test cases
that the loop never sees.
"""
from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import synthetic
from .errors import ASSFTError, DatasetError
from .settings import Settings

ProgressFactory = Callable[[str], Callable[[int, int, dict], None]]


@dataclass
class DemoRound:
    round: int
    labels: int
    picked: list[str]
    pseudo_labels: int
    quality_dice: float | None
    test_dice: float
    test_dice_per_class: list[float]
    seconds: float
    test_dice_per_scanner: dict[str, float] | None = None  # synthetic data: mean Dice per acquisition profile


def _link_cases(cases, folder: Path, classes: Sequence[str]) -> Path:
    """An MSD folder of hard links to ``cases`` (a user's dataset split without copying; copies across file
    systems).  Not symbolic links: a dataset's links must stay inside it (docs/reliability.md)."""
    import json
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    entries = []
    for c in cases:
        name = c.image.name
        for src, sub in ((c.image, "imagesTr"), (c.label, "labelsTr")):
            dst = folder / sub / name
            if not dst.exists():
                try:
                    os.link(Path(src).resolve(), dst)
                except OSError:  # another file system, or no hard links there
                    shutil.copyfile(Path(src).resolve(), dst)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (folder / "dataset.json").write_text(json.dumps(
        {"name": "assft-demo-split", "labels": {str(i): n for i, n in enumerate(classes)}, "training": entries},
        indent=1))
    return folder


#: The synthetic target site: a T1 scanner unlike the other site's (mild gamma and noise) and a second,
#: T2-weighted-like sequence that the other site's T1 model cannot segment at all. The other site's model is
#: trained on ``clean`` T1 volumes. Milder shifts alone (``bias_contrast``, ``thick_slices``) leave the demo too
#: little to learn: the other site's model fine-tuned on every pool label gained only 0.05 Dice on them
#: (docs/results.md, "The demo").
SITE_PROFILES = ("gamma_noise", "t2_like")


@dataclass
class DemoData:
    """The demo's MSD folders, all with labels: the pool (labels hidden from the loop), the held-out test
    cases, and the other site's labeled source cases (None without a supervised foundation)."""

    pool: Path
    test: Path
    source: Path | None


def prepare_data(out: Path, dataset: Path | None, n_pool: int, n_test: int, seed: int,
                 n_source: int = 0) -> DemoData:
    """The demo's data under ``out / "data"``, made once and reused.

    Without ``dataset``: synthetic volumes; the pool and the test cases under
    the :data:`SITE_PROFILES` in turn (the target site), the ``n_source``
    source cases under ``clean`` only (the other site's scanner).
    With ``dataset`` (labeled MSD folder): a seeded split of its cases, linked:
    the test cases first, then the pool, then the source.
    """
    pool, test, source = out / "data" / "pool", out / "data" / "test", out / "data" / "source"
    if dataset is None:
        profiles = SITE_PROFILES
        for folder, n, made_from, shifts in ((pool, n_pool, seed, profiles), (test, n_test, seed + 1000, profiles),
                                             (source, n_source, seed + 2000, ("clean",))):
            if n and not (folder / "dataset.json").exists():
                synthetic.make_dataset(folder, n, profiles=shifts, seed=made_from)
        return DemoData(pool, test, source if n_source else None)
    from .dataset import dataset_classes, load_dataset
    cases, _problems = load_dataset(dataset)
    cases = [c for c in cases if c.label is not None]
    need = n_test + n_source + 2
    if len(cases) < need:
        raise DatasetError(f"the demo needs at least {need} labeled cases ({n_test} to test, {n_source} for the "
                           f"other site's model, 2 or more to label), found {len(cases)}", path=dataset,
                           hint="use a larger labeled MSD folder, fewer --test or --source cases, or run `assft "
                                "demo` without --dataset")
    order = np.random.default_rng(seed).permutation(len(cases))
    classes = dataset_classes(Path(dataset)) or ["background", "foreground"]
    n_pool = min(n_pool, len(cases) - n_test - n_source)
    parts = np.split(order, [n_test, n_test + n_pool, n_test + n_pool + n_source])
    test_cases, pool_cases, source_cases = ([cases[i] for i in part] for part in parts[:3])
    return DemoData(_link_cases(pool_cases, pool, classes), _link_cases(test_cases, test, classes),
                    _link_cases(source_cases, source, classes) if n_source else None)


def evaluate_cases(model_path: Path, test_folder: Path, settings: Settings, num_classes: int,
                   progress: Callable[[int, int, dict], None] | None = None) -> dict[str, np.ndarray]:
    """Per-class Dice (shape (C - 1,)) of a checkpoint on each test case, by case id."""
    from .inference import predict_label
    from .dataset import load_dataset
    from .volumes import read_volume
    from .metrics import dice_per_class
    from .models import load_model
    model = load_model(model_path, device=settings.resolved_device())
    cases, _ = load_dataset(test_folder)
    scores = {}
    for i, c in enumerate(cases):
        if progress is not None:
            progress(i, len(cases), {"case": c.case_id})
        label, _ = predict_label(model, read_volume(c.image), settings)
        scores[c.case_id] = dice_per_class(label, read_volume(c.label, kind="label").array, num_classes)
    if progress is not None:
        progress(len(cases), len(cases), {})
    return scores


def evaluate(model_path: Path, test_folder: Path, settings: Settings, num_classes: int,
             progress: Callable[[int, int, dict], None] | None = None) -> np.ndarray:
    """Per-class Dice (mean over the test cases) of a checkpoint; shape (C - 1,)."""
    return np.mean(list(evaluate_cases(model_path, test_folder, settings, num_classes, progress).values()), axis=0)


def scanner_of_cases(folder: Path) -> dict[str, str]:
    """Acquisition profile (scanner) of each case by case id, from a synthetic dataset.json ({} for other data)."""
    import json
    from .volumes import case_id_from_path
    try:
        meta = json.loads((Path(folder) / "dataset.json").read_text())
    except (OSError, ValueError):
        return {}
    entries = meta.get("training") if isinstance(meta, dict) else None
    return {case_id_from_path(e["image"]): e["profile"] for e in (entries if isinstance(entries, list) else [])
            if isinstance(e, dict) and isinstance(e.get("image"), str) and isinstance(e.get("profile"), str)}


def _scored_round(index: int, labels: int, picked: list[str], pseudo: int, quality: float | None,
                  per_case: dict[str, np.ndarray], profiles: dict[str, str], seconds: float) -> DemoRound:
    per_class = np.mean(list(per_case.values()), axis=0)
    by_scanner = None
    if profiles and set(per_case) <= set(profiles):
        by_scanner = {p: float(np.mean([per_case[c].mean() for c in per_case if profiles[c] == p]))
                      for p in dict.fromkeys(profiles[c] for c in sorted(per_case))}
    return DemoRound(index, labels, picked, pseudo, quality, float(per_class.mean()), per_class.tolist(), seconds,
                     by_scanner)


def _clear_previous_demo(ws_dir: Path, pool: Path, log: Callable[[str], None]) -> None:
    """Remove the workspace an earlier demo left in ``ws_dir`` (so the README's command reruns); refuse any other."""
    from .workspace import Workspace
    if not ws_dir.exists():
        return
    try:
        with Workspace.open(ws_dir) as old:
            is_demo = old.dataset is not None and old.dataset.resolve() == pool.resolve()
    except ASSFTError:
        is_demo = False
    if not is_demo:
        raise DatasetError("this folder holds something that is not a workspace of an earlier demo", path=ws_dir,
                           hint="pass another --out folder, or move this one away")
    log(f"replacing the earlier demo's workspace {ws_dir} (its data and foundation model are reused)")
    shutil.rmtree(ws_dir)


FOUNDATIONS = ("supervised", "self-supervised")


def run_demo(out: str | Path, dataset: str | Path | None = None, rounds: int = 3, budget: int = 2,
             n_pool: int = 16, n_test: int = 16, pretrain_steps: int = 300, steps: int = 0, seed: int = 0,
             device: str = "auto", progress: ProgressFactory | None = None,
             log: Callable[[str], None] = print, foundation: str = "supervised",
             n_source: int = 16) -> list[DemoRound]:
    """Run the loop and return one :class:`DemoRound` per round (round 0: the foundation itself, when it has
    a task head).

    foundation: ``supervised`` (default), the common case of a model trained
    elsewhere: pretrained on the unlabeled pool, then trained with the labels
    of ``n_source`` cases of another site (synthetic: the ``clean`` scanner
    only), so it segments from the start and the loop adapts it to the target
    site's scanners; ``self-supervised``: the pretrained model alone, no head.

    ``out`` is created, or reused: its data and models are kept (an
    interrupted pretraining continues), and the workspace of an earlier demo
    there is replaced, so the same command runs again.  Warnings from the
    library are said through ``log`` as notes.
    """
    if foundation not in FOUNDATIONS:
        raise ASSFTError(f"unknown foundation {foundation!r}", hint=f"use one of {', '.join(FOUNDATIONS)}")
    if foundation == "supervised" and n_source < 1:
        raise ASSFTError(f"a supervised foundation learns from labeled volumes of another site; --source is "
                         f"{n_source}", hint="pass --source 1 or more, or --foundation self-supervised")
    with warnings.catch_warnings():  # said as notes, not as Python's file:line warnings
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *a, **k: log(f"  note: {message}")  # type: ignore[assignment]
        return _run_demo(Path(out).resolve(), dataset, rounds, budget, n_pool, n_test, pretrain_steps, steps, seed,
                         device, progress or (lambda name: None), log, foundation,
                         n_source if foundation == "supervised" else 0)


def _foundation(out: Path, data: DemoData, settings: Settings, pretrain_steps: int, prog: ProgressFactory,
                log: Callable[[str], None]) -> Path:
    """The demo's foundation, made once and reused: pretrained on the pool, then (with a source) supervised."""
    from .training import pretrain, train_supervised
    from .volumes import find_volume_files
    pretrained = out / "foundation.pt"
    if pretrained.exists():
        log(f"foundation model: reusing {pretrained} (delete it to pretrain again)")
    else:
        state = pretrained.with_name(pretrained.name + ".job") / "state.pt"
        images = find_volume_files(data.pool / "imagesTr")
        log(f"foundation model: pretraining on the {len(images)} unlabeled pool volumes (masked reconstruction, "
            f"{pretrain_steps} steps)" + ("; continuing the interrupted run" if state.exists() else ""))
        pretrain(images, pretrained, settings.replace(pretrain_steps=pretrain_steps), progress=prog("pretrain"),
                 resume=state.exists())
    if data.source is None:
        return pretrained
    supervised = out / "foundation_supervised.pt"
    n_source = len(find_volume_files(data.source / "imagesTr"))
    if supervised.exists():
        log(f"the other site's model: reusing {supervised} (delete it to train again)")
    else:
        log(f"the other site's model: the foundation trained on {n_source} labeled volumes of another scanner "
            f"({data.source}), as a model trained elsewhere would come")
        train_supervised(data.source, pretrained, supervised, settings, work=out / "foundation_supervised.ws",
                         progress=prog("other site's model"))
    return supervised


def _run_demo(out: Path, dataset, rounds: int, budget: int, n_pool: int, n_test: int, pretrain_steps: int,
              steps: int, seed: int, device: str, prog: ProgressFactory,
              log: Callable[[str], None], foundation_kind: str, n_source: int) -> list[DemoRound]:
    from .scoring import rank_cases, score_cases
    from .training import finetune_round
    from .workspace import Workspace
    from .volumes import read_volume

    ws_dir = out / "workspace"
    settings = Settings(budget=budget, steps=steps, seed=seed, device=device)
    what = dataset or (f"synthetic volumes, this site's scanners {', '.join(SITE_PROFILES)}"
                       + ("; the other site's: clean" if n_source else ""))
    log(f"data: {what} in {out / 'data'}")
    data = prepare_data(out, Path(dataset) if dataset else None, n_pool, n_test, seed, n_source)
    made = set(scanner_of_cases(data.pool).values())  # a small pool holds only some of the site's profiles
    if dataset is None and not made <= set(SITE_PROFILES):
        log(f"  note: the data in {out / 'data'} were made by an earlier version of the demo ({', '.join(sorted(made))}"
            f"); delete {out} to run the current demo ({', '.join(SITE_PROFILES)})")
    test = data.test
    _clear_previous_demo(ws_dir, data.pool, log)
    foundation = _foundation(out, data, settings, pretrain_steps, prog, log)
    ws = Workspace.create(ws_dir, dataset=data.pool, settings=settings, import_labels=False)
    ws.register_model(foundation, kind="foundation")
    num_classes = len(ws.classes)
    log(f"workspace: {ws.folder} ({len(ws.cases())} unlabeled volumes, classes {', '.join(ws.classes)})")

    results: list[DemoRound] = []
    profiles = scanner_of_cases(test)
    if foundation_kind == "supervised":
        t0 = time.perf_counter()
        per_case = evaluate_cases(foundation, test, settings, num_classes, progress=prog("round 0: test"))
        results.append(_scored_round(0, 0, [], 0, None, per_case, profiles, time.perf_counter() - t0))
        log(f"round 0: the other site's model before any label of this site: test Dice {results[-1].test_dice:.3f}")
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        log(f"round {r}: scoring the {len(ws.unlabeled_ids())} unlabeled volumes with the current model")
        score_cases(ws, settings, progress=prog(f"round {r}: score"))
        table = rank_cases(ws, settings)
        picked = table.picked
        if not picked:
            log("the pool is exhausted")
            break
        for note in table.notes:
            log(f"  note: {note}")
        for cid in picked:  # the simulated annotator: reveal the reference label
            case = ws.case(cid)
            ws.save_label(cid, read_volume(case.reference_label, kind="label").array, user="simulated-annotator",
                          source="simulated")
        log(f"round {r}: labeled {', '.join(picked)} (ranked by {table.strategy}); fine-tuning on "
            f"{len(ws.labeled_ids())} labels")
        result = finetune_round(ws, settings, progress=prog(f"round {r}: fine-tune"))
        metrics = result["metrics"]
        per_case = evaluate_cases(Path(result["model_path"]), test, settings, num_classes,
                                  progress=prog(f"round {r}: test"))
        results.append(_scored_round(r, len(ws.labeled_ids()), picked, int(metrics.get("pseudo_labels") or 0),
                                     metrics.get("heldout_dice"), per_case, profiles, time.perf_counter() - t0))
        log(f"round {r}: done in {results[-1].seconds:.0f} s, test Dice {results[-1].test_dice:.3f}")
    return results


def format_table(rounds: Sequence[DemoRound], classes: Sequence[str] | None = None) -> str:
    """The per-round table the demo prints: Dice overall, per class and, on synthetic data, per scanner."""
    scanners = list(dict.fromkeys(k for r in rounds for k in (r.test_dice_per_scanner or {})))
    rows = []
    for r in rounds:
        q = "-" if r.quality_dice is None else f"{r.quality_dice:.3f}"
        names = classes[1:] if classes else [f"c{k + 1}" for k in range(len(r.test_dice_per_class))]
        per = "  ".join(f"{n}={d:.3f}" for n, d in zip(names, r.test_dice_per_class))
        by = r.test_dice_per_scanner or {}
        rows.append((f"{r.round:>5} {r.labels:>6} {r.pseudo_labels:>6} {q:>8} {r.test_dice:>9.3f}  {per}",
                     "  ".join(f"{by[k]:>{len(k)}.3f}" if k in by else " " * len(k) for k in scanners)))
    head = f"{'round':>5} {'labels':>6} {'pseudo':>6} {'quality':>8} {'test Dice':>9}  per class"
    if scanners:  # the scanner columns start after the widest per-class text, under their names
        width = max(len(head), *(len(left) for left, _ in rows)) + 2
        head = f"{head:<{width}}per scanner: " + "  ".join(scanners)
        rows = [(f"{left:<{width + len('per scanner: ')}}", right) for left, right in rows]
    lines = [head, "-" * len(head)] + [left + right for left, right in rows]
    return "\n".join(line.rstrip() for line in lines)
