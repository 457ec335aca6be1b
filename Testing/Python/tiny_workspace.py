"""A small real workspace for tests of what reads one (report, command-line output): shared, not a fixture."""
from __future__ import annotations

from pathlib import Path

#: The synthetic volumes' shape: small enough for a 2-core machine, odd enough to catch axis mix-ups.
SHAPE = (20, 24, 18)


def scored_workspace(root: Path, with_model: bool = True, **settings):
    """A workspace of 4 synthetic volumes (clean and bias_contrast) in ``root/ws``, its data in ``root/data``.

    with_model: a tiny untrained network with a task head is registered (``root/m.pt``), one volume is
    labeled, and every volume is scored (no test-time flips, CPU, plus ``settings``).  Returned open.
    """
    import torch

    from ASSFTLib import models, scoring, synthetic
    from ASSFTLib.workspace import Workspace

    data = synthetic.make_dataset(root / "data", 4, ("clean", "bias_contrast"), shape=SHAPE)
    ws = Workspace.create(root / "ws", data, import_labels=False)
    if with_model:
        torch.manual_seed(0)
        spec = models.default_spec(ws.classes, patch_size=(16, 16, 16))
        spec = spec.replace(kwargs={**spec.kwargs, "channels": [4, 8, 16], "strides": [2, 2]}, has_task_head=True)
        models.save_checkpoint(root / "m.pt", models.build_network(spec), spec)
        ws.register_model(root / "m.pt", kind="foundation")
        ws.save_label("synth_000", synthetic.make_case((0, 0), "clean", SHAPE)[1])
        ws.save_settings(ws.settings.replace(tta_flips=False, device="cpu", **settings))
        scoring.score_cases(ws)
    return ws
