"""The report's SQLite store (`results.db`, WAL): one row per input, committed the moment it is done.

Why SQLite: a commit is atomic and durable (WAL with `synchronous=FULL`), so a report killed at any
point (Ctrl-C, `kill -9`, power loss) keeps every image it committed and nothing half-done; `--resume`
reads the rows back. A row is written only after the image's output files exist under their final
names, so a committed row always points at complete files.

Rows are keyed by the input's absolute path. `sha256` and `settings_hash` decide whether a committed
result is still valid: a changed file, or a report made with other settings, is redone.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DB_NAME = "results.db"
SCHEMA_VERSION = 1

STATUS_DONE = "done"
STATUS_FAILED = "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inputs (
    path TEXT PRIMARY KEY,          -- absolute path of the input
    display_path TEXT NOT NULL,     -- the path as the user gave it (shown in the report)
    stem TEXT NOT NULL UNIQUE,      -- output file stem (safe characters only)
    size INTEGER,                   -- bytes; NULL when the file could not be read
    sha256 TEXT,                    -- content hash; NULL when the file could not be read
    settings_hash TEXT NOT NULL,
    status TEXT NOT NULL,           -- 'done' or 'failed'
    record TEXT,                    -- JSON record (DESIGN.md section 2) for 'done'
    files TEXT,                     -- JSON {role: path relative to the output folder}
    timings TEXT,                   -- JSON {stage: seconds}
    error TEXT,                     -- one line for 'failed'
    finished_at REAL NOT NULL,
    seq INTEGER NOT NULL            -- input order, for a stable report
);
"""


@dataclass
class Row:
    """One input as stored."""

    path: str
    display_path: str
    stem: str
    size: int | None = None
    sha256: str | None = None
    settings_hash: str = ""
    status: str = STATUS_FAILED
    record: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    finished_at: float = 0.0
    seq: int = 0

    @property
    def ok(self) -> bool:
        return self.status == STATUS_DONE


class StoreError(RuntimeError):
    """The store cannot be opened or written (a clear one-line message)."""


class ResultStore:
    """Thin wrapper over the SQLite file; use as a context manager."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / DB_NAME
        try:
            # shared by the loop and the writer thread; every use holds self.lock
            self.lock = threading.RLock()
            self.conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(_SCHEMA)
            if self.get_meta("schema_version") is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
        except sqlite3.Error as err:
            raise StoreError(f"cannot open the results store '{self.path}': {err}") from None

    # -- meta
    def get_meta(self, key: str) -> str | None:
        found = self._all("SELECT value FROM meta WHERE key = ?", (key,))
        return None if not found else str(found[0][0])

    def set_meta(self, key: str, value: str) -> None:
        try:
            self._all("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        except sqlite3.Error as err:
            raise StoreError(f"cannot write the results store '{self.path}': {err}") from None

    # -- rows
    def put(self, row: Row) -> None:
        """Insert or replace one row; committed (and synced) when this returns."""
        values = (
            row.path,
            row.display_path,
            row.stem,
            row.size,
            row.sha256,
            row.settings_hash,
            row.status,
            None if row.record is None else json.dumps(row.record),
            json.dumps(row.files),
            json.dumps(row.timings),
            row.error,
            row.finished_at or time.time(),
            row.seq,
        )
        try:
            self._all(
                "INSERT OR REPLACE INTO inputs (path, display_path, stem, size, sha256, settings_hash, status,"
                " record, files, timings, error, finished_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
        except sqlite3.Error as err:
            raise StoreError(f"cannot write the results store '{self.path}': {err}") from None

    def get(self, path: str) -> Row | None:
        found = self._all(f"SELECT {_COLUMNS} FROM inputs WHERE path = ?", (path,))
        return None if not found else _row(found[0])

    def stems(self) -> dict[str, str]:
        """path -> stem of every stored row (stems stay fixed across resumes)."""
        return {p: s for p, s in self._all("SELECT path, stem FROM inputs")}

    def rows(self) -> Iterator[Row]:
        """All rows in input order."""
        for found in self._all(f"SELECT {_COLUMNS} FROM inputs ORDER BY seq, path"):
            yield _row(found)

    def max_seq(self) -> int:
        found = self._all("SELECT MAX(seq) FROM inputs")
        return int(found[0][0]) if found and found[0][0] is not None else 0

    def count(self) -> int:
        return int(self._all("SELECT COUNT(*) FROM inputs")[0][0])

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_COLUMNS = "path, display_path, stem, size, sha256, settings_hash, status, record, files, timings, error, finished_at, seq"


def _row(v: tuple[Any, ...]) -> Row:
    return Row(
        path=v[0],
        display_path=v[1],
        stem=v[2],
        size=v[3],
        sha256=v[4],
        settings_hash=v[5],
        status=v[6],
        record=None if v[7] is None else json.loads(v[7]),
        files=json.loads(v[8]) if v[8] else {},
        timings=json.loads(v[9]) if v[9] else {},
        error=v[10],
        finished_at=float(v[11]),
        seq=int(v[12]),
    )
