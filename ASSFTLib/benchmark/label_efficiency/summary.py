"""Summaries of finished units: mean and spread over seeds, nAUC, labels to 95 % of the upper bound, the table."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ...metrics import labels_to_reach, normalized_auc, paired_bootstrap
from .protocol import STRATEGIES, TABLE_LABELS, TARGET_FRACTION


def curve(strategy_result: dict) -> tuple[np.ndarray, np.ndarray]:
    """(labels, test Dice) of one strategy's rounds."""
    rounds = strategy_result["rounds"]
    return np.array([r["labels"] for r in rounds], float), np.array([r["dice"] for r in rounds], float)


def summarize(units: Sequence[dict]) -> dict:
    """Per setting and strategy: mean and spread over seeds of every reported figure.

    nAUC: normalised area under Dice vs labels (:func:`metrics.normalized_auc`);
    labels_to_95: first label count reaching 95 % of the same seed's upper bound
    (None in a seed where it is never reached; ``reached`` counts the seeds that did, ``of`` the
    seeds that have an upper bound).
    nauc_vs_random: the paired difference of nAUC to random over the seeds both
    ran (same split, foundation and, where the rule is the same, cold start),
    with a bootstrap 95 % interval (:func:`metrics.paired_bootstrap`).
    """
    out: dict = {}
    for setting in sorted({u["setting"] for u in units}):
        mine = [u for u in units if u["setting"] == setting]
        uppers = [u["upper_bound"]["dice"] for u in mine if u.get("upper_bound")]
        start = [u["foundation_eval"]["dice"] for u in mine if u.get("foundation_eval")]
        entry = {"seeds": [u["seed"] for u in mine], "upper_bound": _mean_sd(uppers),
                 "foundation_dice": _mean_sd(start) if start else None,
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
                # over the seeds that have an upper bound (a sitting may not have run them all yet)
                "labels_to_95": {"per_seed": reach, "reached": sum(r is not None for r in reach), "of": len(reach),
                                 "mean_when_reached": _mean_or_none([r for r in reach if r is not None])},
                "pseudo_admitted": pseudo if STRATEGIES[name].ssft else None,
                "pseudo_mean_dice": pseudo_dice if STRATEGIES[name].ssft else None,
            }
        _add_paired_differences(entry, mine)
        out[setting] = entry
    return out


def _add_paired_differences(entry: dict, units: Sequence[dict]) -> None:
    """``nauc_vs_random`` for every strategy but random, over the seeds that ran both."""
    for name, stats in entry["strategies"].items():
        pairs = [(normalized_auc(*curve(u["strategies"][name])), normalized_auc(*curve(u["strategies"]["random"])))
                 for u in units if name != "random" and name in u["strategies"] and "random" in u["strategies"]]
        stats["nauc_vs_random"] = paired_bootstrap(*zip(*pairs)) if pairs else None


def _mean_sd(values: Sequence[float]) -> dict:
    v = np.asarray([x for x in values if x is not None], float)
    return {"mean": float(v.mean()) if v.size else None, "sd": float(v.std()) if v.size else None, "n": int(v.size)}


def _mean_sd_curve(rows: Sequence[Sequence[float]]) -> dict:
    a = np.asarray(rows, float)
    return {"mean": np.nanmean(a, axis=0).tolist(), "sd": np.nanstd(a, axis=0).tolist()}


def _mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def format_table(summary: dict) -> str:
    """The printed summary: per arm the seeds it ran, nAUC, Dice at 2/4/6/10 labels, labels to 95 % of the upper
    bound and the paired difference to random."""
    lines = []
    for setting, entry in summary.items():
        ub = entry["upper_bound"]
        ub_text = "n/a" if ub["mean"] is None else f"{ub['mean']:.3f} ± {ub['sd']:.3f}"
        if ub["mean"] is not None and ub.get("n", len(entry["seeds"])) < len(entry["seeds"]):
            ub_text += f" in {ub['n']} of the {len(entry['seeds'])} seeds"
        start = entry.get("foundation_dice")
        start_text = "" if not start else f"; the foundation before any target label: Dice {_fmt(start)}"
        lines.append(f"hippo-{setting}  (seeds {entry['seeds']}, upper bound with all pool labels: Dice {ub_text}"
                     f"{start_text})")
        head = (f"  {'strategy':<12} {'seeds':>5} {'nAUC':>13}"
                + "".join(f" {'Dice@' + str(n):>13}" for n in TABLE_LABELS))
        lines.append(head + f" {'labels→95%UB':>14} {'nAUC - random [95% CI]':>26}")
        for name, s in entry["strategies"].items():
            row = f"  {name:<12} {s['n_seeds']:>5} {_fmt(s['nauc']):>13}"  # a sitting may have run some seeds
            for n in TABLE_LABELS:
                row += f" {_fmt(s['dice_at'].get(str(n))):>13}"
            reach = s["labels_to_95"]
            of = reach.get("of", s["n_seeds"])
            text = (f"{_label_count(reach['mean_when_reached'])} ({reach['reached']}/{of})" if reach["reached"]
                    else f"> {int(max(s['labels']))} (0/{of})" if of else "no UB yet")
            diff = s.get("nauc_vs_random")
            paired = "-" if not diff else f"{diff['mean']:+.3f} [{diff['lo']:+.3f}, {diff['hi']:+.3f}]"
            lines.append(row + f" {text:>14} {paired:>26}")
        lines.append("")
    return "\n".join(lines)


def _label_count(mean: float) -> str:
    """A mean label count as printed: whole when it is (6), else one decimal (7.5), never rounded to a count
    no seed needed (Python's round gives 8 for 7.5 and 2 for 2.5)."""
    return f"{mean:.0f}" if float(mean).is_integer() else f"{mean:.1f}"


def _fmt(stat: dict | None) -> str:
    if not stat or stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.3f}±{stat['sd']:.3f}"


