"""Training patches read and augmented in DataLoader worker processes (settings.loader_workers).

Real cache entries on disk, real worker processes (fork, and spawn as Windows and macOS
start them), a real fine-tuning round cancelled while its workers run.
"""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (no torch wheel for this Python)")

from ASSFTLib import models, runtime, synthetic, training
from ASSFTLib.errors import JobCancelled
from ASSFTLib.settings import SettingsError
from ASSFTLib.settings import Settings
from ASSFTLib.training import cache
from ASSFTLib.training.data import PatchSampler, StepBatches, step_batches
from ASSFTLib.volumes import write_volume
from ASSFTLib.workspace import Workspace

PATCH = (8, 16, 16)
PREP = {"normalize": "zscore"}


def _entries(folder: Path, n: int = 3) -> list:
    out = []
    for i in range(n):
        image, label, affine = synthetic.make_case((11, i), "clean", (20, 24, 18))
        img = write_volume(folder / f"img{i}.nii.gz", image, affine)
        lab = write_volume(folder / f"lab{i}.nii.gz", label.astype(np.uint8), affine)
        out.append(cache.cached_labeled_case(folder / "cache", f"c{i}", img, lab, PREP, 3))
    return out


def _batches(folder: Path, first: int = 0, total: int = 6) -> StepBatches:
    entries = _entries(folder)
    sampler = PatchSampler(PATCH, seed=5, fg_fraction=0.5, augment=True)
    groups = [[sampler.prepare(e) for e in entries[:2]], [sampler.prepare(entries[2])]]  # labeled, pseudo
    return StepBatches(sampler, groups, 2, seed=5, first=first, total=total)


def _collect(batches: StepBatches, workers: int, context=None) -> list:
    with step_batches(batches, workers, context=context) as next_batch:
        return [next_batch(step) for step in range(batches.first, batches.total)]


def _same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["step"] == y["step"]
        for k in ("image", "label", "weight"):
            assert torch.equal(x[k], y[k]), (x["step"], k)


def test_batches_are_the_same_for_any_number_of_workers(tmp_path):
    batches = _batches(tmp_path)
    alone = _collect(batches, 0)
    assert alone[0]["image"].shape == (4, 1, *PATCH) and alone[0]["label"].dtype == torch.int64
    assert not torch.equal(alone[0]["image"], alone[1]["image"])  # steps differ
    _same(alone, _collect(batches, 1))
    _same(alone, _collect(batches, 2))


def test_a_resumed_run_gets_the_batches_of_an_uninterrupted_one(tmp_path):
    whole = _collect(_batches(tmp_path / "a"), 0)
    _same(whole[3:], _collect(_batches(tmp_path / "b", first=3), 0))


def test_workers_started_with_spawn_give_the_same_batches(tmp_path):
    """What crosses to a spawned worker (sampler, cache entries) pickles, and the batches do not change."""
    batches = _batches(tmp_path, total=3)
    _same(_collect(batches, 0), _collect(batches, 1, context="spawn"))  # one worker: each imports torch anew


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to see the worker processes")
def test_workers_are_joined_when_training_fails(tmp_path):
    batches = _batches(tmp_path, total=50)
    pids = []
    with pytest.raises(RuntimeError, match="the step failed"):
        with step_batches(batches, 2) as next_batch:
            next_batch(0)
            pids = [p.pid for p in multiprocessing.active_children()]
            assert len(pids) >= 2 and all(_alive(p) for p in pids)
            raise RuntimeError("the step failed")
    assert not any(_alive(p) for p in pids)


@pytest.fixture
def ct_workspace(tmp_path) -> Workspace:
    data = synthetic.make_dataset(tmp_path / "Task97_Workers", 4, ("clean",), seed=0, shape=(24, 24, 24))
    settings = Settings(steps=40, batch_size=1, patch_size=(16, 16, 16), tta_flips=False, sw_batch_size=1,
                        kfold_min_labels=0, num_threads=1, device="cpu", use_ssft=False, loader_workers=2)
    ws = Workspace.create(tmp_path / "ws", data, settings=settings, import_labels=True)
    torch.manual_seed(0)
    spec = models.default_spec(list(ws.classes), (16, 16, 16))
    models.save_checkpoint(tmp_path / "foundation.pt", models.build_network(spec), spec)
    ws.register_model(tmp_path / "foundation.pt", kind="foundation")
    yield ws
    ws.close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to see the worker processes")
def test_a_cancelled_round_leaves_no_worker_process(ct_workspace, tmp_path):
    seen = {}

    def progress(step, total, info):
        if info.get("phase") == "train" and "pids" not in seen:
            seen["pids"] = [p.pid for p in multiprocessing.active_children()]

    with pytest.raises(JobCancelled):
        training.finetune_round(ct_workspace, ct_workspace.settings, progress=progress,
                                should_stop=lambda: "pids" in seen, job_dir=tmp_path / "job")
    assert len(seen["pids"]) >= 2  # the round's two workers were running
    assert not any(_alive(p) for p in seen["pids"])
    assert multiprocessing.active_children() == []


def test_the_setting_is_checked_and_automatic_means_none_on_the_cpu(monkeypatch):
    for bad in (-2, 65, 1.5):
        with pytest.raises(SettingsError):
            Settings(loader_workers=bad)
    assert runtime.loader_workers(Settings(), "cpu") == 0
    assert runtime.loader_workers(Settings(loader_workers=3), "cpu") == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert runtime.loader_workers(Settings(), "cuda:0") == runtime.AUTO_LOADER_WORKERS
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert runtime.loader_workers(Settings(), "cuda") == 1
    assert runtime.loader_workers(Settings(loader_workers=0), "cuda") == 0
