"""Fine-tuning rounds with SSFT, and self-supervised pretraining of a foundation model.

Both are resumable jobs (``SPEC.md``: "SSFT", "The round loop") that take
``progress(step, total, info)`` and ``should_stop()``; on a stop request they
save network, optimizer, grad scaler and step in the job folder and raise
:class:`~ASSFTLib.errors.JobCancelled`; ``resume=True`` continues from there.

- :mod:`.data`: training volumes, label checks, random patches, MSD folder expansion;
- :mod:`.losses`: the masked Dice + cross-entropy of pseudo-labels;
- :mod:`.loop`: the one step loop of both jobs, and the resumable state;
- :mod:`.finetune`: :func:`finetune_round` (plan, held-out fold, registration), and
  :func:`train_supervised` (a headed model from a fully labeled folder);
- :mod:`.pretraining`: :func:`pretrain` (masked-volume reconstruction).

Device, threads and mixed precision come from :mod:`ASSFTLib.runtime`, the
pretext mask and loss from :mod:`ASSFTLib.pretext`, the pseudo-label selection
from :mod:`ASSFTLib.pseudo`. Tensors: volumes ``(1, X, Y, Z)`` per case,
batches ``(B, C, X, Y, Z)``.
"""
from __future__ import annotations

from .data import TrainCase, expand_image_paths, load_labeled_case, pseudo_case
from .finetune import finetune_round, holdout_fold, train_supervised
from .loop import Progress, ShouldStop, TrainingWarning, load_state, restore_state, save_state
from .losses import MaskedDiceCELoss
from .pretraining import pretrain

__all__ = ["MaskedDiceCELoss", "Progress", "ShouldStop", "TrainCase", "TrainingWarning", "expand_image_paths",
           "finetune_round", "holdout_fold", "load_labeled_case", "load_state", "pretrain", "pseudo_case",
           "restore_state", "save_state", "train_supervised"]
