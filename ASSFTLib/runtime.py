"""Where and how torch runs: the device, CPU threads, mixed precision and the gradient scaler.

Training, pretraining, scoring, segmentation and the speed benchmark all ask
these questions; the answers live here once, so that a model is trained,
evaluated on its held-out fold and scored in the same numeric format.

Mixed-precision policy (:func:`amp_dtype`), with ``Settings.amp`` on:

- CUDA on a GPU with bfloat16 (Ampere and newer): **bfloat16**. It keeps
  float32's exponent range, so activations and losses cannot overflow, and
  gradients need no loss scaling (the grad scaler stays off).
- CUDA on an older GPU: **float16**, with a gradient scaler while training.
- CPU: **float32** (no autocast). CPU bfloat16 autocast is slower than float32
  on most CPUs and would change the numbers CPU runs and the tests compare.

Before this module, scoring and the speed benchmark used float16 on every GPU
while training used bfloat16 where supported; the training policy was kept for
all of them, so a held-out Dice and a score are computed as the model trained.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Union

import torch

DeviceLike = Union[str, torch.device]


def device_type(device: DeviceLike) -> str:
    """``"cuda"`` or ``"cpu"`` (or another torch device type) of ``"cuda:1"``, ``torch.device("cpu")``, ..."""
    return torch.device(device).type


def resolve_device(settings) -> str:
    """The device a job runs on: ``settings.device``, where ``"auto"`` means CUDA when available, else the CPU."""
    return settings.resolved_device()


def set_threads(num_threads: int) -> None:
    """Limit torch's CPU threads to ``num_threads``; 0 leaves torch's default (one per core)."""
    if num_threads:
        torch.set_num_threads(int(num_threads))


def prepare(settings) -> str:
    """Start of a training job: CPU threads and torch's seed from ``settings``; returns the device to use."""
    set_threads(settings.num_threads)
    torch.manual_seed(settings.seed)
    return resolve_device(settings)


def amp_dtype(device: DeviceLike, amp: bool) -> Optional[torch.dtype]:
    """The autocast dtype on ``device`` with mixed precision ``amp`` on, or None for float32 (module docstring)."""
    if not amp or device_type(device) != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: DeviceLike, amp: bool):
    """A context manager running the enclosed forward passes in :func:`amp_dtype` (a no-op for float32)."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type(device), dtype=dtype)


def grad_scaler(device: DeviceLike, amp: bool) -> torch.amp.GradScaler:
    """The loss scaler of a training job: on only for float16 (bfloat16 and float32 need none).

    A disabled scaler passes ``scale``, ``step`` and ``update`` straight
    through and saves an empty state, so the resumable state has one shape.
    """
    return torch.amp.GradScaler("cuda", enabled=needs_loss_scaling(device, amp))


def needs_loss_scaling(device: DeviceLike, amp: bool) -> bool:
    """Whether training on ``device`` needs a loss scaler: only in float16, whose small range underflows gradients."""
    return amp_dtype(device, amp) == torch.float16


#: Most patch-reading processes the automatic choice starts beside a GPU.
AUTO_LOADER_WORKERS = 4


def loader_workers(settings, device: DeviceLike) -> int:
    """Processes that read and augment training patches (``settings.loader_workers``; -1: automatic).

    Automatic: none on the CPU, where the training step itself takes the cores (about 0.4 s
    per step of two 48x64x64 patches on one core, against about 22 ms to read and augment
    them from the memory-mapped cache: 5 %) and every worker would be another process
    importing torch on the same cores;
    beside a GPU, where a step takes milliseconds and the CPU-side augmentation (affine
    resampling) becomes the bottleneck, up to :data:`AUTO_LOADER_WORKERS`, leaving half the
    cores to the main process.
    """
    import os
    requested = int(settings.loader_workers)
    if requested >= 0:
        return requested
    if device_type(device) != "cuda":
        return 0
    return max(1, min(AUTO_LOADER_WORKERS, (os.cpu_count() or 2) // 2))
