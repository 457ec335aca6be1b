"""`assft pseudo`: which unlabeled volumes SSFT would admit now, and why the others not.

Lists every candidate with its confidence c(x), semantic distance d(x) to the
labeled set and the decision; ``--write`` saves the admitted pseudo-labels as
label files under ``<workspace>/pseudo/`` for review (accept/reject them in
QA: accepted ones train as labels, rejected ones are never pseudo-labeled).
"""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pseudo", help="list SSFT pseudo-label candidates; --write saves the admitted ones for review",
        description="List every unlabeled volume SSFT considers as pseudo-labeled training data, with its "
                    "confidence c (mean max-probability in the predicted anatomy), its distance d to the nearest "
                    "labeled volume (cosine distance of embeddings) and the decision: admitted when c >= tau_c and "
                    "d <= tau_d, at most rho x the number of labels, highest c(1-d) first. `assft train` uses the "
                    "admitted ones by itself; --write also saves them under WORKSPACE/pseudo/ for review (accepted "
                    "ones then train as labels, rejected ones are never pseudo-labeled). Needs a fine-tuned model "
                    "and `assft score` first.")
    p.add_argument("workspace", help="the workspace folder (made by `assft init`)")
    p.add_argument("--write", action="store_true", help="write admitted pseudo-labels to WORKSPACE/pseudo/")
    p.add_argument("--json", action="store_true", help="print the selection as JSON")
    p.add_argument("--device", help="cpu, cuda or cuda:N for --write (default: the workspace settings)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..errors import WorkspaceError
    from ..models import load_model
    from ..pseudo import accepted_pseudo_labels, select_round_pseudo, write_pseudo_labels
    from ..workspace import Workspace
    with Workspace.open(args.workspace) as ws:
        settings = ws.settings if not args.device else ws.settings.replace(device=args.device)
        current = ws.current_model()
        if current is None:
            raise WorkspaceError("the workspace has no model yet", path=ws.folder,
                                 hint="register a foundation model and train a first round")
        teacher = load_model(ws.verified(current).path, device=settings.resolved_device())
        if not teacher.spec.has_task_head:
            raise WorkspaceError("the current model has no segmentation head, so it cannot pseudo-label yet",
                                 path=current.path, hint="train a first round (assft train WORKSPACE)")
        selection = select_round_pseudo(ws, teacher, settings, exclude=list(accepted_pseudo_labels(ws)))
        if selection is None:
            raise WorkspaceError("the current model has not scored the labeled volumes", path=ws.folder,
                                 hint="run assft score WORKSPACE first")
        if args.json:
            print(json.dumps(selection.to_dict(), indent=2))
        else:
            print(f"admitted when confidence >= tau_c {selection.tau_c:.3f} and distance to the labeled set <= "
                  f"tau_d {selection.tau_d:.4f} ({selection.tau_d_rule}), at most {selection.cap}")
            print(f"{'case':<28} {'confidence':>10} {'distance':>9}  decision")
            for d in sorted(selection.decisions, key=lambda d: (not d.selected, -(d.priority or 0))):
                print(f"{d.case_id:<28} {d.confidence:>10.4f} {d.distance:>9.4f}  "
                      + ("admitted" if d.selected else f"refused: {d.reason}"))
            print(f"{len(selection.selected)} of {len(selection.decisions)} candidates admitted"
                  + ("" if selection.decisions else " (no unlabeled volume has a score: run `assft score`)"))
        say = sys.stderr if args.json else sys.stdout  # --json keeps stdout to the JSON
        if args.write and not selection.selected:
            print(f"nothing written to {ws.paths.pseudo}: no candidate was admitted"
                  + (" (see the reasons above)" if selection.decisions and not args.json else ""), file=say)
        elif args.write:
            with tqdm(total=len(selection.selected), desc="pseudo-labels") as bar:
                written = write_pseudo_labels(ws, teacher, selection.selected, settings,
                                              progress=lambda i, n, info: bar.update(1))
            for case_id, path in written.items():
                print(f"wrote {path}", file=say)
            print(f"{len(written)} pseudo-labels written for review in {ws.paths.pseudo}: look at them with "
                  f"`assft report {args.workspace}` (or open them in any viewer over their images)", file=say)
    return 0
