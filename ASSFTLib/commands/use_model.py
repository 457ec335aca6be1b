"""`assft use-model`: make an earlier model version current again (undo a bad round)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("use-model", help="make an earlier model version current again",
                       description="Make a registered model version current again, for example after a round "
                                   "whose model is worse. The file is checked against its recorded checksum first. "
                                   "Without ID, list the model versions.")
    p.add_argument("workspace", help="the workspace folder (made by `assft init`)")
    p.add_argument("model_id", nargs="?", type=int, metavar="ID", help="model version (`assft status` shows it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..workspace import Workspace
    with Workspace.open(args.workspace) as ws:
        if args.model_id is None:
            cur = ws.current_model()
            for m in ws.models():
                dice = (m.metrics or {}).get("heldout_dice")
                mark = "*" if cur is not None and m.id == cur.id else " "
                problem = ws.model_problem(m)
                print(f"{mark} #{m.id:<3} {m.kind:<10} {m.created_at}  held-out Dice "
                      f"{'-' if dice is None else f'{dice:.3f}'}" + (f"  ({problem})" if problem else ""))
            return 0
        version = ws.use_model(args.model_id)
        print(f"model #{version.id} ({version.kind}) is current: {version.path}")
    return 0
