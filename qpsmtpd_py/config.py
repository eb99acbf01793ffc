"""Reader for a qpsmtpd configuration directory.

Admins point qpsmtpd-py at the ``config/`` directory they already run Perl
qpsmtpd with, so this module reads it by qpsmtpd's rules:

* each setting is a file named after it, looked up per name in a list of
  directories (:func:`search_path`); the first directory that has the file
  wins, and the choice is remembered until :meth:`ConfigReader.clear` (HUP);
* one value per line, surrounding whitespace trimmed, blank lines and lines
  whose first non-blank character is ``#`` ignored, no inline comments;
* a line ``$include <path>`` splices in another file, or every regular
  non-dot file of a directory in sorted order;
* ``me`` (the host name) and ``timeout`` (1200) have built-in defaults.

Unlike qpsmtpd, which re-reads a file on every lookup, parsed files are cached
and their modification times re-checked at most once per ``recheck_interval``
seconds, so edits still apply without a restart.  Errors an admin must fix
(an ``$include`` loop or a missing ``$include`` target, an unreadable file)
raise :class:`ConfigError` naming the file, the line and the fix.

The ``config`` and ``user_config`` plugin hooks, which may answer before any
file is read, are run by the caller, not here.
"""

from __future__ import annotations

import os
import re
import socket
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cdb import CDB, MalformedCDB

__all__ = ["DEFAULTS", "ConfigError", "ConfigReader", "search_path"]

DEFAULTS: Mapping[str, str] = types.MappingProxyType(
    {"me": socket.gethostname(), "timeout": "1200"}
)
"""Values used when a setting's file is absent or holds no value."""

# Perl's \s on bytes: the ASCII whitespace only.
_WHITESPACE = " \t\n\r\f\v"
_INCLUDE = re.compile(r"\$include\s+(\S+)", re.ASCII)
_EMPTY_MAP: Mapping[bytes, bytes] = types.MappingProxyType({})
_READABLE = "make it readable by the user the daemon runs as"

# What identifies a file's version: an in-place edit changes the times and
# usually the size, a replace-by-rename changes the inode.
_Signature = tuple[int, int, int, int, int]


class ConfigError(Exception):
    """A configuration problem the admin must fix.

    ``str()`` reads ``<path>:<line>: <message> (<fix>)``; the line part is left
    out when *line* is None and the parenthesis when *fix* is None.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        line: int | None,
        message: str,
        fix: str | None = None,
    ) -> None:
        super().__init__(path, line, message, fix)
        self.path = Path(path)
        self.line = line
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        where = str(self.path) if self.line is None else f"{self.path}:{self.line}"
        text = f"{where}: {self.message}"
        return text if self.fix is None else f"{text} ({self.fix})"


def search_path(
    config_dir: str | None = None,
    environ: Mapping[str, str] = os.environ,
    install_config_dir: Path | None = None,
) -> list[Path]:
    """The directories a setting's file is looked for in, best first.

    ``$QPSMTPD_CONFIG`` if set and not empty; then *config_dir* (the
    ``--config-dir`` option), or failing that *install_config_dir*; then
    ``$QMAIL/control`` (``$QMAIL`` defaults to ``/var/qmail``), which is also
    the directory used for files found nowhere.  ``--config-dir`` takes the
    place qpsmtpd gives to the ``config`` directory beside its program.
    """
    dirs = []
    if environ.get("QPSMTPD_CONFIG"):
        dirs.append(Path(environ["QPSMTPD_CONFIG"]))
    if config_dir is not None:
        dirs.append(Path(config_dir))
    elif install_config_dir is not None:
        dirs.append(install_config_dir)
    dirs.append(Path(environ.get("QMAIL") or "/var/qmail") / "control")
    return dirs


def _signature(path: Path) -> _Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)


@dataclass(slots=True)
class _Entry:
    value: Any  # tuple[str, ...] for settings, Mapping[bytes, bytes] for maps
    sources: tuple[tuple[Path, _Signature | None], ...]
    checked_at: float


class ConfigReader:
    """Reads settings from *search_dirs* (see :func:`search_path`) with a cache.

    *clock* returns seconds and exists so tests can move time by hand.
    """

    def __init__(
        self,
        search_dirs: list[Path],
        recheck_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not search_dirs:
            raise ValueError("search_dirs must name at least one directory")
        self.search_dirs = [Path(d) for d in search_dirs]
        self.recheck_interval = recheck_interval
        self._clock = clock
        self._dirs: dict[str, Path] = {}
        self._values: dict[str, _Entry] = {}
        self._maps: dict[str, _Entry] = {}

    def clear(self) -> None:
        """Forget every cached value and directory choice (on HUP)."""
        self._dirs.clear()
        self._values.clear()
        self._maps.clear()

    def directory_for(self, name: str) -> Path:
        """The first search directory holding *name*, else the last one.

        Remembered until :meth:`clear`, like qpsmtpd: a file created later in
        a better directory is only noticed after a HUP.
        """
        try:
            return self._dirs[name]
        except KeyError:
            pass
        # os.path.exists, like Perl's -e, says False where access is denied
        # instead of raising as Path.exists does.
        found = next(
            (d for d in self.search_dirs if os.path.exists(d / name)),
            self.search_dirs[-1],
        )
        self._dirs[name] = found
        return found

    def path_for(self, name: str) -> Path | None:
        """The file *name* is read from, or None if it does not exist."""
        path = self.directory_for(name) / name
        return path if os.path.exists(path) else None

    def get(self, name: str) -> tuple[str, ...]:
        """Every value of setting *name*, in file order.

        A tuple, shared with the cache and so immutable.  When the file is
        absent or holds no value: the built-in default as the only element if
        there is one, else empty.
        """
        entry = self._values.get(name)
        if entry is None or not self._fresh(entry):
            entry = self._load_values(name)
            self._values[name] = entry
        return entry.value

    def first(self, name: str, default: str | None = None) -> str | None:
        """The first value of setting *name*, or *default* if it has none."""
        values = self.get(name)
        return values[0] if values else default

    def map(self, name: str) -> Mapping[bytes, bytes]:
        """The compiled map ``<name>.cdb`` (qpsmtpd's ``config(name, 'map')``).

        Looked up as the setting ``<name>.cdb``; an empty mapping if absent.
        A malformed file raises :class:`ConfigError`.
        """
        entry = self._maps.get(name)
        if entry is None or not self._fresh(entry):
            entry = self._load_map(name)
            self._maps[name] = entry
        return entry.value

    def _fresh(self, entry: _Entry) -> bool:
        now = self._clock()
        if now - entry.checked_at < self.recheck_interval:
            return True
        if any(_signature(path) != sig for path, sig in entry.sources):
            return False
        entry.checked_at = now
        return True

    def _load_values(self, name: str) -> _Entry:
        checked_at = self._clock()
        path = self.directory_for(name) / name
        sources: list[tuple[Path, _Signature | None]] = []
        if os.path.exists(path):
            values = self._read(path, sources, ((os.path.realpath(path), path),))
        else:
            sources.append((path, None))  # so that a file created later is seen
            values = []
        if not values and name in DEFAULTS:
            values = [DEFAULTS[name]]
        return _Entry(tuple(values), tuple(sources), checked_at)

    def _load_map(self, name: str) -> _Entry:
        checked_at = self._clock()
        filename = name + ".cdb"
        path = self.directory_for(filename) / filename
        signature = _signature(path)
        mapping: Mapping[bytes, bytes] = _EMPTY_MAP
        if signature is not None:
            try:
                mapping = CDB(path)
            except MalformedCDB as exc:
                raise ConfigError(
                    path,
                    None,
                    f"not a valid cdb file: {exc.reason}",
                    f"rebuild {filename}",
                ) from exc
            except OSError as exc:
                raise ConfigError(
                    path, None, f"cannot read: {exc.strerror}", _READABLE
                ) from exc
        return _Entry(mapping, ((path, signature),), checked_at)

    def _read(
        self,
        path: Path,
        sources: list[tuple[Path, _Signature | None]],
        chain: tuple[tuple[str, Path], ...],
    ) -> list[str]:
        """The values of *path*, includes expanded.

        *chain* lists the files and directories whose includes are being
        expanded, outermost first and ending with *path*, to catch loops.
        """
        # Taken before reading, so an edit racing with the read is seen later.
        sources.append((path, _signature(path)))
        try:
            data = path.read_bytes()
        except IsADirectoryError:
            # qpsmtpd reads nothing from a setting that is a directory.
            return []
        except OSError as exc:
            raise ConfigError(
                path, None, f"cannot read: {exc.strerror}", _READABLE
            ) from exc
        values: list[str] = []
        # Bytes that are not UTF-8 pass through unchanged (surrogateescape), as
        # qpsmtpd passes bytes; a Latin-1 comment must not stop the daemon.
        text = data.decode("utf-8", "surrogateescape")
        for number, line in enumerate(text.split("\n"), 1):
            line = line.strip(_WHITESPACE)
            if not line or line.startswith("#"):
                continue
            include = _INCLUDE.fullmatch(line)
            if include is None:
                values.append(line)
            else:
                values.extend(self._include(include[1], sources, chain, (path, number)))
        return values

    def _include(
        self,
        target: str,
        sources: list[tuple[Path, _Signature | None]],
        chain: tuple[tuple[str, Path], ...],
        included_at: tuple[Path, int],
    ) -> list[str]:
        # Relative targets are looked up like a setting of that name, not
        # beside the including file: qpsmtpd's rule.
        path = (
            Path(target)
            if target.startswith("/")
            else self.directory_for(target) / target
        )
        if os.path.isdir(path):
            chain = _enter(chain, path, included_at)
            sources.append((path, _signature(path)))  # files added or removed
            try:
                entries = sorted(os.listdir(path))
            except OSError as exc:
                raise ConfigError(
                    *included_at,
                    f"$include {target}: cannot list {path}: {exc.strerror}",
                    _READABLE,
                ) from exc
            values: list[str] = []
            for entry in entries:
                member = path / entry
                if not entry.startswith(".") and os.path.isfile(member):
                    values.extend(
                        self._read(member, sources, _enter(chain, member, included_at))
                    )
            return values
        if not os.path.exists(path):
            raise ConfigError(
                *included_at,
                f"$include {target}: {path} does not exist",
                "create it or remove the $include line",
            )
        return self._read(path, sources, _enter(chain, path, included_at))


def _enter(
    chain: tuple[tuple[str, Path], ...], path: Path, included_at: tuple[Path, int]
) -> tuple[tuple[str, Path], ...]:
    """*chain* with *path* appended; ConfigError if *path* is already in it.

    Only the includes being expanded count, so one file included twice side
    by side is fine, where qpsmtpd called that a loop too.
    """
    key = os.path.realpath(path)
    for start, (seen, _) in enumerate(chain):
        if seen == key:
            cycle = " -> ".join(str(p) for _, p in chain[start:])
            raise ConfigError(
                *included_at,
                f"circular $include: {cycle} -> {path}",
                "remove one of the $include lines in this loop",
            )
    return (*chain, (key, path))
