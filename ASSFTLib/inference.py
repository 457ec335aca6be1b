"""The network side of scoring: one sliding-window pass per volume and network.

:func:`forward_volume` runs one sliding-window pass (MONAI's windows and
Gaussian blending) per test-time flip (identity, then a flip along each axis:
T = 4) and averages the softmax maps window by window
(:func:`stitching.flip_mean`), so a clinical CT never holds more than the mean
map on the network's grid, one band of window counts and the image on that grid
(a volume the network sees on its own grid is not copied at all: each window is
read and normalised as it is cut).  Scoring reduces the mean where it is restored
to the volume's grid, slab by slab (``probs_view``); :func:`predict_label` restores
only the argmax and the confidence, slab by slab.  During the identity pass, forward hooks on
the same network calls gather

- the bottleneck embedding z(x): global average of the deepest encoder feature
  map (``models.bottleneck_module``) over every window voxel, L2-normalised;
- the per-channel mean/variance of every encoder normalisation layer's input
  (``models.norm_layers_with_stats``) next to its running statistics (DKD
  ``bnstats``).

No second pass is made just for features.  When only features are wanted (the
frozen foundation E0, or a network without a task head), the forward pass is
cut short right after the bottleneck, so the decoder never runs.

Tensors are ``(B, C, X, Y, Z)``; returned arrays are numpy on the CPU, on the
volume's own grid ``(C, X, Y, Z)`` (or a ``preprocess.RestoredView`` of it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from . import models, preprocess, query, stitching
from .errors import ASSFTError
from .pretext import block_mask, reconstruction_error
from .runtime import autocast
from .settings import Settings


class _StopForward(Exception):
    """Raised by the bottleneck hook to skip the decoder when only features are wanted."""


@dataclass
class ForwardResult:
    """Per-volume outputs of one sliding-window pass (per flip) of one network.

    probs: ``(C, X, Y, Z)`` float32 test-time mean softmax on the volume's grid,
        or None when not asked for (feature-only pass).
    embedding: ``(D,)`` float64 L2-normalised bottleneck embedding (identity pass).
    norm_stats: per encoder normalisation layer (name, mean ``(K,)``, var ``(K,)``)
        of the layer's input over the volume; empty unless asked for.
    running_stats: the matching (name, running_mean ``(K,)``, running_var ``(K,)``).
    bald: MC-dropout BALD when ``mc_samples > 0`` was asked for, else None.
    """

    probs: np.ndarray | None
    embedding: np.ndarray
    norm_stats: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    running_stats: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    bald: float | None = None


class _Moments:
    """Running per-channel count/mean/M2 (Chan et al.'s parallel merge), float64."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """Merge a batch ``(B, K, ...)`` into the per-channel moments."""
        dims = [0, *range(2, x.ndim)]
        x = x.detach().float()
        n_b = x.numel() // x.shape[1]
        mean_b = x.mean(dim=dims).double()
        m2_b = x.var(dim=dims, unbiased=False).double() * n_b
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta ** 2 * (self.n * n_b / n)
        self.n = n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean.cpu().numpy(), (self.m2 / self.n).cpu().numpy()


class _Recorder:
    """Forward hooks that gather the embedding and normalisation statistics while active.

    Normalisation layers count only before the bottleneck fires in each call
    (the encoder); ``stop`` cuts the call short after the bottleneck.
    """

    def __init__(self, loaded: "models.LoadedModel", norm_stats: bool, stop: bool) -> None:
        self.active = False
        self.stop = stop
        self._past_bottleneck = False
        self._emb_sum: torch.Tensor | None = None
        self._emb_count = 0
        self._layers = models.norm_layers_with_stats(loaded.network, loaded.spec) if norm_stats else []
        self._moments = [_Moments() for _ in self._layers]
        self._handles = [models.bottleneck_module(loaded.network, loaded.spec).register_forward_hook(self._bottleneck)]
        self._handles += [m.register_forward_pre_hook(self._norm_hook(i)) for i, (_, m) in enumerate(self._layers)]

    def _bottleneck(self, module, inputs, output) -> None:
        if isinstance(output, (tuple, list)):
            output = output[0]
        if self.active:
            feats = output.detach().float()
            s = feats.sum(dim=[0, *range(2, feats.ndim)]).double()
            self._emb_sum = s if self._emb_sum is None else self._emb_sum + s
            self._emb_count += feats.numel() // feats.shape[1]
        self._past_bottleneck = True
        if self.stop:
            raise _StopForward

    def _norm_hook(self, index: int) -> Callable:
        def hook(module, args) -> None:
            if self.active and not self._past_bottleneck:
                self._moments[index].add(args[0])
        return hook

    def call(self, network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """Run ``network`` on a window batch; None when the call was cut at the bottleneck."""
        self._past_bottleneck = False
        try:
            out = network(x)
        except _StopForward:
            return None
        return out[0] if isinstance(out, (tuple, list)) else out

    def embedding(self) -> np.ndarray:
        if self._emb_sum is None:
            raise ASSFTError("the bottleneck layer never ran", hint="check the model spec's network")
        z = (self._emb_sum / self._emb_count).cpu().numpy()
        return z / max(float(np.linalg.norm(z)), query.EPS)

    def stats(self) -> tuple[list, list]:
        """(name, mean, var) and (name, running_mean, running_var) of the layers that ran in the encoder."""
        ran = [(name, m, mom) for (name, m), mom in zip(self._layers, self._moments) if mom.n > 0]
        volume = [(name, *mom.result()) for name, _, mom in ran]
        running = [(name, m.running_mean.detach().double().cpu().numpy(), m.running_var.detach().double().cpu().numpy())
                   for name, m, _ in ran]
        return volume, running

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _device(network: torch.nn.Module) -> torch.device:
    return next(iter(network.parameters()), torch.empty(0)).device


def _flips(settings: Settings) -> list[tuple[int, ...]]:
    """Spatial tensor dims to flip for each test-time augmentation; ``()`` is the identity."""
    return [(), (2,), (3,), (4,)] if settings.tta_flips else [()]


def window_size(spec: "models.ModelSpec", spatial_shape) -> tuple[int, int, int]:
    """The sliding window for a volume of ``spatial_shape`` (network grid): the model's patch,
    shrunk on every axis where the volume is smaller, to the next multiple of the network's divisor.

    MONAI pads a volume smaller than the window with zeros, and those voxels
    would enter the embedding z(x) and the per-volume normalisation statistics
    of DKD ``bnstats``, so both would measure how much padding a volume needs
    (its size) rather than its content.  Shrinking leaves less than one divisor
    of padding per axis; a fully convolutional network runs on any such size.
    """
    divisor = models.patch_divisor(spec)
    return tuple(min(int(p), -(-int(s) // d) * d) for p, s, d in zip(spec.patch_size, spatial_shape, divisor))


def network_input(volume, preprocessing: dict, device) -> tuple:
    """(image the windows are cut from, ``preprocess.Restorer``) for ``volume``.

    A volume resampled to the network's spacing is prepared whole (slab by slab, on the
    smaller grid); one the network sees on its own grid is a ``stitching.Region`` that
    normalises each window as it is cut (the same numbers; no float32 copy of the volume).
    """
    if preprocess.target_shape(volume, preprocessing) == tuple(volume.shape):
        region = stitching.Region(volume.shape, preprocess.normalized_region(volume.array, preprocessing), device)
        return region, preprocess.Restorer(tuple(volume.shape), tuple(volume.shape))
    image, restore = preprocess.prepare_image(volume, preprocessing)
    return image.to(device=device, dtype=torch.float32), restore


def forward_volume(loaded: "models.LoadedModel", volume, settings: Settings, *, with_probs: bool = True,
                   with_norm_stats: bool = False, mc_samples: int = 0, full_patch: bool = False,
                   probs_view: bool = False) -> ForwardResult:
    """One sliding-window pass per test-time flip of ``loaded`` over ``volume`` (an ``io.Volume``).

    full_patch: use the model's whole patch as the window even for a volume
        smaller than it (MONAI zero-pads, as training pads its patches), for
        segmentations; the default shrinks the window (:func:`window_size`) so
        that padding does not enter the embedding and statistics of scoring.

    with_probs: compute the test-time mean softmax (needs a task head); without
        it only the identity pass runs, cut short after the bottleneck.
    with_norm_stats: gather encoder normalisation-layer input statistics.
    mc_samples: extra identity passes with dropout on, for BALD (0: none).
    probs_view: return ``probs`` as a ``preprocess.RestoredView`` (restored to the volume's grid
        slab by slab as it is read) instead of the whole restored map: scoring reduces it
        slab by slab and never holds a full-grid map of a resampled volume.
    """
    network, spec = loaded.network, loaded.spec
    if with_probs and not spec.has_task_head:
        raise ASSFTError("this model has no segmentation head for the task's classes", path=loaded.path,
                         hint="fine-tune it first (assft train); until then ATSQ ranks by DKD only")
    device = _device(network)
    image, restore = network_input(volume, spec.preprocessing, device)
    rec = _Recorder(loaded, with_norm_stats, stop=not with_probs)

    def predictor(x: torch.Tensor) -> torch.Tensor | None:
        out = rec.call(network, x)
        return None if out is None else torch.softmax(out.float(), dim=1)

    grid = tuple(image.shape[-3:])
    window = tuple(spec.patch_size) if full_patch else window_size(spec, grid)

    def window_pass(x: torch.Tensor, flips=((),), on_pass=None, accumulate: bool = True) -> torch.Tensor | None:
        return stitching.flip_mean(x, window, settings.sw_overlap, settings.sw_batch_size, predictor,
                                   flips=flips, on_pass=on_pass, accumulate=accumulate)

    def on_pass(flip: tuple) -> None:
        rec.active = flip == ()

    network.eval()
    try:
        with torch.inference_mode(), autocast(device, settings.amp):
            # the test-time mean is reduced window by window (stitching.flip_mean): no flipped
            # image and no per-pass map is ever held, only the running mean
            flips = [tuple(d - 2 for d in dims) for dims in _flips(settings)] if with_probs else [()]
            mean = window_pass(image, flips, on_pass, accumulate=with_probs)
            rec.active = False
            bald = _mc_dropout_bald(network, image, window_pass, mc_samples, settings.seed) if mc_samples else None
        embedding = rec.embedding()
        volume_stats, running_stats = rec.stats()
    finally:
        rec.remove()
        network.eval()
    del image
    probs = None
    if with_probs:
        mean = mean.cpu().numpy()
        probs = restore.view(mean) if probs_view else np.asarray(restore(mean), dtype=np.float32)
        del mean
    return ForwardResult(probs, embedding, volume_stats, running_stats, bald)


def _mc_dropout_bald(network, image, window_pass, samples: int, seed: int) -> float:
    """BALD from ``samples`` identity passes with dropout on (network grid, seeded)."""
    if models.enable_mc_dropout(network) == 0:
        raise ASSFTError("BALD needs dropout layers and this network has none",
                         hint="choose another strategy, or a network built with dropout")
    devices = [image.device] if image.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        mean_p, mean_h = None, None
        for _ in range(samples):
            p = window_pass(image).float()
            h = -(p.clamp_min(query.EPS) * p.clamp_min(query.EPS).log()).sum(0) / np.log(p.shape[0])
            mean_p = p / samples if mean_p is None else mean_p + p / samples
            mean_h = h / samples if mean_h is None else mean_h + h / samples
    network.eval()
    return query.bald_from_moments(mean_p.cpu().numpy(), mean_h.cpu().numpy())


def predict_probs(model: "models.LoadedModel", volume, settings: Settings) -> np.ndarray:
    """Test-time mean softmax ``(C, X, Y, Z)`` (float32) of ``model`` on ``volume``'s own grid.

    The window is the model's full patch, padded as in training: on hippocampus crops
    smaller than the patch, a model trained on padded patches lost about 0.09 Dice
    (0.54 -> 0.45 on 16 test cases) when the window was shrunk to the volume.
    """
    return forward_volume(model, volume, settings, with_probs=True, full_patch=True).probs


def predict_label(model: "models.LoadedModel", volume, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """(argmax ``(X, Y, Z)`` uint8, max-probability ``(X, Y, Z)`` float32) of :func:`predict_probs`'s map,
    on ``volume``'s own grid, restored slab by slab: a resampled CT's full-grid probability map is never
    held.  ``ssft.pseudo_target``'s label and ``confidence < tau_v`` its ignore mask."""
    view = forward_volume(model, volume, settings, with_probs=True, full_patch=True, probs_view=True).probs
    if view.shape[0] > 256:
        raise ASSFTError(f"{view.shape[0]} classes do not fit a uint8 label", path=model.path)
    label = np.empty(view.shape[1:], dtype=np.uint8)
    confidence = np.empty(view.shape[1:], dtype=np.float32)
    for i, j in preprocess.row_slabs(view.shape[1:]):
        p = view[:, i:j]
        label[i:j] = np.argmax(p, axis=0)
        confidence[i:j] = np.max(p, axis=0)
    return label, confidence


def embed(model: "models.LoadedModel", volume, settings: Settings, with_norm_stats: bool = False) -> ForwardResult:
    """Features only (embedding and, if asked, normalisation statistics): the encoder runs, the decoder does not."""
    return forward_volume(model, volume, settings, with_probs=False, with_norm_stats=with_norm_stats)


def pretext_divergence(foundation: "models.LoadedModel", volume, settings: Settings) -> float:
    """K_pretext(x): masked-volume reconstruction error of the foundation's pretext network.

    The same masking as pre-training (``pretext.block_mask``: cubes of
    ``settings.pretext_mask_block`` voxels hidden with probability
    ``settings.pretext_mask_ratio``, seeded by ``settings.seed`` so every volume
    and model sees a fixed mask); the masked image is reconstructed with sliding
    windows and the mean squared error over the hidden voxels is returned: what
    the foundation model cannot fill in is knowledge it lacks.
    """
    pretext = foundation.pretext
    if pretext is None:
        raise ASSFTError("the foundation checkpoint carries no pretext head", path=foundation.path,
                         hint="use divergence_mode 'bnstats' or 'drift'")
    device = _device(pretext.network)
    image, _ = preprocess.prepare_image(volume, pretext.spec.preprocessing)
    image = image.to(device=device, dtype=torch.float32)
    mask = block_mask(image.shape, torch.Generator().manual_seed(settings.seed), settings.pretext_mask_block,
                      settings.pretext_mask_ratio).to(device)
    pretext.network.eval()
    with torch.inference_mode(), autocast(device, settings.amp):
        recon = sliding_window_inference(image * (1.0 - mask), window_size(pretext.spec, image.shape[2:]),
                                         settings.sw_batch_size,
                                         lambda x: pretext.network(x).float(), overlap=settings.sw_overlap,
                                         mode="gaussian")
    return float(reconstruction_error(recon[:, :1].float(), image, mask))
