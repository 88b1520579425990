"""On-disk cache of teacher responses, so an interrupted run resumes without paying twice.

SQLite in WAL mode with ``synchronous=FULL``: every stored response is on disk when ``put``
returns, a ``kill -9`` loses at most the calls in flight, and several threads (or processes) can
share one file. Keys are a SHA-256 of the request payload -- messages, model and sampling
parameters -- never of credentials, and values are only the texts and token counts.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellduality.errors import TeacherError


@dataclass(frozen=True)
class CachedResponse:
    texts: list[str]
    prompt_tokens: int
    completion_tokens: int


def cache_key(payload: dict[str, Any]) -> str:
    """Stable key of a request payload (JSON with sorted keys, hashed)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResponseCache:
    """``key -> texts`` store backed by one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, texts TEXT NOT NULL, "
                "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, created REAL NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise TeacherError(f"Cannot open the teacher cache {self.path} ({exc}); pass a writable cache path.") from None
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedResponse | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT texts, prompt_tokens, completion_tokens FROM responses WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return CachedResponse(json.loads(row[0]), int(row[1]), int(row[2]))

    def put(self, key: str, texts: list[str], prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                (key, json.dumps(texts, ensure_ascii=False), int(prompt_tokens), int(completion_tokens), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
