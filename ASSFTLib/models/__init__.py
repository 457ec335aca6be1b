"""Networks and checkpoints.

A model is described by a :class:`ModelSpec` (which MONAI network, its
constructor arguments, the classes it segments, how images are prepared) and
built from a small registry of MONAI networks.  The package is split by concern:

- :mod:`.spec`: the :class:`ModelSpec`, the default network, the format constants;
- :mod:`.networks`: the registry (build a network, its encoder, head, bottleneck,
  normalisation layers, MC dropout);
- :mod:`.checkpoint`: saving ASSFT's format and loading any supported file
  (``weights_only=True``, pickled code refused), the load report, fitting a
  checkpoint to a task;
- :mod:`.bundle`: reading a MONAI bundle folder without running its code.

Callers use the names re-exported here (``from ASSFTLib.models import load_model``).
"""
from __future__ import annotations

from ..preprocess import default_preprocessing
from .checkpoint import (
    LoadedModel, LoadReport, check_task_compatible, file_checksum, load_model, make_task_network, save_checkpoint,
)
from .networks import (
    bottleneck_module, build_network, enable_mc_dropout, encoder_module_names, encoder_parameter_names, frozen_copy,
    head_module_names, known_networks, norm_layers_with_stats, patch_divisor,
)
from .spec import DEFAULT_PATCH_SIZE, FORMAT, FORMAT_VERSION, ModelSpec, default_spec

__all__ = [
    "ModelSpec", "LoadReport", "LoadedModel", "default_preprocessing", "default_spec", "known_networks",
    "build_network", "patch_divisor", "save_checkpoint", "load_model", "file_checksum",
    "check_task_compatible", "make_task_network", "bottleneck_module", "encoder_module_names",
    "head_module_names", "encoder_parameter_names", "norm_layers_with_stats", "enable_mc_dropout", "frozen_copy",
    "FORMAT", "FORMAT_VERSION", "DEFAULT_PATCH_SIZE",
]
