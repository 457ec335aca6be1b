"""The network registry: which MONAI networks ASSFT builds, and the parts of each it uses.

Each registry entry says where a network family keeps its encoder (what
self-supervised pretraining and DKD's ``bnstats`` read), its output head
(whose shape depends on the classes), its bottleneck (the deepest feature map,
for embeddings) and the factor every patch size must be a multiple of.  Adding
a network is one entry in ``_REGISTRY``.

Network tensors are ``(B, C, X, Y, Z)``; every registry network takes one
input channel in ASSFT and outputs ``len(spec.classes)`` logit channels.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, SwinUNETR, UNet
from torch import nn

from ..errors import CheckpointError
from .spec import ModelSpec


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


def network_class(name: str) -> type:
    """The MONAI class behind registry name ``name``."""
    return _arch(name).cls


def build_network(spec: ModelSpec) -> nn.Module:
    """A freshly initialised network for ``spec`` (on the CPU, in eval mode)."""
    arch = _arch(spec.network)
    try:
        net = arch.cls(**spec.kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as err:
        raise CheckpointError(f"cannot build {spec.network} with arguments {spec.to_dict()['kwargs']}: {err}",
                              hint="check the network arguments in the model spec") from err
    return net.eval()


def patch_divisor(spec: ModelSpec) -> tuple[int, int, int]:
    """Per-axis factor that every input size of ``spec``'s network must be a multiple of."""
    return tuple(int(d) for d in _arch(spec.network).divisor(spec.kwargs))


# ----------------------------------------------------------------------------
# Parts of a network
# ----------------------------------------------------------------------------
def is_under(name: str, prefixes: Sequence[str]) -> bool:
    """Whether module / tensor ``name`` is one of ``prefixes`` or inside one."""
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
    return {n for n, _ in network.named_parameters() if is_under(n, prefixes)}


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
            and m.running_mean is not None and (prefixes is None or is_under(n, prefixes))]


def enable_mc_dropout(network: nn.Module) -> int:
    """Eval mode everywhere except dropout layers (MC-dropout). Returns how many dropout layers are on."""
    network.eval()
    count = 0
    for m in network.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            m.train()
            count += 1
    return count


def frozen_copy(network: nn.Module) -> nn.Module:
    """A deep copy with gradients off, in eval mode (E0 / the foundation kept all along)."""
    copy_ = copy.deepcopy(network).eval()
    for p in copy_.parameters():
        p.requires_grad_(False)
    return copy_
