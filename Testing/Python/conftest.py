"""Shared fixtures.  Tests use real files, real SQLite, real subprocesses and
real MRML (slicer-core); only what cannot exist here is stood in for, and the
tests that do so say it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[2]
HIPPO = Path(os.environ.get("ASSFT_HIPPO", REPO.parent / "shared" / "data" / "Task04_Hippocampus"))


def pytest_configure(config):
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass


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
