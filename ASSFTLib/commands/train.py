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
    """Renders worker events for a terminal: one tqdm bar per phase, warnings and the outcome as lines.

    ``name`` prefixes every message (``assft train: error: ...``, as every other command);
    ``resume`` is the command line that continues a cancelled job (said when one is cancelled).
    """

    def __init__(self, out=None, name: str = "assft", resume: str | None = None, kfold_min_labels: int | None = None):
        self.out = out if out is not None else sys.stderr  # looked up now: the stream may be replaced after import
        self.bar = None
        self.phase = None
        self.name = name
        self.resume = resume
        self.kfold_min_labels = kfold_min_labels

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
            text = f"{self.name}: {event}: {fields.get('message', '')}"
            if event == "cancelled" and fields.get("resumable") and self.resume:
                text += f"\n{self.name}: to continue: {self.resume}"
            elif event == "cancelled":
                text += f"\n{self.name}: nothing to resume (it stopped before the first save); start it again"
            print(text, file=self.out)
        elif event == "result":
            self.close()
            summarise(fields, self.kfold_min_labels)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def summarise(result: dict, kfold_min_labels: int | None = None) -> None:
    """Print a job result's headline numbers on stdout, in words (what was trained on, what was held out)."""
    metrics = result.get("metrics") or {}
    if "model_id" in result:
        print(f"model #{result['model_id']}: {result.get('model_path', '')}")
    if "train_labels" in metrics:  # a fine-tuning round
        print(f"  trained on     {metrics['train_labels']} labeled volumes"
              + (f" + {metrics['pseudo_labels']} pseudo-labeled" if metrics.get("pseudo_labels") else
                 " (no pseudo-labels)")
              + (f", {metrics['steps']} steps" if metrics.get("steps") else ""))
        heldout = metrics.get("heldout") or []
        if heldout:
            shown = ", ".join(heldout[:6]) + (" ..." if len(heldout) > 6 else "")
            print(f"  held out       {len(heldout)} labeled volumes ({shown}): not trained on this round, "
                  "to measure quality (another fold each round)")
            dice = metrics.get("heldout_dice")
            if dice is not None:
                print(f"  quality        held-out Dice {dice:.4f} (mean Dice of this model on the held-out "
                      "labels; 1 = perfect)")
        else:
            k = f"{kfold_min_labels}" if kfold_min_labels else "kfold_min_labels"
            print(f"  quality        not measured: with fewer than {k} labels, every label trains and none is "
                  "held out")
        before = metrics.get("new_label_dice")
        if before is not None:
            n = len(metrics.get("new_label_dice_per_case") or {})
            print(f"  new labels     the previous model's Dice on the {n} volume(s) labeled since it was trained: "
                  f"{before:.4f} (before your corrections; costs no label)")
        if metrics.get("final_loss") is not None:
            print(f"  final loss     {metrics['final_loss']:.4f}")
        return
    for key in ("final_loss", "scored", "cached"):
        value = metrics.get(key, result.get(key))
        if value is not None:
            print(f"  {key:<14} {value:.4f}" if isinstance(value, float) else f"  {key:<14} {value}")


def run_foreground(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run a worker job in this process; returns the worker's exit code (0, 1, 3 or 4)."""
    from ..settings import Settings
    from ..workspace.paths import WorkspacePaths
    args = finish_args(args, parser)
    stop = StopRequest(args.job_dir)
    stop.install()
    settings_file = WorkspacePaths(Path(args.workspace)).settings
    try:
        k = Settings.load(settings_file).kfold_min_labels if settings_file.is_file() else None
    except Exception:  # a bad settings file is the job's to report, with its own message
        k = None
    resume = f"assft {args.kind} {args.workspace} --resume --job-dir {args.job_dir}"
    bars = None if args.json_events else ProgressBars(name=f"assft {args.kind}", resume=resume, kfold_min_labels=k)
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
    p = sub.add_parser(
        "train", help="fine-tune the next model version on the labels and SSFT pseudo-labels",
        description="Run one fine-tuning round in this process: start from the current model (or the foundation "
                    "model the first time), train on the labeled volumes plus the reliable pseudo-labels SSFT admits "
                    "(see `assft pseudo`), and register the result as the new current model when the round ends. "
                    "The round trains 40 steps per training volume, at least 250 and at most 2,000 (--steps fixes "
                    "it). Quality: once the workspace has kfold_min_labels (default 5) labels, one fold of them is "
                    "held out of each round and the new model's Dice on it is reported as the held-out Dice; "
                    "below that every label trains and there is no quality number. Ctrl-C saves a resumable state "
                    "and prints the command that continues it.")
    p.add_argument("workspace", help="the workspace folder (made by `assft init`)")
    add_job_arguments(p)
    p.add_argument("--json-events", action="store_true", help="print JSON event lines instead of progress bars")
    p.set_defaults(func=run, kind="train", images=None, _parser=p)


def run(args: argparse.Namespace) -> int:
    return run_foreground(args, args._parser)
