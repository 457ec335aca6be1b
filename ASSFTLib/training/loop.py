"""The one step loop of every training job, and the resumable state it saves when asked to stop.

Fine-tuning and pretraining differ only in how one step's loss is computed
(a ``StepLoss``: step -> (scalar loss, extra progress info)); everything around
it is :func:`run_steps`: polling ``should_stop``, saving the state and raising
:class:`~ASSFTLib.errors.JobCancelled`, the (scaled) backward pass and
optimizer step, and one ``progress(step, total, {"phase", "loss", ...})`` call
per step.

The state (``<job>/state.pt``, :func:`save_state`) holds the network, the
optimizer, the grad scaler, the next step and the job's plan (JSON);
``resume=True`` reads it back (:func:`open_state`, :func:`restore_state`) and
the loop continues from that step with the same seeded batches.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from ..errors import ASSFTError, CheckpointError, JobCancelled, WorkspaceError
from ..workspace.paths import check_job_dir, job_state_path

Progress = Optional[Callable[[int, int, dict], None]]
ShouldStop = Optional[Callable[[], bool]]
#: One step's loss: ``step -> (float32 scalar loss, extra progress info)``.
StepLoss = Callable[[int], Tuple[torch.Tensor, dict]]


class TrainingWarning(UserWarning):
    """Something the user should know about a round that still completes (the worker reports it)."""


@dataclass
class StepJob:
    """What a step loop trains, where a stop saves it, and whom it reports to."""

    network: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    state_path: Path
    plan: dict
    progress: Progress = None
    should_stop: ShouldStop = None
    lr_scale: Optional[Callable[[int], float]] = None   # step -> factor on each group's "initial_lr"


def run_steps(job: StepJob, first: int, total: int, phase: str, step_loss: StepLoss) -> float:
    """Run steps ``first..total-1`` of ``job``; returns the last loss (NaN when no step ran).

    Before each step ``should_stop`` is polled: when it answers True the state
    is saved (the step not yet run is the one to resume at) and JobCancelled is
    raised. After each step ``progress(step + 1, total, info)`` is called with
    ``info = {"phase": phase, "loss": ..., **extra}``.
    """
    loss_value = float("nan")
    for step in range(first, total):
        if job.should_stop is not None and job.should_stop():
            raise cancel(job, step, total)
        if job.lr_scale is not None:
            factor = job.lr_scale(step)
            for group in job.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        job.optimizer.zero_grad(set_to_none=True)
        loss, extra = step_loss(step)
        job.scaler.scale(loss).backward()
        job.scaler.step(job.optimizer)
        job.scaler.update()
        loss_value = float(loss.detach())
        if job.progress is not None:
            job.progress(step + 1, total, {"phase": phase, "loss": round(loss_value, 5), **extra})
    return loss_value


def lr_schedule(name: str, total: int) -> Optional[Callable[[int], float]]:
    """The learning-rate factor per step: ``poly`` is nnU-Net's ``(1 - step/total) ** 0.9``; ``constant`` is None."""
    if name == "constant":
        return None
    if name != "poly":
        raise ValueError(f"unknown learning-rate schedule {name!r}")
    return lambda step: (1.0 - step / max(total, 1)) ** 0.9


def cancel(job: StepJob, step: int, total: int) -> JobCancelled:
    """Save the state at ``step`` and return the JobCancelled to raise."""
    save_state(job.state_path, job.network, job.optimizer, job.scaler, step, job.plan)
    folder = job.state_path.parent
    return JobCancelled(f"stopped at step {step} of {total}; state saved", path=folder,
                        hint="resume with --resume --job-dir " + str(folder))


def open_state(job_dir: Path, resume: bool) -> Tuple[Path, Optional[dict]]:
    """Create the job folder; returns its state file and, when resuming, the state saved there.

    A new job refuses a folder holding another job's outputs (:func:`~ASSFTLib.workspace.paths.check_job_dir`)."""
    check_job_dir(job_dir, resume)
    job_dir.mkdir(parents=True, exist_ok=True)
    state_path = job_state_path(job_dir)
    return state_path, (load_state(state_path) if resume else None)


def remove_if_empty(job_dir: Path) -> None:
    """Remove a job folder that holds nothing (a finished or failed job that saved no state)."""
    try:
        job_dir.rmdir()
    except OSError:  # not empty (a resumable state, events) or already gone: leave it
        pass


def save_state(path: Path, network: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               step: int, plan: dict) -> None:
    """Everything a cancelled job needs to continue (atomically): weights, optimizer, step, plan (JSON)."""
    from ..fileutil import atomic_path
    state = {"network": {k: v.detach().cpu() for k, v in network.state_dict().items()},
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": int(step),
             "plan": json.dumps(plan)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict:
    """The state :func:`save_state` wrote; ``plan`` decoded."""
    if not path.exists():
        raise WorkspaceError("no resumable state in this job folder", path=path.parent,
                             hint="start the job again without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["plan"] = json.loads(state["plan"])
    except Exception as exc:
        raise CheckpointError(f"resumable state cannot be read ({type(exc).__name__}: {exc})", path=path,
                              hint="start the job again without --resume") from exc
    return state


def restore_state(saved: Optional[dict], network: nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler) -> int:
    """Load a resumable state (from :func:`load_state`) into the objects; returns the step to continue from."""
    if saved is None:
        return 0
    network.load_state_dict(saved["network"])
    optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    return int(saved["step"])


def check_finite_weights(network: nn.Module, job_dir: Path,
                         consequence: str = "the new model was not registered and the previous one stays current"
                         ) -> None:
    """Refuse a diverged network (NaN/Inf weights or statistics): it is never saved as a model."""
    bad = [name for name, t in list(network.named_parameters()) + list(network.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ASSFTError(f"training diverged: {len(bad)} weight tensors hold NaN or infinite values "
                         f"(first {bad[0]}); {consequence}", path=job_dir, hint="lower learning_rate and train again")
