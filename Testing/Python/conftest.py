"""Shared fixtures.  Tests use real files, real SQLite, real subprocesses and
real MRML (slicer-core); only what cannot exist here is stood in for, and the
tests that do so say it."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[2]
HIPPO = Path(os.environ.get("ASSFT_HIPPO", REPO.parent / "shared" / "data" / "Task04_Hippocampus"))


#: torch (and MONAI) have no wheel for every Python that Slicer ships (3.9, 3.12 here): tests that need them
#: skip there, module-wide with ``pytest.importorskip("torch")`` or one by one with ``@pytest.mark.torch``.
HAS_TORCH = importlib.util.find_spec("torch") is not None


def pytest_configure(config):
    if not HAS_TORCH and os.environ.get("ASSFT_REQUIRE_TORCH") == "1":
        # the main run (Testing/run_tests.sh) must never pass by skipping what needs torch
        raise pytest.UsageError("ASSFT_REQUIRE_TORCH=1 but torch is not importable in this Python")
    if HAS_TORCH:
        import torch
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if HAS_TORCH:
        return
    skip = pytest.mark.skip(reason="needs torch (no torch wheel for this Python)")
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def hippo_dir() -> Path:
    if not (HIPPO / "dataset.json").exists():
        pytest.skip(f"real data not found at {HIPPO} (set ASSFT_HIPPO to an MSD Task04 folder)")
    return HIPPO


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small MSD-layout synthetic dataset (8 cases, two acquisition profiles)."""
    from ASSFTLib import synthetic
    folder = tmp_path_factory.mktemp("synthetic") / "Task99_Synthetic"
    synthetic.make_dataset(folder, n_cases=8, profiles=("clean", "bias_contrast"), seed=0)
    return folder
