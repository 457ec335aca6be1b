"""The background worker: one long job in its own process, reporting JSON events.

Usage::

    python -m ASSFTLib.worker {score,train,pretrain,predict} --workspace W [--job-dir D] [--resume]
                              [--device DEV] [--steps N] [--set KEY=JSON ...]
                              [--images PATH ...]            # pretrain only
                              [--case ID ... --purpose prefill|pseudo]  # predict only
                              [--model PATH]                 # register only

Every event is one JSON object on one line of stdout, also appended to
``<job-dir>/events.jsonl``::

    {"event": "start"|"progress"|"warning"|"result"|"error"|"cancelled",
     "job": "<job-dir name>", "kind": "train", "time": <unix seconds>, ...}

``progress`` carries ``step``, ``total``, ``eta_s`` and whatever the job
reports (``loss``, ``phase``, ``metrics``); ``result`` the job's outcome;
``error`` a ``message`` (and ``type``/``path``/``hint`` for user errors).

Stopping: SIGTERM, SIGINT or a file named ``cancel`` in the job folder make
the job save a resumable state in the job folder within a few seconds and exit
with code 3; ``--resume --job-dir D`` continues it.

Exit codes: 0 done, 1 error, 2 usage, 3 cancelled (resumable), 4 workspace
busy (another job holds the workspace's job lock).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .errors import ASSFTError, JobCancelled, WorkspaceBusy, WorkspaceError
from .workspace.paths import WorkspacePaths, check_job_dir, job_state_path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED, EXIT_BUSY = 0, 1, 2, 3, 4
KINDS = ("score", "train", "pretrain", "predict", "register")
#: The lock each kind holds: ``predict`` only reads the model and writes its own outputs, so the
#: panel can pre-fill a label or show a pseudo-label while a fine-tuning round runs.
LOCKS = {"predict": "predict"}
CANCEL_FILE = "cancel"
EVENTS_FILE = "events.jsonl"
#: Progress events are sent at most this often (seconds); the last step always is.
PROGRESS_INTERVAL_S = 0.5

Emit = Callable[..., None]


# ---------------------------------------------------------------------------- events
def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


class EventWriter:
    """Writes events as JSON lines to a stream and to ``job_dir/events.jsonl``.

    The events file is an append-only log: each event is one ``write`` of one
    complete line, flushed, so a reader never sees a half event except
    possibly the very last line after a power loss.
    """

    def __init__(self, job: str, kind: str, job_dir: Path | None, stream=None):
        self.job, self.kind = job, kind
        self.stream = stream
        self.log_path = None if job_dir is None else Path(job_dir) / EVENTS_FILE

    def __call__(self, event: str, **fields: Any) -> dict:
        record = {"event": event, "job": self.job, "kind": self.kind, "time": round(time.time(), 3), **fields}
        line = json.dumps(record, default=_jsonable) + "\n"
        if self.stream is not None:
            self.stream.write(line)
            self.stream.flush()
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(line)
        return record


def progress_to_events(emit: Emit, interval_s: float = PROGRESS_INTERVAL_S) -> Callable[[int, int, dict], None]:
    """Adapt a ``progress(step, total, info)`` callback into throttled ``progress`` events with an ETA."""
    state = {"t0": time.monotonic(), "step0": None, "phase": None, "last": 0.0}

    def progress(step: int, total: int, info: dict | None = None) -> None:
        info = dict(info or {})
        now = time.monotonic()
        phase = info.get("phase")
        if phase != state["phase"] or state["step0"] is None:
            state.update(t0=now, step0=step, phase=phase)
        final = step >= total
        if not final and now - state["last"] < interval_s:
            return
        state["last"] = now
        done = step - state["step0"]
        eta = (now - state["t0"]) / done * (total - step) if done > 0 else None
        emit("progress", step=int(step), total=int(total), eta_s=None if eta is None else round(eta, 1), **info)

    return progress


class StopRequest:
    """``should_stop()`` for a job: True after SIGTERM/SIGINT or once ``job_dir/cancel`` exists."""

    def __init__(self, job_dir: Path):
        self.cancel_path = Path(job_dir) / CANCEL_FILE
        self.signalled = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        return self.signalled or self.cancel_path.exists()


@contextmanager
def _warnings_as_events(emit: Emit) -> Iterator[None]:
    """Turn ``warnings.warn`` calls made by the job into ``warning`` events."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, *a, **k: emit(  # type: ignore[assignment]
            "warning", message=str(message), category=category.__name__)
        yield


# ---------------------------------------------------------------------------- jobs
def default_job_dir(workspace: str | Path, kind: str) -> Path:
    return WorkspacePaths(Path(workspace)).new_job_dir(kind)


def _settings_for(ws, args: argparse.Namespace):
    settings = ws.settings
    changes: dict[str, Any] = {}
    for item in args.set or ():
        key, _, value = item.partition("=")
        try:
            changes[key] = json.loads(value)
        except ValueError:
            changes[key] = value
    if args.steps is not None:
        changes["pretrain_steps" if args.kind == "pretrain" else "steps"] = args.steps
    if args.device:
        changes["device"] = args.device
    return settings.replace(**changes) if changes else settings


def _run_score(ws, settings, args, progress, should_stop) -> dict:
    from . import scoring
    result = scoring.score_cases(ws, settings=settings, progress=progress, should_stop=should_stop)
    return result if isinstance(result, dict) else {"scored": result}


def _run_train(ws, settings, args, progress, should_stop) -> dict:
    from . import training
    return training.finetune_round(ws, settings, progress=progress, should_stop=should_stop,
                                   resume=args.resume, job_dir=Path(args.job_dir))


def _run_pretrain(ws, settings, args, progress, should_stop) -> dict:
    from . import training
    images = training.expand_image_paths(args.images) if args.images else [c.image_path for c in ws.cases()]
    out = Path(args.job_dir) / "pretrained.pt"
    result = training.pretrain(images, out, settings, progress=progress, should_stop=should_stop,
                               resume=args.resume, job_dir=Path(args.job_dir))
    version = ws.register_model(out, kind="foundation", make_current=ws.current_model() is None,
                                metrics=result.get("metrics", {}))
    return {**result, "model_id": version.id, "model_path": str(version.path)}


def _run_predict(ws, settings, args, progress, should_stop) -> dict:
    """The current model's segmentation of ``--case`` volumes, off the panel's main thread.

    ``--purpose prefill``: ``<job-dir>/<case>.nii.gz`` (a starting point for the
    radiologist); ``--purpose pseudo``: ``<workspace>/pseudo/<case>.nii.gz`` (the
    pseudo-label shown for review, as :func:`ASSFTLib.pseudo.write_pseudo_labels`).
    """
    cases = list(args.case or ())
    if not cases:
        raise ASSFTError("predict needs at least one --case", hint="name the volumes to segment")
    version = ws.current_model()
    if version is None:
        raise ASSFTError("the workspace has no model yet", path=ws.folder, hint="register a foundation model first")
    for case_id in cases:
        ws.case(case_id)  # an unknown case is an error before the model loads
    from . import pseudo
    from .inference import predict_label
    from .models import load_model
    from .volumes import read_volume, write_volume
    model = load_model(ws.verified(version).path, device=settings.resolved_device())  # never a swapped file
    if not model.spec.has_task_head:
        raise ASSFTError("the current model cannot segment the task yet", path=version.path,
                         hint="run a fine-tuning round first")
    outputs = {}
    for i, case_id in enumerate(cases):
        if should_stop():
            raise JobCancelled(f"stopped before segmenting {case_id}")
        progress(i, len(cases), {"phase": "predict", "case": case_id})
        if args.purpose == "pseudo":
            outputs.update(pseudo.write_pseudo_labels(ws, model, [case_id], settings))
        else:
            volume = read_volume(ws.image_path(case_id))
            label, _ = predict_label(model, volume, settings)
            outputs[case_id] = write_volume(Path(args.job_dir) / f"{case_id}.nii.gz", label, volume.affine)
    progress(len(cases), len(cases), {"phase": "predict"})
    return {"purpose": args.purpose, "model_checksum": version.checksum,
            "outputs": {c: str(p) for c, p in outputs.items()}}


def _run_register(ws, settings, args, progress, should_stop) -> dict:
    """Load ``--model`` (refusing an unusable checkpoint) and register it as the workspace's foundation model.

    A job, so that the panel never imports torch or reads a large checkpoint on its own thread.
    """
    from .models import check_task_compatible, load_model
    if not args.model:
        raise ASSFTError("register needs --model", hint="name the checkpoint file or MONAI bundle folder")
    progress(0, 1, {"phase": "check model"})
    check_task_compatible(load_model(args.model), ws.classes)  # refuse an unusable checkpoint before registering
    version = ws.register_model(args.model, kind="foundation")
    progress(1, 1, {"phase": "check model"})
    return {"model_id": version.id, "model_path": str(version.path)}


RUNNERS = {"score": _run_score, "train": _run_train, "pretrain": _run_pretrain, "predict": _run_predict,
           "register": _run_register}


def run_job(args: argparse.Namespace, emit: Emit, should_stop: Callable[[], bool]) -> int:
    """Run one job described by parsed worker arguments; report through ``emit``; return the exit code."""
    from .workspace import Workspace
    emit("start", args={k: v for k, v in vars(args).items() if k != "func" and not k.startswith("_")},
         pid=os.getpid())
    progress = progress_to_events(emit)
    try:
        with _warnings_as_events(emit), Workspace.open(args.workspace) as ws, \
                ws.job_lock(LOCKS.get(args.kind, "worker")):
            settings = _settings_for(ws, args)
            from .runtime import set_threads
            set_threads(settings.num_threads)
            result = RUNNERS[args.kind](ws, settings, args, progress, should_stop)
    except JobCancelled as exc:
        resumable = job_state_path(args.job_dir).exists()
        emit("cancelled", message=str(exc), resumable=resumable, job_dir=str(args.job_dir))
        return EXIT_CANCELLED
    except WorkspaceBusy as exc:
        emit("error", **{**exc.to_dict(), "message": str(exc)}, code=EXIT_BUSY)
        return EXIT_BUSY
    except ASSFTError as exc:
        emit("error", **{**exc.to_dict(), "message": str(exc)})
        return EXIT_ERROR
    except Exception as exc:  # an unexpected failure still ends with one clear event
        emit("error", message=f"{type(exc).__name__}: {exc}", type=type(exc).__name__,
             traceback=traceback.format_exc(limit=8))
        return EXIT_ERROR
    emit("result", **result)
    return EXIT_OK


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by the worker and the ``assft train/pretrain/score`` commands."""
    p.add_argument("--job-dir", help="job folder (events, cancel file, resumable state); default: WORKSPACE/jobs/KIND-TIME")
    p.add_argument("--resume", action="store_true", help="continue the cancelled job saved in --job-dir")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the workspace settings)")
    p.add_argument("--steps", type=int, help="training steps (default: the workspace settings)")
    p.add_argument("--set", action="append", metavar="KEY=JSON", help="override one setting, e.g. --set batch_size=4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ASSFTLib.worker",
                                     description="Run one ASSFT job, printing one JSON event per line.")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--images", nargs="+", help="pretrain: volumes or folders (default: every workspace case)")
    parser.add_argument("--model", help="register: the foundation checkpoint or MONAI bundle folder")
    parser.add_argument("--case", action="append", help="predict: a case to segment (repeat for several)")
    parser.add_argument("--purpose", choices=("prefill", "pseudo"), default="prefill",
                        help="predict: write to the job folder (prefill) or the workspace's pseudo/ folder (pseudo)")
    add_job_arguments(parser)
    return parser


def finish_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Fill the default job folder; refuse ``--resume`` without an existing one (usage error)."""
    if args.resume and not args.job_dir:
        parser.error("--resume needs the --job-dir of the job to continue")
    if args.resume and not Path(args.job_dir).is_dir():
        parser.error(f"--resume: job folder {args.job_dir} does not exist")
    if not args.job_dir:
        if not (Path(args.workspace) / "assft.db").is_file():  # never make jobs/ folders in a mistyped path
            parser.error(f"{args.workspace} is not an ASSFT workspace (no assft.db); "
                         "create one with `assft init WORKSPACE --dataset FOLDER`")
        args.job_dir = str(default_job_dir(args.workspace, args.kind))
    job_dir = Path(args.job_dir)
    try:  # before anything is written there: a job folder is never the workspace's own data
        check_job_dir(job_dir, args.resume, workspace=args.workspace)
    except WorkspaceError as exc:
        parser.error(str(exc))
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / CANCEL_FILE).unlink(missing_ok=True)  # a resumed job must not stop at once
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = finish_args(parser.parse_args(argv), parser)
    job_dir = Path(args.job_dir)
    stop = StopRequest(job_dir)
    stop.install()
    emit = EventWriter(job_dir.name, args.kind, job_dir, sys.stdout)
    return run_job(args, emit, stop)


if __name__ == "__main__":
    sys.exit(main())
