"""`assft rank`: the worklist from cached scores (no inference)."""
from __future__ import annotations

import argparse

from .. import strategies


def add_parser(sub) -> None:
    p = sub.add_parser("rank", help="rank the unlabeled cases for labeling (from cached scores)",
                       description="Rank the unlabeled pool with a query strategy from the cached scores of the "
                                   "current model (run `assft score` first). The picked batch comes first, in pick "
                                   "order, then the rest; each row shows K, ASD, diversity and q.")
    p.add_argument("workspace", help="the workspace folder (made by `assft init`)")
    p.add_argument("--strategy", choices=strategies.names(),
                   help=f"query strategy (default: the workspace setting). {strategies.help_text()}")
    p.add_argument("--budget", type=int, help="volumes to pick (default: the workspace setting)")
    p.add_argument("--csv", metavar="OUT.csv", help="also write the table as CSV")
    p.add_argument("--json", metavar="OUT.json", help="also write the table as JSON")
    p.add_argument("--all", action="store_true", help="also list labeled, unscored and failed cases")
    p.set_defaults(func=run)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(table, include_all: bool = False) -> str:
    """The worklist as aligned text, one row per case."""
    columns = ("rank", "case_id", "status", "K", "ASD", "Div", "q", "picked")
    rows = [r for r in table.rows if include_all or r.status == "pool"]
    cells = [list(columns)] + [[_fmt(getattr(r, c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def run(args: argparse.Namespace) -> int:
    from ..scoring import rank_cases
    from ..workspace import Workspace
    with Workspace.open(args.workspace) as ws:
        table = rank_cases(ws, strategy=args.strategy, budget=args.budget)
    print(f"strategy {table.strategy}, budget {table.budget}, K mode {table.divergence_mode or '-'}, "
          f"model {table.model_checksum[:12]}")
    for note in table.notes:
        print(f"note: {note}")
    print(format_table(table, args.all))
    unscored = sum(r.status == "unscored" for r in table.rows)
    if unscored:
        print(f"{unscored} cases have no score yet: run `assft score {args.workspace}`")
    if args.csv:
        table.write_csv(args.csv)
    if args.json:
        table.write_json(args.json)
    return 0
