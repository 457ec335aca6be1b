"""The Slicer side of the ASSFT module, one file per concern; ``ASSFT/ASSFT.py`` holds the panel.

The panel only wires Qt widgets; :class:`~ASSFTModuleLib.logic.ASSFTLogic` is the
one object it talks to, composed of:

- ``parameters.py``: the panel's state, kept in the scene (parameter node);
- ``install.py``: checking and installing the Python packages the library needs;
- ``session.py``: the open workspace (create, open, settings) and its current model;
- ``worklist.py``: the ranked unlabeled volumes as a table node;
- ``labeling.py``: a case's image and editable segmentation, saving the label;
- ``runner.py``: starting and cancelling background jobs;
- ``pseudo_qa.py``: pseudo-label candidates, their overlay and QA decisions.

These files use the scene and ``slicer.util`` but never Qt.  The computation
lives in :mod:`ASSFTLib` (no Qt, no ``slicer`` outside ``ASSFTLib/mrml.py``).
Modules that need torch or MONAI import them inside the functions that use
them, so that the module loads, and can offer to install them, without them.
"""
from __future__ import annotations

import sys
from pathlib import Path

try:
    import ASSFTLib  # noqa: F401  (installed extension, or pip-installed library)
except ImportError:  # a source checkout: the library sits beside the module's folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import ASSFTLib  # noqa: F401
