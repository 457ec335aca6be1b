"""Run worker jobs from a GUI (or any caller) without blocking it.

::

    job = Job.start("train", workspace, ["--steps", "50"])
    while job.running:
        for event in job.poll():      # never blocks
            show(event)
    job.cancel()                     # SIGTERM, then kill the process tree

The worker runs with any Python executable (Slicer's, or a site's GPU
environment): ``python`` defaults to the running interpreter and the folder
holding ``ASSFTLib`` is put on the child's ``PYTHONPATH``. No Qt here: the
Slicer module polls from a timer and shows each event through :func:`describe_event`.
"""
from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Sequence

from .errors import ASSFTError
from .worker import CANCEL_FILE, EXIT_CANCELLED, default_job_dir

#: Events after which the worker says nothing more.
TERMINAL_EVENTS = ("result", "error", "cancelled")
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class Job:
    """One worker process and the events it has printed (see :mod:`ASSFTLib.worker`)."""

    def __init__(self, process: subprocess.Popen, kind: str, job_dir: Path):
        self.process = process
        self.kind = kind
        self.job_dir = Path(job_dir)
        self._events: queue.Queue[dict] = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stdout_thread = threading.Thread(target=self._read_stdout, daemon=True)
        self._stderr_thread.start()
        self._stdout_thread.start()

    # ------------------------------------------------------------------ start
    @classmethod
    def start(cls, kind: str, workspace: str | Path, args: Sequence[str] = (), python: str | None = None,
              device: str | None = None, job_dir: str | Path | None = None, env: dict | None = None) -> "Job":
        """Start ``python -m ASSFTLib.worker KIND --workspace WORKSPACE --job-dir DIR [--device DEV] ARGS``.

        ``python`` is the caller's choice on its own machine (Slicer's application settings, a site's GPU
        environment); it defaults to the running interpreter.  Nothing in the workspace chooses it: a
        workspace is data that anyone may hand over.

        ``job_dir`` defaults to a new folder under ``WORKSPACE/jobs``; pass the
        folder of a cancelled job with ``args=["--resume"]`` to continue it.
        """
        if python and not (Path(python).is_file() and os.access(python, os.X_OK)):
            raise ASSFTError("is not a Python interpreter this machine can run", path=python,
                             hint="choose the python executable of an environment with torch and MONAI, "
                                  "or leave it empty for this application's own Python")
        job_dir = Path(job_dir) if job_dir else default_job_dir(workspace, kind)
        job_dir.mkdir(parents=True, exist_ok=True)
        cmd = [python or sys.executable, "-m", "ASSFTLib.worker", kind, "--workspace", str(workspace),
               "--job-dir", str(job_dir)]
        if device:
            cmd += ["--device", device]
        cmd += [str(a) for a in args]
        child_env = {**os.environ, **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), child_env.get("PYTHONPATH")) if p)
        child_env["PYTHONUNBUFFERED"] = "1"
        popen_kw: dict = {}
        if os.name == "posix":
            popen_kw["start_new_session"] = True  # its own process group: cancel() reaches every child
        else:
            popen_kw["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                   env=child_env, text=True, encoding="utf-8", errors="replace", bufsize=1,
                                   **popen_kw)
        return cls(process, kind, job_dir)

    # ---------------------------------------------------------------- readers
    def _read_stdout(self) -> None:
        terminal = False
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "log", "message": line}
            if not isinstance(event, dict):
                event = {"event": "log", "message": line}
            terminal = terminal or event.get("event") in TERMINAL_EVENTS
            self._events.put(event)
        code = self.process.wait()
        self._stderr_thread.join(timeout=5)
        if not terminal:  # killed, or died before it could say why
            tail = "".join(self._stderr_tail).strip()
            killed = {-getattr(signal, "SIGKILL", 9), -signal.SIGTERM}
            kind = "cancelled" if code == EXIT_CANCELLED or code in killed else "error"
            self._events.put({"event": kind, "job": self.job_dir.name, "kind": self.kind, "returncode": code,
                              "message": f"worker exited with code {code}" + (f": {tail[-2000:]}" if tail else "")})
        self._events.put({"event": "exit", "job": self.job_dir.name, "kind": self.kind, "returncode": code})

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr_tail.append(line)

    # ----------------------------------------------------------------- access
    def poll(self) -> list[dict]:
        """Every event printed since the last call; never blocks.

        After the worker's own last event comes ``{"event": "exit", "returncode": N}``.
        """
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def stderr_tail(self) -> str:
        return "".join(self._stderr_tail)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the worker ends (``subprocess.TimeoutExpired`` after ``timeout``); its exit code."""
        code = self.process.wait(timeout)
        self._stdout_thread.join(timeout=5)
        return code

    def cancel(self, timeout: float = 10.0) -> int:
        """Ask the worker to stop (cancel file + SIGTERM); kill its process tree after ``timeout`` seconds.

        A worker that stops in time saves a resumable state and exits with 3.
        """
        if self.running:
            (self.job_dir / CANCEL_FILE).touch()
            self._signal(signal.SIGTERM if os.name == "posix" else signal.CTRL_BREAK_EVENT)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_tree()
        return self.wait()

    def _signal(self, sig: int) -> None:
        try:
            if os.name == "posix":
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_tree(self) -> None:
        if os.name == "posix":
            self._signal(signal.SIGKILL)
        else:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True, check=False)


def describe_event(event: dict) -> Dict[str, Any]:
    """What a panel shows for one worker event: ``fraction`` (0..1 or None), ``text`` and ``quality``.

    ``text`` is the status line ("" when the event changes nothing), ``quality``
    the held-out Dice of a finished round ("" otherwise).
    """
    kind = event.get("event")
    fraction, text, quality = None, "", ""
    if kind == "progress":
        step, total = event.get("step"), event.get("total")
        if step is not None and total:
            fraction = min(1.0, float(step) / float(total))
        parts = [f"{event.get('phase', event.get('kind', 'job'))} {step}/{total}"]
        if event.get("loss") is not None:
            parts.append(f"loss {float(event['loss']):.4f}")
        if event.get("eta_s") is not None:
            eta = int(event["eta_s"])
            parts.append(f"ETA {eta // 60}:{eta % 60:02d}")
        text = ", ".join(parts)
    elif kind == "result":
        fraction, text = 1.0, f"{event.get('kind', 'job')} finished."
        metrics = event.get("metrics") or {}
        dice = metrics.get("heldout_dice", metrics.get("dice"))
        if isinstance(dice, (int, float)):
            quality = f"Held-out Dice of the new model: {dice:.3f}"
    elif kind == "warning":
        text = f"Warning: {event.get('message', '')}"
    elif kind == "error":
        text = f"Failed: {event.get('message', 'unknown error')}"
    elif kind == "cancelled":
        text = "Cancelled; the job can be resumed." if event.get("resumable") else \
            f"Stopped: {event.get('message', '')}"
    elif kind == "start":
        text = f"{event.get('kind', 'job')} started."
    return {"fraction": fraction, "text": text, "quality": quality}
