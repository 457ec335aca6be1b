"""Benchmarks the project reports (``../shared/BENCHMARK.md``).

- :mod:`.label_efficiency`: does ASSFT save expert labels on real data?  A
  simulated annotator drives the product's own workspace, scoring, query and
  fine-tuning round on the MSD hippocampus task (``hippo-multisite`` and
  ``hippo-plain``).
- :mod:`.speed`: does scoring and fine-tuning run close to what the hardware
  allows?  Ratios against the forward passes that cannot be avoided.
- :mod:`.plotting`: the Dice-vs-labels figure.

Every result file records the machine, the command, the date and the commit
(:func:`provenance`).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..fileutil import atomic_write_text


def machine_description() -> dict[str, Any]:
    """CPU, core count, memory, GPU (if any) and library versions of this machine."""
    import monai
    import numpy
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2 ** 30, 1)}
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "memory_gib": mem_gib, "gpu": gpu,
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "numpy": numpy.__version__}


def git_commit(repo: Path | None = None) -> str | None:
    """The checked-out commit (with ``+dirty`` when tracked files differ), or None outside git."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def provenance(command: list[str] | None = None) -> dict[str, Any]:
    """What a committed result must name: machine, command, date (UTC) and commit."""
    return {"machine": machine_description(), "command": " ".join(command if command is not None else sys.argv),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit()}


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    import numpy as np
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
