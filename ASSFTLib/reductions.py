"""ASD, confidence and entropy of a clinical-size probability map, slab by slab (pure, arrays only).

:func:`query.asd_from_probs` is the definition (SPEC: ASD); on a 512x512x300
map it allocates several full-size temporaries (clipped copy, logs, products,
entropy, ROI, argpartition indices: > 2 GB for two classes).
:func:`asd_from_probs_streaming` gives the same numbers reading the map in
slabs along the first axis:

- the ROI's dilation is local (a ball of ``dilation`` voxels), so each slab is
  dilated with a halo of that many slices and cut back: the same mask;
- sums are accumulated in float64 (the definition averages in float32:
  differences are float32 rounding, ~1e-6);
- the fallback ROI (top ``fallback_fraction`` voxels by foreground probability)
  takes the k-th largest value from one float32 copy of ``1 - p_bg``, then
  every voxel above it plus, of the voxels equal to it, the first in index
  order until k (``argpartition``'s choice among ties is arbitrary).

Extra memory: one slab's temporaries, plus one ``(X, Y, Z)`` float32 map only
when the fallback is needed.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import ArrayError
from .query import ASDResult, _ball, normalized_entropy

#: Voxels per slab (about 8 MB per float32 channel).
SLAB_VOXELS = 1 << 21


def _slabs(shape, halo: int = 0):
    """(start, stop, halo start, halo stop) along axis 0, slabs of about SLAB_VOXELS voxels."""
    n = int(shape[0])
    step = max(1, SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    for i in range(0, n, step):
        j = min(n, i + step)
        yield i, j, max(0, i - halo), min(n, j + halo)


def asd_from_probs_streaming(probs, fg_threshold: float, dilation: int, min_fraction: float,
                             fallback_fraction: float) -> ASDResult:
    """:func:`query.asd_from_probs` of ``probs`` ``(C, X, Y, Z)`` in bounded extra memory (module docstring).

    ``probs`` is a numpy array or any array-like with ``shape``, ``ndim`` and ``[:, i:j]`` /
    ``[0, i:j]`` slabs (``preprocess.RestoredView``: a map restored to the image's grid slab by slab
    as it is read).  Each slab is read once (the fallback ROI, when needed, reads it again): a slab's
    ROI is settled once the foreground core of the next ``dilation`` rows is known.
    """
    if getattr(probs, "ndim", None) != 4:
        raise ArrayError(f"probabilities must have shape (C, X, Y, Z), got {np.shape(probs)}")
    spatial = tuple(probs.shape[1:])
    n_vox = int(np.prod(spatial))
    r = int(dilation)
    ball = _ball(r) if r > 0 else None
    n_core = 0
    ent_total = 0.0
    roi_n, roi_ent, roi_conf = 0, 0.0, 0.0
    cores: list = []     # (start, stop, core mask) of the slabs read whose rows a pending slab's halo may need
    pending: list = []   # (start, stop, entropy, max-probability) of slabs whose ROI is not settled yet

    def settle(i: int, j: int, entropy: np.ndarray, conf: np.ndarray) -> None:
        nonlocal roi_n, roi_ent, roi_conf
        hi, hj = max(0, i - r), min(spatial[0], j + r)
        core = np.concatenate([c[max(hi, a) - a:min(hj, b) - a] for a, b, c in cores if a < hj and b > hi])
        if r > 0 and core.any():
            roi = ndimage.binary_dilation(core, structure=ball)[i - hi:i - hi + (j - i)]
        else:  # no foreground within reach: dilating nothing gives nothing
            roi = core[i - hi:i - hi + (j - i)]
        roi_n += int(roi.sum())
        roi_ent += float(entropy[roi].sum(dtype=np.float64))
        roi_conf += float(conf[roi].sum(dtype=np.float64))

    for i, j, _, _ in _slabs(spatial):
        p = np.asarray(probs[:, i:j], dtype=np.float32)
        if not np.all(np.isfinite(p)):
            raise ArrayError("probabilities are not finite (NaN or inf)", hint="check the image and the model")
        core = (1.0 - p[0]) >= fg_threshold
        n_core += int(np.count_nonzero(core))
        entropy = normalized_entropy(p)
        ent_total += float(entropy.sum(dtype=np.float64))
        cores.append((i, j, core))
        pending.append((i, j, entropy, p.max(axis=0)))
        del p
        while pending and (pending[0][1] + r <= j or j == spatial[0]):
            settle(*pending.pop(0))
            low = pending[0][0] - r if pending else spatial[0]
            cores = [c for c in cores if c[1] > low]
    fallback = roi_n < max(min_fraction * n_vox, 1)
    if fallback:
        roi_n, roi_ent, roi_conf = _fallback_sums(probs, fallback_fraction, n_vox)
    return ASDResult(asd=roi_ent / roi_n, confidence=roi_conf / roi_n, entropy=ent_total / n_vox,
                     roi_voxels=int(roi_n), roi_fallback=bool(fallback), fg_fraction=n_core / n_vox)


def _fallback_sums(probs, fallback_fraction: float, n_vox: int) -> tuple[int, float, float]:
    """(|R|, sum of entropy, sum of max-probability) over the top ``fallback_fraction`` voxels by 1 - p_bg."""
    k = max(1, int(np.ceil(fallback_fraction * n_vox)))
    fg = np.empty(probs.shape[1:], dtype=np.float32)
    for i, j, _, _ in _slabs(fg.shape):
        fg[i:j] = 1.0 - np.asarray(probs[0, i:j], dtype=np.float32)
    flat = fg.reshape(-1)
    flat.partition(n_vox - k)  # in place: the k-th largest lands at n_vox - k
    thr = flat[n_vox - k]
    del fg, flat
    ties_left = k - sum(int(np.count_nonzero(1.0 - np.asarray(probs[0, i:j], np.float32) > thr))
                        for i, j, _, _ in _slabs(probs.shape[1:]))
    n, ent, conf = 0, 0.0, 0.0
    for i, j, _, _ in _slabs(probs.shape[1:]):
        p = np.asarray(probs[:, i:j], dtype=np.float32)
        f = 1.0 - p[0]
        sel = f > thr
        tie = np.flatnonzero(f == thr)[:max(ties_left, 0)]
        ties_left -= len(tie)
        sel.reshape(-1)[tie] = True
        entropy = normalized_entropy(p)
        n += int(sel.sum())
        ent += float(entropy[sel].sum(dtype=np.float64))
        conf += float(p.max(axis=0)[sel].sum(dtype=np.float64))
    return n, ent, conf
