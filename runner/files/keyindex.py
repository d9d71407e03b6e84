"""A map from text keys to pairs of integers that stays small in memory however many keys it
holds: the last `MEMORY_KEYS` written live in a dict, the rest in a SQLite file on disk (a
temporary file, deleted when closed). `runner export` keeps a result file's line offsets in one
(custom_id -> where its last line is) and `runner prepare` the ids it has seen (id -> its row),
so a table of ten million rows is handled in the memory of a few tens of thousands.

    put(key, a, b) ──► dict (recent keys) ──MEMORY_KEYS reached──► SQLite (INSERT OR REPLACE)
    get(key)       ──► dict, else SQLite once anything has spilled there

A later `put` of a key replaces its value (last wins); `setdefault` keeps the first.
"""
from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

__all__ = ["KeyIndex", "MEMORY_KEYS"]

MEMORY_KEYS = 50_000  # keys held in memory before they go to disk (~10 MB of short ids)
CACHE_KIB = 8_192     # SQLite's page cache, in KiB (its memory does not grow past this)


class KeyIndex:
    """key -> (a, b), spilled to a temporary SQLite file past `memory_keys` keys. Not thread-safe.
    Close it (or use ``with``) to delete the file."""

    def __init__(self, memory_keys: int = MEMORY_KEYS, directory: str | Path | None = None) -> None:
        if memory_keys < 1:
            raise ValueError("memory_keys must be at least 1")
        self.memory_keys = memory_keys
        self._directory = directory
        self._recent: dict[str, tuple[int, int]] = {}
        self._db: sqlite3.Connection | None = None
        self._path: str | None = None
        self.spilled = 0  # keys written to disk (with repeats)

    def _open(self) -> sqlite3.Connection:
        fd, self._path = tempfile.mkstemp(prefix="runner-keys-", suffix=".sqlite",
                                          dir=self._directory)
        os.close(fd)
        db = sqlite3.connect(self._path, isolation_level=None)
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        db.execute("CREATE TABLE keys (key TEXT PRIMARY KEY, a INTEGER, b INTEGER) WITHOUT ROWID")
        self._db = db
        return db

    def _spill(self) -> None:
        db = self._db or self._open()
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO keys VALUES (?, ?, ?)",
                       ((k, a, b) for k, (a, b) in self._recent.items()))
        db.execute("COMMIT")
        self.spilled += len(self._recent)
        self._recent.clear()

    def put(self, key: str, a: int, b: int = 0) -> None:
        """key -> (a, b), replacing any earlier value."""
        self._recent[key] = (a, b)
        if len(self._recent) >= self.memory_keys:
            self._spill()

    def get(self, key: str) -> tuple[int, int] | None:
        """The value of `key`, or None."""
        value = self._recent.get(key)
        if value is None and self._db is not None:
            row = self._db.execute("SELECT a, b FROM keys WHERE key = ?", (key,)).fetchone()
            value = None if row is None else (row[0], row[1])
        return value

    def setdefault(self, key: str, a: int, b: int = 0) -> tuple[int, int]:
        """The value of `key`; when it has none, (a, b), which it now has."""
        value = self.get(key)
        if value is None:
            self.put(key, a, b)
            value = (a, b)
        return value

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def close(self) -> None:
        self._recent.clear()
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._path is not None:
            Path(self._path).unlink(missing_ok=True)
            self._path = None

    def __enter__(self) -> KeyIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
