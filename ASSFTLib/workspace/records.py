"""The workspace's records: what a case, a model version and a round look like to callers.

Plain frozen dataclasses built from database rows by the mixins in this
package, plus the time stamp and user name every write records.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

#: Where a saved label came from (``label_history.source``): drawn by hand in the Slicer module, a
#: pseudo-label the radiologist corrected or accepted, or brought in from another tool (``assft import-labels``).
LABEL_SOURCES = ("manual", "corrected_pseudo", "imported")
#: Sources of the simulated annotators of ``assft demo`` and the benchmarks (never a person).
SIMULATED_SOURCES = ("simulated", "benchmark")


def now() -> str:
    """The current time as an ISO-8601 UTC string (milliseconds), as stored in the database."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def current_user() -> str:
    """Who is working: ``ASSFT_USER``, else the login name."""
    for var in ("ASSFT_USER", "USER", "USERNAME"):
        if os.environ.get(var):
            return os.environ[var]
    return "unknown"


@dataclass(frozen=True)
class Case:
    """One image of the dataset, its reference and current label, and who labeled it when."""

    case_id: str
    image_path: Path
    reference_label: Path | None
    label_path: Path | None
    status: str
    labeled_by: str | None
    labeled_at: str | None
    profile: str | None

    @property
    def is_labeled(self) -> bool:
        return self.status == "labeled"


@dataclass(frozen=True)
class ModelVersion:
    """A registered checkpoint in ``models/``, its checksum, and the round and model it came from."""

    id: int
    path: Path
    checksum: str
    kind: str
    round_id: int | None
    parent_id: int | None
    created_at: str
    metrics: dict


@dataclass(frozen=True)
class Round:
    """One job (score, train, pretrain) on the workspace and how it ended."""

    id: int
    kind: str
    status: str
    started_at: str
    finished_at: str | None
    params: dict
    metrics: dict
    model_id: int | None
