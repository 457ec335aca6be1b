"""Self-supervised pretraining of a foundation model by masked-volume reconstruction.

:func:`pretrain` trains the default network on unlabeled volumes to fill in
hidden cubes (:mod:`ASSFTLib.pretext`) and writes an ASSFT checkpoint whose
pretext head lets the ``pretext`` divergence measure what it cannot
reconstruct. It runs the same resumable step loop as fine-tuning.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import torch
from torch import nn

from .. import runtime
from ..errors import ASSFTError, JobCancelled
from ..pretext import block_mask, pretext_loss, reconstruction_spec
from ..runtime import autocast, grad_scaler
from ..settings import Settings
from .data import PatchSampler, StepBatches, TrainCase, prepared_image, step_batches
from .loop import (Progress, ShouldStop, StepJob, StepLoss, check_finite_weights, lr_schedule, open_state,
                   remove_if_empty, restore_state, run_steps)


def pretrain(image_paths: Sequence[str | Path], out_path: str | Path, settings: Settings,
             progress: Progress = None, should_stop: ShouldStop = None, resume: bool = False,
             job_dir: str | Path | None = None) -> dict:
    """Self-supervised masked-volume reconstruction of the default network on unlabeled volumes.

    image_paths: volume files (no labels needed).
    out_path: the ASSFT checkpoint written (atomically) at the end: task
        "reconstruction", ``has_task_head=False``, batch-norm running statistics
        present, and the same network kept as its pretext head.
    job_dir: where the resumable state lives (default: ``<out_path>.job/`` beside it).
    Returns ``{"out_path", "steps", "metrics": {"final_loss", "volumes", "mask_block", "mask_ratio"}}``.
    """
    out_path = Path(out_path)
    made_job_dir = job_dir is None
    job_dir = Path(job_dir) if job_dir else out_path.with_name(out_path.name + ".job")
    state_path, saved = open_state(job_dir, resume)
    try:
        return _pretrain(image_paths, out_path, settings, progress, should_stop, job_dir, state_path, saved)
    finally:
        if made_job_dir:  # kept only while it holds a resumable state
            remove_if_empty(job_dir)


def _pretrain(image_paths, out_path: Path, settings: Settings, progress: Progress, should_stop: ShouldStop,
              job_dir: Path, state_path: Path, saved) -> dict:
    from ..models import build_network, default_preprocessing, save_checkpoint
    paths = [Path(p) for p in image_paths]
    if not paths:
        raise ASSFTError("no volumes to pretrain on", hint="pass volume files or a folder of them")
    device = runtime.prepare(settings)
    spec = reconstruction_spec(settings.patch_size)
    images = _read_volumes(paths, default_preprocessing(), job_dir, progress, should_stop)

    network = build_network(spec).to(device)
    optimizer = torch.optim.AdamW([{"params": list(network.parameters()), "initial_lr": settings.learning_rate}],
                                  lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scaler = grad_scaler(device, settings.amp)
    plan = {"volumes": [str(p) for p in paths], "out_path": str(out_path)}
    first = restore_state(saved, network, optimizer, scaler)
    network.train()
    steps = int(settings.pretrain_steps)
    job = StepJob(network, optimizer, scaler, state_path, plan, progress, should_stop,
                  lr_schedule(settings.lr_schedule, steps))
    sampler = PatchSampler(settings.patch_size, settings.seed)  # flips only: the pretext target is the image
    batches = StepBatches(sampler, [[sampler.prepare(c) for c in images]], settings.batch_size, settings.seed, first,
                          steps)
    with step_batches(batches, runtime.loader_workers(settings, device),
                      pin_memory=runtime.device_type(device) == "cuda") as batch:
        loss_value = run_steps(job, first, steps, "pretrain", _reconstruction_loss(network, batch, settings, device,
                                                                                   first))
    network = network.cpu().eval()
    check_finite_weights(network, job_dir, consequence=f"no foundation model was written to {out_path}")
    metrics = {"final_loss": loss_value, "volumes": len(paths), "mask_block": settings.pretext_mask_block,
               "mask_ratio": settings.pretext_mask_ratio}
    save_checkpoint(out_path, network, spec, pretext=(network, spec),
                    extra={"pretext_task": "masked_reconstruction", "metrics": json.dumps(metrics)})
    state_path.unlink(missing_ok=True)
    return {"out_path": str(out_path), "steps": steps, "metrics": metrics}


def _read_volumes(paths: Sequence[Path], preprocessing: dict, job_dir: Path, progress: Progress,
                  should_stop: ShouldStop) -> List[TrainCase]:
    """The volumes on the network grid (no labels: zero targets), reporting ``prepare`` progress."""
    images = []
    for i, p in enumerate(paths):
        if should_stop is not None and should_stop():
            raise JobCancelled("stopped while reading the volumes", path=job_dir, hint="start again")
        image, _ = prepared_image(p, preprocessing)
        images.append(TrainCase(p.name, image, torch.zeros_like(image, dtype=torch.int64), torch.ones_like(image)))
        if progress is not None:
            progress(i + 1, len(paths), {"phase": "prepare", "case": p.name})
    return images


def _reconstruction_loss(network: nn.Module, next_batch: Callable[[int], dict], settings: Settings, device: str,
                         first: int) -> StepLoss:
    """One step's loss: MSE on the hidden cubes of the step's seeded patches (masks seeded from the first step)."""
    generator = torch.Generator().manual_seed(settings.seed + first)

    def step_loss(step: int) -> Tuple[torch.Tensor, dict]:
        image = next_batch(step)["image"].to(device)
        mask = block_mask(image.shape, generator, settings.pretext_mask_block, settings.pretext_mask_ratio)
        with autocast(device, settings.amp):
            return pretext_loss(network, image, mask.to(device)), {}

    return step_loss
