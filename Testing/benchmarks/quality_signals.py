"""Two quality signals against the test Dice they stand for, on finished validation runs.

    python Testing/benchmarks/quality_signals.py RUNS_OUT [--json OUT.json]

RUNS_OUT is the ``--out`` of ``assft benchmark label-efficiency --evaluate validation``
runs (it keeps each arm's workspace, with a model per round, under ``runs/``).

- *held-out Dice* (the product's default from 5 labels, ``kfold_min_labels``): the new
  model on the labels held out of its round. Read from the units run with
  ``--set kfold_min_labels=5`` (random's arm and, where it ran, ASSFT's); set against that
  model's test Dice.
- *new-label Dice* (``new_label_dice``, costs no label): the model that ranked a round's
  volumes, on those volumes once labeled. Recomputed here from the kept models of the
  units run without a hold-out (rounds of the current code record it themselves); set
  against that model's test Dice, the previous round's.

Prints each round and, per signal and arm, the mean error (bias) and the mean absolute error.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from ASSFTLib.benchmark import provenance, write_json

ARMS = ("random", "assft")
UNIT = re.compile(r"^(?P<setting>[a-z]+)_validation(?P<variant>_set-.+?)?_seed(?P<seed>\d+)$")


def new_label_rows(out: Path, unit_file: Path, arm: str) -> list[dict]:
    """Per round from the second: the previous model's Dice on the volumes the round labeled."""
    from ASSFTLib.inference import predict_label
    from ASSFTLib.metrics import mean_dice
    from ASSFTLib.models import load_model
    from ASSFTLib.volumes import read_volume
    from ASSFTLib.workspace import Workspace
    rounds = json.loads(unit_file.read_text())["strategies"][arm]["rounds"]
    folder = out / "runs" / unit_file.stem / arm.replace("+", "_")
    rows = []
    with Workspace.open(folder) as ws:
        # models/ holds the foundation, then one model per round (the replayed cold start first)
        models = sorted((folder / "models").glob("model_*.pt"))
        if len(models) != len(rounds) + 1:
            raise SystemExit(f"{folder}: {len(models)} models for {len(rounds)} rounds")
        for r in range(1, len(rounds)):
            model, settings = load_model(models[r]), ws.settings
            dice = {}
            for case_id in rounds[r]["picked"]:
                label, _ = predict_label(model, read_volume(ws.image_path(case_id)), settings)
                truth = read_volume(ws.label_path(case_id), kind="label").array
                dice[case_id] = mean_dice(label, truth, len(ws.classes))
            rows.append({"model_labels": rounds[r - 1]["labels"], "model_test_dice": rounds[r - 1]["dice"],
                         "signal": float(np.mean(list(dice.values()))), "per_case": dice})
    return rows


def heldout_rows(rounds: list[dict]) -> list[dict]:
    """Per round that held labels out: the new model's held-out Dice and its test Dice."""
    return [{"model_labels": r["labels"], "model_test_dice": r["dice"], "signal": r["quality"]["heldout_dice"],
             "held_out": r["quality"]["heldout"]} for r in rounds if r.get("quality")]


def errors(rows: list[dict]) -> dict:
    e = np.array([r["signal"] - r["model_test_dice"] for r in rows])
    return {"rounds": len(rows), "bias": float(e.mean()), "mean_abs_error": float(np.abs(e).mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    table: dict[str, dict] = {}
    for unit_file in sorted((args.out / "units").glob("*_validation*_seed*.json")):
        m = UNIT.match(unit_file.stem)
        if m is None:
            continue
        strategies = json.loads(unit_file.read_text())["strategies"]
        for arm in ARMS:
            if arm not in strategies:
                continue
            if m["variant"] == "_set-kfold_min_labels=5":
                table.setdefault(f"held-out Dice, {arm}", {})[unit_file.stem] = heldout_rows(
                    strategies[arm]["rounds"])
            elif m["variant"] is None:
                table.setdefault(f"new-label Dice, {arm}", {})[unit_file.stem] = new_label_rows(
                    args.out, unit_file, arm)
    summary = {}
    for name, units in table.items():
        rows = [r for unit in units.values() for r in unit]
        summary[name] = errors(rows)
        for unit, unit_rows in units.items():
            for r in unit_rows:
                print(f"{name:26s} {unit:32s} model at {r['model_labels']:>2} labels: test Dice "
                      f"{r['model_test_dice']:.3f}, signal {r['signal']:.3f}")
        print(f"{name}: {summary[name]['rounds']} rounds, bias {summary[name]['bias']:+.3f}, "
              f"mean absolute error {summary[name]['mean_abs_error']:.3f}")
    if args.json:
        write_json(args.json, {"provenance": provenance(), "summary": summary, "rounds": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
