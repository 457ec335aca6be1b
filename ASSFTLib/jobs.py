"""Run worker jobs from a GUI (or any caller) without blocking it.

::

    job = Job.start("train", workspace, ["--steps", "50"])
    while job.running:
        for event in job.poll():      # never blocks
            show(event)
    job.cancel()                     # SIGTERM, then kill the process tree

The worker runs with any Python executable (Slicer's, or a site's GPU
environment): ``python`` defaults to the running interpreter.  The child starts
from a clean environment (:func:`child_environment`: no ``PYTHONHOME``, and
``PYTHONPATH`` exactly the folder holding ``ASSFTLib``, so that a foreign Python
neither dies on Slicer's settings nor imports another copy of the library), and
on Windows without a console window.  A job started by an earlier panel (module
reloaded, workspace reopened) is found again with :func:`running_jobs` and
followed through its ``events.jsonl``.  No Qt here: the Slicer module polls from
a timer and shows each event through :func:`describe_event`.
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
from .worker import CANCEL_FILE, EVENTS_FILE, EXIT_CANCELLED, default_job_dir

#: Events after which the worker says nothing more.
TERMINAL_EVENTS = ("result", "error", "cancelled")
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
#: Variables of the parent's Python that must not reach another interpreter (Slicer's launcher sets them).
PYTHON_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "PYTHONUSERBASE",
                    "PYTHONNOUSERSITE", "PYTHONSAFEPATH", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")


def child_environment(base: dict | None = None, extra: dict | None = None) -> dict:
    """The worker's environment: ``base`` (default ``os.environ``) without the parent Python's variables,
    ``PYTHONPATH`` exactly the folder that holds ``ASSFTLib``, unbuffered output, then ``extra``.

    Inside Slicer pass ``slicer.util.startupEnvironment()`` as ``base`` (the
    environment before Slicer's launcher changed it), as ``launchConsoleProcess`` does.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in PYTHON_VARIABLES}
    env["PYTHONPATH"] = str(_PACKAGE_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def check_python(python: str) -> str:
    """``python`` if it names an existing executable file; else a clear :class:`ASSFTError`."""
    path = Path(python).expanduser()
    hint = ("choose the python executable of an environment that has torch and MONAI installed "
            "(for example .../envs/assft/bin/python), or leave \"Python for jobs\" empty to use Slicer's own")
    if not path.exists():
        raise ASSFTError("the Python for jobs does not exist", path=path, hint=hint)
    if path.is_dir() or not os.access(path, os.X_OK):
        raise ASSFTError("the Python for jobs is not a program that can be run", path=path, hint=hint)
    return str(path)


def _popen_options() -> dict:
    """Own process group (cancel reaches every child); on Windows also no console window."""
    if os.name == "posix":
        return {"start_new_session": True}
    info = subprocess.STARTUPINFO()  # as slicer.util.launchConsoleProcess: hide the console window
    info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    info.wShowWindow = subprocess.SW_HIDE
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW,
            "startupinfo": info}


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
              device: str | None = None, job_dir: str | Path | None = None, env: dict | None = None,
              base_env: dict | None = None) -> "Job":
        """Start ``python -m ASSFTLib.worker KIND --workspace WORKSPACE --job-dir DIR [--device DEV] ARGS``.

        ``python`` is the caller's choice on its own machine (Slicer's application settings, a site's GPU
        environment); it defaults to the running interpreter.  Nothing in the workspace chooses it: a
        workspace is data that anyone may hand over.

        ``job_dir`` defaults to a new folder under ``WORKSPACE/jobs``; pass the
        folder of a cancelled job with ``args=["--resume"]`` to continue it.
        The environment is :func:`child_environment` of ``base_env`` plus ``env``.
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
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                   env=child_environment(base_env, env), text=True, encoding="utf-8",
                                   errors="replace", bufsize=1, **_popen_options())
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


def _read_events(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Complete JSON lines of ``events.jsonl`` from byte ``offset``; (events, new offset)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    events = []
    end = data.rfind(b"\n") + 1  # a half-written last line waits for the next call
    for line in data[:end].splitlines():
        try:
            event = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, offset + end


def _pid_alive(pid: int) -> bool:
    if os.name == "posix":
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:  # a zombie child of this process has ended
            done, _ = os.waitpid(pid, os.WNOHANG)
            return done == 0
        except ChildProcessError:
            return True
    import ctypes  # Windows: OpenProcess succeeds while the process exists
    handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    code = ctypes.c_ulong()
    ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
    ctypes.windll.kernel32.CloseHandle(handle)
    return code.value == 259  # STILL_ACTIVE


class AttachedJob:
    """A worker started by someone else (an earlier panel, the command line), followed through its events file.

    Same reading interface as :class:`Job`: ``kind``, ``job_dir``, ``poll()``,
    ``running``, ``cancel()``; ``poll()`` replays the events already written
    the first time, so the panel shows where the job is.
    """

    def __init__(self, job_dir: Path, kind: str, pid: int):
        self.job_dir, self.kind, self.pid = Path(job_dir), kind, pid
        self._offset = 0
        self._ended = False

    @property
    def running(self) -> bool:
        return _pid_alive(self.pid)

    def poll(self) -> list[dict]:
        if self._ended:
            return []
        alive = self.running  # before reading: events written before it died are all read below
        events, self._offset = _read_events(self.job_dir / EVENTS_FILE, self._offset)
        terminal = next((e for e in events if e.get("event") in TERMINAL_EVENTS), None)
        if terminal is not None or not alive:
            if terminal is None:
                events.append({"event": "error", "job": self.job_dir.name, "kind": self.kind,
                               "message": "the job's process ended without saying why"})
                code = 1
            else:
                code = {"result": 0, "cancelled": EXIT_CANCELLED}.get(terminal["event"], 1)
            events.append({"event": "exit", "job": self.job_dir.name, "kind": self.kind, "returncode": code})
            self._ended = True
        return events

    def cancel(self, timeout: float = 0.0) -> None:
        """Ask it to stop (cancel file + SIGTERM to its process group); with ``timeout`` 0, kill it at once."""
        (self.job_dir / CANCEL_FILE).touch()
        if os.name != "posix" or not self.running:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL if timeout == 0 else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def _job_dirs(workspace: str | Path) -> list[Path]:
    jobs = Path(workspace) / "jobs"
    if not jobs.is_dir():
        return []
    return sorted((d for d in jobs.iterdir() if (d / EVENTS_FILE).is_file()), key=lambda d: d.name)


def running_jobs(workspace: str | Path) -> list[AttachedJob]:
    """Jobs of this workspace whose process still runs and that have not said their last word."""
    found = []
    for d in _job_dirs(workspace):
        events, _ = _read_events(d / EVENTS_FILE)
        start = next((e for e in events if e.get("event") == "start"), None)
        if start is None or not isinstance(start.get("pid"), int):
            continue
        if any(e.get("event") in TERMINAL_EVENTS for e in events):
            continue
        if _pid_alive(start["pid"]):
            found.append(AttachedJob(d, str(start.get("kind", "")), start["pid"]))
    return found


def resumable_job(workspace: str | Path, kind: str) -> Path | None:
    """The folder of the latest ``kind`` job, if it was cancelled with a resumable state and nothing of that
    kind ran after it; else None."""
    for d in reversed(_job_dirs(workspace)):
        events, _ = _read_events(d / EVENTS_FILE)
        if not events or events[0].get("kind") != kind:
            continue
        last = events[-1]
        return d if last.get("event") == "cancelled" and last.get("resumable") else None
    return None


def describe_event(event: dict) -> Dict[str, Any]:
    """What a panel shows for one worker event: ``fraction`` (0..1 or None), ``text`` and ``quality``.

    ``text`` is the status line ("" when the event changes nothing), ``quality``
    the quality signals of a finished round: the new model's held-out Dice and the
    previous model's Dice on the volumes labeled since ("" when neither).
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
        parts = []
        if isinstance(dice, (int, float)):
            parts.append(f"Held-out Dice of the new model: {dice:.3f}")
        before, unseen = metrics.get("new_label_dice"), metrics.get("new_label_dice_per_case") or {}
        if isinstance(before, (int, float)):
            parts.append(f"The previous model's Dice on the {len(unseen)} volume(s) labeled since it was trained "
                         f"(before your corrections): {before:.3f}")
        quality = "\n".join(parts)
    elif kind == "warning":
        text = f"Warning: {event.get('message', '')}"
    elif kind == "error":
        text = f"Failed: {event.get('message', 'unknown error')}"
    elif kind == "cancelled":
        text = "Cancelled; it can be resumed: press the button again." if event.get("resumable") else \
            f"Stopped: {event.get('message', '')}"
    elif kind == "start":
        text = f"{event.get('kind', 'job')} started."
    return {"fraction": fraction, "text": text, "quality": quality}
