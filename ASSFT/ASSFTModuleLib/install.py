"""The Python packages the library needs beyond what Slicer ships: which are missing, and installing them.

The list is ``Resources/requirements.txt`` (also pyproject.toml's dependency
list).  Installing takes minutes and must follow the user's consent, on the
main thread; the panel asks, then calls :meth:`Dependencies.install`.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import slicer

from ASSFTLib.errors import ASSFTError

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
#: What Slicer itself ships (never installed by the module).
SLICER_SHIPS = {"numpy", "scipy", "SimpleITK"}
#: pip name -> import name, where they differ.
IMPORT_NAMES = {"SimpleITK": "SimpleITK"}


def read_requirements(path: Path = REQUIREMENTS_FILE) -> dict:
    """Import name -> pip requirement, from ``requirements.txt`` (without what Slicer ships)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        requirement = line.split("#")[0].strip()
        if not requirement:
            continue
        name = re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0]
        if name not in SLICER_SHIPS:
            out[IMPORT_NAMES.get(name, name)] = requirement
    return out


#: Python packages the library needs, beyond what Slicer ships, as pip requirements.
#: torch is installed through the PyTorch extension (it picks the build for the machine's GPU).
REQUIREMENTS = read_requirements()


class Dependencies:
    """Checks and installs :data:`REQUIREMENTS`."""

    @staticmethod
    def missing() -> list[str]:
        return [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]

    @staticmethod
    def install(missing: list[str]) -> None:
        """Install ``missing`` packages; call only after the user agreed (it takes minutes)."""
        if "torch" in missing:
            import PyTorchUtils  # the PyTorch extension, declared in EXTENSION_DEPENDS
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise ASSFTError("PyTorch could not be installed", hint="install it from the PyTorch module")
        others = [REQUIREMENTS[name] for name in missing if name != "torch"]
        if others:
            slicer.util.pip_install(" ".join(others))
