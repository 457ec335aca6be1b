"""The masked-volume reconstruction pretext task, shared by pretraining and scoring.

Pretraining (``training.pretrain``) teaches the default network to fill in
hidden cubes of a volume; scoring (``inference.pretext_divergence``, K_pretext)
measures how badly the foundation's pretext head fills them in on a new volume.
Both must hide the same cubes the same way, so the mask, the reconstruction
error and the network spec live here, below both (neither imports the other).

The cube size and hiding probability are settings (``pretext_mask_block``,
``pretext_mask_ratio``); with ``seed`` they are part of the score-cache key.

Tensors: ``(B, 1, X, Y, Z)``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def reconstruction_spec(patch_size: Sequence[int]):
    """The default network with one reconstruction output channel and no task head."""
    from .models import default_spec
    spec = default_spec(["intensity"], patch_size)
    return spec.replace(classes=[], has_task_head=False, task="reconstruction")


def block_mask(shape: Sequence[int], generator: torch.Generator, block: int, ratio: float) -> torch.Tensor:
    """(B, 1, X, Y, Z) float mask, 1 on hidden cubes of ``block`` voxels (each hidden with probability ``ratio``)."""
    b, _, *spatial = shape
    coarse = [-(-s // block) for s in spatial]
    hidden = (torch.rand((b, 1, *coarse), generator=generator) < ratio).float()
    full = hidden.repeat_interleave(block, 2).repeat_interleave(block, 3).repeat_interleave(block, 4)
    return full[:, :, :spatial[0], :spatial[1], :spatial[2]]


def reconstruction_error(recon: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``recon`` against ``image`` over the hidden voxels (``mask`` 1); a scalar."""
    return ((recon - image) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)


def pretext_loss(network: nn.Module, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked-volume reconstruction loss: MSE of ``network``'s output on the hidden voxels.

    image, mask: (B, 1, X, Y, Z); the hidden voxels are set to 0 (the
    normalised mean) in the input. Returns a scalar (per-batch mean).
    """
    out = network(image * (1.0 - mask)).float()
    return reconstruction_error(out, image, mask)
