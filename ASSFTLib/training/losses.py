"""The pseudo-label loss: Dice + cross-entropy over the voxels a pseudo-label keeps.

The supervised loss is MONAI's ``DiceCELoss``; the masked-reconstruction loss
of pretraining lives with its mask in :mod:`ASSFTLib.pretext`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss
from monai.networks import one_hot
from torch import nn


class MaskedDiceCELoss(nn.Module):
    """MONAI's Dice (masked) + cross-entropy averaged over voxels whose weight is 1.

    logits (B, C, X, Y, Z); target (B, 1, X, Y, Z) class indices; weight (B, 1, X, Y, Z) in {0, 1}.
    The target is one-hot encoded *before* masking: MONAI's ``MaskedDiceLoss``
    multiplies the target by the mask, which on class indices turns every
    ignored voxel into background that the background channel then counts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice = MaskedDiceLoss(softmax=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target[:, 0].long(), reduction="none")
        ce = (ce * weight[:, 0]).sum() / weight.sum().clamp_min(1.0)
        onehot = one_hot(target.long(), num_classes=logits.shape[1], dim=1, dtype=logits.dtype)
        return self.dice(logits, onehot, mask=weight) + ce
