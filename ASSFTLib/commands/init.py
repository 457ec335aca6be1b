"""`assft init`: create a workspace from a dataset folder."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("init", help="create a workspace from a dataset folder",
                       description="Create a workspace (an SQLite database and folders for labels, models and "
                                   "scores) from an MSD-layout dataset folder (dataset.json, imagesTr/, optional "
                                   "labelsTr/) or a plain folder of NIfTI/NRRD volumes. Images stay where they are.")
    p.add_argument("workspace", help="new or empty folder for the workspace")
    p.add_argument("--dataset", required=True, help="dataset folder (MSD layout or a folder of volumes)")
    p.add_argument("--model", help="foundation model to register: an ASSFT checkpoint (.pt), a plain PyTorch "
                                   "state dict of the default network, a Swin UNETR self-supervised checkpoint, or "
                                   "a MONAI bundle folder (configs/*.json + models/model.pt). Without it, run "
                                   "`assft pretrain WORKSPACE` next to make one from your volumes")
    p.add_argument("--classes", help="comma-separated class names incl. background (default: from dataset.json)")
    p.add_argument("--no-labels", dest="import_labels", action="store_false",
                   help="do not use the dataset's labels as labels (they are still kept as reference labels)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..dataset import task_classes
    from ..workspace import Workspace
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if args.model:  # refuse an unsafe, damaged or unsuitable checkpoint before creating anything
        from ..models import check_task_compatible, load_model
        check_task_compatible(load_model(args.model), task_classes(args.dataset, classes))
    ws = Workspace.create(args.workspace, dataset=args.dataset, import_labels=args.import_labels, classes=classes)
    if args.model:
        version = ws.register_model(args.model, kind="foundation")
    s = ws.summary()
    print(f"workspace {s['folder']}: {s['cases']} cases ({s['labeled']} labeled, {s['unlabeled']} unlabeled), "
          f"classes {', '.join(s['classes'])}")
    for problem in ws.import_problems:
        print(f"  problem: {problem['path']}: {problem['message']}")
    if args.model:
        print(f"foundation model #{version.id}: {args.model} (copied to {version.path}, checksum "
              f"{version.checksum[:12]})")
        print(f"next: `assft score {args.workspace}`")
    else:
        print(f"no model yet: next, `assft pretrain {args.workspace}` makes a foundation model from these volumes")
    return 0
