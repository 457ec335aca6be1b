"""The Python packages the library needs beyond what Slicer ships: which are missing, and installing them.

Installing takes minutes and must follow the user's consent, on the main
thread; the panel asks, then calls :meth:`Dependencies.install`.
"""
from __future__ import annotations

import importlib.util
import slicer

from ASSFTLib.errors import ASSFTError

#: Python packages the library needs, beyond what Slicer ships, as pip requirements.
#: torch is installed through the PyTorch extension (it picks the build for the machine's GPU).
REQUIREMENTS = {"torch": None, "monai": "monai>=1.4,<1.7", "nibabel": "nibabel>=5.0", "tqdm": "tqdm>=4.60"}


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
        others = [REQUIREMENTS[name] for name in missing if REQUIREMENTS[name]]
        if others:
            slicer.util.pip_install(" ".join(others))
