"""Rounds (score, train, pretrain jobs and their outcome) and pseudo-label QA decisions."""
from __future__ import annotations

import json
import os
import sqlite3

from ..errors import ASSFTError
from .records import Round, current_user, now
from .schema import DatabaseMixin


class RoundsMixin(DatabaseMixin):
    """The history of rounds, mended when a process died mid-round, and the QA decisions."""

    @staticmethod
    def _round(row: sqlite3.Row) -> Round:
        return Round(row["id"], row["kind"], row["status"], row["started_at"], row["finished_at"],
                     json.loads(row["params"]), json.loads(row["metrics"]), row["model_id"])

    def start_round(self, kind: str, params: dict | None = None) -> int:
        with self._write() as c:
            cur = c.execute("INSERT INTO rounds(kind, status, started_at, params, pid) VALUES (?, 'running', ?, ?, ?)",
                            (kind, now(), json.dumps(params or {}), os.getpid()))
            return int(cur.lastrowid)

    def finish_round(self, round_id: int, status: str = "finished", metrics: dict | None = None,
                     model_id: int | None = None) -> None:
        if status not in ("finished", "cancelled", "failed"):
            raise ValueError(f"unknown round status {status!r}")
        with self._write() as c:
            c.execute("UPDATE rounds SET status = ?, finished_at = ?, metrics = ?, model_id = ? WHERE id = ?",
                      (status, now(), json.dumps(metrics or {}), model_id, round_id))

    def reap_interrupted_rounds(self) -> list[int]:
        """Mark rounds left ``running`` by a process that no longer exists as ``failed``.

        A worker killed outright (kill -9, power loss) cannot record its end;
        its model was never registered, so only the round's history needs
        mending.  Returns the ids of the rounds marked.
        """
        rows = self._conn.execute("SELECT id, pid FROM rounds WHERE status = 'running'").fetchall()
        dead = [r["id"] for r in rows if r["pid"] is not None and not _process_alive(r["pid"])]
        for round_id in dead:
            self.finish_round(round_id, "failed", metrics={
                "error": "interrupted: the process running this round ended without finishing it",
                "hint": "start the round again; the previous model stayed current"})
        return dead

    def rounds(self, kind: str | None = None) -> list[Round]:
        rows = self._conn.execute("SELECT * FROM rounds WHERE ?1 IS NULL OR kind = ?1 ORDER BY id", (kind,)).fetchall()
        return [self._round(r) for r in rows]

    # ------------------------------------------------------------------- QA
    def set_qa(self, case_id: str, decision: str, model_checksum: str | None = None, user: str | None = None,
               note: str | None = None) -> None:
        if decision not in ("accepted", "rejected"):
            raise ASSFTError(f"unknown QA decision {decision!r}", hint="use accepted or rejected")
        self.case(case_id)
        with self._write() as c:
            c.execute("INSERT INTO qa(case_id, model_checksum, decision, user, note, at) VALUES (?,?,?,?,?,?)",
                      (case_id, model_checksum, decision, user or current_user(), note, now()))

    def qa_decisions(self) -> dict[str, str]:
        """The latest QA decision per case."""
        rows = self._conn.execute("SELECT case_id, decision FROM qa ORDER BY id").fetchall()
        return {r["case_id"]: r["decision"] for r in rows}


def _process_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours, or the platform cannot tell: assume alive
    return True
