"""`assft score`: score every case once for the current model (resumable; cached per case)."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("score", help="score the cases with the current model (ATSQ's one pass per volume)",
                       description="Run the current model (and the frozen foundation encoder) once over every case "
                                   "that has no cached score for this model and these settings: knowledge "
                                   "divergence, ASD, confidence, embeddings. Cached per case, so an interrupted run "
                                   "continues where it stopped.")
    p.add_argument("workspace", help="the workspace folder (made by `assft init`)")
    p.add_argument("--cases", nargs="+", metavar="CASE", help="score only these cases")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the workspace setting)")
    p.add_argument("--json-events", action="store_true",
                   help="print one JSON event per line (as the background worker does) instead of a progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..scoring import score_cases
    from ..workspace import Workspace
    with Workspace.open(args.workspace) as ws, ws.job_lock():  # a second `assft score` is told, not duplicated
        settings = ws.settings.replace(device=args.device) if args.device else ws.settings
        if args.json_events:
            from ..worker import EventWriter, progress_to_events
            emit = EventWriter("score", "score", None, stream=sys.stdout)
            emit("start", workspace=str(ws.folder))
            result = score_cases(ws, settings, progress=progress_to_events(emit), case_ids=args.cases)
            emit("result", **result)
        else:
            from tqdm import tqdm
            with tqdm(desc="scoring", unit="case", dynamic_ncols=True) as bar:
                def progress(step: int, total: int, info: dict) -> None:
                    bar.total = total
                    bar.set_postfix_str(info.get("case_id", ""), refresh=False)
                    bar.update(step - bar.n)
                result = score_cases(ws, settings, progress=progress, case_ids=args.cases)
            print(f"{result['total']} cases: {result['scored']} scored, {result['cached']} already cached, "
                  f"{len(result['errors'])} errors (model {result['model_checksum'][:12]}, "
                  f"settings {result['settings_hash']})")
            for case_id, message in result["errors"].items():
                print(f"  error: {case_id}: {message}", file=sys.stderr)
    return 1 if result["errors"] else 0
