"""The runtime policy: device selection, CPU threads, the mixed-precision dtype and the grad scaler in resume."""
from __future__ import annotations

import warnings

import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")

from ASSFTLib import runtime
from ASSFTLib.training import loop
from ASSFTLib.settings import Settings


@pytest.fixture
def bf16_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.fixture
def fp16_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)


def test_cpu_and_amp_off_run_in_float32(bf16_gpu):
    assert runtime.amp_dtype("cpu", True) is None
    assert runtime.amp_dtype(torch.device("cpu"), True) is None
    assert runtime.amp_dtype("cuda", False) is None
    x = torch.randn(4, 4)
    with runtime.autocast("cpu", True):
        assert (x @ x).dtype == torch.float32


def test_cuda_uses_bfloat16_where_supported_else_float16(bf16_gpu, monkeypatch):
    for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
        assert runtime.amp_dtype(device, True) == torch.bfloat16
    assert not runtime.needs_loss_scaling("cuda", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on a CPU-only machine
        ctx = runtime.autocast("cuda:0", True)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.amp_dtype("cuda", True) == torch.float16
    assert runtime.needs_loss_scaling("cuda", True)
    assert not runtime.needs_loss_scaling("cuda", False) and not runtime.needs_loss_scaling("cpu", True)


def test_grad_scaler_is_off_on_the_cpu(fp16_gpu):
    assert not runtime.grad_scaler("cpu", True).is_enabled()


def _job(scaler: torch.amp.GradScaler):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    return net, opt, scaler


@pytest.mark.parametrize("enabled", [False, True])
def test_resume_restores_the_grad_scaler_state(tmp_path, enabled):
    net, opt, scaler = _job(torch.amp.GradScaler("cpu", init_scale=512.0, enabled=enabled))
    path = tmp_path / "state.pt"
    loop.save_state(path, net, opt, scaler, step=3, plan={"train": ["a"]})
    fresh_net, fresh_opt = torch.nn.Linear(3, 2), torch.optim.AdamW(net.parameters(), lr=0.1)
    fresh_scaler = torch.amp.GradScaler("cpu", enabled=enabled)
    saved = loop.load_state(path)
    assert loop.restore_state(saved, fresh_net, fresh_opt, fresh_scaler) == 3
    assert saved["plan"] == {"train": ["a"]}
    assert torch.equal(fresh_net.weight, net.weight)
    assert fresh_scaler.state_dict() == scaler.state_dict()
    if enabled:
        assert fresh_scaler.get_scale() == 512.0
    assert loop.restore_state(None, fresh_net, fresh_opt, fresh_scaler) == 0


def test_device_selection(monkeypatch):
    assert runtime.resolve_device(Settings(device="cpu")) == "cpu"
    assert runtime.resolve_device(Settings(device="cuda:1")) == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device(Settings(device="auto")) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device(Settings(device="auto")) == "cpu"
    assert runtime.device_type("cuda:1") == "cuda" and runtime.device_type(torch.device("cpu")) == "cpu"


def test_prepare_sets_threads_and_seed_and_returns_the_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert runtime.prepare(Settings(device="cpu", num_threads=0, seed=5)) == "cpu"
    first = torch.rand(3)
    assert calls == []  # 0 keeps torch's default
    runtime.prepare(Settings(device="cpu", num_threads=3, seed=5))
    assert calls == [3] and torch.equal(torch.rand(3), first)
