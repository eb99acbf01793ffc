"""Reader and writer for D. J. Bernstein's constant database (cdb) format.

qmail compiles its long lists into cdb files (``qmail-newmrh`` builds
``morercpthosts.cdb``; ``cdbmake`` builds ``morerelayclients.cdb``), and
qpsmtpd's ``config(name, 'map')`` looks keys up in them.  The files are small,
so the reader keeps the whole file in memory and answers lookups through the
file's own hash tables, exactly as qmail does.

Layout: a 2048-byte header of 256 ``(position, slot count)`` pairs, then the
records (``key length, data length, key, data``), then the 256 hash tables of
``(hash, record position)`` slots.  All numbers are little-endian 32-bit.  A key
may occur more than once; :meth:`CDB.get` returns the first value and
:meth:`CDB.get_all` every value, in file order.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import NoReturn

__all__ = ["CDB", "MalformedCDB", "cdb_hash", "write_cdb"]

_HEADER_SIZE = 2048
_PAIR = struct.Struct("<II")
_MAX = 0xFFFFFFFF


class MalformedCDB(ValueError):
    """A file that is not a valid cdb; ``str()`` names the file and the flaw."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: not a valid cdb file: {reason}")
        self.path = path
        self.reason = reason


def cdb_hash(key: bytes) -> int:
    """The cdb hash of *key*: ``h = ((h << 5) + h) ^ c`` from 5381, 32-bit."""
    h = 5381
    for c in key:
        h = (((h << 5) + h) ^ c) & _MAX
    return h


class CDB(Mapping[bytes, bytes]):
    """A read-only mapping over a cdb file; a malformed one raises MalformedCDB.

    The whole file is checked when it is opened, so a broken map is reported
    at start-up rather than on the first lookup.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._data = data = self.path.read_bytes()
        if len(data) < _HEADER_SIZE:
            self._malformed(f"{len(data)} bytes, shorter than the 2048-byte header")
        self._tables = [_PAIR.unpack_from(data, i * 8) for i in range(256)]
        for position, slots in self._tables:
            if slots and (position < _HEADER_SIZE or position + slots * 8 > len(data)):
                self._malformed("hash table outside the file")
        # cdbmake writes the tables straight after the records, so the lowest
        # table position is where the records end.
        records_end = min(position for position, _ in self._tables)
        if not _HEADER_SIZE <= records_end <= len(data):
            self._malformed("header points outside the file")
        keys: dict[bytes, None] = {}
        pos = _HEADER_SIZE
        while pos < records_end:
            if pos + 8 > records_end:
                self._malformed(f"truncated record at byte {pos}")
            klen, dlen = _PAIR.unpack_from(data, pos)
            end = pos + 8 + klen + dlen
            if end > records_end:
                self._malformed(f"record at byte {pos} runs past the records")
            keys[data[pos + 8 : pos + 8 + klen]] = None
            pos = end
        self._keys = tuple(keys)

    def _malformed(self, why: str) -> NoReturn:
        raise MalformedCDB(self.path, why)

    def _values(self, key: bytes) -> Iterator[bytes]:
        if not isinstance(key, (bytes, bytearray, memoryview)):
            # A str key would silently never match; say so instead.
            raise TypeError(f"cdb keys are bytes, not {type(key).__name__}")
        data = self._data
        h = cdb_hash(key)
        position, slots = self._tables[h & 0xFF]
        if not slots:
            return
        slot = (h >> 8) % slots
        for _ in range(slots):
            slot_hash, record = _PAIR.unpack_from(data, position + slot * 8)
            if record == 0:  # an empty slot ends the probe sequence
                return
            if slot_hash == h:
                if record < _HEADER_SIZE or record + 8 > len(data):
                    self._malformed(f"hash slot points outside the records ({record})")
                klen, dlen = _PAIR.unpack_from(data, record)
                start = record + 8
                if start + klen + dlen > len(data):
                    self._malformed(f"record at byte {record} runs past the file")
                if data[start : start + klen] == key:
                    yield data[start + klen : start + klen + dlen]
            slot = (slot + 1) % slots

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        """The first value stored under *key*, or *default*."""
        return next(self._values(key), default)

    def get_all(self, key: bytes) -> list[bytes]:
        """Every value stored under *key*, in file order (empty if none)."""
        return list(self._values(key))

    def __getitem__(self, key: bytes) -> bytes:
        for value in self._values(key):
            return value
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return next(self._values(key), None) is not None  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[bytes]:
        """Distinct keys in file order."""
        return iter(self._keys)

    def __len__(self) -> int:
        """Number of distinct keys."""
        return len(self._keys)

    def __repr__(self) -> str:
        return f"CDB({str(self.path)!r})"


def write_cdb(
    path: str | os.PathLike[str], items: Iterable[tuple[bytes, bytes]]
) -> None:
    """Write *items* (key, value pairs, duplicates allowed) as a cdb file.

    The file is written beside *path* and renamed over it, so a daemon reading
    the map never sees a half-written file.
    """
    body = bytearray()
    buckets: list[list[tuple[int, int]]] = [[] for _ in range(256)]
    for key, value in items:
        h = cdb_hash(key)
        buckets[h & 0xFF].append((h, _HEADER_SIZE + len(body)))
        body += _PAIR.pack(len(key), len(value)) + key + value
    header = bytearray()
    tables = bytearray()
    for bucket in buckets:
        slots = 2 * len(bucket)  # half-full tables keep the probe sequences short
        header += _PAIR.pack(_HEADER_SIZE + len(body) + len(tables), slots)
        table = [(0, 0)] * slots
        for h, record in bucket:
            slot = (h >> 8) % slots
            while table[slot][1]:
                slot = (slot + 1) % slots
            table[slot] = (h, record)
        for pair in table:
            tables += _PAIR.pack(*pair)
    if _HEADER_SIZE + len(body) + len(tables) > _MAX:
        raise ValueError(f"{path}: cdb files are limited to 4 GiB")

    target = Path(path)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644  # the daemon usually runs as another user than the admin
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(header)
            out.write(body)
            out.write(tables)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
