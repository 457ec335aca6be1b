"""Fine-tuning rounds with SSFT, and self-supervised pretraining of a foundation model.

Two long functions, both resumable (``SPEC.md``: "SSFT", "The round loop"):

- :func:`finetune_round` trains the next model version of a workspace on its
  labeled volumes plus the SSFT-selected pseudo-labeled ones, records the
  quality signal, and registers the new checkpoint only when the round ends.
- :func:`pretrain` trains the default network on unlabeled volumes by
  masked-volume reconstruction and writes an ASSFT checkpoint whose pretext
  head lets the ``pretext`` divergence measure what it cannot reconstruct.

Both take ``progress(step, total, info)`` and ``should_stop()``; on a stop
request they save network, optimizer and step in the job folder and raise
:class:`~ASSFTLib.errors.JobCancelled`; ``resume=True`` continues from there.

Tensors: volumes ``(1, X, Y, Z)`` per case, batches ``(B, C, X, Y, Z)``.
"""
from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, MaskedDiceLoss
from monai.networks import one_hot
from monai.transforms import Compose, RandFlipd, RandSpatialCropd, SpatialPadd
from torch import nn

from . import runtime, ssft
from .pretext import block_mask, pretext_loss, reconstruction_spec
from .pseudo import accepted_pseudo_labels, select_round_pseudo
from .runtime import autocast, grad_scaler
from .errors import (ASSFTError, CheckpointError, GeometryError, JobCancelled, LabelError, VolumeError,
                     WorkspaceError)
from .settings import Settings
from .workspace.paths import job_state_path

Progress = Callable[[int, int, dict], None] | None
ShouldStop = Callable[[], bool] | None


class TrainingWarning(UserWarning):
    """Something the user should know about a round that still completes (the worker reports it)."""


# ============================================================================ data
@dataclass
class TrainCase:
    """One training volume on the network's grid.

    image: (1, X, Y, Z) float32; label: (1, X, Y, Z) int64 class indices;
    weight: (1, X, Y, Z) float32, 0 where a pseudo-label voxel is ignored.
    """

    case_id: str
    image: torch.Tensor
    label: torch.Tensor
    weight: torch.Tensor


def _prepared_image(path: str | Path, preprocessing: dict) -> tuple[torch.Tensor, object]:
    """Read and normalise an image -> ((1, X, Y, Z) float32 tensor on the network grid, the Volume read)."""
    from .volumes import read_volume
    from .preprocess import prepare_image
    volume = read_volume(path, kind="image")
    tensor, _ = prepare_image(volume, preprocessing)
    return torch.as_tensor(tensor, dtype=torch.float32).reshape(1, *tensor.shape[-3:]), volume


def _on_grid(array: np.ndarray, shape: Sequence[int], mode: str = "nearest") -> torch.Tensor:
    """(X, Y, Z) array -> (1, *shape) tensor; nearest-neighbour resampling when preprocessing changed the grid."""
    t = torch.as_tensor(np.ascontiguousarray(array))
    if tuple(t.shape) == tuple(shape):
        return t[None]
    return F.interpolate(t[None, None].float(), size=tuple(shape), mode=mode)[0].to(t.dtype)


def load_labeled_case(case_id: str, image_path: str | Path, label_path: str | Path, preprocessing: dict,
                      num_classes: int) -> TrainCase:
    """A labeled volume, checked (same grid as its image, classes 0..C-1), ready to train on."""
    from .volumes import check_label_values, check_same_geometry, read_volume
    image, volume = _prepared_image(image_path, preprocessing)
    label = read_volume(label_path, kind="label")
    check_same_geometry(volume, label, what=f"label of {case_id}")
    check_label_values(label.array, num_classes, path=label_path)
    target = _on_grid(label.array.astype(np.int64), image.shape[1:])
    return TrainCase(case_id, image, target, torch.ones_like(image))


def pseudo_case(case_id: str, image_path: str | Path, probs: np.ndarray, preprocessing: dict,
                tau_v: float) -> TrainCase:
    """A pseudo-labeled volume: argmax of ``probs`` (C, X, Y, Z), voxels below ``tau_v`` weighted 0."""
    image, _ = _prepared_image(image_path, preprocessing)
    label, ignore = ssft.pseudo_target(probs, tau_v)
    target = _on_grid(label.astype(np.int64), image.shape[1:])
    weight = _on_grid((~ignore).astype(np.float32), image.shape[1:])
    return TrainCase(case_id, image, target, weight)


def patch_transform(patch_size: Sequence[int], seed: int) -> Compose:
    """Random patches of ``patch_size`` (zero-padded when the volume is smaller) with flips on every axis."""
    keys = ["image", "label", "weight"]
    t = Compose([SpatialPadd(keys, spatial_size=tuple(patch_size)),
                 RandSpatialCropd(keys, roi_size=tuple(patch_size), random_size=False),
                 RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
                 RandFlipd(keys, prob=0.5, spatial_axis=2)])
    t.set_random_state(seed=seed)
    return t


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def sample_batch(cases: Sequence[TrainCase], batch_size: int, transform: Compose,
                 rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """``batch_size`` random patches -> {"image": (B,1,...) float, "label": (B,1,...) long, "weight": (B,1,...)}."""
    picks = rng.integers(0, len(cases), size=batch_size)
    items = [transform({"image": cases[i].image, "label": cases[i].label, "weight": cases[i].weight}) for i in picks]
    return {k: torch.stack([_plain(it[k]) for it in items]) for k in ("image", "label", "weight")}


# ============================================================================ losses
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


# ============================================================================ resumable state
def save_state(path: Path, network: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               step: int, plan: dict) -> None:
    """Everything a cancelled job needs to continue (atomically): weights, optimizer, step, plan (JSON)."""
    from .fileutil import atomic_path
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


def restore_state(saved: dict | None, network: nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler) -> int:
    """Load a resumable state (from :func:`load_state`) into the objects; returns the step to continue from."""
    if saved is None:
        return 0
    network.load_state_dict(saved["network"])
    optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    return int(saved["step"])


def _cancel(path: Path, network, optimizer, scaler, step: int, total: int, plan: dict) -> JobCancelled:
    save_state(path, network, optimizer, scaler, step, plan)
    return JobCancelled(f"stopped at step {step} of {total}; state saved", path=path.parent,
                        hint="resume with --resume --job-dir " + str(path.parent))


# ============================================================================ training loop
def _optimizer(network: nn.Module, encoder_names: set[str], settings: Settings,
               freeze_encoder: bool) -> torch.optim.Optimizer:
    """AdamW with the encoder at ``encoder_lr_ratio`` x the decoder's rate (or frozen)."""
    enc, dec = [], []
    for name, p in network.named_parameters():
        if name in encoder_names:
            if freeze_encoder:
                p.requires_grad_(False)
            else:
                enc.append(p)
        else:
            dec.append(p)
    groups = [{"params": dec, "lr": settings.learning_rate, "name": "decoder"}]
    if enc and settings.encoder_lr_ratio > 0:
        groups.append({"params": enc, "lr": settings.learning_rate * settings.encoder_lr_ratio, "name": "encoder"})
    return torch.optim.AdamW(groups, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def _train_mode(network: nn.Module, frozen_prefixes: Sequence[str] = ()) -> None:
    """Train mode, except normalisation layers of a frozen encoder (their statistics stay θ0's)."""
    network.train()
    for name, module in network.named_modules():
        if any(name == p or name.startswith(p + ".") for p in frozen_prefixes):
            if isinstance(module, nn.modules.batchnorm._NormBase):
                module.eval()


def _segmentation_steps(network: nn.Module, labeled: Sequence[TrainCase], pseudo: Sequence[TrainCase],
                        optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, settings: Settings,
                        device: str, start: int, state_path: Path, plan: dict, progress: Progress,
                        should_stop: ShouldStop, frozen_prefixes: Sequence[str]) -> float:
    """Run steps ``start..settings.steps``: DiceCE(labeled) + lambda(t) * masked DiceCE(pseudo). Returns the last loss."""
    total = settings.steps
    sup_loss = DiceCELoss(to_onehot_y=True, softmax=True)
    pseudo_loss = MaskedDiceCELoss()
    transform = patch_transform(settings.patch_size, settings.seed + start)
    _train_mode(network, frozen_prefixes)
    loss_value = float("nan")
    for step in range(start, total):
        if should_stop is not None and should_stop():
            raise _cancel(state_path, network, optimizer, scaler, step, total, plan)
        rng = np.random.default_rng([settings.seed, step])
        batch = sample_batch(labeled, settings.batch_size, transform, rng)
        n_sup = settings.batch_size
        if pseudo:
            extra = sample_batch(pseudo, settings.batch_size, transform, rng)
            batch = {k: torch.cat([batch[k], extra[k]]) for k in batch}
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        lam = (ssft.pseudo_weight(step, total, settings.pseudo_weight_max, settings.pseudo_ramp_fraction)
               if pseudo else 0.0)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, settings.amp):
            logits = network(batch["image"])
        logits = logits.float()
        loss = sup_loss(logits[:n_sup], batch["label"][:n_sup])
        if pseudo:
            loss = loss + lam * pseudo_loss(logits[n_sup:], batch["label"][n_sup:], batch["weight"][n_sup:])
        if not torch.isfinite(loss):
            raise ASSFTError(f"training diverged at step {step} (loss {loss.item()})",
                             hint="lower learning_rate or check the labels")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_value = float(loss.detach())
        if progress is not None:
            progress(step + 1, total, {"phase": "train", "loss": round(loss_value, 5), "pseudo_weight": round(lam, 4)})
    network.eval()
    return loss_value


# ============================================================================ the round
def holdout_fold(labeled_ids: Sequence[str], settings: Settings, round_index: int) -> list[str]:
    """Labeled volumes held out of this round for the quality signal (SPEC: k-fold over L once |L| >= k).

    With k = ``kfold_min_labels`` (0 turns it off) and |L| >= k, the labeled ids
    are dealt into k folds in a seeded order and round ``r`` holds out fold
    ``r mod k``: one fold per round keeps the cost at one training run, and
    over k rounds every fold takes its turn. Below k labels nothing is held out.
    """
    k = int(settings.kfold_min_labels)
    ids = sorted(labeled_ids)
    if k <= 1 or len(ids) < k:
        return []
    order = np.random.default_rng(settings.seed).permutation(len(ids))
    return sorted(ids[i] for rank, i in enumerate(order) if rank % k == round_index % k)


@dataclass
class _Start:
    """Where the round's weights come from, and the teacher that makes pseudo-labels."""

    network: nn.Module
    spec: object
    source: str              # "current" | "foundation"
    source_checksum: str
    teacher: object | None   # LoadedModel with a task head, or None (cold start)


def _start_model(ws, settings: Settings, device: str) -> _Start:
    """Warm start from the current model; cold start (or ``finetune_mode="restart"``) from the foundation."""
    from .models import check_task_compatible, load_model, make_task_network
    current, foundation = ws.current_model(), ws.foundation_model()
    if current is None and foundation is None:
        raise WorkspaceError("the workspace has no model to fine-tune", path=ws.folder,
                             hint="register a foundation model (assft init --model FILE) or run assft pretrain")
    loaded_current = None if current is None else load_model(current.path, device=device)
    teacher = loaded_current if (loaded_current is not None and loaded_current.spec.has_task_head
                                 and loaded_current.spec.task == "segmentation") else None
    use_foundation = teacher is None or settings.finetune_mode == "restart"
    if not use_foundation:
        loaded = teacher
    elif foundation is None or (current is not None and foundation.id == current.id):
        loaded = loaded_current
    else:
        loaded = load_model(foundation.path, device=device)
    for text in check_task_compatible(loaded, ws.classes, settings.patch_size):
        warnings.warn(text, TrainingWarning)
    if loaded.spec.has_task_head and loaded.spec.task == "segmentation":
        network, spec = copy.deepcopy(loaded.network), loaded.spec
    else:
        network, spec, _ = make_task_network(loaded, ws.classes)
    spec = spec.replace(patch_size=list(settings.patch_size))
    return _Start(network.to(device), spec, "foundation" if use_foundation else "current", loaded.checksum, teacher)


def _heldout_label_problems(ws, case_ids: Sequence[str], num_classes: int) -> list[ASSFTError]:
    """Check the held-out labels before training, so that a bad one fails the round at once, not after every step."""
    from .volumes import check_label_values, check_same_geometry, read_volume
    problems = []
    for case_id in case_ids:
        try:
            label = read_volume(ws.label_path(case_id), kind="label")
            check_same_geometry(read_volume(ws.image_path(case_id)), label, what=f"label of {case_id}")
            check_label_values(label.array, num_classes, path=label.path)
        except (VolumeError, GeometryError, LabelError) as exc:
            problems.append(exc)
    return problems


def _raise_label_problems(problems: Sequence[ASSFTError]) -> None:
    """Fail the round before any step, naming every labeled case that cannot be used (not only the first)."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise LabelError(f"{len(problems)} labeled cases cannot be used for training: "
                         + "; ".join(str(p) for p in problems), path=problems[0].path,
                         hint="fix or re-save each of these labels (or remove the cases), then train again")


def _heldout_dice(network: nn.Module, spec, ws, case_ids: Sequence[str], settings: Settings,
                  device: str) -> dict[str, float]:
    """Mean foreground Dice of ``network`` on each held-out labeled case (original grid, test-time averaged)."""
    from .inference import predict_probs
    from .volumes import read_volume
    from .metrics import mean_dice
    from .models import LoadedModel, LoadReport
    model = LoadedModel(network.eval(), spec, LoadReport(), "", None)
    out = {}
    for case_id in case_ids:
        probs = predict_probs(model, read_volume(ws.image_path(case_id)), settings)
        truth = read_volume(ws.label_path(case_id), kind="label").array
        out[case_id] = mean_dice(np.argmax(probs, axis=0), truth, len(ws.classes))
    return out


def finetune_round(workspace, settings: Settings | None = None, progress: Progress = None,
                   should_stop: ShouldStop = None, resume: bool = False, job_dir: str | Path | None = None) -> dict:
    """Train the workspace's next model version on L (minus a held-out fold) and the SSFT pseudo-labels.

    Parameters
    ----------
    workspace: a :class:`~ASSFTLib.workspace.Workspace` or its folder.
    settings: defaults to the workspace's.
    progress: ``progress(step, total, info)``; info has ``phase`` ("prepare", "train", "evaluate") and ``loss``.
    should_stop: polled between steps; when True the state is saved in ``job_dir`` and JobCancelled raised.
    resume: continue the cancelled round saved in ``job_dir``.
    job_dir: folder for the resumable state and the new checkpoint before registration
        (default ``<workspace>/jobs/train-<time>``).

    Returns ``{"model_id", "model_path", "round_id", "metrics"}``. The new model
    becomes current only at the very end; a cancelled or failed round leaves
    the previous model current and the round marked ``cancelled``/``failed``.
    """
    from .workspace import Workspace
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    settings = settings or ws.settings
    if resume and job_dir is None:
        raise WorkspaceError("resuming needs the job folder of the cancelled round", path=ws.folder,
                             hint="pass --job-dir")
    job_dir = Path(job_dir) if job_dir else ws.paths.new_job_dir("train")
    job_dir.mkdir(parents=True, exist_ok=True)
    state_path = job_state_path(job_dir)
    saved = load_state(state_path) if resume else None
    device = runtime.prepare(settings)

    start = _start_model(ws, settings, device)
    if saved is not None and saved["plan"]["source_checksum"] != start.source_checksum:
        raise WorkspaceError("the workspace's model changed since this round was cancelled", path=job_dir,
                             hint="start a new round without --resume")
    plan = saved["plan"] if saved is not None else _plan_round(ws, settings, start)
    round_id = ws.start_round("train", params={"plan": plan, "resumed": resume, "job_dir": str(job_dir),
                                                "settings": settings.to_dict()})
    try:
        result = _run_round(ws, settings, start, plan, saved, device, job_dir, state_path, round_id,
                            progress, should_stop)
    except JobCancelled:
        ws.finish_round(round_id, "cancelled", metrics={"job_dir": str(job_dir)})
        raise
    except BaseException as exc:
        ws.finish_round(round_id, "failed", metrics={"error": str(exc), "type": type(exc).__name__})
        raise
    state_path.unlink(missing_ok=True)
    return result


def _plan_round(ws, settings: Settings, start: _Start) -> dict:
    """Which cases train, which are held out, which pseudo-labels join (fixed for the round, kept on resume)."""
    labeled = ws.labeled_ids()
    if not labeled:
        raise WorkspaceError("no labeled volumes to fine-tune on", path=ws.folder,
                             hint="label at least one volume (assft rank WORKSPACE shows which) and train again")
    finished = [r for r in ws.rounds("train") if r.status == "finished"]
    heldout = holdout_fold(labeled, settings, len(finished))
    promoted = accepted_pseudo_labels(ws)
    selection = None
    if settings.use_ssft:
        selection = select_round_pseudo(ws, start.teacher, settings, exclude=list(promoted))
        if selection is None:
            why = ("the start model has no task head yet (cold start)" if start.teacher is None
                   else "the current model has not been scored (run assft score first)")
            warnings.warn(f"no pseudo-labels this round: {why}", TrainingWarning)
    return {"labeled": labeled, "heldout": heldout, "train": [c for c in labeled if c not in heldout],
            "promoted": {c: str(p) for c, p in promoted.items()},
            "pseudo": [] if selection is None else selection.selected,
            "selection": None if selection is None else selection.to_dict(),
            "source": start.source, "source_checksum": start.source_checksum}


def _run_round(ws, settings, start: _Start, plan: dict, saved: dict | None, device: str, job_dir: Path,
               state_path: Path, round_id: int, progress: Progress, should_stop: ShouldStop) -> dict:
    """Prepare the data of a planned round, train, evaluate the held-out fold, save and register."""
    from .models import encoder_module_names, encoder_parameter_names, save_checkpoint
    spec, network = start.spec, start.network
    prep, num_classes = spec.preprocessing, len(ws.classes)
    n_prepare = len(plan["train"]) + len(plan["promoted"]) + len(plan["pseudo"])
    done = 0

    def prepared(case: TrainCase) -> TrainCase:
        nonlocal done
        done += 1
        if should_stop is not None and should_stop():
            raise JobCancelled("stopped while preparing the training data", path=job_dir,
                               hint="start the round again; nothing was trained yet")
        if progress is not None:
            progress(done, n_prepare, {"phase": "prepare", "case": case.case_id})
        return case

    labeled, problems = [], []
    for c, label_path in [(c, ws.label_path(c)) for c in plan["train"]] + list(plan["promoted"].items()):
        try:
            labeled.append(prepared(load_labeled_case(c, ws.image_path(c), label_path, prep, num_classes)))
        except (VolumeError, GeometryError, LabelError) as exc:
            problems.append(exc)
    problems += _heldout_label_problems(ws, plan["heldout"], num_classes)
    _raise_label_problems(problems)
    if not labeled:
        raise WorkspaceError("every labeled volume is held out; nothing left to train on", path=ws.folder,
                             hint="set kfold_min_labels to 0 or label more volumes")
    pseudo = []
    if plan["pseudo"]:
        from .inference import predict_probs
        from .volumes import read_volume
        for c in plan["pseudo"]:
            probs = predict_probs(start.teacher, read_volume(ws.image_path(c)), settings)
            pseudo.append(prepared(pseudo_case(c, ws.image_path(c), probs, prep, settings.voxel_confidence)))

    freeze = settings.finetune_mode == "frozen_encoder"
    optimizer = _optimizer(network, encoder_parameter_names(network, spec), settings, freeze)
    scaler = grad_scaler(device, settings.amp)
    first = restore_state(saved, network, optimizer, scaler)
    frozen = encoder_module_names(network, spec) if freeze else ()
    loss = _segmentation_steps(network, labeled, pseudo, optimizer, scaler, settings, device, first, state_path,
                               plan, progress, should_stop, frozen)

    dice = {}
    if plan["heldout"]:
        if progress is not None:
            progress(0, len(plan["heldout"]), {"phase": "evaluate"})
        dice = _heldout_dice(network, spec, ws, plan["heldout"], settings, device)
    metrics = {"heldout_dice": float(np.mean(list(dice.values()))) if dice else None,
               "heldout_dice_per_case": dice, "heldout": plan["heldout"], "train_labels": len(plan["train"]),
               "qa_promoted": sorted(plan["promoted"]), "pseudo_labels": len(plan["pseudo"]),
               "pseudo_ids": plan["pseudo"], "final_loss": loss, "steps": settings.steps,
               "start": plan["source"], "finetune_mode": settings.finetune_mode, "device": device}
    if plan["selection"] is not None:
        metrics["tau_d"] = plan["selection"]["tau_d"]
    out = job_dir / "model.pt"
    save_checkpoint(out, network.cpu(), spec, extra={"round_id": round_id, "metrics": json.dumps(metrics),
                                                     "trained_on": plan["train"] + sorted(plan["promoted"])})
    version = ws.register_model(out, kind="finetuned", round_id=round_id, metrics=metrics)
    ws.finish_round(round_id, "finished", metrics=metrics, model_id=version.id)
    out.unlink(missing_ok=True)  # register_model keeps its own copy under models/
    return {"model_id": version.id, "model_path": str(version.path), "round_id": round_id, "metrics": metrics}


# ============================================================================ pretraining
def expand_image_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Volume files from a mix of files and folders (MSD folders: their ``imagesTr``)."""
    from .volumes import find_volume_files
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += find_volume_files(p / "imagesTr" if (p / "imagesTr").is_dir() else p)
        else:
            out.append(p)
    return out


def pretrain(image_paths: Sequence[str | Path], out_path: str | Path, settings: Settings,
             progress: Progress = None, should_stop: ShouldStop = None, resume: bool = False,
             job_dir: str | Path | None = None) -> dict:
    """Self-supervised masked-volume reconstruction of the default network on unlabeled volumes.

    image_paths: volume files (no labels needed).
    out_path: the ASSFT checkpoint written (atomically) at the end: task
        "reconstruction", ``has_task_head=False``, batch-norm running statistics
        present, and the same network kept as its pretext head.
    job_dir: where the resumable state lives (default: ``<out_path>.job/`` beside it).
    Returns ``{"out_path", "steps", "metrics": {"final_loss", "volumes"}}``.
    """
    from .models import default_preprocessing, save_checkpoint, build_network
    out_path = Path(out_path)
    job_dir = Path(job_dir) if job_dir else out_path.with_name(out_path.name + ".job")
    job_dir.mkdir(parents=True, exist_ok=True)
    state_path = job_state_path(job_dir)
    saved = load_state(state_path) if resume else None
    paths = [Path(p) for p in image_paths]
    if not paths:
        raise ASSFTError("no volumes to pretrain on", hint="pass volume files or a folder of them")
    device = runtime.prepare(settings)
    spec = reconstruction_spec(settings.patch_size)
    prep = default_preprocessing()
    images = []
    for i, p in enumerate(paths):
        if should_stop is not None and should_stop():
            raise JobCancelled("stopped while reading the volumes", path=job_dir, hint="start again")
        image, _ = _prepared_image(p, prep)
        images.append(TrainCase(p.name, image, torch.zeros_like(image, dtype=torch.int64), torch.ones_like(image)))
        if progress is not None:
            progress(i + 1, len(paths), {"phase": "prepare", "case": p.name})

    network = build_network(spec).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scaler = grad_scaler(device, settings.amp)
    plan = {"volumes": [str(p) for p in paths], "out_path": str(out_path)}
    first = restore_state(saved, network, optimizer, scaler)
    total = settings.steps
    transform = patch_transform(settings.patch_size, settings.seed + first)
    generator = torch.Generator().manual_seed(settings.seed + first)
    network.train()
    loss_value = float("nan")
    for step in range(first, total):
        if should_stop is not None and should_stop():
            raise _cancel(state_path, network, optimizer, scaler, step, total, plan)
        batch = sample_batch(images, settings.batch_size, transform, np.random.default_rng([settings.seed, step]))
        image = batch["image"].to(device)
        mask = block_mask(image.shape, generator, settings.pretext_mask_block, settings.pretext_mask_ratio).to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, settings.amp):
            loss = pretext_loss(network, image, mask)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_value = float(loss.detach())
        if progress is not None:
            progress(step + 1, total, {"phase": "pretrain", "loss": round(loss_value, 5)})
    network = network.cpu().eval()
    metrics = {"final_loss": loss_value, "volumes": len(paths), "mask_block": settings.pretext_mask_block,
               "mask_ratio": settings.pretext_mask_ratio}
    save_checkpoint(out_path, network, spec, pretext=(network, spec),
                    extra={"pretext_task": "masked_reconstruction", "metrics": json.dumps(metrics)})
    state_path.unlink(missing_ok=True)
    return {"out_path": str(out_path), "steps": total, "metrics": metrics}
