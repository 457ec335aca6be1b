"""`assft demo`: the main job on the built-in default, end to end, with a simulated annotator."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="run a short adaptation loop on synthetic volumes (or your labeled dataset)",
        description="Generate a synthetic multi-scanner dataset (or split your own labeled MSD folder), make a "
                    "foundation model (by default a model trained at another site: pretrained on the unlabeled "
                    "pool, then trained on labeled volumes of one other scanner), then run rounds of score -> "
                    "rank (ATSQ) -> label the top volumes (a simulated annotator reveals their reference labels) "
                    "-> fine-tune with SSFT, and print the test Dice of every round.")
    p.add_argument("--out", default="assft-demo",
                   help="folder for the data, the foundation model and the workspace; running again reuses the "
                        "data and the model and replaces the earlier demo's workspace (default: %(default)s)")
    p.add_argument("--dataset", help="a labeled MSD-layout folder to use instead of synthetic volumes (its cases are "
                                     "split into a pool and a test set; nothing is copied)")
    p.add_argument("--rounds", type=int, default=3, help="adaptation rounds (default: %(default)s)")
    p.add_argument("--budget", type=int, default=2, help="volumes labeled per round (default: %(default)s)")
    p.add_argument("--pool", type=int, default=16, help="unlabeled pool size (default: %(default)s)")
    p.add_argument("--test", type=int, default=16,
                   help="held-out test cases, made under the same scanner profiles as the pool (default: %(default)s)")
    p.add_argument("--pretrain-steps", type=int, default=300, help="foundation pretraining steps (default: %(default)s)")
    p.add_argument("--foundation", choices=("supervised", "self-supervised"), default="supervised",
                   help="supervised: a model trained with labels at another site (the common case), adapted to this "
                        "site's scanners; self-supervised: the pretrained model alone, with no task head "
                        "(default: %(default)s)")
    p.add_argument("--source", type=int, default=16,
                   help="labeled volumes of the other site that the supervised foundation learns from "
                        "(default: %(default)s)")
    p.add_argument("--steps", type=int, default=0,
                   help="fine-tuning steps per round (default 0: automatic, growing with the labeled set)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the split and the training (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--json", metavar="OUT.json", help="also write the per-round results to this JSON file")
    p.set_defaults(func=run)


def _bars(name: str):
    from tqdm import tqdm
    state = {}

    def progress(step: int, total: int, info: dict) -> None:
        phase = f"{name} ({info['phase']})" if info.get("phase") and info["phase"] not in name else name
        bar = state.get("bar")
        if bar is None or state.get("phase") != phase or bar.total != total:
            if bar is not None:
                bar.close()
            bar = state["bar"] = tqdm(total=total, desc=phase, file=sys.stderr, dynamic_ncols=True, leave=False)
            state["phase"] = phase
        bar.n = step
        if info.get("loss") is not None:
            bar.set_postfix(loss=info["loss"], refresh=False)
        bar.refresh()
        if step >= total:
            bar.close()
            state.pop("bar")

    return progress


def run(args: argparse.Namespace) -> int:
    from ..demo import format_table, run_demo
    from ..dataset import dataset_classes
    rounds = run_demo(args.out, dataset=args.dataset, rounds=args.rounds, budget=args.budget, n_pool=args.pool,
                      n_test=args.test, pretrain_steps=args.pretrain_steps, steps=args.steps, seed=args.seed,
                      device=args.device, progress=_bars, foundation=args.foundation, n_source=args.source)
    classes = dataset_classes(Path(args.out) / "data" / "pool")
    print()
    print("Dice on held-out test cases after each round (round 0: the foundation before any label of this "
          "site). labels: volumes labeled so far; pseudo: pseudo-labeled "
          "volumes SSFT added; quality: the round's own Dice on labels held out of its training ('-' below 5 "
          "labels, when none are held out); test Dice: on test cases the loop never saw (1 = perfect).")
    print(format_table(rounds, classes))
    ws = Path(args.out) / "workspace"
    print(f"\nnext: `assft status {ws}` and `assft report {ws}` show the workspace the loop built; the README's "
          "'Using it on your own data' runs the same loop on your volumes")
    if args.json:
        from ..fileutil import atomic_write_text
        atomic_write_text(args.json, json.dumps([r.__dict__ for r in rounds], indent=2))
        print(f"wrote {args.json}")
    return 0
