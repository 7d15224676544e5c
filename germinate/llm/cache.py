"""On-disk response cache: a rerun or a resumed run pays nothing twice."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any


def cache_key(model: str, messages: list[dict], params: dict[str, Any], schema: dict | None) -> str:
    """Fingerprint of what determines the answer. Prompt template hashes live in the messages."""
    blob = json.dumps([model, messages, params, schema], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _switch_to_wal(db: sqlite3.Connection, wait_seconds: float = 10.0) -> None:
    """SQLite answers "database is locked" at once, without its busy timeout, to a process that
    switches a new file to WAL while another (a Ray shard's worker opening the same cache) does
    the same. The mode is stored in the file, so waiting until the first switch lands is enough."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class ResponseCache:
    """SQLite, written in batches: one transaction per FLUSH_EVERY answers or FLUSH_SECONDS
    (and at the end of every generate call) instead of one per answer, which cost a tenth
    of the throughput. A killed run loses at most the last second of answers."""

    FLUSH_EVERY = 256
    FLUSH_SECONDS = 1.0

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL without a sync per commit: a crash may lose the last answers, never corrupt the file.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        _switch_to_wal(self._db)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}
        self._flushed_at = time.monotonic()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            value = self._pending.get(key)
            if value is None:
                row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
                value = row[0] if row else None
        return json.loads(value) if value is not None else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._pending[key] = json.dumps(value)
            if len(self._pending) >= self.FLUSH_EVERY or time.monotonic() - self._flushed_at > self.FLUSH_SECONDS:
                self._flush()

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            with self._db:  # one transaction
                self._db.executemany("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)",
                                     self._pending.items())
            self._pending.clear()
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self._flush()
            # Into the main file: a copied run directory carries its whole cache.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
