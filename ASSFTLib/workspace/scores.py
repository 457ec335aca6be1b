"""The score cache: per-case score records for one (model checksum, settings hash)."""
from __future__ import annotations

import json

from .records import now
from .schema import DatabaseMixin


class ScoresMixin(DatabaseMixin):
    """Cached per-case scores, so ranking again with the same model and settings costs nothing."""

    def put_scores(self, model_checksum: str, settings_hash: str, records: dict[str, dict]) -> None:
        """Cache per-case score records (JSON-serialisable dicts) for one model and settings."""
        stamp = now()
        with self._write() as c:
            c.executemany("INSERT OR REPLACE INTO scores(case_id, model_checksum, settings_hash, record, created_at) "
                          "VALUES (?,?,?,?,?)",
                          [(cid, model_checksum, settings_hash, json.dumps(rec), stamp) for cid, rec in records.items()])

    def get_scores(self, model_checksum: str, settings_hash: str) -> dict[str, dict]:
        rows = self._conn.execute("SELECT case_id, record FROM scores WHERE model_checksum = ? AND settings_hash = ?",
                                  (model_checksum, settings_hash)).fetchall()
        return {r["case_id"]: json.loads(r["record"]) for r in rows}

    def score_failures(self, model_checksum: str, settings_hash: str) -> dict[str, str]:
        """Cases the last scoring with this model and settings could not score, and why (retried next run)."""
        return {cid: rec["error"] for cid, rec in self.get_scores(model_checksum, settings_hash).items()
                if "error" in rec}
