"""Label efficiency on real data: ``hippo-multisite`` and ``hippo-plain`` (BENCHMARK.md).

The package: :mod:`.protocol` (constants, arms, profiles, split, target data),
:mod:`.rounds` (one (setting, seed) unit, resumable), :mod:`.summary` (means over
seeds, the table); :func:`run` here ties them together.

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

import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from ...settings import Settings
from .. import provenance, write_json
from .protocol import (EVAL_CLASSES, EVALUATIONS, FOUNDATIONS, PROFILES, SCANNERS, SETTINGS, SPLIT_SEED, SPLIT_SIZES,
                       STRATEGIES, TABLE_LABELS, TARGET_FRACTION, VALIDATION_SLICE, Prepared, Profile, Split, Strategy,
                       TargetCase, arms, assign_scanners, make_split, prepare, validation_split, write_target_folder,
                       _dataset_cases)
from .rounds import (RunConfig, annotate, cold_start, cold_start_rule, foundation_model, pretrained_model,
                     pseudo_quality, query_round, run_strategy, run_unit, summarize_dice, supervised_model,
                     unit_pending, upper_bound, _read_unit)
from .summary import curve, format_table, summarize

__all__ = ["EVAL_CLASSES", "EVALUATIONS", "FOUNDATIONS", "VALIDATION_SLICE", "cold_start_rule", "foundation_model",
           "supervised_model", "validation_split", "result_stem", "PROFILES", "SCANNERS", "SETTINGS", "SPLIT_SEED",
           "SPLIT_SIZES", "STRATEGIES",
           "TABLE_LABELS", "TARGET_FRACTION", "Prepared", "Profile", "RunConfig", "Split", "Strategy", "TargetCase",
           "annotate", "arms", "assign_scanners", "cold_start", "curve", "format_table", "make_split", "prepare",
           "pretrained_model", "pseudo_quality", "query_round", "run", "run_strategy", "run_unit", "summarize",
           "summarize_dice", "upper_bound", "write_target_folder"]


def run(data: Path, out: Path, profile: Profile, settings_names: Sequence[str] = SETTINGS,
        test_data: Path | None = None, base: Settings | None = None, jobs: int = 1,
        progress: Callable[[str], None] = print, command: list[str] | None = None,
        results: Path | None = None, report_only: bool = False, foundation: str = "self-supervised",
        evaluation: str = "test", cold_start: str | None = None, variant: str = "",
        resume_from: Path | None = None, quality_holdout: bool = False, upper_bound: bool = True) -> dict:
    """Run the benchmark and write ``label_efficiency_<profile>.json`` and ``.png`` under ``results``.

    out: the working folder (image cache, foundation models, workspaces, one
    JSON per finished (setting, seed) unit, so a rerun resumes); results:
    where the result files go (default ``out``).  Returns the result dict.
    ``jobs > 1`` runs (setting, seed) units in that many processes.
    report_only: run nothing; summarise the units (finished or partial) already in ``out``.
    foundation: ``self-supervised`` or ``supervised`` (:data:`FOUNDATIONS`).
    evaluation: ``test`` (what is reported) or ``validation`` (what method choices are tuned on).
    cold_start: an ablation: this rule replaces the DKD cold start of the ATSQ family.
    variant: a name for changes in ``base`` (an ablation): it keeps their units and results apart.
    resume_from: a result JSON of an earlier sitting of the same run (e.g. the committed one): its units are
    written into ``out`` where ``out`` has none, so a sitting on a machine without ``out`` goes on from there.
    quality_holdout: keep ``base``'s ``kfold_min_labels`` (the product's quality signal holds a fold of the labels
    out of each round's training) instead of turning it off; a ``variant`` should name it.
    upper_bound: False runs the arms only (a later run adds the upper bounds to the same units).
    """
    if foundation not in FOUNDATIONS:
        raise ValueError(f"foundation must be one of {FOUNDATIONS}, not {foundation!r}")
    from ..plotting import plot_label_efficiency
    out = Path(out)
    # the quality signal's hold-out is off unless asked for (``quality_holdout``: measure what it costs)
    base = (base or Settings()).replace(use_ssft=False, patch_size=profile.patch_size,
                                        **({} if quality_holdout else {"kfold_min_labels": 0}))
    all_ids = sorted(_dataset_cases(Path(data)))
    split = make_split(all_ids, profile.sizes)
    cfg = RunConfig(out, profile, base, progress, foundation, cold_start, variant)
    started, prov = time.perf_counter(), provenance(command)  # the commit that runs, not the one at the end
    prepared = {s: prepare(Path(data), out, s, split, test_data, evaluation) for s in settings_names}
    first = prepared[settings_names[0]]
    if resume_from is not None:
        restore_units(cfg, Path(resume_from), settings_names, evaluation, split)
    if not report_only:
        # Two passes: every seed's arms first, then the upper bounds, so that a run stopped part-way has the
        # paired arms of as many seeds as possible.  A unit with nothing left to do builds no foundation model.
        for upper in (False, True) if upper_bound else (False,):
            todo = [(seed, s) for seed in range(profile.seeds) for s in settings_names
                    if unit_pending(cfg, s, seed, evaluation)["upper_bound" if upper else "arms"]]
            if jobs > 1 and todo:
                # seed-major: the foundation of seed s+1 is built while the units of seed s run
                from concurrent.futures import ProcessPoolExecutor
                with ProcessPoolExecutor(max_workers=jobs, initializer=_unit_process_signals) as pool:
                    try:
                        futures = [pool.submit(_unit_in_process, out, profile, base, prepared[s], seed,
                                               foundation_model(cfg, seed, first), foundation, cold_start, variant,
                                               upper)
                                   for seed, s in todo]
                        for f in futures:
                            f.result()
                    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (cli): stop now, not after every queued unit
                        _stop_pool(pool)
                        raise
            else:
                for seed, s in todo:
                    run_unit(cfg, prepared[s], seed, foundation_model(cfg, seed, first), upper=upper)
    units = [u for seed in range(profile.seeds) for s in settings_names
             if (u := _read_unit(out / "units" / f"{cfg.unit_name(s, seed, evaluation)}.json")) is not None]
    summary = summarize(units)
    result = {"benchmark": "label-efficiency", "profile": asdict(profile), "settings_run": list(settings_names),
              **prov, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "protocol": {"split_seed": SPLIT_SEED, "split_sizes": SPLIT_SIZES, "scanners": SCANNERS,
                           "eval_classes": EVAL_CLASSES, "target_fraction": TARGET_FRACTION,
                           "data": str(data), "test_data": str(test_data) if test_data else None,
                           "foundation": foundation, "evaluation": evaluation, "cold_start_override": cold_start,
                           "variant": variant,
                           "validation_slice": VALIDATION_SLICE if evaluation == "validation" else None,
                           "strategies": {n: asdict(STRATEGIES[n]) for n in profile.strategies}},
              "split": split.to_dict(), "base_settings": base.to_dict(),
              "report_only": report_only,
              "wall_seconds": None if report_only else time.perf_counter() - started,
              "complete": all(u.get("upper_bound") and set(u["strategies"]) >= {n for n in profile.strategies
                                                                               if u["seed"] < profile.seeds_of(n)}
                              for u in units) and len(units) == profile.seeds * len(settings_names),
              "summary": summary, "units": units}
    stem = Path(results or out) / result_stem(profile.name, foundation, evaluation, cold_start, variant)
    # the suffix is appended, not swapped: a variant such as ``set-query_weight=0.8`` has a dot in its name
    write_json(stem.parent / f"{stem.name}.json", result)
    plot_label_efficiency(summary, stem.parent / f"{stem.name}.png",
                          title=f"label efficiency ({profile.name} profile, {foundation} foundation, {evaluation})",
                          evaluation=evaluation)
    return result


def restore_units(cfg: RunConfig, path: Path, settings_names: Sequence[str], evaluation: str, split: Split) -> int:
    """Write the units of an earlier result file into ``cfg.out/units`` where none is there; returns how many.

    The file must come from the same run: the same profile, foundation,
    evaluation, cold start, variant and split; anything else is refused, since
    its arms would not be paired with the ones this run adds.  A unit already in
    ``out`` is kept (it is at least as far along as the copy in a result file).
    """
    import json
    from ...errors import ASSFTError
    try:
        earlier = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ASSFTError(f"cannot read the earlier result {path}: {exc}",
                         hint="name a label_efficiency_*.json that a benchmark run wrote") from exc
    if not isinstance(earlier, dict) or earlier.get("benchmark") != "label-efficiency" or "units" not in earlier:
        raise ASSFTError(f"{path} is not a label-efficiency result file",
                         hint="name a label_efficiency_*.json that a benchmark run wrote")
    proto = earlier.get("protocol", {})
    theirs = {"profile": earlier.get("profile", {}).get("name"), "foundation": proto.get("foundation"),
              "evaluation": proto.get("evaluation"), "cold start": proto.get("cold_start_override"),
              "variant": proto.get("variant", ""), "split": earlier.get("split")}
    ours = {"profile": cfg.profile.name, "foundation": cfg.foundation, "evaluation": evaluation,
            "cold start": cfg.cold_start, "variant": cfg.variant, "split": split.to_dict()}
    differ = [k for k in ours if theirs[k] != ours[k]]
    if differ:
        raise ASSFTError(f"{path} comes from a different run ({', '.join(differ)} differ), so its arms would not be "
                         "paired with this run's", hint="resume from the result file of the same profile and options")
    restored = 0
    for unit in earlier["units"]:
        # only this run's settings and whole-number seeds name a unit file (a file from elsewhere picks no path)
        if not isinstance(unit, dict) or unit.get("setting") not in settings_names \
                or not isinstance(unit.get("seed"), int) or isinstance(unit.get("seed"), bool):
            continue
        target = cfg.out / "units" / f"{cfg.unit_name(unit['setting'], unit['seed'], evaluation)}.json"
        if not target.exists():
            write_json(target, unit)
            restored += 1
    cfg.progress(f"resumed {restored} (setting, seed) units from {path} (made by commit "
                 f"{str(earlier.get('commit'))[:10]}, {earlier.get('date')})")
    return restored


def result_stem(profile: str, foundation: str = "self-supervised", evaluation: str = "test",
                cold_start: str | None = None, variant: str = "") -> str:
    """``label_efficiency_<profile>``, plus the foundation, evaluation, cold start and variant where not the defaults."""
    extra = [x for x, default in ((foundation, "self-supervised"), (evaluation, "test")) if x != default]
    extra += ([f"cold-{cold_start}"] if cold_start else []) + ([variant] if variant else [])
    return "_".join(["label_efficiency", profile, *extra])


def _unit_process_signals() -> None:
    """A unit's process dies on SIGTERM and leaves Ctrl-C to the main process, which stops the whole pool.

    Inherited as is, the CLI's handlers would turn either signal into an exception that the pool hands back as
    the unit's result, and the process would go on with the next queued unit.  The arms a unit finished are
    already on disk; the one it was running starts again on the next run.
    """
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_pool(pool) -> None:
    """Cancel the queued units and terminate the running ones (``pool.shutdown`` alone waits for them)."""
    # the processes have no public handle before Python 3.14 (``terminate_workers``); taken before shutdown,
    # which forgets them
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def _unit_in_process(out: Path, profile: Profile, base: Settings, prepared: Prepared, seed: int,
                     model: Path, foundation: str, cold_start: str | None, variant: str, upper: bool = True) -> dict:
    from ...runtime import set_threads
    set_threads(1)
    return run_unit(RunConfig(out, profile, base.replace(num_threads=1), foundation=foundation,
                              cold_start=cold_start, variant=variant), prepared, seed, model, upper=upper)
