"""`assft rank`: the worklist from cached scores (no inference)."""
from __future__ import annotations

import argparse

from .. import strategies


def add_parser(sub) -> None:
    p = sub.add_parser("rank", help="rank the unlabeled cases for labeling (from cached scores)",
                       description="Rank the unlabeled pool with a query strategy from the cached scores of the "
                                   "current model (run `assft score` first). The picked batch comes first, in pick "
                                   "order, then the rest. Columns: K = knowledge divergence (how far the volume's "
                                   "features are from what the foundation model learned; higher = newer to it), "
                                   "ASD = anatomical segmentation difficulty (uncertainty inside the predicted "
                                   "anatomy; '-' before the first round), Div = distance of the volume's embedding to "
                                   "the nearest labeled or already-picked volume (1 when nothing is labeled yet), "
                                   "q = the query score (K and ASD combined, times Div), picked = '*' for this "
                                   "round's batch.")
    p.add_argument("workspace", help="the workspace folder (made by `assft init`)")
    p.add_argument("--strategy", choices=strategies.names(),
                   help=f"query strategy (default: the workspace setting). {strategies.help_text()}")
    p.add_argument("--budget", type=int, help="volumes to pick (default: the workspace setting)")
    p.add_argument("--csv", metavar="OUT.csv", help="also write the table as CSV (every case, more columns)")
    p.add_argument("--json", metavar="OUT.json", help="also write the table as JSON")
    p.add_argument("--all", action="store_true", help="also list labeled, unscored and failed cases")
    p.set_defaults(func=run)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(table, include_all: bool = False) -> str:
    """The worklist as aligned text, one row per case."""
    columns = ("rank", "case_id", "status", "K", "ASD", "Div", "q", "picked")
    rows = [r for r in table.rows if include_all or r.status == "pool"]
    cells = [list(columns)] + [[_fmt(getattr(r, c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


MODE_WORDS = {"bnstats": "batch-norm statistics of the foundation model",
              "pretext": "reconstruction error of the foundation model's pretext head",
              "drift": "feature drift from the foundation model"}


def legend(table) -> list[str]:
    """What the columns mean, under the table."""
    lines = ["K     knowledge divergence: how far the volume is from what the foundation model learned "
             f"({MODE_WORDS.get(table.divergence_mode or '', 'not available')}); higher = newer to the model",
             "ASD   anatomical segmentation difficulty: the model's uncertainty inside the predicted anatomy; "
             "'-' while the model has no segmentation head (before the first round)",
             "Div   distance (cosine, 0..2) of the volume's embedding to the nearest labeled or already-picked "
             "volume; 1 for the first pick when nothing is labeled yet",
             "q     the query score of atsq/dkd/asd: (K and ASD, rank-normalised and mixed) x Div; compare within "
             "one list only",
             "*     picked: label these first, in this order"]
    return lines


def run(args: argparse.Namespace) -> int:
    from ..scoring import rank_cases
    from ..workspace import Workspace
    with Workspace.open(args.workspace) as ws:
        table = rank_cases(ws, strategy=args.strategy, budget=args.budget)
        labeled, total = len(ws.labeled_ids()), len(ws.cases())
    mode = f"K from {table.divergence_mode}" if table.divergence_mode else "no K"
    print(f"ranked by {table.strategy}, {table.budget} to pick, {mode}, model {table.model_checksum[:12]}")
    for note in table.notes:
        print(f"note: {note}")
    pool = [r for r in table.rows if r.status == "pool"]
    unscored = sum(r.status == "unscored" for r in table.rows)
    failed = [r for r in table.rows if r.status == "error"]
    if pool or args.all:
        print(format_table(table, args.all))
    if not pool:
        why = (f"every case is labeled ({labeled} of {total})" if labeled == total else
               "no unlabeled volume has a score for the current model yet")
        print(f"nothing to rank: {why}")
    else:
        print()
        print("\n".join(legend(table)))
    if unscored:
        print(f"{unscored} cases have no score yet: run `assft score {args.workspace}`")
    if failed and not args.all:  # one bad case never hides: say which failed and why
        print(f"{len(failed)} cases could not be scored (`assft score` retries them):")
        for r in failed:
            print(f"  {r.case_id}: {r.note}")
    if args.csv:
        table.write_csv(args.csv)
        print(f"wrote {args.csv} ({len(table.rows)} rows)")
    if args.json:
        table.write_json(args.json)
        print(f"wrote {args.json}")
    return 0
