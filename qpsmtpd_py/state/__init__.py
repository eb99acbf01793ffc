"""Key/value state that outlives a session: the greylist, karma's history.

One small interface, `StateStore`, two backends:

* SQLite (`sqlite.py`), the default: one file per store, `<db_dir>/<name>.sqlite`,
  in WAL mode so every child can read and write at once. The calls run in a
  one-thread pool per child; the connection is opened in that thread, after fork.
* Redis (`redis.py`), for several MX hosts sharing one greylist and one karma
  history: a small Twisted client speaking RESP, keys prefixed `<name>:`.

Every method returns a Deferred and never blocks the reactor; every failure
(a locked file past its time-out, Redis down or silent) is a `StoreError`
with a message saying what went wrong, so plugins can turn it into a log
line and a lenient answer. Values are strings; a `ttl` (seconds) makes an
entry disappear that long after its last write.

Plugins get their store from `StoreSettings` (the `db_dir` and `redis`
arguments, checked in register()) and open it on first use in a child.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.defer import Deferred

REDIS_PORT = 6379
STORE_TIMEOUT = 5.0  # seconds a store call may take before it is a StoreError


class StoreError(Exception):
    """The store could not answer (locked, unreachable, timed out): the message says which and why."""


class StateStore(Protocol):
    """What greylisting, karma and karma_tool need; each method returns a Deferred."""

    description: str  # where the data lives, for log lines and karma_tool

    def get(self, key: str) -> Deferred[str | None]: ...
    def set(self, key: str, value: str, ttl: float | None = None) -> Deferred[None]: ...
    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> Deferred[int]: ...
    def delete(self, key: str) -> Deferred[int]: ...
    def scan(self, prefix: str = "") -> Deferred[dict[str, str]]: ...
    def close(self) -> Deferred[None]: ...


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int = REDIS_PORT
    db: int = 0

    def __str__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


_REDIS_URL = re.compile(r"^(?:redis://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\s\[\]]+)(?::(?P<port>\d+))?"
                        r"(?:/(?P<db>\d*))?$")


def parse_redis_address(text: str) -> RedisAddress:
    """qpsmtpd's `host[:port]`, or `redis://host[:port][/db]`; ValueError says what is wrong."""
    match = _REDIS_URL.match(text.strip())
    if not match:
        raise ValueError(f"redis must be host[:port] or redis://host[:port][/db], not {text!r}")
    port = int(match["port"] or REDIS_PORT)
    if not 0 < port < 65536:
        raise ValueError(f"redis port must be 1-65535, not {port}")
    return RedisAddress(match["host"].strip("[]"), port, int(match["db"] or 0))


def default_db_dir(spool_dir: Path) -> Path:
    """Where stores live without `db_dir`: `var/db` beside the spool dir (qpsmtpd used <bindir>/var/db)."""
    return spool_dir.parent / "var" / "db"


@dataclass(frozen=True)
class StoreSettings:
    """One plugin's choice of store, checked at load; `open()` in a child makes the store."""

    name: str
    db_dir: Path | None = None
    redis: RedisAddress | None = None
    timeout: float = STORE_TIMEOUT

    @classmethod
    def from_args(cls, name: str, args: dict[str, str], spool_dir: Path) -> StoreSettings:
        """From a plugin's `db_dir` / `redis` arguments; ValueError says what to fix."""
        if args.get("redis"):
            return cls(name, redis=parse_redis_address(args["redis"]))
        directory = Path(args["db_dir"]).expanduser() if args.get("db_dir") else default_db_dir(spool_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create db_dir {directory}: {exc.strerror}; "
                             "create it, writable by the daemon's user, or give db_dir") from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ValueError(f"db_dir {directory} is not writable; chown it to the daemon's user")
        return cls(name, db_dir=directory.resolve())

    @property
    def description(self) -> str:
        return f"{self.redis} (keys {self.name}:*)" if self.redis else str(self.sqlite_path)

    @property
    def sqlite_path(self) -> Path:
        assert self.db_dir is not None
        return self.db_dir / f"{self.name}.sqlite"

    def open(self, reactor: Any, clock: Callable[[], float] = time.time) -> StateStore:
        """The store; connects lazily, so this may run anywhere after fork."""
        if self.redis is not None:
            from .redis import RedisStore

            return RedisStore(self.name, self.redis, reactor, timeout=self.timeout)
        from .sqlite import SQLiteStore

        return SQLiteStore(self.sqlite_path, reactor, clock=clock, timeout=self.timeout)
