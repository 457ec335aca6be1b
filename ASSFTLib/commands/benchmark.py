"""`assft benchmark`: label efficiency on real data, speed and scale (``../shared/BENCHMARK.md``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("benchmark", help="run the label-efficiency or speed benchmark",
                       description="Benchmarks that write a JSON file of every number (with the machine, command, "
                                   "date and commit), a plot, and print a table.")
    bsub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    bsub.required = True

    le = bsub.add_parser("label-efficiency", help="simulated annotator on an MSD dataset (hippo-multisite/plain)",
                         description="A simulated annotator runs ASSFT's own loop (workspace, scoring, ranking, "
                                     "fine-tuning rounds) for each query strategy and reports test Dice vs labels.")
    le.add_argument("--data", required=True, type=Path, help="MSD-layout folder (e.g. Task04_Hippocampus)")
    le.add_argument("--test-data", type=Path, help="evaluate on this MSD-layout folder instead, with the same shifts")
    le.add_argument("--profile", choices=("quick", "medium", "full"), default="quick",
                    help="quick: CI-sized check; medium: random, core-set and ASSFT on multisite, 2 seeds, the "
                         "product's converged recipe (about 45 min on 2 cores); full: every arm (default: %(default)s)")
    le.add_argument("--setting", choices=("multisite", "plain", "both"),
                    help="multisite: three scanner shifts on the target; plain: none (default: the profile's; "
                         "quick and full run both)")
    le.add_argument("--foundation", choices=("self-supervised", "supervised"), default="self-supervised",
                    help="the model every arm starts from: self-supervised (pretrained on the source images, no "
                         "head) or supervised (then trained with the source cases' labels: a model from another "
                         "site, with a head from round 0) (default: %(default)s)")
    le.add_argument("--evaluate", choices=("test", "validation"), default="test",
                    help="test: the reported test cases; validation: 20 pool cases held out for tuning method "
                         "choices (the pool loses them) (default: %(default)s)")
    le.add_argument("--cold-start", metavar="RULE",
                    help="an ablation: this rule (a strategy that needs no head, e.g. dkd, random, coreset) "
                         "replaces the cold start of ATSQ, ASSFT and DKD with the self-supervised foundation "
                         "(default: typical for ATSQ and ASSFT, dkd for DKD)")
    le.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="an ablation: change one setting of every arm (repeatable; e.g. diversity_scale=rank); "
                         "the run's units and result files are named after the changes. The quality signal's "
                         "hold-out is off in the benchmark unless set (kfold_min_labels=5: what users get)")
    le.add_argument("--out", type=Path, default=Path("runs/benchmark"), help="output folder (results and cache)")
    le.add_argument("--results", type=Path, help="folder for the result JSON and PNG (default: --out)")
    le.add_argument("--seeds", type=int, help="number of seeds (default: the profile's)")
    le.add_argument("--strategies", help="comma-separated subset of the profile's strategies")
    le.add_argument("--rounds", type=int, help="query rounds after the cold start (default: the profile's)")
    le.add_argument("--pretrain-steps", type=int, help="pretraining steps of the foundation model")
    le.add_argument("--cold-steps", type=int, help="fine-tuning steps of the cold-start round (0: the product's "
                                                   "automatic recipe)")
    le.add_argument("--round-steps", type=int, help="fine-tuning steps of each later round (0: automatic)")
    le.add_argument("--report-only", action="store_true",
                    help="run nothing: summarise the (setting, seed) units already finished in --out")
    le.add_argument("--resume-from", type=Path, metavar="RESULT_JSON",
                    help="go on from an earlier sitting's result file (e.g. the committed "
                         "docs/results/label_efficiency_full.json): its finished units are copied into --out "
                         "where --out has none; a file from other options or another split is refused")
    le.add_argument("--no-upper-bound", dest="upper_bound", action="store_false",
                    help="run the arms only, not the all-labels upper bound (a later run without this adds it)")
    le.add_argument("--jobs", type=int, default=1, help="(setting, seed) units run in parallel processes")
    le.add_argument("--threads", type=int, default=2, help="torch threads per process (default 2)")
    le.set_defaults(func=run)

    sp = bsub.add_parser("speed", help="scoring, re-ranking and fine-tuning speed as ratios",
                         description="Scoring volumes/s (full ATSQ scoring vs plain sliding-window passes vs MONAI "
                                     "Label's 5-pass MC-dropout), re-ranking 1,000 cached volumes, fine-tuning "
                                     "steps/s and peak memory, and one large CT-sized volume.")
    sp.add_argument("--out", type=Path, default=Path("runs/benchmark"), help="output folder")
    sp.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    sp.add_argument("--volumes", type=int, default=8, help="volumes scored per method")
    sp.add_argument("--volume-size", default="36,50,36", help="size of the scored volumes (X,Y,Z)")
    sp.add_argument("--pool", type=int, default=1000, help="cached volumes to re-rank")
    sp.add_argument("--train-steps", type=int, default=20, help="timed fine-tuning steps")
    sp.add_argument("--large-size", default="512,512,300",
                    help="size of the large volume (X,Y,Z), or 'none' to skip it")
    sp.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    sp.set_defaults(func=run)

    sc = bsub.add_parser("scale", help="CT-like pools of 8, 32 and 128 volumes: peak memory, volumes per hour",
                         description="A real workspace over synthetic abdominal CTs (int16 HU) per pool size: one "
                                     "fine-tuning round on every volume and scoring of a few, each unit in its own "
                                     "process (peak RSS, seconds), plus one 512x512x300 CT scored against its bare "
                                     "network passes. Resumable: a rerun skips finished units.")
    sc.add_argument("--out", type=Path, default=Path("runs/benchmark"), help="folder for scale_cpu.json")
    sc.add_argument("--work", type=Path, default=Path("runs/scale"), help="folder for the pool, workspaces, state")
    sc.add_argument("--pools", default="8,32,128", help="pool sizes (default: %(default)s)")
    sc.add_argument("--shape", default="192,192,128",
                    help="pool volume size X,Y,Z at 1.5x1.5x2 mm, or one per pool separated by '/'")
    sc.add_argument("--only", help="run only these unit kinds (comma-separated: data,train,score,clinical)")
    sc.add_argument("--clinical-shape", default="512,512,300", help="the clinical CT scored (0.8x0.8x1 mm), or none")
    sc.add_argument("--steps", type=int, default=20, help="fine-tuning steps per round")
    sc.add_argument("--score-volumes", type=int, default=2, help="volumes scored per pool")
    sc.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    sc.set_defaults(func=run)


def _size(text: str) -> tuple[int, int, int] | None:
    if text.lower() == "none":
        return None
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 3 or min(parts) < 1:
        from ..errors import ASSFTError
        raise ASSFTError(f"size {text!r} must be three positive integers X,Y,Z", hint="for example 512,512,300")
    return parts


def _overrides(base, pairs: list) -> tuple:
    """``base`` with ``KEY=VALUE`` changes (values read as JSON where they parse, else as text) and their name."""
    import json

    from ..errors import ASSFTError
    changes = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ASSFTError(f"--set {pair!r} is not KEY=VALUE", hint="for example --set diversity_scale=rank")
        try:
            changes[key] = json.loads(text)
        except ValueError:
            changes[key] = text
    if not changes:
        return base, ""
    try:
        base = base.replace(**changes)
    except TypeError as exc:
        raise ASSFTError(f"--set names an unknown setting: {exc}", hint="see settings.json for the names") from exc
    return base, "set-" + ",".join(f"{k}={changes[k]}" for k in sorted(changes))


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..runtime import set_threads
    set_threads(max(1, args.threads))
    from ..settings import Settings
    command = ["assft", *sys.argv[1:]]
    if args.benchmark == "scale":
        from ..benchmark import scale
        pools = tuple(int(v) for v in args.pools.split(","))
        shapes = [_size(v) for v in args.shape.split("/")]
        result = scale.run(args.out, args.work, pools, shapes if len(shapes) > 1 else shapes[0],
                           _size(args.clinical_shape), threads=args.threads, steps=args.steps,
                           score_volumes=args.score_volumes, command=command,
                           only=args.only.split(",") if args.only else None)
        print(scale.format_table(result))
        return 0
    if args.benchmark == "speed":
        from ..benchmark import speed
        result = speed.run(args.out, Settings(device=args.device, num_threads=args.threads),
                           n_volumes=args.volumes, volume_size=_size(args.volume_size), pool_size=args.pool,
                           train_steps=args.train_steps, large_size=_size(args.large_size), command=command)
        print(speed.format_table(result))
        return 0
    from ..benchmark import label_efficiency as le
    profile = le.PROFILES[args.profile]
    changes = {k: v for k, v in {"seeds": args.seeds, "rounds": args.rounds, "pretrain_steps": args.pretrain_steps,
                                 "cold_steps": args.cold_steps, "round_steps": args.round_steps}.items()
               if v is not None}
    if args.strategies:
        names = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
        unknown = [n for n in names if n not in le.STRATEGIES]
        if unknown:
            from ..errors import ASSFTError
            raise ASSFTError(f"unknown strategies: {', '.join(unknown)}", hint=f"choose from {', '.join(le.STRATEGIES)}")
        changes["strategies"] = names
    if args.cold_start is not None:
        from ..strategies import REGISTRY
        usable = [n for n, s in REGISTRY.items() if not s.needs]
        if args.cold_start not in usable:
            from ..errors import ASSFTError
            raise ASSFTError(f"--cold-start {args.cold_start!r} is not a rule that runs without a task head",
                             hint=f"choose from {', '.join(usable)}")
    profile = dataclasses.replace(profile, **changes)
    base, variant = _overrides(Settings(num_threads=args.threads), args.overrides)
    settings_names = (profile.settings if args.setting is None else le.SETTINGS if args.setting == "both"
                      else (args.setting,))
    result = le.run(args.data, args.out, profile, settings_names, test_data=args.test_data,
                    base=base, jobs=args.jobs, command=command,
                    results=args.results, report_only=args.report_only, foundation=args.foundation,
                    evaluation=args.evaluate, cold_start=args.cold_start, variant=variant,
                    resume_from=args.resume_from,
                    quality_holdout=any(o.partition("=")[0] == "kfold_min_labels" for o in args.overrides),
                    upper_bound=args.upper_bound)
    print(le.format_table(result["summary"]))
    stem = le.result_stem(profile.name, args.foundation, args.evaluate, args.cold_start, variant)
    print(f"results: {Path(args.results or args.out) / stem}.json (+ .png)")
    return 0
