"""The ``assft`` command line.

Each subcommand lives in ``ASSFTLib/commands/<name>.py`` with
``add_parser(subparsers)`` and ``run(args) -> int``; this file only wires them.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import ASSFTError

#: Subcommands in the order ``assft --help`` lists them (the loop's order).
COMMANDS = ("init", "status", "demo", "pretrain", "score", "rank", "import_labels", "train", "pseudo", "report",
            "benchmark")


def _command_modules():
    for name in COMMANDS:
        yield importlib.import_module(f"ASSFTLib.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assft",
        description="Adapt a medical vision foundation model to your segmentation task with few expert labels: "
                    "score unlabeled volumes, rank them for labeling, fine-tune with selective pseudo-labels.")
    parser.add_argument("--version", action="version", version=f"assft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _command_modules():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ASSFTError as exc:
        print(f"assft {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"assft {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
