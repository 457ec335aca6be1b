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
    p = sub.add_parser(
        "pretrain", help="pretrain a foundation model by masked-volume reconstruction (no labels)",
        description="Make a foundation model when you have none: train the default network (a MONAI UNet) to "
                    "reconstruct masked blocks of your own unlabeled volumes, then register it as the workspace's "
                    "foundation model (and as its current model when it has none). Needs no labels. Its length is "
                    "the pretrain_steps setting (default 300; --steps N sets it): a few hundred steps take minutes "
                    "on a CPU, more gives a better start. Ctrl-C saves a resumable state and prints the command "
                    "that continues it.")
    p.add_argument("workspace", help="the workspace folder (made by `assft init`)")
    p.add_argument("--images", nargs="+", help="volumes or folders to pretrain on (default: every workspace case)")
    add_job_arguments(p)
    p.add_argument("--json-events", action="store_true", help="print JSON event lines instead of progress bars")
    p.set_defaults(func=run, kind="pretrain", _parser=p)


def run(args: argparse.Namespace) -> int:
    return run_foreground(args, args._parser)
