"""`assft pretrain`: self-supervised masked-volume reconstruction of the default network.

Trains on the workspace's volumes (or ``--images``), needs no labels, and
registers the result as the workspace's foundation model (current too when
the workspace has none yet).
"""
from __future__ import annotations

import argparse

from ..worker import add_job_arguments
from .train import run_foreground


def add_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a foundation model by masked-volume reconstruction (no labels)")
    p.add_argument("workspace")
    p.add_argument("--images", nargs="+", help="volumes or folders to pretrain on (default: every workspace case)")
    add_job_arguments(p)
    p.add_argument("--json-events", action="store_true", help="print JSON event lines instead of progress bars")
    p.set_defaults(func=run, kind="pretrain", _parser=p)


def run(args: argparse.Namespace) -> int:
    return run_foreground(args, args._parser)
