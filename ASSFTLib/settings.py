"""The one settings object.

Every constant of the method (``../shared/SPEC.md``) and every knob of the
pipeline is a plain field here with its documented default.  Settings are
validated once, saved as JSON in the workspace (``settings.json``) and read by
the command line, the worker and the Slicer panel alike.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from . import strategies
from .errors import ASSFTError

#: Fields of older releases that settings.json files may still hold: ignored, with the reason.
REMOVED_FIELDS = {
    "python_executable": "a workspace never chooses the program that runs its jobs (anyone could hand over a "
                         "workspace whose settings name a script); the Python is chosen on this machine: "
                         "the Slicer application settings, or the interpreter running `assft`",
}
MAX_PATCH = 512
_CUDA = re.compile(r"^cuda(:\d+)?$")


class SettingsError(ASSFTError):
    """A setting of the wrong type, out of range, NaN or unknown (an ``ASSFTError``)."""


class SettingsNote(UserWarning):
    """Something in a settings file was ignored (a field of an older release)."""


#: Fields that change what a scoring pass computes; their hash keys the score cache.
SCORING_FIELDS = (
    "divergence_mode", "tta_flips", "fg_threshold", "roi_dilation", "roi_min_fraction",
    "roi_fallback_fraction", "mc_dropout_samples", "sw_overlap", "sw_batch_size",
    # K_pretext hides seeded cubes; BALD's dropout masks are seeded too
    "seed", "pretext_mask_block", "pretext_mask_ratio",
)


@dataclass
class Settings:
    # --- ATSQ (SPEC.md: DKD, ASD, ATSQ) ---
    divergence_mode: str = "auto"          # auto | bnstats | pretext | drift
    tta_flips: bool = True                  # T = 4: identity + flip along each axis
    fg_threshold: float = 0.5               # tau_fg
    roi_dilation: int = 2                   # r voxels
    roi_min_fraction: float = 0.001         # n_min as a fraction of the volume
    roi_fallback_fraction: float = 0.005    # top 0.5% voxels by foreground probability
    query_weight: float = 0.5               # w
    diversity_gamma: float = 1.0            # gamma
    diversity_scale: str = "distance"       # distance: Div as defined; rank: Div rank-normalised at each pick;
                                            #   clusters: the best case of each uncovered embedding cluster
    cold_start: str = "typical"             # ATSQ's query while the model has no task head: typical (TypiClust,
                                            #   chosen on the validation split) or dkd (DKD only, as first specified)
    mc_dropout_samples: int = 0             # BALD samples; 0 = only when the strategy asks
    strategy: str = "atsq"                  # a name in strategies.REGISTRY
    budget: int = 2                         # b volumes per round

    # --- SSFT (SPEC.md: SSFT) ---
    confidence_threshold: float = 0.90      # tau_c
    distance_percentile: float = 90.0       # tau_d = this percentile of NN distances within L
    pseudo_ratio: float = 2.0               # rho: at most rho * |L| pseudo-labels
    voxel_confidence: float = 0.7           # tau_v
    pseudo_weight_max: float = 0.5          # lambda_max
    pseudo_ramp_fraction: float = 0.2       # ramp over the first 20% of steps
    use_ssft: bool = True

    # --- fine-tuning (docs/results.md, "The training recipe": how each default was chosen) ---
    finetune_mode: str = "full"             # full | frozen_encoder | restart
    encoder_lr_ratio: float = 1.0           # encoder rate / decoder rate (SPEC: 0.1, which trained the project's
                                            # self-supervised encoder less well: docs/results.md)
    learning_rate: float = 3e-3             # AdamW, the decoder's (and pretraining's) peak rate
    warm_lr_ratio: float = 1.0              # rate of the rounds when the foundation already segments the classes
                                            # (a model trained elsewhere) / learning_rate
    lr_schedule: str = "poly"               # poly: nnU-Net's (1 - t)^0.9 decay over the round | constant
    steps: int = 0                          # 0: automatic (round_steps): steps_per_label x training volumes,
    steps_per_label: int = 40               #    kept within [min_steps, max_steps]
    min_steps: int = 250
    max_steps: int = 2000
    batch_size: int = 4
    fg_oversample: float = 0.33             # share of patches centred on a labeled foreground voxel
    augment: bool = True                    # small rotation/scaling, contrast, brightness, noise (flips always)
    pretrain_steps: int = 1000              # masked-reconstruction pretraining (assft pretrain)
    patch_size: tuple = (32, 48, 32)
    weight_decay: float = 1e-5
    amp: bool = True                        # automatic mixed precision on CUDA only
    kfold_min_labels: int = 5               # quality signal: k-fold over L once |L| >= this
    seed: int = 0

    # --- masked-volume reconstruction (pretraining and K_pretext; ASSFTLib.pretext) ---
    pretext_mask_block: int = 8             # hidden cubes of this many voxels per side
    pretext_mask_ratio: float = 0.5         # each cube hidden with this probability

    # --- inference ---
    sw_overlap: float = 0.25
    sw_batch_size: int = 4

    # --- environment ---
    device: str = "auto"                    # auto | cpu | cuda | cuda:N
    # (which Python runs background jobs is the caller's choice, jobs.Job.start(python=...), never a setting:
    # a workspace is data someone else may hand over; REMOVED_FIELDS)
    num_threads: int = 0                    # 0: torch's default
    loader_workers: int = -1                # processes that read and augment training patches; -1: automatic
    #                                         (runtime.loader_workers: none on the CPU, up to 4 beside a GPU)

    def __post_init__(self) -> None:
        self._check_types()
        self.patch_size = tuple(int(v) for v in self.patch_size)
        self.validate()

    def _check_types(self) -> None:
        """Each field holds its default's type: ``"tta_flips": "no"`` is refused, not taken as true; numbers are
        finite; an integer field takes 3 or 3.0 but not 3.5.  Integral floats become ints."""
        for f in fields(self):
            value, default = getattr(self, f.name), f.default
            what = f"{f.name}={value!r}"
            hint = "fix settings.json or the command-line option"
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise SettingsError(f"invalid setting: {what} must be true or false", hint=hint)
            elif isinstance(default, (int, float)):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise SettingsError(f"invalid setting: {what} must be a number", hint=hint)
                if not math.isfinite(value):
                    raise SettingsError(f"invalid setting: {what} must be a finite number", hint=hint)
                if isinstance(default, int):
                    if value != int(value):
                        raise SettingsError(f"invalid setting: {what} must be a whole number", hint=hint)
                    setattr(self, f.name, int(value))
                else:
                    setattr(self, f.name, float(value))
            elif isinstance(default, str):
                if not isinstance(value, str):
                    raise SettingsError(f"invalid setting: {what} must be a text", hint=hint)
            elif f.name == "patch_size":
                if (not isinstance(value, (list, tuple)) or len(value) != 3
                        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                               or v != int(v) for v in value)):
                    raise SettingsError(f"invalid setting: {what} must be three whole numbers", hint=hint)

    # ------------------------------------------------------------------
    def validate(self) -> "Settings":
        def check(cond: bool, what: str) -> None:
            if not cond:
                raise SettingsError(f"invalid setting: {what}", hint="fix settings.json or the command-line option")

        check(self.divergence_mode in ("auto", "bnstats", "pretext", "drift"),
              f"divergence_mode={self.divergence_mode!r} (auto, bnstats, pretext or drift)")
        check(self.strategy in strategies.names(),
              f"strategy={self.strategy!r} (one of {', '.join(strategies.names())})")
        check(self.finetune_mode in ("full", "frozen_encoder", "restart"), f"finetune_mode={self.finetune_mode!r}")
        check(self.diversity_scale in ("distance", "rank", "clusters"),
              f"diversity_scale={self.diversity_scale!r} (distance, rank or clusters)")
        check(self.cold_start in ("typical", "dkd"), f"cold_start={self.cold_start!r} (typical or dkd)")
        for name in ("fg_threshold", "query_weight", "confidence_threshold", "voxel_confidence",
                     "pseudo_ramp_fraction", "sw_overlap"):
            v = getattr(self, name)
            check(0.0 <= v <= 1.0 if name != "sw_overlap" else 0.0 <= v < 1.0, f"{name}={v} must lie in [0, 1]")
        for name in ("roi_min_fraction", "roi_fallback_fraction"):
            v = getattr(self, name)
            check(0.0 < v <= 1.0, f"{name}={v} must lie in (0, 1]")
        check(0.0 <= self.distance_percentile <= 100.0, f"distance_percentile={self.distance_percentile}")
        for name in ("budget", "batch_size", "sw_batch_size", "steps_per_label", "min_steps", "pretrain_steps"):
            check(int(getattr(self, name)) >= 1, f"{name} must be at least 1")
        check(int(self.steps) >= 0, "steps must not be negative (0: automatic)")
        check(int(self.max_steps) >= int(self.min_steps), "max_steps must be at least min_steps")
        check(self.lr_schedule in ("poly", "constant"), f"lr_schedule={self.lr_schedule!r} (poly or constant)")
        check(0.0 <= self.fg_oversample <= 1.0, f"fg_oversample={self.fg_oversample} must lie in [0, 1]")
        for name in ("roi_dilation", "mc_dropout_samples", "num_threads", "kfold_min_labels"):
            check(int(getattr(self, name)) >= 0, f"{name} must not be negative")
        check(self.pseudo_ratio >= 0 and self.pseudo_weight_max >= 0 and self.diversity_gamma >= 0,
              "pseudo_ratio, pseudo_weight_max and diversity_gamma must not be negative")
        check(self.learning_rate > 0 and self.encoder_lr_ratio >= 0, "learning rates must be positive")
        check(0 < self.warm_lr_ratio <= 10.0, f"warm_lr_ratio={self.warm_lr_ratio} must lie in (0, 10]")
        check(int(self.pretext_mask_block) >= 1, "pretext_mask_block must be at least 1")
        check(0.0 < self.pretext_mask_ratio <= 1.0, f"pretext_mask_ratio={self.pretext_mask_ratio} must lie in (0, 1]")
        check(len(self.patch_size) == 3 and all(8 <= p <= MAX_PATCH for p in self.patch_size),
              f"patch_size={self.patch_size} must be three sizes of 8 to {MAX_PATCH}")
        # bounds that keep one volume's work finite (a huge ROI dilation or batch is one case stopping everything)
        check(int(self.roi_dilation) <= 64, f"roi_dilation={self.roi_dilation} must be at most 64 voxels")
        for name, top in (("batch_size", 256), ("sw_batch_size", 256), ("mc_dropout_samples", 100),
                          ("max_steps", 10_000_000), ("pretrain_steps", 10_000_000), ("num_threads", 1024)):
            check(int(getattr(self, name)) <= top, f"{name}={getattr(self, name)} must be at most {top}")
        check(-1 <= int(self.loader_workers) <= 64,
              f"loader_workers={self.loader_workers} must lie in [-1, 64] (-1: automatic, 0: none)")
        check(self.learning_rate <= 1.0, f"learning_rate={self.learning_rate} must be at most 1")
        check(self.encoder_lr_ratio <= 100.0, f"encoder_lr_ratio={self.encoder_lr_ratio} must be at most 100")
        check(self.device == "auto" or self.device == "cpu" or _CUDA.match(self.device) is not None,
              f"device={self.device!r} (auto, cpu, cuda or cuda:N)")
        return self

    # ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | Path | None = None) -> "Settings":
        """Settings from a dict (settings.json); fields of older releases that are now ignored
        (:data:`REMOVED_FIELDS`) are dropped with a :class:`SettingsNote` warning."""
        if not isinstance(data, dict):
            raise SettingsError(f"settings must be a JSON object, not {type(data).__name__}", path=path,
                                hint="fix the file or delete it to return to the defaults")
        known = {f.name for f in fields(cls)}
        if not data.get("extra", True):  # the removed, never-used "extra": {} of older settings.json files
            data = {k: v for k, v in data.items() if k != "extra"}
        for name in sorted(set(data) & set(REMOVED_FIELDS)):
            value = data[name]
            data = {k: v for k, v in data.items() if k != name}
            if value not in ("", None):
                warnings.warn(SettingsNote(f"{path or 'settings'}: {name}={value!r} is ignored: "
                                           f"{REMOVED_FIELDS[name]}"), stacklevel=2)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(unknown)}", path=path,
                                hint="remove them or check their spelling")
        try:
            return cls(**data)
        except SettingsError as exc:
            if path is not None and exc.path is None:
                raise SettingsError(exc.message, path=path, hint=exc.hint) from None
            raise

    def replace(self, **changes: Any) -> "Settings":
        return Settings.from_dict({**self.to_dict(), **changes})

    def save(self, path: str | Path) -> None:
        from .fileutil import atomic_write_text
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Settings":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM (Windows editors) is fine
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise SettingsError(f"settings file cannot be read: {exc}", path=path,
                                hint="fix the JSON or delete the file to return to the defaults") from exc
        return cls.from_dict(data, path=path)

    def round_steps(self, train_volumes: int) -> int:
        """Training steps of a fine-tuning round on ``train_volumes`` volumes: ``steps``, or when 0,
        ``steps_per_label * train_volumes`` within ``[min_steps, max_steps]`` (more labels, longer rounds)."""
        if self.steps:
            return int(self.steps)
        return int(min(self.max_steps, max(self.min_steps, self.steps_per_label * int(train_volumes))))

    def scoring_hash(self) -> str:
        """Hash of the fields that change what a scoring pass computes (the score-cache key)."""
        payload = json.dumps({k: self.to_dict()[k] for k in SCORING_FIELDS}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
