"""`assft report`: one self-contained HTML page for visual QA of the ranking and the pseudo-labels."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write an HTML page with slices and overlays of ranked cases and pseudo-labels",
                       description="Write one self-contained HTML page (images embedded) showing, for the top "
                                   "ranked unlabeled volumes and for every SSFT pseudo-label candidate, three "
                                   "orthogonal slices through the foreground centre with the prediction or "
                                   "pseudo-label overlaid, next to the numbers behind the decision. Cases the "
                                   "current model has not scored yet are scored first (cached, as `assft score`).")
    p.add_argument("workspace", help="the workspace folder (made by `assft init`)")
    p.add_argument("--out", help="HTML file to write (default: WORKSPACE/report.html)")
    p.add_argument("--top", type=int, default=8, help="ranked volumes to show (default: 8)")
    p.add_argument("--no-score", dest="score", action="store_false",
                   help="use only the cached scores; unscored cases are left out")
    p.add_argument("--device", help="cpu, cuda or cuda:N for the predictions (default: the workspace settings)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..fileutil import check_writable
    from ..report import write_report
    from ..workspace import Workspace
    with Workspace.open(args.workspace) as ws:
        settings = ws.settings if not args.device else ws.settings.replace(device=args.device)
        out = Path(args.out) if args.out else ws.folder / "report.html"
        check_writable(out, what="the report")  # before minutes of scoring, not after
        if args.score and ws.current_model() is not None:
            from ..scoring import score_cases
            with tqdm(desc="score", unit="case") as bar:
                def scored(step: int, total: int, info: dict) -> None:
                    bar.total = total
                    bar.update(step - bar.n)
                score_cases(ws, settings, progress=scored)
        with tqdm(desc="report", unit="case") as bar:
            def progress(step: int, total: int, info: dict) -> None:
                bar.total = total
                bar.update(step - bar.n)
            path = write_report(ws, out, settings=settings, top=args.top, progress=progress)
    print(f"wrote {path}")
    return 0

