"""Networks and checkpoints: registry, formats, safe loading, task fitting."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")
from torch import nn

from ASSFTLib.errors import CheckpointError
from ASSFTLib.models import (
    ModelSpec, bottleneck_module, build_network, check_task_compatible, default_spec, enable_mc_dropout,
    encoder_parameter_names, file_checksum, frozen_copy, head_module_names, known_networks, load_model,
    make_task_network, norm_layers_with_stats, patch_divisor, save_checkpoint,
)

torch.set_num_threads(1)

HAS_EINOPS = importlib.util.find_spec("einops") is not None
CLASSES3 = ["background", "anterior", "posterior"]
SHAPE = (1, 1, 64, 32, 32)  # SwinUNETR down-samples 32x; its instance norms need > 1 deepest voxel

TINY_KWARGS = {
    "UNet": dict(spatial_dims=3, in_channels=1, channels=(4, 8, 16), strides=(2, 2), num_res_units=1,
                 norm="batch", dropout=0.1),
    "SegResNet": dict(spatial_dims=3, init_filters=8, in_channels=1, blocks_down=(1, 1, 1), blocks_up=(1, 1),
                      dropout_prob=0.1),
    "SwinUNETR": dict(in_channels=1, feature_size=12, depths=(1, 1, 1, 1)),
    "DynUNet": dict(spatial_dims=3, in_channels=1, kernel_size=(3, 3, 3, 3), strides=(1, 2, 2, 2),
                    upsample_kernel_size=(2, 2, 2), filters=(4, 8, 16, 32), norm_name="batch"),
    "BasicUNet": dict(spatial_dims=3, in_channels=1, features=(4, 4, 8, 8, 16, 4)),
}


def tiny_spec(name: str, classes=CLASSES3) -> ModelSpec:
    return ModelSpec(name, {**TINY_KWARGS[name], "out_channels": len(classes)}, list(classes), patch_size=SHAPE[2:])


def needs_forward(name: str) -> None:
    if name == "SwinUNETR" and not HAS_EINOPS:
        pytest.skip("SwinUNETR's forward needs the einops package, which is not installed")


def randomize_bn_stats(net: nn.Module, seed: int = 0) -> None:
    """Give BatchNorm layers non-default running statistics, as a trained network has."""
    g = torch.Generator().manual_seed(seed)
    for _, m in norm_layers_with_stats(net):
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def forward(net: nn.Module, seed: int = 1) -> torch.Tensor:
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return net.eval()(x)


# ----------------------------------------------------------------------------
def test_registry_has_the_promised_networks():
    assert {"UNet", "SegResNet", "SwinUNETR", "DynUNet", "BasicUNet"} <= set(known_networks())


@pytest.mark.parametrize("name", sorted(TINY_KWARGS))
def test_each_registry_network_builds_and_runs(name):
    needs_forward(name)
    torch.manual_seed(0)
    net = build_network(tiny_spec(name))
    out = forward(net)
    assert out.shape == (1, len(CLASSES3), *SHAPE[2:])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(TINY_KWARGS))
def test_encoder_head_and_bottleneck_are_sensible(name):
    spec = tiny_spec(name)
    net = build_network(spec)
    params = {n for n, _ in net.named_parameters()}
    enc = encoder_parameter_names(net, spec)
    heads = head_module_names(net, spec)
    head_params = {n for n in params if any(n.startswith(h + ".") for h in heads)}
    assert enc and head_params, "encoder and head must both own parameters"
    assert enc < params and not (enc & head_params), "the encoder is a proper part of the network, not its head"
    # The head's parameters are the ones whose shape depends on the number of classes.
    other = build_network(tiny_spec(name, CLASSES3 + ["extra"]))
    other_shapes = {n: p.shape for n, p in other.named_parameters()}
    changed = {n for n, p in net.named_parameters() if other_shapes[n] != p.shape}
    assert changed and changed <= head_params
    # The bottleneck lies inside the encoder and outputs the deepest (smallest) map.
    bottleneck = bottleneck_module(net, spec)
    bottleneck_params = {id(p) for p in bottleneck.parameters()}
    enc_ids = {id(p) for n, p in net.named_parameters() if n in enc}
    assert bottleneck_params and bottleneck_params <= enc_ids
    needs_forward(name)
    seen = []
    handle = bottleneck.register_forward_hook(lambda m, i, o: seen.append(o))
    forward(net)
    handle.remove()
    assert len(seen) == 1 and seen[0].ndim == 5
    expected = tuple(s // d for s, d in zip(SHAPE[2:], patch_divisor(spec)))
    assert tuple(seen[0].shape[2:]) == expected


def test_spec_round_trips_through_json():
    spec = tiny_spec("DynUNet")
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert build_network(again).state_dict().keys() == build_network(spec).state_dict().keys()


def test_spec_refuses_contradictions():
    with pytest.raises(CheckpointError, match="out_channels"):
        ModelSpec("UNet", {**TINY_KWARGS["UNet"], "out_channels": 2}, CLASSES3)
    with pytest.raises(CheckpointError, match="unknown fields"):
        ModelSpec.from_dict({**tiny_spec("UNet").to_dict(), "colour": "red"})


def test_unknown_network_is_refused_with_the_known_ones():
    with pytest.raises(CheckpointError) as err:
        build_network(ModelSpec("ResNet50", {"out_channels": 3}, CLASSES3))
    assert "ResNet50" in str(err.value)
    assert all(name in str(err.value) for name in known_networks())


def test_default_spec_is_a_small_batchnorm_dropout_unet():
    spec = default_spec(CLASSES3)
    assert spec.network == "UNet" and spec.patch_size == (32, 48, 32) and spec.has_task_head
    torch.manual_seed(0)
    net = build_network(spec)
    assert sum(p.numel() for p in net.parameters()) < 2_000_000
    encoder_norms = norm_layers_with_stats(net, spec)
    assert encoder_norms and len(encoder_norms) < len(norm_layers_with_stats(net))
    x = torch.randn(1, 1, *spec.patch_size)
    with torch.no_grad():
        assert net.eval()(x).shape == (1, 3, *spec.patch_size)
        assert torch.equal(net(x), net(x)), "eval mode is deterministic"
        assert enable_mc_dropout(net) > 0
        assert not torch.equal(net(x), net(x)), "MC-dropout samples differ"
    assert all(not m.training for _, m in norm_layers_with_stats(net)), "norms stay in eval under MC-dropout"


# ----------------------------------------------------------------------------
def test_own_format_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    spec = default_spec(CLASSES3, patch_size=(32, 32, 32))
    net = build_network(spec)
    randomize_bn_stats(net)
    pre_spec = ModelSpec("UNet", {**TINY_KWARGS["UNet"], "out_channels": 1}, [], task="reconstruction")
    pre_net = build_network(pre_spec)
    path = tmp_path / "models" / "model_1.pt"
    extra = {"round": 2, "dice": [0.5, np.float32(0.75)], "losses": np.array([1.0, 0.5])}
    digest = save_checkpoint(path, net, spec, pretext=(pre_net, pre_spec), extra=extra)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() == file_checksum(path)
    assert [p.name for p in path.parent.iterdir()] == ["model_1.pt"], "no temporary file left behind"
    # The file is self-describing and loads with weights_only=True.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "assft" and raw["format_version"] == 1 and raw["spec"] == spec.to_dict()

    loaded = load_model(path)
    assert loaded.source_format == "assft" and loaded.checksum == digest
    assert loaded.spec == spec and loaded.report.complete
    assert loaded.extra["round"] == 2 and loaded.extra["dice"] == [0.5, 0.75]
    assert torch.equal(loaded.extra["losses"], torch.tensor([1.0, 0.5], dtype=torch.float64))
    assert torch.equal(forward(loaded.network), forward(net))
    assert loaded.pretext is not None and loaded.pretext.spec.task == "reconstruction"
    assert torch.equal(forward(loaded.pretext.network), forward(pre_net))


def test_save_refuses_objects_that_need_pickled_code(tmp_path):
    spec = tiny_spec("UNet")
    with pytest.raises(TypeError, match="Path"):
        save_checkpoint(tmp_path / "m.pt", build_network(spec), spec, extra={"where": Path("x")})
    assert not list(tmp_path.iterdir())


def test_plain_state_dict_with_prefix_and_a_mismatched_layer(tmp_path):
    torch.manual_seed(0)
    spec = tiny_spec("UNet")
    net = build_network(spec)
    randomize_bn_stats(net)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # DataParallel-style names
    bad = "model.0.conv.unit0.conv.weight"
    state[f"module.{bad}"] = torch.zeros(5, 1, 3, 3, 3)
    state["module.aux_head.weight"] = torch.zeros(3)
    path = tmp_path / "weights.pt"
    torch.save(state, path)

    with pytest.raises(CheckpointError, match="spec"):
        load_model(path)
    loaded = load_model(path, spec=spec)
    report = loaded.report
    assert loaded.source_format == "state_dict"
    assert report.mismatched == [(bad, (5, 1, 3, 3, 3), tuple(net.state_dict()[bad].shape))]
    assert report.unexpected == ["module.aux_head.weight"]
    assert report.missing == []
    assert set(report.loaded) == set(net.state_dict()) - {bad}
    assert loaded.spec.has_task_head, "the head itself was loaded"
    for name, value in loaded.network.state_dict().items():
        if name != bad:
            assert torch.equal(value, net.state_dict()[name]), name


def test_plain_state_dict_under_a_wrapper_and_a_lightning_prefix(tmp_path):
    spec = tiny_spec("BasicUNet")
    net = build_network(spec)
    path = tmp_path / "lightning.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    loaded = load_model(path, spec=spec)
    assert loaded.report.complete
    assert torch.equal(forward(loaded.network), forward(net))


@pytest.mark.parametrize("prefixed_first", [True, False])
def test_a_tensor_stored_twice_loads_the_first_and_reports_the_second(tmp_path, prefixed_first):
    """The first key to claim a network name wins, whether it matches as is or after prefix stripping."""
    spec = tiny_spec("UNet")
    net = build_network(spec)
    name = "model.0.conv.unit0.conv.weight"
    first, second = torch.full_like(net.state_dict()[name], 1.0), torch.full_like(net.state_dict()[name], 2.0)
    keys = [f"module.{name}", name] if prefixed_first else [name, f"module.{name}"]
    state = {k: v for k, v in net.state_dict().items() if k != name}
    state.update({keys[0]: first, keys[1]: second})
    path = tmp_path / "twice.pt"
    torch.save(state, path)
    loaded = load_model(path, spec=spec)
    assert loaded.report.unexpected == [keys[1]]
    assert loaded.report.missing == [] and loaded.report.mismatched == []
    assert set(loaded.report.loaded) == set(net.state_dict())
    assert torch.equal(loaded.network.state_dict()[name], first)


def test_state_dict_of_another_network_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(build_network(tiny_spec("BasicUNet")).state_dict(), path)
    with pytest.raises(CheckpointError, match="no tensor") as err:
        load_model(path, spec=tiny_spec("SegResNet"))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("layout", ["module.swinViT.", "module."])
def test_swin_ssl_layout_loads_the_encoder_only(tmp_path, layout):
    torch.manual_seed(0)
    spec = tiny_spec("SwinUNETR")
    source = build_network(spec)
    encoder = {k[len("swinViT."):]: v for k, v in source.state_dict().items() if k.startswith("swinViT.")}
    ssl = {f"{layout}{k}": v for k, v in encoder.items()}
    ssl["module.rotation_head.weight"] = torch.zeros(4, 96)  # the pretext heads ship alongside
    path = tmp_path / "model_swinvit.pt"
    torch.save({"state_dict": ssl, "epoch": 100}, path)

    torch.manual_seed(1)
    loaded = load_model(path, spec=spec)
    assert loaded.source_format == "swin_ssl"
    assert not loaded.spec.has_task_head
    assert set(loaded.report.loaded) == {f"swinViT.{k}" for k in encoder}
    assert any(k.startswith("decoder1.") for k in loaded.report.missing)
    assert any(k.startswith("out.") for k in loaded.report.missing)
    assert loaded.report.unexpected == ["module.rotation_head.weight"]
    got = loaded.network.state_dict()
    assert all(torch.equal(got[f"swinViT.{k}"], v) for k, v in encoder.items())
    assert check_task_compatible(loaded, CLASSES3 + ["extra"]) == []

    with pytest.raises(CheckpointError, match="SwinUNETR"):
        load_model(path, spec=tiny_spec("UNet"))
    with pytest.raises(CheckpointError, match="spec"):
        load_model(path)


def write_bundle(folder: Path, net: nn.Module, network_def: dict, **config) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    inference = {"network_def": network_def, "network": "$@network_def.to(@device)", **config}
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    metadata = {"network_data_format": {"outputs": {"pred": {"channel_def": {
        "0": "background", "1": "anterior", "2": "posterior"}}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def test_bundle_folder_loads_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    spec = tiny_spec("SegResNet")
    net = build_network(spec)
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.kwargs.items()}
    netdef = {"_target_": "monai.networks.nets.SegResNet", **kwargs, "out_channels": "@num_classes"}
    folder = write_bundle(tmp_path / "bundle", net, netdef, num_classes=3,
                          inferer={"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32]})
    loaded = load_model(folder)
    assert loaded.source_format == "bundle" and loaded.report.complete
    assert loaded.spec.network == "SegResNet" and loaded.spec.classes == CLASSES3
    assert loaded.spec.patch_size == (32, 32, 32)
    assert loaded.checksum == hashlib.sha256((folder / "models" / "model.pt").read_bytes()).hexdigest()
    assert loaded.checksum == file_checksum(folder)
    assert torch.equal(forward(loaded.network), forward(net))


@pytest.mark.parametrize("netdef, message", [
    ({"_target_": "os.system", "command": "echo hi"}, "not instantiated"),
    ({"_target_": "mypackage.UNet", "out_channels": 3}, "not instantiated"),
    ({"_target_": "UNet", "out_channels": "$int(3)"}, "expression"),
    ({"_target_": "UNet", "norm": {"_target_": "torch.nn.BatchNorm3d"}}, "nested object"),
])
def test_bundle_with_code_is_refused(tmp_path, netdef, message):
    folder = write_bundle(tmp_path / "bundle", build_network(tiny_spec("UNet")), netdef)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(folder)
    assert "inference.json" in str(err.value)


def test_bundle_without_weights_is_refused(tmp_path):
    folder = write_bundle(tmp_path / "bundle", build_network(tiny_spec("UNet")), {"_target_": "UNet"})
    (folder / "models" / "model.pt").unlink()
    with pytest.raises(CheckpointError, match="model.pt"):
        load_model(folder)


class _Custom:
    """Stands for a class from someone's training code."""

    def __init__(self):
        self.weights = torch.zeros(2)


@pytest.mark.parametrize("payload", [lambda: {"model": _Custom()}, lambda: build_network(tiny_spec("UNet"))],
                         ids=["custom-class", "whole-module"])
def test_pickled_code_is_refused(tmp_path, payload):
    path = tmp_path / "pickled.pt"
    torch.save(payload(), path)
    with pytest.raises(CheckpointError, match="pickled code") as err:
        load_model(path, spec=tiny_spec("UNet"))
    assert str(path) in str(err.value) and "state_dict()" in str(err.value)


def test_damaged_files_are_refused_naming_them(tmp_path):
    spec = tiny_spec("UNet")
    good = tmp_path / "good.pt"
    save_checkpoint(good, build_network(spec), spec)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    for path, message in [(truncated, "corrupt"), (empty, "empty"), (junk, "corrupt"),
                          (tmp_path / "missing.pt", "does not exist")]:
        with pytest.raises(CheckpointError, match=message) as err:
            load_model(path, spec=spec)
        assert err.value.path == str(path)


# ----------------------------------------------------------------------------
def test_check_task_compatible(tmp_path):
    spec = tiny_spec("UNet")
    path = tmp_path / "three.pt"
    save_checkpoint(path, build_network(spec), spec)
    loaded = load_model(path)
    with pytest.raises(CheckpointError, match="3 classes") as err:
        check_task_compatible(loaded, CLASSES3 + ["tail"])
    assert str(path) in str(err.value)
    assert check_task_compatible(loaded, CLASSES3, patch_size=(32, 48, 32)) == []
    assert check_task_compatible(loaded, ["background", "head", "tail"])  # names differ: a warning
    with pytest.raises(CheckpointError, match="multiple"):
        check_task_compatible(loaded, CLASSES3, patch_size=(30, 48, 32))
    with pytest.raises(CheckpointError, match="single voxel"):
        check_task_compatible(loaded, CLASSES3, patch_size=(4, 4, 4))
    multi = ModelSpec("UNet", {**spec.kwargs, "in_channels": 4}, CLASSES3)
    path4 = tmp_path / "four_channels.pt"
    save_checkpoint(path4, build_network(multi), multi)
    with pytest.raises(CheckpointError, match="input channels"):
        check_task_compatible(load_model(path4), CLASSES3)


def test_make_task_network_keeps_encoder_and_makes_a_new_head(tmp_path):
    torch.manual_seed(0)
    spec = tiny_spec("UNet")
    foundation_net = build_network(spec)
    randomize_bn_stats(foundation_net)
    path = tmp_path / "foundation.pt"
    save_checkpoint(path, foundation_net, spec.replace(has_task_head=False, classes=[],
                                                       kwargs={**spec.kwargs, "out_channels": 3}))
    foundation = load_model(path)
    assert not foundation.spec.has_task_head
    before = {k: v.clone() for k, v in foundation.network.state_dict().items()}

    classes = CLASSES3 + ["tail"]
    net, task_spec, report = make_task_network(foundation, classes)
    assert task_spec.classes == classes and task_spec.has_task_head and task_spec.kwargs["out_channels"] == 4
    assert forward(net).shape[1] == 4
    enc = encoder_parameter_names(net, task_spec)
    state = net.state_dict()
    assert all(torch.equal(state[n], before[n]) for n in enc)
    assert all(n in report.loaded for n in enc)
    assert any(k.startswith("model.2.") for k in report.missing), "the head is new"
    assert not any(k.startswith("model.2.") for k in report.loaded)
    assert all(torch.equal(v, before[k]) for k, v in foundation.network.state_dict().items()), "foundation untouched"

    e0 = frozen_copy(foundation.network)
    assert not any(p.requires_grad for p in e0.parameters()) and not e0.training
