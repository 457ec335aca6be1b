"""The ablation table of the method work: validation-split units, each row paired with random by seed.

    python Testing/benchmarks/ablation_table.py RUNS_OUT [--json OUT.json]

Reads every ``units/*_validation*_seed*.json`` under RUNS_OUT (the ``--out`` of
``assft benchmark label-efficiency --evaluate validation`` runs, with or without
``--foundation supervised``, ``--cold-start`` and ``--set``), groups the units by
foundation and variant, and prints one row per (foundation, variant, arm):
nAUC (mean and per seed), Dice at 2/4/6/10 labels, and the paired difference
of nAUC to random of the same foundation and seed. Random run under a variant
(one that changes training, such as ``--set warm_lr_ratio=0.1``) is a row of
its own, paired with the default random the same way.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from ASSFTLib.benchmark import provenance, write_json
from ASSFTLib.benchmark.label_efficiency.summary import curve
from ASSFTLib.metrics import normalized_auc, paired_bootstrap

NAME = re.compile(r"^(?P<setting>[a-z]+)_(?P<rest>.*?)_?seed(?P<seed>\d+)$")


def load(out: Path) -> dict:
    """{(foundation, variant): {seed: unit}} of the validation units under ``out``."""
    groups: dict = {}
    for path in sorted((out / "units").glob("*validation*seed*.json")):
        m = NAME.match(path.stem)
        unit = json.loads(path.read_text())
        parts = [p for p in m.group("rest").split("_") if p not in ("supervised", "validation")]
        variant = "_".join(parts) or "default"
        key = (unit.get("foundation", "self-supervised"), variant)
        # an arm re-run under a changed protocol keeps its earlier result under "superseded": a row of its own
        for arm, res in unit.get("superseded", {}).items():
            unit["strategies"][f"{arm} (first round without SSFT)"] = {**res, "cold_ssft": False}
        groups.setdefault(key, {})[int(m.group("seed"))] = unit
    return groups


def rows(groups: dict) -> list[dict]:
    out = []
    for (foundation, variant), units in sorted(groups.items()):
        randoms = {s: u["strategies"]["random"] for s, u in groups.get((foundation, "default"), {}).items()
                   if "random" in u["strategies"]}
        arms = sorted({a for u in units.values() for a in u["strategies"]})
        for arm in arms:
            seeds = sorted(s for s, u in units.items() if arm in u["strategies"])
            naucs = [normalized_auc(*curve(units[s]["strategies"][arm])) for s in seeds]
            dices = np.array([curve(units[s]["strategies"][arm])[1] for s in seeds])
            labels = curve(units[seeds[0]]["strategies"][arm])[0]
            paired = [s for s in seeds if s in randoms]
            diff = None
            if (arm != "random" or variant != "default") and paired:
                diff = paired_bootstrap([normalized_auc(*curve(units[s]["strategies"][arm])) for s in paired],
                                        [normalized_auc(*curve(randoms[s])) for s in paired])
            pseudo = [[(r.get("pseudo") or {}).get("admitted") for r in units[s]["strategies"][arm]["rounds"]]
                      for s in seeds]
            out.append({"foundation": foundation, "variant": variant, "arm": arm, "seeds": seeds,
                        "cold_start": units[seeds[0]]["strategies"][arm].get("cold_start"),
                        "first_round_ssft": units[seeds[0]]["strategies"][arm].get("cold_ssft", False),
                        "nauc_mean": float(np.mean(naucs)), "nauc_per_seed": naucs,
                        "labels": labels.tolist(), "dice_mean": dices.mean(axis=0).tolist(),
                        "nauc_vs_random": diff, "pseudo_admitted": pseudo,
                        "upper_bound": [units[s]["upper_bound"]["dice"] for s in seeds
                                        if units[s].get("upper_bound")],
                        "foundation_dice": [units[s]["foundation_eval"]["dice"] for s in seeds
                                            if units[s].get("foundation_eval")]})
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| foundation | variant | arm | cold start | seeds | nAUC (per seed) | Dice @2 / @4 / @6 / @10 | "
             "nAUC − random [95 % CI] |", "|---|---|---|---|---|---|---|---|"]
    for r in table:
        at = dict(zip(r["labels"], r["dice_mean"]))
        dice = " / ".join(f"{at[n]:.3f}" if n in at else "-" for n in (2.0, 4.0, 6.0, 10.0))
        d = r["nauc_vs_random"]
        diff = "" if not d else f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
        per = ", ".join(f"{v:.3f}" for v in r["nauc_per_seed"])
        lines.append(f"| {r['foundation']} | {r['variant']} | {r['arm']} | {r['cold_start']} | {len(r['seeds'])} | "
                     f"{r['nauc_mean']:.3f} ({per}) | {dice} | {diff} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--runs-commit", help="the commit the runs were made with (the table may be written later)")
    ap.add_argument("--runs-command", action="append", default=[], help="a command that made the units (repeatable)")
    args = ap.parse_args(argv)
    table = rows(load(args.out))
    print(markdown(table))
    if args.json:
        write_json(args.json, {"benchmark": "label-efficiency ablations (validation split)",
                               **provenance(["python", "Testing/benchmarks/ablation_table.py", *sys.argv[1:]]),
                               "runs_commit": args.runs_commit, "runs_commands": args.runs_command,
                               "rows": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
