"""`assft import-labels`: bring label files made in any tool into a workspace, checked, with their source."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "import-labels", help="bring in labels made in another tool (ITK-SNAP, Slicer, a colleague's folder)",
        description="Import label files (NIfTI or NRRD, one per case) into a workspace. Each file is matched to a "
                    "case by its name: the image's name (hippocampus_001.nii.gz), optionally with an ending such "
                    "as _seg, _label, -label or _mask. Every label is checked before it is saved: same grid as its "
                    "image (shape, spacing, origin, direction) and values within the workspace's classes (0 = "
                    "background). The command lists what it imported and what it refused and why; refused files "
                    "change nothing. Imported labels are recorded with source 'imported'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("workspace", help="the workspace folder (made by `assft init`)")
    p.add_argument("labels", nargs="+", metavar="FILE_OR_FOLDER",
                   help="label files, or folders whose volume files are all labels")
    p.add_argument("--case", metavar="CASE", help="the case of a single file whose name does not match it")
    p.add_argument("--replace", action="store_true",
                   help="replace a case's existing label (the old one is kept in WORKSPACE/labels/.history/)")
    p.add_argument("--user", help="who made the labels (recorded with each; default: ASSFT_USER or the login name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..labelimport import import_labels
    from ..workspace import Workspace
    with Workspace.open(args.workspace) as ws:
        result = import_labels(ws, args.labels, case=args.case, replace=args.replace, user=args.user)
        labeled = len(ws.labeled_ids())
    for o in result.imported:
        print(f"imported  {o.case_id:<24} {o.path}" + (f"  ({o.message})" if o.message else ""))
    for o in result.skipped:
        print(f"skipped   {o.case_id:<24} {o.path}  ({o.message})")
    for o in result.refused:
        print(f"refused   {o.path}: {o.message}" + (f" ({o.hint})" if o.hint else ""), file=sys.stderr)
    print(f"{len(result.imported)} imported, {len(result.refused)} refused"
          + (f", {len(result.skipped)} already in place" if result.skipped else "")
          + f"; the workspace now has {labeled} labeled cases")
    if not result.outcomes:
        print("no label files found in " + ", ".join(args.labels), file=sys.stderr)
        return 1
    return 1 if result.refused else 0
