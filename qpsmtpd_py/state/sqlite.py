"""The SQLite backend of StateStore: one file, WAL mode, calls in a worker thread.

Each child gets its own one-thread pool, started on first use (so after fork,
never in the master), and that thread opens the child's own connection.
Statements run in autocommit mode, one statement per call, so every call is
atomic on its own; WAL lets readers go on while one child writes, and the busy
time-out makes a writer wait its turn instead of failing at once.
Expired entries are hidden from reads and deleted now and then.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from . import STORE_TIMEOUT, StoreError

_SCHEMA = ("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL)"
           " WITHOUT ROWID")
_LIVE = "(expires IS NULL OR expires > ?)"
_PURGE_EVERY = 1000  # writes between two deletions of expired rows


class SQLiteStore:
    """StateStore on `path`; every method returns a Deferred (see qpsmtpd_py.state)."""

    def __init__(self, path: Path, reactor: Any, clock: Callable[[], float] = time.time,
                 timeout: float = STORE_TIMEOUT) -> None:
        self.path = Path(path)
        self.description = str(self.path)
        self.reactor = reactor
        self.clock = clock
        self.timeout = timeout
        self._pool: ThreadPool | None = None
        self._local = threading.local()
        self._writes = 0

    # -- the interface ------------------------------------------------------------------
    def get(self, key: str) -> Deferred[str | None]:
        return self._run(self._get, key, self.clock())

    def set(self, key: str, value: str, ttl: float | None = None) -> Deferred[None]:
        return self._run(self._set, key, value, self._expires(ttl))

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> Deferred[int]:
        return self._run(self._incr, key, amount, self._expires(ttl), self.clock())

    def delete(self, key: str) -> Deferred[int]:
        return self._run(self._delete, key)

    def scan(self, prefix: str = "") -> Deferred[dict[str, str]]:
        return self._run(self._scan, prefix, self.clock())

    def close(self) -> Deferred[None]:
        if self._pool is None:
            return defer.succeed(None)
        pool, self._pool = self._pool, None
        done = threads.deferToThreadPool(self.reactor, pool, self._close_connection)
        done.addBoth(lambda result: (_stop(pool), result)[1])
        return done

    # -- plumbing -------------------------------------------------------------------------
    def _expires(self, ttl: float | None) -> float | None:
        return None if ttl is None else self.clock() + ttl

    def _run(self, function: Callable[..., Any], *args: Any) -> Deferred:
        if self._pool is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name=f"state {self.path.name}")
            self._pool.start()
            self.reactor.addSystemEventTrigger("during", "shutdown", _stop, self._pool)
        return threads.deferToThreadPool(self.reactor, self._pool, self._guarded, function, *args)

    def _guarded(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(self._connection(), *args)
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL keeps it consistent; a power cut may lose the last writes
            db.execute(_SCHEMA)
            db.execute("DELETE FROM state WHERE expires <= ?", (self.clock(),))
            self._local.db = db
        return db

    def _close_connection(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _wrote(self, db: sqlite3.Connection) -> None:
        self._writes += 1
        if self._writes % _PURGE_EVERY == 0:
            db.execute("DELETE FROM state WHERE expires <= ?", (self.clock(),))

    # -- in the worker thread ---------------------------------------------------------------
    @staticmethod
    def _get(db: sqlite3.Connection, key: str, now: float) -> str | None:
        row = db.execute(f"SELECT value FROM state WHERE key = ? AND {_LIVE}", (key, now)).fetchone()
        return None if row is None else str(row[0])

    def _set(self, db: sqlite3.Connection, key: str, value: str, expires: float | None) -> None:
        db.execute("INSERT INTO state (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
                   "SET value = excluded.value, expires = excluded.expires", (key, value, expires))
        self._wrote(db)

    def _incr(self, db: sqlite3.Connection, key: str, amount: int, expires: float | None, now: float) -> int:
        # One statement: atomic however many children count at once; an expired entry starts again.
        row = db.execute(
            "INSERT INTO state (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
            f"value = CASE WHEN {_LIVE} THEN CAST(value AS INTEGER) + ? ELSE ? END, expires = excluded.expires "
            "RETURNING value", (key, str(amount), expires, now, amount, str(amount))).fetchone()
        self._wrote(db)
        return int(row[0])

    @staticmethod
    def _delete(db: sqlite3.Connection, key: str) -> int:
        return db.execute("DELETE FROM state WHERE key = ?", (key,)).rowcount

    @staticmethod
    def _scan(db: sqlite3.Connection, prefix: str, now: float) -> dict[str, str]:
        rows = db.execute(f"SELECT key, value FROM state WHERE substr(key, 1, ?) = ? AND {_LIVE}",
                          (len(prefix), prefix, now))
        return {key: str(value) for key, value in rows}


def _stop(pool: ThreadPool) -> None:
    """Stop the worker thread once (close() and reactor shutdown may both ask)."""
    if not pool.joined:
        pool.stop()
