"""One fine-tuning round with SSFT (``SPEC.md``: "SSFT", "The round loop").

:func:`finetune_round` trains the next model version of a workspace on its
labeled volumes (minus a held-out fold, :func:`holdout_fold`) plus the
SSFT-selected pseudo-labeled ones (:mod:`ASSFTLib.pseudo`), records the
held-out Dice and the previous model's Dice on the labels it never trained
on as the quality signals, and registers the new checkpoint only
when the round ends. The round's plan (which cases train, which are held out,
which pseudo-labels join) is fixed when it starts and kept on resume.
"""
from __future__ import annotations

import copy
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn

from .. import runtime, ssft
from ..errors import ASSFTError, GeometryError, JobCancelled, LabelError, VolumeError, WorkspaceError
from ..pseudo import accepted_pseudo_labels, select_round_pseudo
from ..runtime import autocast, device_type, grad_scaler, loader_workers
from ..settings import Settings
from ..workspace.paths import check_job_dir
from .cache import CachedCase, cached_labeled_case, cached_pseudo_case, prune
from .data import PatchSampler, StepBatches, label_problems, raise_label_problems, step_batches
from .loop import (Progress, ShouldStop, StepJob, StepLoss, TrainingWarning, check_finite_weights, lr_schedule,
                   open_state, remove_if_empty, restore_state, run_steps)
from .losses import MaskedDiceCELoss


def holdout_fold(labeled_ids: Sequence[str], settings: Settings, round_index: int) -> List[str]:
    """Labeled volumes held out of this round for the quality signal (SPEC: k-fold over L once |L| >= k).

    With k = ``kfold_min_labels`` (0 turns it off) and |L| >= k, the labeled ids
    are dealt into k folds in a seeded order and round ``r`` holds out fold
    ``r mod k``: one fold per round keeps the cost at one training run, and
    over k rounds with the same labels every fold takes its turn. The folds
    are dealt again when the labeled set grows, so a volume can then be held
    out in two rounds running. Below k labels nothing is held out.
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
    adapting: bool = False   # the foundation already segments these classes (a model trained elsewhere)


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
    from ..workspace import Workspace
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    settings = settings or ws.settings
    if resume and job_dir is None:
        raise WorkspaceError("resuming needs the job folder of the cancelled round", path=ws.folder,
                             hint="pass --job-dir")
    made_job_dir = job_dir is None
    job_dir = Path(job_dir) if job_dir else ws.paths.new_job_dir("train")
    check_job_dir(job_dir, resume, workspace=ws.folder)
    state_path, saved = open_state(job_dir, resume)
    try:
        return _finetune(ws, settings, progress, should_stop, resume, job_dir, state_path, saved)
    finally:
        if made_job_dir:  # a folder this call made and left empty is no use to anyone
            remove_if_empty(job_dir)


def train_supervised(dataset: str | Path, base: str | Path, target: str | Path, settings: Settings,
                     work: str | Path, progress: Progress = None) -> Path:
    """A model trained elsewhere: ``base`` fine-tuned on every label of the MSD folder ``dataset``.

    One product round (no held-out fold, no SSFT: every case is labeled) in a
    throwaway workspace ``work`` (replaced if present, removed after), its model
    copied to ``target`` atomically.  The benchmark's supervised foundation and
    the demo's "model from another site" are made this way.  Returns ``target``.
    """
    from ..fileutil import atomic_path
    from ..workspace import Workspace
    work = Path(work)
    if work.exists():
        shutil.rmtree(work)
    settings = settings.replace(use_ssft=False, kfold_min_labels=0)
    ws = Workspace.create(work, dataset=dataset, settings=settings, import_labels=True)
    try:
        ws.register_model(base, kind="foundation")
        finetune_round(ws, settings, progress=progress)
        with atomic_path(target) as tmp:
            shutil.copyfile(ws.current_model().path, tmp)
    finally:
        ws.close()
    shutil.rmtree(work, ignore_errors=True)
    return Path(target)


def _finetune(ws, settings: Settings, progress: Progress, should_stop: ShouldStop, resume: bool, job_dir: Path,
              state_path: Path, saved: Optional[dict]) -> dict:
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


def _start_model(ws, settings: Settings, device: str) -> _Start:
    """Warm start from the current model; cold start (or ``finetune_mode="restart"``) from the foundation."""
    from ..models import check_task_compatible, load_model, make_task_network
    current, foundation = ws.current_model(), ws.foundation_model()
    if current is None and foundation is None:
        raise WorkspaceError("the workspace has no model to fine-tune", path=ws.folder,
                             hint="register a foundation model (assft init --model FILE) or run assft pretrain")
    current, foundation = (None if m is None else ws.verified(m) for m in (current, foundation))
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
    if foundation is None:
        trained_elsewhere = None
    elif current is not None and foundation.id == current.id:
        trained_elsewhere = loaded_current
    elif use_foundation:
        trained_elsewhere = loaded
    else:  # only to read its head; building it must not draw from the round's seeded stream
        with torch.random.fork_rng(devices=[]):
            trained_elsewhere = load_model(foundation.path, device="cpu")
    return _Start(network.to(device), spec, "foundation" if use_foundation else "current", loaded.checksum, teacher,
                  trained_elsewhere is not None and _segments(trained_elsewhere.spec, ws.classes))


def _segments(spec, classes: Sequence[str]) -> bool:
    """Whether a model with ``spec`` already segments ``classes`` (its head is kept, not replaced)."""
    return bool(spec.has_task_head and spec.task == "segmentation" and len(spec.classes) == len(classes))


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
    train = [c for c in labeled if c not in heldout]
    return {"labeled": labeled, "heldout": heldout, "train": train, "unseen": unseen_labels(ws, start, labeled),
            "steps": settings.round_steps(len(train) + len(promoted)),
            "promoted": {c: str(p) for c, p in promoted.items()},
            "pseudo": [] if selection is None else selection.selected,
            "selection": None if selection is None else selection.to_dict(),
            "source": start.source, "source_checksum": start.source_checksum}


#: At most this many volumes enter the previous model's new-label Dice (the most recently labeled): each
#: costs one more prediction, and a site that labels many volumes between two rounds should not wait for all.
NEW_LABEL_EVAL_MAX = 8


def unseen_labels(ws, start: _Start, labeled: Sequence[str]) -> List[str]:
    """Labeled volumes the current model never trained on, neither with their label nor as a pseudo-label.

    Its Dice on them is the round's second quality signal (``new_label_dice``): what the model that
    ranked them did on the volumes labeled since, before the radiologist's corrections. It costs no
    label. At most :data:`NEW_LABEL_EVAL_MAX`, the most recently labeled. Empty without a current
    segmentation model or when the model does not record what it trained on (models of earlier
    versions, imported ones).
    """
    current = ws.current_model()
    if start.teacher is None or current is None:
        return []
    metrics = current.metrics or {}
    if "trained_on" not in metrics:
        return []
    seen = set(metrics["trained_on"]) | set(metrics.get("pseudo_ids") or [])
    wanted = set(labeled) - seen
    unseen = [c for c in ws.cases("labeled") if c.case_id in wanted]  # one query, not one per case
    latest = sorted(unseen, key=lambda c: (c.labeled_at or "", c.case_id))[-NEW_LABEL_EVAL_MAX:]
    return sorted(c.case_id for c in latest)


def _prepare_cases(ws, settings: Settings, start: _Start, plan: dict, job_dir: Path, progress: Progress,
                   should_stop: ShouldStop) -> Tuple[List[CachedCase], List[CachedCase]]:
    """The planned labeled (and promoted) cases and pseudo-labeled cases, every label checked before any step.

    Each is prepared once into the workspace's training cache (:mod:`.cache`: on disk, read a
    patch at a time), so the round's memory does not grow with the number of volumes.
    """
    prep, num_classes = start.spec.preprocessing, len(ws.classes)
    n_prepare = len(plan["train"]) + len(plan["promoted"]) + len(plan["pseudo"])
    done = 0

    def prepared(case: CachedCase) -> CachedCase:
        nonlocal done
        done += 1
        if should_stop is not None and should_stop():
            raise JobCancelled("stopped while preparing the training data", path=job_dir,
                               hint="start the round again; nothing was trained yet")
        if progress is not None:
            progress(done, n_prepare, {"phase": "prepare", "case": case.case_id})
        return case

    folder = ws.paths.cache / "train"
    labeled, problems = [], []
    for c, label_path in [(c, ws.label_path(c)) for c in plan["train"]] + list(plan["promoted"].items()):
        try:
            labeled.append(prepared(cached_labeled_case(folder, c, ws.image_path(c), label_path, prep, num_classes)))
        except (VolumeError, GeometryError, LabelError) as exc:
            problems.append(exc)
    problems += label_problems(ws, plan["heldout"], num_classes)
    raise_label_problems(problems)
    if not labeled:
        raise WorkspaceError("every labeled volume is held out; nothing left to train on", path=ws.folder,
                             hint="set kfold_min_labels to 0 or label more volumes")
    pseudo = [prepared(cached_pseudo_case(folder, c, ws.image_path(c), start.teacher, settings, prep))
              for c in plan["pseudo"]]
    prune(folder, labeled + pseudo)
    return labeled, pseudo


def _run_round(ws, settings, start: _Start, plan: dict, saved: Optional[dict], device: str, job_dir: Path,
               state_path: Path, round_id: int, progress: Progress, should_stop: ShouldStop) -> dict:
    """Prepare the data of a planned round, train, evaluate the held-out fold, save and register."""
    from ..models import encoder_module_names, encoder_parameter_names, save_checkpoint
    spec, network = start.spec, start.network
    labeled, pseudo = _prepare_cases(ws, settings, start, plan, job_dir, progress, should_stop)
    before = _new_label_dice(ws, start, plan.get("unseen") or [], settings, progress)  # older plans lack it

    freeze = settings.finetune_mode == "frozen_encoder"
    rate = round_learning_rate(settings, start.adapting)
    optimizer = _optimizer(network, encoder_parameter_names(network, spec), settings, freeze, rate)
    scaler = grad_scaler(device, settings.amp)
    first = restore_state(saved, network, optimizer, scaler)
    _train_mode(network, encoder_module_names(network, spec) if freeze else ())
    # an explicit step count (``--steps`` on resume) wins; else the plan's (older plans lack it)
    steps = int(settings.steps or plan.get("steps") or settings.round_steps(len(labeled)))
    job = StepJob(network, optimizer, scaler, state_path, plan, progress, should_stop,
                  lr_schedule(settings.lr_schedule, steps))
    sampler = PatchSampler(settings.patch_size, settings.seed, settings.fg_oversample, settings.augment)
    batches = StepBatches(sampler, [[sampler.prepare(c) for c in labeled], [sampler.prepare(c) for c in pseudo]],
                          settings.batch_size, settings.seed, first, steps)
    # patches are read and augmented in loader_workers processes while this one trains
    with step_batches(batches, loader_workers(settings, device), pin_memory=device_type(device) == "cuda") as batch:
        loss = run_steps(job, first, steps, "train", _segmentation_loss(network, batch, bool(pseudo), settings, device,
                                                                         steps))
    network.eval()

    dice = {}
    if plan["heldout"]:
        if progress is not None:
            progress(0, len(plan["heldout"]), {"phase": "evaluate"})
        dice = _heldout_dice(network, spec, ws, plan["heldout"], settings)
    metrics = {"heldout_dice": float(np.mean(list(dice.values()))) if dice else None,
               "heldout_dice_per_case": dice, "heldout": plan["heldout"],
               "new_label_dice": float(np.mean(list(before.values()))) if before else None,
               "new_label_dice_per_case": before,
               "trained_on": plan["train"] + sorted(plan["promoted"]), "train_labels": len(plan["train"]),
               "qa_promoted": sorted(plan["promoted"]), "pseudo_labels": len(plan["pseudo"]),
               "pseudo_ids": plan["pseudo"], "final_loss": loss, "steps": steps, "learning_rate": rate,
               "start": plan["source"], "finetune_mode": settings.finetune_mode, "device": device}
    if plan["selection"] is not None:
        metrics["tau_d"] = plan["selection"]["tau_d"]
    check_finite_weights(network, job_dir)
    refusal = collapsed_quality(metrics.get("heldout_dice"), ws.current_model())
    if refusal:
        metrics["not_made_current"] = refusal
        warnings.warn(f"the new model is kept but NOT made current: {refusal}", TrainingWarning)
    out = job_dir / "model.pt"
    save_checkpoint(out, network.cpu(), spec, extra={"round_id": round_id, "metrics": json.dumps(metrics),
                                                     "trained_on": plan["train"] + sorted(plan["promoted"])})
    version = ws.register_model(out, kind="finetuned", round_id=round_id, metrics=metrics,
                                make_current=not refusal)
    ws.finish_round(round_id, "finished", metrics=metrics, model_id=version.id)
    if Path(version.path).resolve() != out.resolve():
        out.unlink(missing_ok=True)  # register_model keeps its own copy under models/; ours alone goes
    return {"model_id": version.id, "model_path": str(version.path), "round_id": round_id, "metrics": metrics,
            "made_current": not refusal}


#: A round whose held-out Dice falls below this share of its parent's is not made current.
COLLAPSE_RATIO = 0.5


def collapsed_quality(dice: Optional[float], parent) -> Optional[str]:
    """Why a new model must not become current (its held-out Dice collapsed against its parent's), or None."""
    before = None if parent is None else (parent.metrics or {}).get("heldout_dice")
    if dice is None or not isinstance(before, (int, float)) or before < 0.2:
        return None
    if not np.isfinite(dice) or dice < COLLAPSE_RATIO * before:
        return (f"its held-out Dice {dice:.3f} collapsed below {COLLAPSE_RATIO:g} x the current model's "
                f"{before:.3f}; make it current with `assft use-model` if that is expected")
    return None


def round_learning_rate(settings: Settings, adapting: bool) -> float:
    """Peak rate of a round: ``learning_rate``, times ``warm_lr_ratio`` when the round adapts a foundation
    that already segments these classes (a model trained elsewhere, with its head), in every round.

    Rounds from a foundation without a head (self-supervised) keep the full rate: their first round trains
    a new head and the later ones still learn the task (docs/results.md, "The rate of rounds that adapt a
    model trained elsewhere")."""
    return settings.learning_rate * (settings.warm_lr_ratio if adapting else 1.0)


def _optimizer(network: nn.Module, encoder_names: Set[str], settings: Settings,
               freeze_encoder: bool, rate: float | None = None) -> torch.optim.Optimizer:
    """AdamW, the decoder at ``rate`` (default ``learning_rate``), the encoder at ``encoder_lr_ratio`` x that
    (or frozen)."""
    rate = settings.learning_rate if rate is None else rate
    enc, dec = [], []
    for name, p in network.named_parameters():
        if name in encoder_names:
            if freeze_encoder:
                p.requires_grad_(False)
            else:
                enc.append(p)
        else:
            dec.append(p)
    groups = [{"params": dec, "lr": rate, "initial_lr": rate, "name": "decoder"}]
    if enc and settings.encoder_lr_ratio > 0:
        enc_lr = rate * settings.encoder_lr_ratio
        groups.append({"params": enc, "lr": enc_lr, "initial_lr": enc_lr, "name": "encoder"})
    return torch.optim.AdamW(groups, lr=rate, weight_decay=settings.weight_decay)


def _train_mode(network: nn.Module, frozen_prefixes: Sequence[str] = ()) -> None:
    """Train mode, except normalisation layers of a frozen encoder (their statistics stay θ0's)."""
    network.train()
    for name, module in network.named_modules():
        if any(name == p or name.startswith(p + ".") for p in frozen_prefixes):
            if isinstance(module, nn.modules.batchnorm._NormBase):
                module.eval()


def _segmentation_loss(network: nn.Module, next_batch: Callable[[int], dict], pseudo: bool, settings: Settings,
                       device: str, total: int) -> StepLoss:
    """One step's loss: DiceCE(labeled) + lambda(t) * masked DiceCE(pseudo), on the step's seeded patches
    (``next_batch(step)``: :class:`~.data.StepBatches`, labeled patches first)."""
    sup_loss = DiceCELoss(to_onehot_y=True, softmax=True)
    pseudo_loss = MaskedDiceCELoss()

    def step_loss(step: int) -> Tuple[torch.Tensor, dict]:
        n_sup = settings.batch_size
        batch = {k: v.to(device, non_blocking=True) for k, v in next_batch(step).items() if k != "step"}
        lam = (ssft.pseudo_weight(step, total, settings.pseudo_weight_max, settings.pseudo_ramp_fraction)
               if pseudo else 0.0)
        with autocast(device, settings.amp):
            logits = network(batch["image"])
        logits = logits.float()
        loss = sup_loss(logits[:n_sup], batch["label"][:n_sup])
        if pseudo:
            loss = loss + lam * pseudo_loss(logits[n_sup:], batch["label"][n_sup:], batch["weight"][n_sup:])
        if not torch.isfinite(loss):
            raise ASSFTError(f"training diverged at step {step} (loss {loss.item()})",
                             hint="lower learning_rate or check the labels")
        return loss, {"pseudo_weight": round(lam, 4)}

    return step_loss


def _new_label_dice(ws, start: _Start, unseen: Sequence[str], settings: Settings,
                    progress: Progress) -> Dict[str, float]:
    """The start model's Dice on the labels it never trained on, measured before any step. A quality
    number and no more: when it cannot be measured (e.g. out of memory) the round warns and trains
    without it."""
    if not unseen or start.teacher is None:
        return {}
    if progress is not None:
        progress(0, len(unseen), {"phase": "evaluate"})
    try:
        return _heldout_dice(start.teacher.network, start.teacher.spec, ws, unseen, settings)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: the round's training must not be lost to it
        warnings.warn(f"the previous model's Dice on the new labels was not measured: {exc}", TrainingWarning)
        return {}


def _heldout_dice(network: nn.Module, spec, ws, case_ids: Sequence[str], settings: Settings) -> Dict[str, float]:
    """Mean foreground Dice of ``network`` on each held-out labeled case (original grid, test-time averaged)."""
    from ..inference import predict_label
    from ..metrics import mean_dice
    from ..models import LoadedModel, LoadReport
    from ..volumes import read_volume
    model = LoadedModel(network.eval(), spec, LoadReport(), "", None)
    out = {}
    for case_id in case_ids:
        label, _ = predict_label(model, read_volume(ws.image_path(case_id)), settings)
        truth = read_volume(ws.label_path(case_id), kind="label").array
        out[case_id] = mean_dice(label, truth, len(ws.classes))
    return out
