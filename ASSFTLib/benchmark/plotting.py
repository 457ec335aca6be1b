"""Figures of the benchmarks (matplotlib, headless Agg backend, written atomically)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import strategies
from ..fileutil import atomic_path


def colors() -> dict:
    """One colour per benchmark arm (from the strategy registry), stable across figures."""
    out = {s.name: s.color for s in strategies.REGISTRY.values()}
    out.update({s.ssft_arm: s.ssft_color for s in strategies.REGISTRY.values() if s.ssft_arm})
    return out


def dice_axis_range(values) -> tuple:
    """The Dice axis for ``values`` (NaN and None ignored): zoomed to them on a 0.1 grid within [0, 1].

    Differences of 0.01-0.03 between arms vanish on a 0-1 axis; an empty input keeps 0-1.
    """
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low = max(0.0, float(np.floor((min(finite) - 0.02) * 10)) / 10)
    high = min(1.0, float(np.ceil((max(finite) + 0.02) * 10)) / 10)
    return low, max(high, min(1.0, low + 0.1))


def panel_title(setting: str, entry: dict) -> str:
    """A panel's title: the setting and how many seeds its curves are over.

    A partial run has seeds whose foundation or upper bound is done but no arm
    yet; those are named apart so the title does not overstate the curves' n.
    """
    started = len(entry.get("seeds") or [])
    with_arms = max((s.get("n_seeds", 0) for s in entry.get("strategies", {}).values()), default=0)
    if with_arms == started:
        return f"hippo-{setting} (seeds: {started})"
    return f"hippo-{setting} (seeds: {with_arms} with arms, {started} started)"


def dice_axis_label(evaluation: str = "test") -> str:
    """The y axis names the cases the curves were measured on: the test split, or the validation split."""
    return f"{evaluation} Dice (mean of anterior, posterior)"


def plot_label_efficiency(summary: dict, path: str | Path, title: str = "", evaluation: str = "test") -> Path:
    """Dice on the evaluation cases vs number of labels, one panel per setting: mean over seeds with a ±1 SD band.

    summary: :func:`label_efficiency.summarize` output.  The upper bound (all
    pool labels) is a dashed line with its own band.  evaluation: ``test`` or
    ``validation``, the cases the Dice was measured on (the y axis says which).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(summary)
    palette = colors()
    fig, axes = plt.subplots(1, max(1, len(settings)), figsize=(6.2 * max(1, len(settings)), 4.6), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        entry = summary[setting]
        shown = []  # every value drawn, for the y range
        for name, s in entry["strategies"].items():
            x, m, sd = np.array(s["labels"]), np.array(s["dice_mean"]), np.array(s["dice_sd"])
            shown += list(m - sd) + list(m + sd)
            wide = name in ("assft", "atsq")
            ax.plot(x, m, marker="o", ms=3.5, lw=2.4 if wide else 1.3, color=palette.get(name),
                    label=f"{name} (n={s['n_seeds']})", zorder=3 if wide else 2)
            ax.fill_between(x, m - sd, m + sd, color=palette.get(name), alpha=0.12, lw=0)
        found = (entry.get("foundation_dice") or {}).get("mean")
        if found is not None:  # where every curve starts: the foundation before any target label
            ax.plot([0], [found], marker="*", ms=9, color="k", ls="none", label="foundation, 0 labels", zorder=4)
            shown.append(found)
        ub = entry["upper_bound"]
        if ub["mean"] is not None:
            shown += [ub["mean"] - ub["sd"], ub["mean"] + ub["sd"]]
            ax.axhline(ub["mean"], color="k", ls="--", lw=1,
                       label=f"upper bound: all {entry.get('upper_bound_labels') or ''} pool labels")
            ax.axhspan(ub["mean"] - ub["sd"], ub["mean"] + ub["sd"], color="k", alpha=0.06, lw=0)
            ax.axhline(0.95 * ub["mean"], color="k", ls=":", lw=0.8, label="95% of upper bound")
        ax.set_title(panel_title(setting, entry))
        ax.set_xlabel("labeled target volumes")
        ax.set_ylabel(dice_axis_label(evaluation))
        ax.set_ylim(*dice_axis_range(shown))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
