"""Visual QA report: one self-contained HTML page with slices, overlays and numbers.

For every ranked case and every pseudo-label candidate the page shows three
orthogonal slices through the foreground centre with the label (or prediction)
overlaid, next to the numbers that put the case there (K, ASD, q for the ranking;
confidence, distance, the reason for SSFT).  Images are PNGs made with
matplotlib's Agg backend and embedded as base64, so the file can be mailed or
archived alone.

The core (:func:`slice_panel_png`, :func:`render_html`) takes arrays and knows
nothing of the workspace; :func:`write_report` gathers a workspace's cases from
the cached scores (``scoring.rank_cases``) and the SSFT selection
(``pseudo.select_round_pseudo``).
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .fileutil import atomic_write_text

#: Overlay colours (RGB 0..1) for classes 1, 2, ...; cycles when there are more classes.
OVERLAY_COLORS = ((0.90, 0.35, 0.20), (0.25, 0.65, 0.95), (0.35, 0.85, 0.35), (0.95, 0.85, 0.25),
                  (0.75, 0.40, 0.85), (0.30, 0.85, 0.80))


@dataclass
class ReportEntry:
    """One case on the page.

    ``image``: (X, Y, Z) intensities; ``overlay``: (X, Y, Z) class indices or
    (C, X, Y, Z) probabilities (shown as their argmax), or None;
    ``spacing``: voxel size along X, Y, Z (sets the aspect of the slices);
    ``numbers``: what to print beside the picture, in order.
    """

    case_id: str
    image: np.ndarray
    overlay: np.ndarray | None = None
    spacing: Sequence[float] = (1.0, 1.0, 1.0)
    numbers: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class ReportSection:
    """A heading, a sentence, pictured entries, and optionally a plain table (one dict per row, no pictures)."""

    heading: str
    description: str
    entries: list[ReportEntry]
    table: list[Mapping[str, Any]] = field(default_factory=list)


#: What each number on the page means (shown under the legend).
TERMS = (("K", "knowledge divergence: how far the volume is from what the foundation model learned; higher = newer"),
         ("ASD", "anatomical segmentation difficulty: the model's uncertainty inside the predicted anatomy"),
         ("Div", "distance of the volume's embedding to the nearest labeled or already-picked volume (1 for the "
                 "first pick when nothing is labeled)"),
         ("q", "the query score: K and ASD (rank-normalised, mixed) times Div; compare within this page only"),
         ("confidence c", "mean max-probability inside the predicted anatomy (1 = certain)"),
         ("distance d", "distance of the volume's embedding to the nearest labeled volume"),
         ("tau_c, tau_d", "a pseudo-label is admitted when c >= tau_c and d <= tau_d, at most 'pseudo cap' of them"))


# ----------------------------------------------------------------------------
# Arrays -> pictures
# ----------------------------------------------------------------------------
def overlay_labels(overlay: np.ndarray | None) -> np.ndarray | None:
    """Class indices (X, Y, Z) from a label (X, Y, Z) or probabilities (C, X, Y, Z)."""
    if overlay is None:
        return None
    overlay = np.asarray(overlay)
    if overlay.ndim == 4:
        return np.argmax(overlay, axis=0)
    if overlay.ndim != 3:
        raise ValueError(f"overlay must be (X, Y, Z) labels or (C, X, Y, Z) probabilities, got {overlay.shape}")
    return overlay.astype(np.int64, copy=False)


def foreground_centre(labels: np.ndarray | None, shape: Sequence[int]) -> tuple[int, int, int]:
    """Voxel index (x, y, z) of the foreground's centre of mass; the volume centre when empty."""
    from scipy import ndimage

    if labels is None or not np.any(labels > 0):
        return tuple(int(s) // 2 for s in shape)
    centre = ndimage.center_of_mass(labels > 0)
    return tuple(int(min(max(round(c), 0), s - 1)) for c, s in zip(centre, shape))


def _window(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, (1, 99))
    return float(lo), float(hi if hi > lo else lo + 1.0)


def slice_panel_png(image: np.ndarray, overlay: np.ndarray | None = None,
                    spacing: Sequence[float] = (1.0, 1.0, 1.0), centre: Sequence[int] | None = None,
                    title: str = "", opacity: float = 0.45, dpi: int = 90) -> bytes:
    """PNG bytes of three orthogonal slices of ``image`` (X, Y, Z) through ``centre``.

    ``overlay`` (labels or probabilities, see :func:`overlay_labels`) is drawn as a
    translucent fill plus an outline per class.  ``centre`` defaults to the
    overlay's foreground centre.  Slices are named by array axis (the page does
    not assume the volume is stored in a particular anatomical orientation).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be (X, Y, Z), got shape {image.shape}")
    labels = overlay_labels(overlay)
    if labels is not None and labels.shape != image.shape:
        raise ValueError(f"overlay shape {labels.shape} differs from image shape {image.shape}")
    x, y, z = centre if centre is not None else foreground_centre(labels, image.shape)
    sx, sy, sz = (float(s) for s in spacing)
    # (2D slice with rows = vertical axis, aspect = vertical spacing / horizontal spacing, caption)
    views = [
        (lambda a: a[:, :, z].T, sy / sx, f"Z = {z}  (X right, Y up)"),
        (lambda a: a[:, y, :].T, sz / sx, f"Y = {y}  (X right, Z up)"),
        (lambda a: a[x, :, :].T, sz / sy, f"X = {x}  (Y right, Z up)"),
    ]
    lo, hi = _window(image)
    num_classes = int(labels.max()) + 1 if labels is not None and labels.size else 1
    colors = [(0, 0, 0, 0)] + [(*OVERLAY_COLORS[(k - 1) % len(OVERLAY_COLORS)], opacity)
                               for k in range(1, max(num_classes, 2))]
    cmap = ListedColormap(colors)

    fig = Figure(figsize=(9.0, 3.3), dpi=dpi)
    axes = fig.subplots(1, 3)
    for ax, (cut, aspect, caption) in zip(axes, views):
        ax.imshow(cut(image), cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect,
                  interpolation="nearest")
        if labels is not None:
            lab = cut(labels)
            ax.imshow(lab, cmap=cmap, vmin=-0.5, vmax=len(colors) - 0.5, origin="lower", aspect=aspect,
                      interpolation="nearest")
            for k in range(1, num_classes):
                if np.any(lab == k):
                    ax.contour(lab == k, levels=[0.5], colors=[OVERLAY_COLORS[(k - 1) % len(OVERLAY_COLORS)]],
                               linewidths=1.0, origin="lower")
        ax.set_title(caption, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# ----------------------------------------------------------------------------
# Pictures -> page
# ----------------------------------------------------------------------------
def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, (float, np.floating)):
        return "-" if math.isnan(value) else f"{float(value):.4g}"
    return str(value)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.entry { display: flex; gap: 1em; align-items: flex-start; margin: 0.8em 0; padding: 0.5em;
         border: 1px solid #e3e3e3; border-radius: 4px; }
.entry img { max-width: 760px; width: 100%; }
table.numbers { border-collapse: collapse; font-size: 0.9em; }
table.numbers td { padding: 1px 8px; border-bottom: 1px solid #eee; }
.note { color: #a33; font-size: 0.9em; } .muted { color: #777; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; margin: 0 0.3em 0 1em;
          border: 1px solid #999; }
table.rows { border-collapse: collapse; font-size: 0.9em; } table.rows td, table.rows th { padding: 2px 8px;
          border-bottom: 1px solid #eee; text-align: left; }
"""


def _legend_html(classes: Sequence[str]) -> str:
    """Overlay colour per class (class 1 gets the first colour, ...) and what the numbers mean."""
    def rgb(k: int) -> str:
        return ", ".join(str(round(255 * c)) for c in OVERLAY_COLORS[(k - 1) % len(OVERLAY_COLORS)])
    swatches = "".join(f'<span class="swatch" style="background: rgb({rgb(k)})"></span>{html.escape(str(name))}'
                       for k, name in enumerate(classes) if k > 0)
    terms = "".join(f"<tr><td><b>{html.escape(t)}</b></td><td>{html.escape(d)}</td></tr>" for t, d in TERMS)
    return (f'<p>Overlay colours:{swatches}<span class="muted"> (background is not coloured)</span></p>'
            f'<details><summary>What the numbers mean</summary><table class="numbers">{terms}</table></details>')


def _table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_format(v))}</td>" for v in r.values()) + "</tr>"
                   for r in rows)
    return f'<table class="rows"><tr>{head}</tr>{body}</table>'


def render_html(sections: Sequence[ReportSection], title: str = "ASSFT report",
                intro: Mapping[str, Any] | None = None, classes: Sequence[str] | None = None) -> str:
    """The whole page as one HTML string, every image embedded as a base64 PNG.

    ``classes`` (background first) gives the colour legend of the overlays.
    """
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if intro:
        parts.append('<table class="numbers">' + "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_format(v))}</td></tr>" for k, v in intro.items())
            + "</table>")
    if classes:
        parts.append(_legend_html(classes))
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        parts.append(f'<p class="muted">{html.escape(section.description)}</p>')
        parts.append(_table_html(section.table))
        if not section.entries and not section.table:
            parts.append('<p class="muted">None.</p>')
        for entry in section.entries:
            png = slice_panel_png(entry.image, entry.overlay, entry.spacing, title=entry.case_id)
            rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_format(v))}</td></tr>"
                           for k, v in entry.numbers.items())
            note = f'<p class="note">{html.escape(entry.note)}</p>' if entry.note else ""
            parts.append(f'<div class="entry" id="{html.escape(entry.case_id)}">'
                         f'<img alt="{html.escape(entry.case_id)}" '
                         f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
                         f'<div><b>{html.escape(entry.case_id)}</b><table class="numbers">{rows}</table>{note}</div>'
                         f"</div>")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts.append(f'<p class="muted">Written by ASSFT on {stamp}.</p></body></html>')
    return "\n".join(parts)


def write_html(out_html: str | Path, sections: Sequence[ReportSection], title: str = "ASSFT report",
               intro: Mapping[str, Any] | None = None, classes: Sequence[str] | None = None) -> Path:
    """Render ``sections`` and write the page atomically; returns the path written."""
    out_html = Path(out_html)
    atomic_write_text(out_html, render_html(sections, title=title, intro=intro, classes=classes))
    return out_html


# ----------------------------------------------------------------------------
# A workspace -> page
def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def round_history(workspace) -> list[dict[str, Any]]:
    """One row per finished fine-tuning round, oldest first: what it trained on and its two quality signals.

    ``held-out Dice``: the new model on the labels held out of the round (from
    ``kfold_min_labels`` labels); ``previous model on new labels``: the model the
    round started from, on the labeled volumes it never trained on (costs no
    label; low when the query picked the hard volumes). ``-`` where a round has none.
    """
    rows = []
    for r in workspace.rounds("train"):
        if r.status != "finished":
            continue
        m = r.metrics or {}
        unseen = m.get("new_label_dice_per_case") or {}
        rows.append({"round": len(rows) + 1, "model": f"#{r.model_id}" if r.model_id is not None else None,
                     "labels trained on": m.get("train_labels"), "pseudo-labels": m.get("pseudo_labels"),
                     "held-out Dice (labels held out)": _with_count(m.get("heldout_dice"), len(m.get("heldout") or [])),
                     "previous model on new labels": _with_count(m.get("new_label_dice"), len(unseen)),
                     "made current": "not_made_current" not in m})
    return rows


def _with_count(value: Any, n: int) -> str | None:
    return None if value is None else f"{float(value):.3f} ({n})"


def write_report(workspace, out_html: str | Path, settings=None, top: int = 8,
                 progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Write the QA page of ``workspace``: its rounds so far, the ``top`` ranked unlabeled cases and every SSFT
    candidate.

    Ranked cases show the current model's prediction (when it has a task head);
    candidates show their pseudo-label (``pseudo/<case>.nii.gz`` when written for
    review, else the model's argmax with low-confidence voxels kept).  Scores come
    from the cache: run ``assft score`` first.  ``progress(step, total, info)`` is
    called once per case drawn.
    """
    from . import pseudo, scoring
    from .volumes import read_volume
    from .models import load_model

    ws = workspace
    settings = settings or ws.settings
    summary = ws.summary()
    intro: dict[str, Any] = {"workspace": str(ws.folder), "cases": summary["cases"], "labeled": summary["labeled"],
                             "unlabeled": summary["unlabeled"]}
    current = ws.current_model()
    if current is None:
        intro["model"] = "none: register a foundation model and score"
        return write_html(out_html, [], title="ASSFT report", intro=intro)
    intro["model"] = f"#{current.id} {current.kind} {current.checksum}"
    model = load_model(ws.verified(current).path, device=settings.resolved_device())  # never a swapped file
    can_segment = model.spec.has_task_head

    table = scoring.rank_cases(ws, settings)
    intro["strategy"] = table.strategy
    ranked = [r for r in table.rows if r.status == "pool"][:max(0, int(top))]
    selection = pseudo.select_round_pseudo(ws, current, settings) if can_segment else None
    candidates = selection.selected if selection is not None else []
    if selection is not None:
        intro["tau_c"], intro["tau_d"], intro["pseudo cap"] = selection.tau_c, selection.tau_d, selection.cap
    qa = ws.qa_decisions()
    total = len(ranked) + len(candidates)

    def drawn(i: int, case_id: str) -> None:
        if progress is not None:
            progress(i, total, {"case": case_id})

    ranked_entries = []
    for i, row in enumerate(ranked, start=1):
        volume = read_volume(ws.image_path(row.case_id))
        overlay = _prediction(model, volume, settings) if can_segment else None
        numbers = {"rank": row.rank, "picked this round": row.picked, "K": row.K, "ASD": row.ASD,
                   "Div": row.Div, "q": row.q, "confidence": row.confidence}
        note = "" if can_segment else "the model has no task head yet: image only"
        ranked_entries.append(ReportEntry(row.case_id, volume.array, overlay, _spacing(volume.affine), numbers, note))
        drawn(i, row.case_id)

    decisions = {d.case_id: d for d in selection.decisions} if selection is not None else {}
    pseudo_entries = []
    for i, case_id in enumerate(candidates, start=len(ranked) + 1):
        volume = read_volume(ws.image_path(case_id))
        written = ws.paths.pseudo_label(case_id)
        if written.exists():
            overlay, source = read_volume(written, kind="label").array, "written for review"
        else:
            overlay = _prediction(model, volume, settings)  # ssft.pseudo_target's label
            source = "current model, not yet written"
        d = decisions[case_id]
        numbers = {"confidence c": d.confidence, "distance d": d.distance, "priority c(1-d)": d.priority,
                   "QA": qa.get(case_id, "not reviewed"), "pseudo-label": source}
        pseudo_entries.append(ReportEntry(case_id, volume.array, overlay, _spacing(volume.affine), numbers))
        drawn(i, case_id)

    if ranked:
        ranked_text = (f"The first {len(ranked)} unlabeled volumes of the worklist ({table.strategy}), in the order "
                       "to label them, with the current model's prediction.")
    elif any(r.status == "pool" for r in table.rows):
        ranked_text = "Not shown (top = 0)."
    elif summary["unlabeled"] == 0:
        ranked_text = "Nothing to rank: every volume is labeled."
    else:
        ranked_text = ("Nothing to rank yet: no unlabeled volume has a score for the current model "
                       f"(run `assft score {ws.folder}`).")
    refused = [d for d in (selection.decisions if selection is not None else []) if not d.selected]
    history = round_history(ws)
    sections = [
        ReportSection("Fine-tuning rounds so far",
                      "Whether more labels still pay: per round, the new model's Dice on the labels held out of "
                      "its training, and the previous model's Dice on the volumes labeled since it was trained "
                      "(before any correction; low when the worklist put the hard volumes first). The number of "
                      "volumes behind each Dice is in brackets; on 1-2 volumes either is noisy."
                      if history else "None yet: no fine-tuning round has finished.", [], history),
        ReportSection("Ranked for labeling", ranked_text + (" " + " ".join(table.notes) if table.notes else ""),
                      ranked_entries),
        ReportSection("Pseudo-label candidates",
                      "Unlabeled volumes SSFT would add as pseudo-labeled training data (confidence >= tau_c, "
                      "distance to the labeled set <= tau_d, at most rho * |L|)." if selection is not None else
                      "None yet: the model needs a task head, cached scores and at least one labeled volume.",
                      pseudo_entries),
    ]
    if refused:
        sections.append(ReportSection(
            "Refused pseudo-label candidates",
            f"The other {len(refused)} unlabeled volumes, and why SSFT leaves them out this round (they train only "
            "once labeled).", [],
            [{"case": d.case_id, "confidence c": d.confidence, "distance d": d.distance, "why not": d.reason}
             for d in refused]))
    return write_html(out_html, sections, title="ASSFT report", intro=intro, classes=ws.classes)


def _prediction(model, volume, settings) -> np.ndarray:
    """(X, Y, Z) argmax of the model's test-time averaged probabilities (restored slab by slab)."""
    from .inference import predict_label
    return predict_label(model, volume, settings)[0]
