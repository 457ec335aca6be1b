"""The ``assft`` command line.

Each subcommand lives in ``ASSFTLib/commands/<name>.py`` with
``add_parser(subparsers)`` and ``run(args) -> int``; this file only wires them.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sqlite3
import sys
from pathlib import Path

from . import __version__
from .errors import ASSFTError

#: Subcommands in the order ``assft --help`` lists them (the loop's order).
COMMANDS = ("init", "status", "demo", "pretrain", "score", "rank", "import-labels", "train", "use-model", "pseudo",
            "report", "benchmark")


def _command_modules():
    for name in COMMANDS:
        yield importlib.import_module(f"ASSFTLib.commands.{name.replace('-', '_')}")


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


#: What to do after an interrupted command, by command (train and pretrain say it themselves: they save a state).
RESUME_HINTS = {
    "score": "the cases scored so far are cached: run the same command again to continue",
    "report": "the cases scored so far are cached: run the same command again to continue",
    "demo": "run the same command again: the data and the foundation model made so far are reused",
    "import_labels": "the labels listed as imported are saved; run the same command again for the rest "
                     "(add --replace only to overwrite on purpose)",
    "pseudo": "pseudo-labels listed as written are saved; run the same command again for the rest",
    "benchmark_label_efficiency": "the arms finished so far are kept in --out: run the same command again to "
                                  "continue",
}


def _terminated(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def _quiet_stdout() -> None:
    """After the reader of a pipe went away (``assft status WS --cases | head``): no traceback at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"assft {args.command}"
    previous = signal.signal(signal.SIGTERM, _terminated) if threading_is_main() else None
    try:  # SIGTERM stops like Ctrl-C: with a message and a resume hint, not a silent exit 143
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a reader gone away (`| head`) is handled below, not at exit
        return rc
    except ASSFTError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as exc:  # a query the workspace did not wrap: still one clear line
        from .workspace.schema import database_error
        print(f"{name}: error: {database_error(exc, Path(getattr(args, 'workspace', '.')) / 'assft.db')}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        how = "stopped (SIGTERM)" if str(exc) == "SIGTERM" else "interrupted"
        hint = RESUME_HINTS.get("_".join(filter(None, (args.command, getattr(args, "benchmark", None))))
                                .replace("-", "_"))
        print(f"{name}: {how}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 143 if str(exc) == "SIGTERM" else 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def threading_is_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
