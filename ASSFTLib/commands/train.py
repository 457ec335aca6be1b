"""`assft train`: one fine-tuning round (labels + SSFT pseudo-labels) in this process.

Progress shows as tqdm bars, or with ``--json-events`` as the worker's JSON
event lines (the same events ``python -m ASSFTLib.worker train`` prints).
Ctrl-C (or SIGTERM) saves a resumable state; ``--resume --job-dir D`` continues.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..worker import EventWriter, StopRequest, add_job_arguments, finish_args, run_job


class ProgressBars:
    """Renders worker events for a terminal: one tqdm bar per phase, warnings and the outcome as lines."""

    def __init__(self, out=None):
        self.out = out if out is not None else sys.stderr  # looked up now: the stream may be replaced after import
        self.bar = None
        self.phase = None

    def __call__(self, event: str, **fields) -> None:
        from tqdm import tqdm
        if event == "progress":
            phase = fields.get("phase") or "work"
            if self.bar is None or phase != self.phase or fields["total"] != self.bar.total:
                self.close()
                self.bar = tqdm(total=fields["total"], desc=phase, file=self.out, dynamic_ncols=True)
                self.phase = phase
            self.bar.n = fields["step"]
            post = {k: fields[k] for k in ("loss", "case", "case_id") if fields.get(k) is not None}
            self.bar.set_postfix(post, refresh=False)
            self.bar.refresh()
            return
        if event in ("warning", "error", "cancelled"):
            self.close()
            print(f"{event}: {fields.get('message', '')}", file=self.out)
        elif event == "result":
            self.close()
            summarise(fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def summarise(result: dict) -> None:
    """Print a job result's headline numbers on stdout."""
    metrics = result.get("metrics") or {}
    if "model_id" in result:
        print(f"model #{result['model_id']}: {result.get('model_path', '')}")
    for key in ("heldout_dice", "train_labels", "pseudo_labels", "final_loss", "scored", "cached"):
        value = metrics.get(key, result.get(key))
        if value is not None:
            print(f"  {key:<14} {value:.4f}" if isinstance(value, float) else f"  {key:<14} {value}")


def run_foreground(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run a worker job in this process; returns the worker's exit code (0, 1, 3 or 4)."""
    args = finish_args(args, parser)
    stop = StopRequest(args.job_dir)
    stop.install()
    bars = None if args.json_events else ProgressBars()
    log = EventWriter(Path(args.job_dir).name, args.kind, args.job_dir, sys.stdout if args.json_events else None)

    def emit(event: str, **fields) -> None:
        log(event, **fields)
        if bars is not None:
            bars(event, **fields)

    try:
        return run_job(args, emit, stop)
    finally:
        if bars is not None:
            bars.close()


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune the next model version on the labels and SSFT pseudo-labels")
    p.add_argument("workspace")
    add_job_arguments(p)
    p.add_argument("--json-events", action="store_true", help="print JSON event lines instead of progress bars")
    p.set_defaults(func=run, kind="train", images=None, _parser=p)


def run(args: argparse.Namespace) -> int:
    return run_foreground(args, args._parser)
