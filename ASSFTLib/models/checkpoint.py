"""Networks and checkpoints.

A model is described by a :class:`ModelSpec` (which MONAI network, its
constructor arguments, the classes it segments, how images are prepared) and
built from a small registry of MONAI networks.  ASSFT saves its own
self-describing checkpoint format and loads four kinds of file:

1. ASSFT's own format: ``{"format": "assft", "format_version": 1, "spec": ...,
   "state_dict": ..., "pretext": None | {"spec": ..., "state_dict": ...},
   "extra": {...}}``;
2. a plain state dict (needs a spec; ``module.``/``model.`` prefixes are
   stripped, partial matches are reported rather than refused);
3. MONAI's Swin UNETR self-supervised layout ``{"state_dict": {"module.…"}}``
   (encoder only, needs a SwinUNETR spec);
4. a MONAI bundle folder (``configs/*.json`` with a ``network_def`` naming a
   registry network, and ``models/model.pt``).

Every ``torch.load`` uses ``weights_only=True``: a file that needs pickled
code is refused, never executed.  Bundle configs are parsed as JSON and only
registry networks are built; ``$`` expressions and arbitrary ``_target_``\\ s
are refused because evaluating them would run code from the file.

Network tensors are ``(B, C, X, Y, Z)``; every registry network takes one
input channel in ASSFT and outputs ``len(spec.classes)`` logit channels.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, SwinUNETR, UNet
from torch import nn

from .errors import CheckpointError
from .fileutil import atomic_path
from .preprocess import default_preprocessing, validate_preprocessing

FORMAT = "assft"
FORMAT_VERSION = 1
TASKS = ("segmentation", "reconstruction")
DEFAULT_PATCH_SIZE = (32, 48, 32)




# ----------------------------------------------------------------------------
# The spec
# ----------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """Everything needed to rebuild a network and use it on a volume.

    network: a registry name (:func:`known_networks`).
    kwargs: the network's constructor arguments (JSON types; lists become tuples).
    classes: class names including background, ``len(classes)`` output channels;
        may be empty for an encoder-only / pretext checkpoint.
    preprocessing: the ``preprocess.py`` dict used to prepare images for it.
    patch_size: training / sliding-window patch, 3 ints in ``(X, Y, Z)``.
    has_task_head: whether the output layer was trained for ``classes``.
    task: ``"segmentation"`` or ``"reconstruction"`` (a pretext network).
    """

    network: str
    kwargs: dict
    classes: list = field(default_factory=list)
    preprocessing: dict = field(default_factory=default_preprocessing)
    patch_size: tuple = DEFAULT_PATCH_SIZE
    has_task_head: bool = True
    task: str = "segmentation"

    def __post_init__(self) -> None:
        self.kwargs = {str(k): _to_tuples(v) for k, v in dict(self.kwargs).items()}
        self.classes = [str(c) for c in self.classes]
        self.preprocessing = validate_preprocessing(self.preprocessing)
        self.patch_size = tuple(int(p) for p in self.patch_size)
        self.has_task_head = bool(self.has_task_head)
        self.validate()

    def validate(self) -> "ModelSpec":
        """Raise :class:`CheckpointError` when the spec contradicts itself."""
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise CheckpointError(f"model spec: patch_size={self.patch_size} must be three positive sizes")
        if self.task not in TASKS:
            raise CheckpointError(f"model spec: task={self.task!r} must be one of {', '.join(TASKS)}")
        if self.has_task_head and self.task == "segmentation":
            if not self.classes:
                raise CheckpointError("model spec: a segmentation head needs its class names",
                                      hint="list the classes, background first, or set has_task_head=False")
            out = self.kwargs.get("out_channels")
            if out is not None and int(out) != len(self.classes):
                raise CheckpointError(
                    f"model spec: {self.network} has out_channels={out} but {len(self.classes)} classes {self.classes}")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        """JSON-safe dict (tuples become lists); :meth:`from_dict` inverts it."""
        d = {
            "network": self.network,
            "kwargs": _to_lists(self.kwargs),
            "classes": list(self.classes),
            "preprocessing": _to_lists(self.preprocessing),
            "patch_size": list(self.patch_size),
            "has_task_head": self.has_task_head,
            "task": self.task,
        }
        try:
            json.dumps(d)
        except TypeError as err:
            raise CheckpointError(f"model spec for {self.network} is not JSON-safe: {err}",
                                  hint="network arguments must be numbers, strings, lists or dicts") from err
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        if not isinstance(data, Mapping) or "network" not in data or "kwargs" not in data:
            raise CheckpointError("model spec must be a dict with at least 'network' and 'kwargs'")
        known = {"network", "kwargs", "classes", "preprocessing", "patch_size", "has_task_head", "task"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"model spec has unknown fields: {', '.join(unknown)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "ModelSpec":
        d = {**self.to_dict(), **changes}
        return ModelSpec.from_dict(d)

    def for_classes(self, classes: Sequence[str]) -> "ModelSpec":
        """The same network with a segmentation head for ``classes``."""
        return self.replace(kwargs={**self.kwargs, "out_channels": len(classes)}, classes=list(classes),
                            has_task_head=True, task="segmentation")


def _to_tuples(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_to_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_tuples(v) for k, v in value.items()}
    return value


def _to_lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_to_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_lists(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Arch:
    """How ASSFT reads one network family: its encoder, head and bottleneck.

    encoder / head: module-name prefixes inside a built network.
    bottleneck: the module whose output is the deepest encoder feature map.
    divisor: per-axis factor every patch size must be a multiple of.
    """

    cls: type
    encoder: Callable[[nn.Module], list[str]]
    head: Callable[[nn.Module], list[str]]
    bottleneck: Callable[[nn.Module], str]
    divisor: Callable[[dict], tuple[int, int, int]]


def _unet_levels(net: nn.Module) -> tuple[list[str], str]:
    """MONAI UNet nests ``Sequential(down, SkipConnection(sub), up)``; return the down blocks and the bottom."""
    downs, prefix, block = [], "model", net.model
    while isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection):
        downs.append(f"{prefix}.0")
        prefix, block = f"{prefix}.1.submodule", block[1].submodule
    return downs, prefix


def _per_axis(strides: Any) -> tuple[int, int, int]:
    total = [1, 1, 1]
    for s in strides:
        s = (s, s, s) if isinstance(s, int) else tuple(s)
        total = [t * int(v) for t, v in zip(total, s)]
    return tuple(total)


def _iso(n: int) -> tuple[int, int, int]:
    return (n, n, n)


_REGISTRY: dict[str, _Arch] = {
    "UNet": _Arch(
        cls=UNet,
        encoder=lambda net: _unet_levels(net)[0] + [_unet_levels(net)[1]],
        head=lambda net: ["model.2"],
        bottleneck=lambda net: _unet_levels(net)[1],
        divisor=lambda kw: _per_axis(kw.get("strides", ())),
    ),
    "SegResNet": _Arch(
        cls=SegResNet,
        encoder=lambda net: ["convInit", "down_layers"],
        head=lambda net: ["conv_final"],
        bottleneck=lambda net: f"down_layers.{len(net.down_layers) - 1}",
        divisor=lambda kw: _iso(2 ** (len(kw.get("blocks_down", (1, 2, 2, 4))) - 1)),
    ),
    # The Swin transformer is the encoder (what self-supervised checkpoints ship);
    # encoder1..encoder10 are UNETR's skip-path conv blocks, trained with the decoder.
    # The bottleneck is the transformer's last stage, so z0 (encoder-only foundation)
    # and zt (fine-tuned) live in the same feature space.
    "SwinUNETR": _Arch(
        cls=SwinUNETR,
        encoder=lambda net: ["swinViT"],
        head=lambda net: ["out"],
        bottleneck=lambda net: "swinViT.layers4.0",
        divisor=lambda kw: _iso(int(kw.get("patch_size", 2)) * 16),
    ),
    "DynUNet": _Arch(
        cls=DynUNet,
        encoder=lambda net: ["input_block", "downsamples", "bottleneck"],
        head=lambda net: ["output_block", "deep_supervision_heads"],
        bottleneck=lambda net: "bottleneck",
        divisor=lambda kw: _per_axis(kw.get("strides", ())),
    ),
    "BasicUNet": _Arch(
        cls=BasicUNet,
        encoder=lambda net: ["conv_0", "down_1", "down_2", "down_3", "down_4"],
        head=lambda net: ["final_conv"],
        bottleneck=lambda net: "down_4",
        divisor=lambda kw: _iso(16),
    ),
}


def known_networks() -> list[str]:
    """Registry names :func:`build_network` accepts."""
    return sorted(_REGISTRY)


def _arch(name: str) -> _Arch:
    if name not in _REGISTRY:
        raise CheckpointError(f"unknown network {name!r}",
                              hint=f"ASSFT builds these networks: {', '.join(known_networks())}")
    return _REGISTRY[name]


def build_network(spec: ModelSpec) -> nn.Module:
    """A freshly initialised network for ``spec`` (on the CPU, in eval mode)."""
    arch = _arch(spec.network)
    try:
        net = arch.cls(**spec.kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as err:
        raise CheckpointError(f"cannot build {spec.network} with arguments {spec.to_dict()['kwargs']}: {err}",
                              hint="check the network arguments in the model spec") from err
    return net.eval()


def default_spec(classes: Sequence[str], patch_size: Sequence[int] = DEFAULT_PATCH_SIZE) -> ModelSpec:
    """The project's default network: a small 3D MONAI UNet that trains on a CPU.

    Batch norm keeps running statistics (DKD's ``bnstats`` divergence), dropout
    makes MC-dropout BALD possible.
    """
    kwargs = dict(spatial_dims=3, in_channels=1, out_channels=len(classes), channels=(16, 32, 64, 128),
                  strides=(2, 2, 2), num_res_units=1, norm="batch", dropout=0.1)
    return ModelSpec("UNet", kwargs, list(classes), default_preprocessing(), tuple(patch_size), True, "segmentation")


def patch_divisor(spec: ModelSpec) -> tuple[int, int, int]:
    """Per-axis factor that every input size of ``spec``'s network must be a multiple of."""
    return tuple(int(d) for d in _arch(spec.network).divisor(spec.kwargs))


# ----------------------------------------------------------------------------
# Parts of a network
# ----------------------------------------------------------------------------
def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def encoder_module_names(network: nn.Module, spec: ModelSpec) -> list[str]:
    """Module-name prefixes that make up the encoder E of ``network``."""
    return list(_arch(spec.network).encoder(network))


def head_module_names(network: nn.Module, spec: ModelSpec) -> list[str]:
    """Module-name prefixes of the output layer(s), whose shape depends on the classes."""
    return list(_arch(spec.network).head(network))


def encoder_parameter_names(network: nn.Module, spec: ModelSpec) -> set[str]:
    """Names (as in ``network.named_parameters()``) of the encoder's parameters."""
    prefixes = encoder_module_names(network, spec)
    return {n for n, _ in network.named_parameters() if _under(n, prefixes)}


def bottleneck_module(network: nn.Module, spec: ModelSpec) -> nn.Module:
    """The module whose output is the deepest encoder feature map ``(B, C, x, y, z)``.

    Hook its forward output to get embeddings (global average, SPEC.md z(x)).
    """
    return network.get_submodule(_arch(spec.network).bottleneck(network))


def norm_layers_with_stats(network: nn.Module, spec: ModelSpec | None = None) -> list[tuple[str, nn.Module]]:
    """Normalisation layers that keep running statistics (BatchNorm, tracking InstanceNorm).

    With ``spec``, only those inside the encoder (DKD ``bnstats`` uses E0).
    """
    prefixes = encoder_module_names(network, spec) if spec is not None else None
    return [(n, m) for n, m in network.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
            and m.running_mean is not None and (prefixes is None or _under(n, prefixes))]


def enable_mc_dropout(network: nn.Module) -> int:
    """Eval mode everywhere except dropout layers (MC-dropout). Returns how many dropout layers are on."""
    network.eval()
    count = 0
    for m in network.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            m.train()
            count += 1
    return count


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
        path = path / "models" / "model.pt"
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
    """Load every tensor of ``state`` whose name (after prefix stripping) and shape fit ``network``."""
    target = network.state_dict()
    matched: dict[str, torch.Tensor] = {}
    report = LoadReport()
    for key, value in state.items():
        name = next((c for c in _candidates(key, swin) if c in target), None)
        if name is None or name in matched:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(target[name].shape):
            report.mismatched.append((name, tuple(value.shape), tuple(target[name].shape)))
        else:
            matched[name] = value
    network.load_state_dict(matched, strict=False)
    report.loaded = sorted(matched)
    mismatched = {n for n, _, _ in report.mismatched}
    report.missing = [k for k in target if k not in matched and k not in mismatched]
    return report


def _head_complete(network: nn.Module, spec: ModelSpec, report: LoadReport) -> bool:
    heads = head_module_names(network, spec)
    head_keys = [k for k in network.state_dict() if _under(k, heads)]
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


# ----------------------------------------------------------------------------
# MONAI bundles
# ----------------------------------------------------------------------------
_BUNDLE_MODULE = "monai.networks.nets."
_MAX_REF_DEPTH = 8


def _registry_name(target: Any) -> str | None:
    """``"SegResNet"`` or ``"monai.networks.nets[.segresnet].SegResNet"`` -> registry name; else None."""
    if not isinstance(target, str):
        return None
    if target in _REGISTRY:
        return target
    if target.startswith(_BUNDLE_MODULE):
        name = target.rsplit(".", 1)[-1]
        return name if name in _REGISTRY else None
    return None


def _plain_value(value: Any, config: Mapping, cfg_path: Path, depth: int = 0) -> Any:
    """A bundle config value with ``@id`` references to plain top-level values resolved; code refused."""
    if depth > _MAX_REF_DEPTH:
        raise CheckpointError("bundle config references nest too deep (a cycle?)", path=cfg_path)
    if isinstance(value, str):
        if value.startswith("$"):
            raise CheckpointError(f"bundle network_def uses the expression {value!r}; ASSFT does not evaluate "
                                  "expressions (that would run code from the bundle)", path=cfg_path,
                                  hint="replace it with its plain value in the config")
        if value.startswith("%"):
            raise CheckpointError(f"bundle network_def uses the macro {value!r}, which ASSFT does not resolve",
                                  path=cfg_path, hint="replace it with its plain value in the config")
        if value.startswith("@"):
            ref = value[1:]
            if ref not in config:
                raise CheckpointError(f"bundle network_def refers to {value!r}, which is not a top-level "
                                      "value of the config", path=cfg_path,
                                      hint="replace it with its plain value in the config")
            return _plain_value(config[ref], config, cfg_path, depth + 1)
        return value
    if isinstance(value, list):
        return [_plain_value(v, config, cfg_path, depth) for v in value]
    if isinstance(value, dict):
        if "_target_" in value:
            raise CheckpointError(f"bundle network_def builds a nested object {value['_target_']!r}; ASSFT only "
                                  "accepts plain arguments", path=cfg_path,
                                  hint="replace it with a plain value (e.g. a norm name)")
        return {k: _plain_value(v, config, cfg_path, depth) for k, v in value.items()}
    return value


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"bundle config cannot be read as JSON: {err}", path=path,
                              hint="fix the file or convert it to JSON") from err


def _bundle_classes(folder: Path, out_channels: int) -> list[str]:
    """Class names from ``configs/metadata.json`` (``channel_def``), else generic names."""
    meta_path = folder / "configs" / "metadata.json"
    channel_def = None
    if meta_path.is_file():
        meta = _read_json(meta_path)
        try:
            channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        except (KeyError, TypeError):
            channel_def = None
    if isinstance(channel_def, dict) and len(channel_def) == out_channels:
        try:
            return [str(channel_def[str(i)]) for i in range(out_channels)]
        except KeyError:
            pass
    return ["background"] + [f"label_{i}" for i in range(1, out_channels)]


def _bundle_patch_size(config: Mapping, cfg_path: Path) -> tuple[int, int, int]:
    inferer = config.get("inferer")
    roi = inferer.get("roi_size") if isinstance(inferer, dict) else None
    try:
        roi = _plain_value(roi, config, cfg_path)
    except CheckpointError:
        return DEFAULT_PATCH_SIZE
    if isinstance(roi, list) and len(roi) == 3 and all(isinstance(v, int) and v > 0 for v in roi):
        return tuple(roi)
    return DEFAULT_PATCH_SIZE


def _bundle_spec(folder: Path) -> ModelSpec:
    configs = folder / "configs"
    files = sorted(configs.glob("*.json"), key=lambda p: (p.stem not in ("inference", "train"), p.stem != "inference", p.name))
    for cfg_path in files:
        config = _read_json(cfg_path)
        if isinstance(config, dict) and "network_def" in config:
            break
    else:
        yaml = sorted(configs.glob("*.yaml")) + sorted(configs.glob("*.yml"))
        raise CheckpointError("bundle has no configs/*.json with a 'network_def'", path=folder,
                              hint="convert the bundle's YAML configs to JSON" if yaml
                              else "a MONAI bundle needs configs/inference.json defining network_def")
    netdef = config["network_def"]
    if isinstance(netdef, str) and netdef.startswith("@"):
        netdef = _plain_value(netdef, config, cfg_path)
    if not isinstance(netdef, dict) or "_target_" not in netdef:
        raise CheckpointError("bundle network_def is not an object with a '_target_'", path=cfg_path)
    name = _registry_name(netdef["_target_"])
    if name is None:
        raise CheckpointError(
            f"bundle network_def _target_ {netdef['_target_']!r} is not a network ASSFT builds; arbitrary "
            "targets are not instantiated because that would run code from the bundle", path=cfg_path,
            hint=f"supported: {', '.join(known_networks())} (bare or as monai.networks.nets.<Name>)")
    kwargs = {k: _plain_value(v, config, cfg_path) for k, v in netdef.items() if not k.startswith("_")}
    params = inspect.signature(_REGISTRY[name].cls.__init__).parameters
    for key in ("in_channels", "out_channels"):
        if key not in kwargs and key in params and params[key].default is not inspect.Parameter.empty:
            kwargs[key] = params[key].default
    out = int(kwargs.get("out_channels", 2))
    return ModelSpec(name, kwargs, _bundle_classes(folder, out), default_preprocessing(),
                     _bundle_patch_size(config, cfg_path), True, "segmentation")


def _load_bundle(folder: Path, device: str) -> LoadedModel:
    if not (folder / "configs").is_dir():
        raise CheckpointError("folder is not a MONAI bundle (no configs/ folder)", path=folder,
                              hint="choose a checkpoint file or a bundle folder")
    spec = _bundle_spec(folder)
    model_file = folder / "models" / "model.pt"
    if not model_file.is_file():
        raise CheckpointError("bundle has no models/model.pt", path=folder,
                              hint="TorchScript (model.ts) bundles are not supported; add the state dict model.pt")
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
        state = {k: v for k, v in state.items() if not _under(k, heads)}
    report = _load_matching(network, {k: v.detach().clone() for k, v in state.items()})
    device = next(iter(foundation.network.parameters()), torch.empty(0)).device
    return network.to(device).eval(), spec, report


def frozen_copy(network: nn.Module) -> nn.Module:
    """A deep copy with gradients off, in eval mode (E0 / the foundation kept all along)."""
    copy_ = copy.deepcopy(network).eval()
    for p in copy_.parameters():
        p.requires_grad_(False)
    return copy_


__all__ = [
    "ModelSpec", "LoadReport", "LoadedModel", "default_preprocessing", "default_spec", "known_networks",
    "build_network", "patch_divisor", "save_checkpoint", "load_model", "file_checksum",
    "check_task_compatible", "make_task_network", "bottleneck_module", "encoder_module_names",
    "head_module_names", "encoder_parameter_names", "norm_layers_with_stats", "enable_mc_dropout", "frozen_copy",
]
