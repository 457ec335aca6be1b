"""MONAI bundle folders: the network a bundle defines, read without running its code.

A bundle is a folder with ``configs/*.json`` (one of them defining
``network_def``) and the weights in ``models/model.pt``.  The config is parsed
as JSON and only registry networks (:mod:`.networks`) are built; ``$``
expressions, ``%`` macros and nested ``_target_`` objects are refused, because
evaluating them would run code from the bundle.  ``@id`` references to plain
top-level values are resolved.  Class names come from ``configs/metadata.json``
(``channel_def``) and the patch size from the inferer's ``roi_size``.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError
from ..preprocess import default_preprocessing
from .networks import known_networks, network_class
from .spec import DEFAULT_PATCH_SIZE, ModelSpec

_BUNDLE_MODULE = "monai.networks.nets."
_MAX_REF_DEPTH = 8


def _registry_name(target: Any) -> str | None:
    """``"SegResNet"`` or ``"monai.networks.nets[.segresnet].SegResNet"`` -> registry name; else None."""
    if not isinstance(target, str):
        return None
    known = known_networks()
    if target in known:
        return target
    if target.startswith(_BUNDLE_MODULE):
        name = target.rsplit(".", 1)[-1]
        return name if name in known else None
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
    params = inspect.signature(network_class(name).__init__).parameters
    for key in ("in_channels", "out_channels"):
        if key not in kwargs and key in params and params[key].default is not inspect.Parameter.empty:
            kwargs[key] = params[key].default
    out = int(kwargs.get("out_channels", 2))
    return ModelSpec(name, kwargs, _bundle_classes(folder, out), bundle_preprocessing(config, cfg_path),
                     _bundle_patch_size(config, cfg_path), True, "segmentation")


def _transforms(config: Mapping) -> list:
    pre = config.get("preprocessing")
    items = pre.get("transforms") if isinstance(pre, dict) else pre
    return [t for t in items if isinstance(t, dict)] if isinstance(items, list) else []


def bundle_preprocessing(config: Mapping, cfg_path: Path) -> dict:
    """The ``preprocess`` dict a bundle's ``preprocessing`` transforms describe (read, never run).

    ``Spacingd(pixdim)`` -> ``target_spacing``; ``ScaleIntensityRanged(a_min, a_max, b_min=0, b_max=1)``
    -> ``ct`` with ``clip=[a_min, a_max]``; ``NormalizeIntensityd`` -> ``zscore`` (per volume) or, with
    ``subtrahend``/``divisor``, ``ct_zscore`` with those statistics after the range's clip.
    Without these entries: the default (per-volume z-score, no resampling).
    """
    prep = default_preprocessing()
    for t in _transforms(config):
        name = str(t.get("_target_", "")).rsplit(".", 1)[-1]
        try:
            args = {k: _plain_value(v, config, cfg_path) for k, v in t.items() if not k.startswith("_")}
        except CheckpointError:
            continue
        if name in ("Spacingd", "Spacing") and isinstance(args.get("pixdim"), list) and len(args["pixdim"]) == 3:
            prep["target_spacing"] = [float(v) for v in args["pixdim"]]
        elif name in ("ScaleIntensityRanged", "ScaleIntensityRange"):
            if float(args.get("b_min", 0)) != 0.0 or float(args.get("b_max", 1)) != 1.0:
                raise CheckpointError(f"bundle intensity range maps to [{args.get('b_min')}, {args.get('b_max')}]; "
                                      "ASSFT reproduces only [0, 1]", path=cfg_path,
                                      hint="use a bundle whose ScaleIntensityRanged has b_min=0, b_max=1")
            prep.update(normalize="ct", clip=[float(args["a_min"]), float(args["a_max"])])
        elif name in ("NormalizeIntensityd", "NormalizeIntensity"):
            if args.get("subtrahend") is not None and args.get("divisor") is not None and prep["clip"]:
                prep.update(normalize="ct_zscore", mean=float(args["subtrahend"]), std=float(args["divisor"]))
            elif prep["normalize"] != "ct":
                prep["normalize"] = "zscore"
    return prep


def bundle_weights(folder: Path) -> Path:
    """Where a bundle keeps its state dict (it may not exist)."""
    return Path(folder) / "models" / "model.pt"


def read_bundle(folder: Path) -> tuple[ModelSpec, Path]:
    """The spec a bundle folder defines and its weights file; CheckpointError when it is not a usable bundle."""
    if not (folder / "configs").is_dir():
        raise CheckpointError("folder is not a MONAI bundle (no configs/ folder)", path=folder,
                              hint="choose a checkpoint file or a bundle folder")
    spec = _bundle_spec(folder)
    model_file = bundle_weights(folder)
    if not model_file.is_file():
        raise CheckpointError("bundle has no models/model.pt", path=folder,
                              hint="TorchScript (model.ts) bundles are not supported; add the state dict model.pt")
    return spec, model_file
