"""Sliding-window passes whose test-time mean is accumulated window by window (bounded memory).

MONAI's ``sliding_window_inference`` returns each pass's full ``(C, X, Y, Z)``
map and keeps a full count map beside it; with the image flipped for every
test-time flip, scoring a 512x512x300 CT held about 4 GB (the image, its flipped
copy, the pass's output and count map, the running sum).  :func:`flip_mean`
gives the same result - MONAI's windows (``dense_patch_slices`` on the flipped,
zero-padded image), its Gaussian importance map, ``sum(w p) / sum(w)`` per pass,
the mean over passes - without ever building a flipped image or a per-pass map:

- a window of a flipped pass is cut from the *unflipped* image at the mirrored
  place (zero-padded where MONAI pads), flipped, passed, flipped back;
- each pass's count map ``sum(w)`` is known before the network runs (it depends
  on the window grid only), so every window's ``w p / sum(w)`` goes straight
  into ONE running mean on the image's grid.

Memory: the mean ``(C, X, Y, Z)`` float32, the count of one band of window rows
(:class:`_Counts`: the same numbers as a whole count map) and one window batch; the
image itself may be a :class:`Region` read a window at a time (a volume on its own
grid is then never copied whole); the number of network calls is MONAI's (one per window batch and
flip).  Tensors are ``(1, 1, X, Y, Z)`` images, ``(B, C, *window)`` batches.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers.utils import _get_scan_interval

Predictor = Callable[[torch.Tensor], Optional[torch.Tensor]]


def window_starts(shape: Sequence[int], window: Sequence[int], overlap: float,
                  flip_axes: Sequence[int] = ()) -> List[Tuple[int, ...]]:
    """Start corners, on the unflipped grid of ``shape``, of MONAI's windows over the image flipped on ``flip_axes``.

    MONAI pads an axis shorter than the window by ``(w - s) // 2`` before it and the rest after,
    then tiles the padded image (``dense_patch_slices``); a start can therefore be negative or run
    past the end (those voxels are zeros).  ``flip_axes`` are spatial axes 0..2.
    """
    shape, window = [int(s) for s in shape], [int(w) for w in window]
    padded = [max(s, w) for s, w in zip(shape, window)]
    lo = [max(w - s, 0) // 2 for s, w in zip(shape, window)]
    interval = _get_scan_interval(padded, window, 3, (overlap,) * 3)
    out = []
    for sl in dense_patch_slices(padded, window, interval):
        out.append(tuple(shape[k] - window[k] - sl[k].start + lo[k] if k in flip_axes else sl[k].start - lo[k]
                         for k in range(3)))
    return out


def _clip(start: Sequence[int], window: Sequence[int], shape: Sequence[int]) -> Tuple[tuple, tuple]:
    """(slices on the image, slices on the window) of the part of a window inside the image."""
    img, win = [], []
    for a, w, s in zip(start, window, shape):
        lo, hi = max(a, 0), min(a + w, s)
        img.append(slice(lo, hi))
        win.append(slice(lo - a, hi - a))
    return tuple(img), tuple(win)


class Region:
    """An image the windows are cut from without holding it whole: ``shape`` (X, Y, Z), ``device``
    and ``read(slices) -> (1, x, y, z)`` float32 (``preprocess.normalized_region`` normalises each
    part of a volume as it is read)."""

    def __init__(self, shape: Sequence[int], read: Callable[[tuple], torch.Tensor], device="cpu") -> None:
        self.shape = tuple(int(s) for s in shape)
        self.read = read
        self.device = torch.device(device)


def _crop(image, start: Sequence[int], window: Sequence[int]) -> torch.Tensor:
    """``(1, *window)`` of the ``(1, X, Y, Z)`` image (or :class:`Region`) at ``start``, zeros outside it."""
    region = isinstance(image, Region)
    img, win = _clip(start, window, image.shape if region else image.shape[1:])
    part = image.read(img).to(image.device) if region else image[(slice(None),) + img]
    if all(w.start == 0 and w.stop == n for w, n in zip(win, window)):
        return part
    out = part.new_zeros((part.shape[0], *window))
    out[(slice(None),) + win] = part
    return out


class _Counts:
    """A pass's ``sum(w)`` per voxel, one band of rows (first axis) at a time.

    The band of a window's rows is summed over every window that reaches it, in the
    pass's window order: per voxel the same additions in the same order as a whole
    count map, so the same float32 numbers, without a count map of the volume's size.
    The last two bands are kept (the windows of one row of the grid share a band).
    """

    def __init__(self, starts: List[Tuple[int, ...]], window: Tuple[int, ...], weight: torch.Tensor,
                 shape: Tuple[int, ...]) -> None:
        self.starts, self.window, self.weight, self.shape = starts, window, weight, shape
        self._bands: dict = {}

    def band(self, lo: int, hi: int) -> torch.Tensor:
        """``sum(w)`` over rows ``lo:hi``: ``(hi - lo, Y, Z)``."""
        if (lo, hi) not in self._bands:
            count = torch.zeros((hi - lo, *self.shape[1:]), dtype=torch.float32, device=self.weight.device)
            for b in self.starts:
                img, win = _clip(b, self.window, self.shape)
                a0, a1 = max(img[0].start, lo), min(img[0].stop, hi)
                if a0 >= a1:
                    continue
                shift = win[0].start - img[0].start
                count[(slice(a0 - lo, a1 - lo),) + img[1:]] += self.weight[(slice(a0 + shift, a1 + shift),) + win[1:]]
            while len(self._bands) >= 2:
                self._bands.pop(next(iter(self._bands)))
            self._bands[(lo, hi)] = count
        return self._bands[(lo, hi)]


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), max(1, int(size))):
        yield items[i:i + size]


def importance(window: Sequence[int], device) -> torch.Tensor:
    """MONAI's Gaussian importance map of a window (the same weights ``sliding_window_inference`` uses)."""
    return compute_importance_map(tuple(int(w) for w in window), mode="gaussian", sigma_scale=0.125,
                                  device=device, dtype=torch.float32)


def flip_mean(image, window: Sequence[int], overlap: float, batch_size: int, predictor: Predictor,
              flips: Sequence[Tuple[int, ...]] = ((),), on_pass: Callable[[Tuple[int, ...]], None] | None = None,
              accumulate: bool = True) -> Optional[torch.Tensor]:
    """Mean over ``flips`` of MONAI-equivalent Gaussian-blended sliding-window passes of ``predictor``.

    image: ``(1, 1, X, Y, Z)`` tensor or a :class:`Region`; flips: spatial axes (0..2) flipped per
    pass, ``()`` the identity; predictor: ``(B, 1, *window)`` -> ``(B, C, *window)`` (or None: nothing
    to accumulate, as in a features-only pass); on_pass: called with each pass's flip before its first
    window; accumulate: False runs the windows only (hooks see them) and returns None.
    Returns the ``(C, X, Y, Z)`` float32 mean on the image's device.
    """
    vol = image if isinstance(image, Region) else image[0]
    shape = tuple(image.shape if isinstance(image, Region) else vol.shape[1:])
    window = tuple(int(w) for w in window)
    weight = importance(window, image.device)
    mean: Optional[torch.Tensor] = None
    for flip in flips:
        dims = [k + 2 for k in flip]  # the flipped axes of a (B, C, *window) batch
        starts = window_starts(shape, window, overlap, flip)
        counts = _Counts(starts, window, weight, shape) if accumulate else None
        if on_pass is not None:
            on_pass(tuple(flip))
        for group in _batches(starts, batch_size):
            x = torch.stack([_crop(vol, a, window) for a in group])
            if dims:
                x = torch.flip(x, dims)
            p = predictor(x)
            if p is None or not accumulate:
                continue
            p = p.float()
            if dims:
                p = torch.flip(p, dims)
            if mean is None:
                mean = torch.zeros((p.shape[1], *shape), dtype=torch.float32, device=image.device)
            for a, pw in zip(group, p):
                img, win = _clip(a, window, shape)
                band = counts.band(img[0].start, img[0].stop)
                mean[(slice(None),) + img] += pw[(slice(None),) + win] * (weight[win] / band[(slice(None),) + img[1:]])
    if mean is not None and len(flips) > 1:
        mean /= len(flips)
    return mean
