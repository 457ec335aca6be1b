"""Checkpoints: saving ASSFT's format and loading four kinds of file safely.

ASSFT saves its own self-describing checkpoint format and loads:

1. ASSFT's own format: ``{"format": "assft", "format_version": 1, "spec": ...,
   "state_dict": ..., "pretext": None | {"spec": ..., "state_dict": ...},
   "extra": {...}}``;
2. a plain state dict (needs a spec; ``module.``/``model.`` prefixes are
   stripped, partial matches are reported rather than refused);
3. MONAI's Swin UNETR self-supervised layout ``{"state_dict": {"module.…"}}``
   (encoder only, needs a SwinUNETR spec);
4. a MONAI bundle folder (parsed by :mod:`.bundle`).

Every ``torch.load`` uses ``weights_only=True``: a file that needs pickled
code is refused, never executed.  What a load matched is a :class:`LoadReport`;
tensors are copied into the network by MONAI's ``copy_model_state``.
"""
from __future__ import annotations

import hashlib
import logging
import math
import pickle
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from monai.networks.utils import copy_model_state
from torch import nn

from ..errors import CheckpointError
from ..fileutil import atomic_path
from .bundle import bundle_weights, read_bundle
from .networks import build_network, head_module_names, is_under, patch_divisor
from .spec import FORMAT, FORMAT_VERSION, ModelSpec


# ----------------------------------------------------------------------------
# Loading results
# ----------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What a load matched: names in the network's ``state_dict`` naming.

    loaded: network tensors taken from the checkpoint.
    missing: network tensors the checkpoint does not provide (left as initialised).
    mismatched: ``(name, checkpoint shape, model shape)``; left as initialised, not also listed as missing.
    unexpected: checkpoint keys (as stored) with no place in the network.
    """

    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        text = (f"{len(self.loaded)} tensors loaded, {len(self.missing)} missing (new), "
                f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape mismatches")
        if self.mismatched:
            text += ": " + "; ".join(f"{n} {tuple(a)} vs {tuple(b)}" for n, a, b in self.mismatched[:5])
        return text

    def to_dict(self) -> dict:
        return {"loaded": list(self.loaded), "missing": list(self.missing), "unexpected": list(self.unexpected),
                "mismatched": [[n, list(a), list(b)] for n, a, b in self.mismatched]}


@dataclass
class LoadedModel:
    """A network ready to use, with where its weights came from.

    source_format: ``"assft"``, ``"state_dict"``, ``"swin_ssl"`` or ``"bundle"``.
    checksum: sha256 of the file (of ``models/model.pt`` for a bundle).
    pretext: the self-supervised pretext network the checkpoint carries, if any.
    extra: the plain data saved with an ASSFT checkpoint (empty for other formats).
    """

    network: nn.Module
    spec: ModelSpec
    report: LoadReport
    checksum: str
    pretext: "LoadedModel | None" = None
    source_format: str = FORMAT
    path: str | None = None
    extra: dict = field(default_factory=dict)


def file_checksum(path: str | Path) -> str:
    """sha256 hex digest of a file; of ``models/model.pt`` for a bundle folder."""
    path = Path(path)
    if path.is_dir():
        path = bundle_weights(path)
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint: {err.strerror or err}", path=path) from err
    return h.hexdigest()


# ----------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------
def _cpu_state(network: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in network.state_dict().items()}


def _plain(obj: Any, where: str) -> Any:
    """``obj`` as tensors and plain Python types only, which weights_only loading accepts.

    numpy scalars become Python numbers and numpy arrays tensors; anything else raises TypeError.
    """
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, dict):
        bad = [k for k in obj if not isinstance(k, (str, int))]
        if bad:
            raise TypeError(f"{where}: key {bad[0]!r} must be a str or int")
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    raise TypeError(f"{where} holds a {type(obj).__name__}; only tensors and plain Python types may be saved")


def save_checkpoint(path: str | Path, network: nn.Module, spec: ModelSpec,
                    pretext: tuple[nn.Module, ModelSpec] | None = None, extra: dict | None = None) -> str:
    """Write ``network`` in ASSFT's self-describing format, atomically. Returns the file's sha256.

    pretext: ``(network, spec)`` of a self-supervised pretext network to keep alongside.
    extra: plain data (tensors, numbers, strings, lists, dicts) such as metrics or training state.
    """
    obj = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "state_dict": _cpu_state(network),
        "pretext": None if pretext is None else {"spec": pretext[1].to_dict(), "state_dict": _cpu_state(pretext[0])},
        "extra": _plain(dict(extra or {}), "extra"),
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return file_checksum(path)


# ----------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "network", "net", "weights")
_STRIP_PREFIXES = ("module.", "model.")
_SWIN_STAGES = ("patch_embed.", "pos_drop.", "layers1", "layers2", "layers3", "layers4")

_RESAVE_HINT = ("if you trust its source, load it once with weights_only=False in the environment that made it "
                "and re-save the weights only: torch.save(model.state_dict(), 'weights.pt'); then load that "
                "file with the network's spec")


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a CheckpointError naming ``path``."""
    if not path.exists():
        raise CheckpointError("checkpoint file does not exist", path=path, hint="check the path")
    if not path.is_file():
        raise CheckpointError("checkpoint is not a file", path=path)
    if path.stat().st_size == 0:
        raise CheckpointError("checkpoint file is empty", path=path, hint="it was not saved completely; save it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err).lower()
        if "weights only" in text and "unsupported operand" not in text:  # an operand error is junk, not code
            raise CheckpointError(
                "checkpoint needs pickled code (e.g. a whole saved model object or custom classes); "
                "it was not loaded for safety, since unpickling can run arbitrary code",
                path=path, hint=_RESAVE_HINT) from err
        raise CheckpointError(f"checkpoint is corrupt: {err}", path=path,
                              hint="the file is damaged or not a PyTorch checkpoint; save or copy it again") from err
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError, ... for damaged files
        raise CheckpointError(f"checkpoint is corrupt or truncated ({type(err).__name__}: {str(err)[:200]})",
                              path=path,
                              hint="the file is damaged or not a PyTorch checkpoint; save or copy it again") from err


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _find_state_dict(obj: Any, path: Path) -> tuple[dict, str]:
    """The tensors inside a loaded object, and the wrapper key they were under ("" for none)."""
    if _is_state_dict(obj):
        return dict(obj), ""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key]), key
    kind = type(obj).__name__
    keys = f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else ""
    raise CheckpointError(f"checkpoint holds no state dict (a {kind}{keys})", path=path,
                          hint="expected ASSFT's format, a state dict, or {'state_dict': ...}")


def _is_swin_ssl(state: Mapping[str, torch.Tensor], wrapper: str) -> bool:
    """MONAI's Swin UNETR self-supervised layout: ``{"state_dict": {"module.<swin keys>"}}``."""
    if wrapper != "state_dict" or not all(k.startswith("module.") for k in state):
        return False
    inner = [k[len("module."):] for k in state]
    return any(k.startswith(("swinViT.", "swin_vit.") + _SWIN_STAGES) for k in inner)


def _candidates(key: str, swin: bool) -> list[str]:
    """Names ``key`` may have in the network: as is, then with wrapper prefixes stripped one by one."""
    out = [key]
    while key.startswith(_STRIP_PREFIXES):
        key = key.split(".", 1)[1]
        out.append(key)
    if swin:
        out += ["swinViT." + k[len("swin_vit."):] for k in out if k.startswith("swin_vit.")]
        out += ["swinViT." + k for k in out if k.startswith(_SWIN_STAGES)]
    return out


def _load_matching(network: nn.Module, state: Mapping[str, torch.Tensor], swin: bool = False) -> LoadReport:
    """Load every tensor of ``state`` whose name (after prefix stripping) and shape fit ``network``.

    ASSFT decides which checkpoint key goes where (:func:`_candidates`: wrapper prefixes,
    the Swin SSL names; the first key to claim a network name wins) and reports it;
    MONAI's ``copy_model_state`` copies the accepted tensors into the network.
    """
    target = network.state_dict()
    names: dict[str, str] = {}  # accepted checkpoint key -> network name (same shape)
    report = LoadReport()
    for key, value in state.items():
        name = next((c for c in _candidates(key, swin) if c in target), None)
        if name is None or name in names.values():
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(target[name].shape):
            report.mismatched.append((name, tuple(value.shape), tuple(target[name].shape)))
        else:
            names[key] = name
    renamed = {key: name for key, name in names.items() if key != name}
    with _quiet(_MONAI_COPY_LOG):  # its "'dst' model updated: n of m variables" line; the report says more
        _, updated, _ = copy_model_state(network, {key: state[key] for key in names}, mapping=renamed or None)
    report.loaded = sorted(updated)
    kept = set(updated) | {n for n, _, _ in report.mismatched}
    report.missing = [k for k in target if k not in kept]
    return report


_MONAI_COPY_LOG = logging.getLogger("monai.networks.utils")


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Hold ``logger`` at WARNING: MONAI's logger writes INFO to stdout, the worker's event channel."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _head_complete(network: nn.Module, spec: ModelSpec, report: LoadReport) -> bool:
    heads = head_module_names(network, spec)
    head_keys = [k for k in network.state_dict() if is_under(k, heads)]
    loaded = set(report.loaded)
    return bool(head_keys) and all(k in loaded for k in head_keys)


def _finish(network: nn.Module, spec: ModelSpec, report: LoadReport, path: Path) -> tuple[nn.Module, ModelSpec]:
    if not report.loaded:
        raise CheckpointError(f"no tensor in the checkpoint matches a {spec.network} network "
                              f"({len(report.unexpected)} unexpected, {len(report.mismatched)} of another shape)",
                              path=path, hint="choose the network and arguments this checkpoint was trained with")
    if spec.has_task_head and not _head_complete(network, spec, report):
        spec = spec.replace(has_task_head=False)
    return network, spec


def _spec_from(data: Any, path: Path, what: str) -> ModelSpec:
    try:
        return ModelSpec.from_dict(data)
    except CheckpointError as err:
        raise CheckpointError(f"{what}: {err.message}", path=path, hint=err.hint) from err


def _build(spec: ModelSpec, path: Path) -> nn.Module:
    try:
        return build_network(spec)
    except CheckpointError as err:
        raise CheckpointError(err.message, path=path, hint=err.hint) from err


def _load_own(obj: Mapping, path: Path, checksum: str, device: str) -> LoadedModel:
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"ASSFT checkpoint format_version {version!r} is not supported "
                              f"(this ASSFT reads up to {FORMAT_VERSION})", path=path, hint="update ASSFT")
    if not _is_state_dict(obj.get("state_dict")):
        raise CheckpointError("ASSFT checkpoint has no state_dict", path=path, hint="save it again")
    spec = _spec_from(obj.get("spec"), path, "checkpoint spec")
    network = _build(spec, path)
    report = _load_matching(network, obj["state_dict"])
    network, spec = _finish(network, spec, report, path)
    pretext = None
    if obj.get("pretext") is not None:
        p = obj["pretext"]
        p_spec = _spec_from(p.get("spec"), path, "pretext spec")
        p_net = _build(p_spec, path)
        p_report = _load_matching(p_net, p.get("state_dict") or {})
        p_net, p_spec = _finish(p_net, p_spec, p_report, path)
        pretext = LoadedModel(p_net.to(device).eval(), p_spec, p_report, checksum, None, FORMAT, str(path))
    extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
    return LoadedModel(network.to(device).eval(), spec, report, checksum, pretext, FORMAT, str(path), extra)


def _load_state(state: Mapping[str, torch.Tensor], spec: ModelSpec | None, path: Path, checksum: str,
                device: str, source_format: str) -> LoadedModel:
    swin = source_format == "swin_ssl"
    if spec is None:
        what = "a Swin UNETR self-supervised checkpoint" if swin else "a plain state dict"
        raise CheckpointError(f"checkpoint is {what} and does not say which network it belongs to", path=path,
                              hint="pass the network spec it was trained with"
                                   + (" (a SwinUNETR spec)" if swin else ""))
    if swin and spec.network != "SwinUNETR":
        raise CheckpointError(f"checkpoint is a Swin UNETR self-supervised encoder, not a {spec.network}",
                              path=path, hint="pass a SwinUNETR spec with the checkpoint's feature_size")
    network = _build(spec, path)
    report = _load_matching(network, state, swin=swin)
    network, spec = _finish(network, spec, report, path)
    return LoadedModel(network.to(device).eval(), spec, report, checksum, None, source_format, str(path))


def load_model(path: str | Path, spec: ModelSpec | None = None, device: str = "cpu") -> LoadedModel:
    """Load any supported checkpoint (see module docstring) onto ``device``, in eval mode.

    spec: required for a plain state dict or a Swin SSL checkpoint; ignored for
    ASSFT's format and bundles, which describe their own network.
    The returned spec has ``has_task_head=False`` unless the whole output layer was loaded.
    """
    path = Path(path)
    if path.is_dir():
        return _load_bundle(path, device)
    obj = _torch_load(path)
    checksum = file_checksum(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _load_own(obj, path, checksum, device)
    state, wrapper = _find_state_dict(obj, path)
    fmt = "swin_ssl" if _is_swin_ssl(state, wrapper) else "state_dict"
    return _load_state(state, spec, path, checksum, device, fmt)


def _load_bundle(folder: Path, device: str) -> LoadedModel:
    spec, model_file = read_bundle(folder)
    state, _ = _find_state_dict(_torch_load(model_file), model_file)
    return _load_state(state, spec, model_file, file_checksum(model_file), device, "bundle")


# ----------------------------------------------------------------------------
# Fitting a checkpoint to the task
# ----------------------------------------------------------------------------
def check_task_compatible(loaded: LoadedModel, classes: Sequence[str],
                          patch_size: Sequence[int] | None = None) -> list[str]:
    """Refuse (CheckpointError) a checkpoint that cannot serve a task with ``classes``.

    A segmentation checkpoint must have ``len(classes)`` outputs; an encoder-only
    or pretext checkpoint is accepted (its head is new).  The network must take
    one input channel and ``patch_size`` must suit its down-sampling.
    Returns warnings (e.g. class names that differ) for the user to see.
    """
    spec, path = loaded.spec, loaded.path
    warnings: list[str] = []
    check_runnable(spec, path)
    in_channels = spec.kwargs.get("in_channels", 1)
    if int(in_channels) != 1:
        raise CheckpointError(f"checkpoint's {spec.network} takes {in_channels} input channels; ASSFT feeds one "
                              "image channel", path=path, hint="choose a single-channel (one modality) model")
    if spec.has_task_head and spec.task == "segmentation":
        if len(spec.classes) != len(classes):
            raise CheckpointError(
                f"checkpoint segments {len(spec.classes)} classes {spec.classes}, the task has {len(classes)} "
                f"{list(classes)}", path=path,
                hint="choose a checkpoint for these classes, or an encoder-only foundation model (its head is new)")
        differ = [(a, b) for a, b in zip(spec.classes, classes) if a.strip().lower() != str(b).strip().lower()]
        if differ:
            warnings.append("class names differ between checkpoint and task: "
                            + ", ".join(f"{a!r} vs {b!r}" for a, b in differ))
    if patch_size is not None:
        div = patch_divisor(spec)
        if any(int(p) % d for p, d in zip(patch_size, div)):
            raise CheckpointError(f"patch size {tuple(patch_size)} does not suit {spec.network}, which needs "
                                  f"multiples of {div}", path=path,
                                  hint=f"choose a patch size that is a multiple of {div}")
        if math.prod(int(p) // d for p, d in zip(patch_size, div)) < 2:
            raise CheckpointError(f"patch size {tuple(patch_size)} leaves a single voxel at {spec.network}'s "
                                  "deepest level, where its normalisation cannot train", path=path,
                                  hint=f"choose a patch size of at least twice {div} along one axis")
    return warnings


#: What a checkpoint's spec may ask for and still run on one volume (scoring would fail on every case).
MAX_CHANNELS = 2048
SPACING_RANGE_MM = (0.01, 50.0)


def check_runnable(spec: ModelSpec, path=None) -> None:
    """Refuse (CheckpointError) a spec no volume can run: not 3-D, absurd resampling or channel counts.

    Checked when a model is registered (``assft init --model``) and before a round trains from it, so
    that ``assft score`` never meets it on every case.
    """
    hint = "choose a 3-D single-channel segmentation model, or fix its spec"
    dims = spec.kwargs.get("spatial_dims", 3)
    if int(dims) != 3:
        raise CheckpointError(f"checkpoint's {spec.network} is {dims}-D; ASSFT segments 3-D volumes", path=path,
                              hint=hint)
    if any(not 8 <= int(p) <= 512 for p in spec.patch_size):
        raise CheckpointError(f"checkpoint's patch size {tuple(spec.patch_size)} is outside 8..512 voxels",
                              path=path, hint=hint)
    target = spec.preprocessing.get("target_spacing")
    lo, hi = SPACING_RANGE_MM
    if target is not None and any(not (math.isfinite(float(t)) and lo <= float(t) <= hi) for t in target):
        raise CheckpointError(f"checkpoint resamples to {list(target)} mm voxels, outside {lo}-{hi} mm", path=path,
                              hint=hint)
    widths = [v for key, value in spec.kwargs.items() if key in ("channels", "feature_size", "init_filters",
                                                                 "out_channels", "features")
              for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, (int, float))]
    if widths and max(widths) > MAX_CHANNELS:
        raise CheckpointError(f"checkpoint's {spec.network} has {int(max(widths))} channels in one layer, more "
                              f"than ASSFT runs ({MAX_CHANNELS})", path=path, hint=hint)


def make_task_network(foundation: LoadedModel, classes: Sequence[str]) -> tuple[nn.Module, ModelSpec, LoadReport]:
    """A segmentation network for ``classes`` initialised from the foundation's weights.

    Every tensor whose name and shape match is copied; the output head is new
    unless the foundation already segments this many classes.  The foundation
    itself is left untouched.  Returns ``(network, spec, report)``, the network
    on the foundation's device, in eval mode.
    """
    src = foundation.spec
    spec = src.for_classes(classes)
    network = build_network(spec)
    state = foundation.network.state_dict()
    keep_head = src.has_task_head and src.task == "segmentation" and len(src.classes) == len(classes)
    if not keep_head:
        heads = head_module_names(foundation.network, src)
        state = {k: v for k, v in state.items() if not is_under(k, heads)}
    report = _load_matching(network, {k: v.detach().clone() for k, v in state.items()})
    device = next(iter(foundation.network.parameters()), torch.empty(0)).device
    return network.to(device).eval(), spec, report
