"""The model spec: which network, its arguments, its classes, how images are prepared.

A :class:`ModelSpec` is plain data (JSON-safe through :meth:`ModelSpec.to_dict`)
saved inside every ASSFT checkpoint, so a checkpoint rebuilds its own network.
Also the checkpoint format constants and the project's default network.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import CheckpointError
from ..preprocess import default_preprocessing, validate_preprocessing

FORMAT = "assft"
FORMAT_VERSION = 1
TASKS = ("segmentation", "reconstruction")
DEFAULT_PATCH_SIZE = (32, 48, 32)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a network and use it on a volume.

    network: a registry name (:func:`~.networks.known_networks`).
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


def default_spec(classes: Sequence[str], patch_size: Sequence[int] = DEFAULT_PATCH_SIZE) -> ModelSpec:
    """The project's default network: a small 3D MONAI UNet that trains on a CPU.

    Batch norm keeps running statistics (DKD's ``bnstats`` divergence), dropout
    makes MC-dropout BALD possible.
    """
    kwargs = dict(spatial_dims=3, in_channels=1, out_channels=len(classes), channels=(16, 32, 64, 128),
                  strides=(2, 2, 2), num_res_units=1, norm="batch", dropout=0.1)
    return ModelSpec("UNet", kwargs, list(classes), default_preprocessing(), tuple(patch_size), True, "segmentation")
