"""What the virus/* plugins share: scan limits, running a scanner, and the verdict.

`ScannerPlugin` is their base class. Every scan of a message runs inside
`limited_scan()`: at most `max_scans` scans at once per child (more wait for a
free slot), and the wait plus the scan together end after `timeout` seconds
with a `ScanError` (a scanner program still running is killed). What a
plugin does with a `ScanError` is `scan_failed()`: 451 with the reason when
`defer_on_error` is set, else a logged warning and the message passes.

Scanners that read a file get one from `message_file()`: header, blank line
and body copied from the spool in a worker thread (the body is never read into
memory whole, and a large copy does not hold up the reactor), readable by the
scanner's user when the spool dir is group or world accessible (qpsmtpd's rule).
Scanner programs run through spawn.py without a shell (`run_program()`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads

from .constants import DECLINED, DENY, DENYSOFT, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN
from .plugin import Plugin, PluginError
from .spawn import ProgramProcess

_MULTIPART = re.compile(r'\bmultipart/.*\bboundary="?([^"]+)', re.IGNORECASE)
_SAFE_PATH = re.compile(r"^/[-/_.A-Za-z0-9]*$")
_COPY_CHUNK = 1 << 16
OUTPUT_LIMIT = 65536

# The arguments every scanner plugin takes besides its own.
LIMIT_ARGUMENTS = ("timeout", "max_scans", "defer_on_error")


class ScanError(Exception):
    """The scan did not give a verdict: the scanner is down, slow, or failed (message says which)."""


def is_yes(value: str | None, default: bool) -> bool:
    """qpsmtpd's boolean arguments: `yes`/`no`, `1`/`0`; unset is the default."""
    if value is None or value == "":
        return default
    return value.lower() not in ("no", "0", "off", "false")


def is_multipart(header: Any) -> bool:
    """The message has a multipart Content-Type with a boundary: it may carry attachments."""
    content_type = header.get("Content-Type") if header is not None else None
    if not content_type:
        return False
    return bool(_MULTIPART.search(re.sub(r"\s", " ", content_type)))


def program_path(name: str, value: str) -> str:
    """An absolute path of safe characters (qpsmtpd's untainting rule) or PluginError."""
    if not _SAFE_PATH.match(value):
        raise PluginError(f"{name} must be an absolute path of -/_.A-Za-z0-9 characters, not {value!r}")
    return value


def size_argument(name: str, value: str | None, default: int) -> int:
    """A positive whole number (of kilobytes or bytes, the plugin says which)."""
    if value is None:
        return default
    if not value.isdigit() or int(value) == 0:
        raise PluginError(f"{name} must be a whole number above 0, not {value!r}")
    return int(value)


class ScannerProcess(ProgramProcess):
    """One run of a scanner program on a file: nothing on its input; fires `(status, output)`."""

    output_limit = OUTPUT_LIMIT

    def connectionMade(self):
        self.transport.closeStdin()

    def outcome(self, status):
        return status, self.output.decode("utf-8", "replace")


class ScannerPlugin(Plugin):
    """Base of the virus/* plugins: `setup_limits()` in register(), then `limited_scan()` in the hook."""

    default_timeout = 60.0
    default_max_scans = 4

    def key_value_arguments(self, args: tuple[str, ...], known: tuple[str, ...]) -> dict[str, str]:
        """The `key value` arguments (qpsmtpd's style for these plugins); unknown keys are warned about."""
        if len(args) % 2:
            raise PluginError(f"arguments must be key value pairs ({' '.join(known)}), not {' '.join(args)!r}")
        self.warn_unknown_arguments((*known, *LIMIT_ARGUMENTS, "loglevel"))
        return self.args

    def setup_limits(self, values: dict[str, str], defer_default: bool = False) -> None:
        """Read timeout, max_scans and defer_on_error from the plugin's parsed arguments."""
        try:
            self.timeout = float(values.get("timeout") or self.default_timeout)
        except ValueError:
            raise PluginError(f"timeout must be a number of seconds, not {values.get('timeout')!r}") from None
        if self.timeout <= 0:
            raise PluginError(f"timeout must be more than 0 seconds, not {values.get('timeout')!r}")
        self.max_scans = size_argument("max_scans", values.get("max_scans"), self.default_max_scans)
        self.defer_on_error = is_yes(values.get("defer_on_error"), defer_default)
        self._slots = defer.DeferredSemaphore(self.max_scans)

    def clock(self) -> Any:
        if self.reactor is None:
            from twisted.internet import reactor

            return reactor
        return self.reactor

    async def limited_scan(self, scan: Callable[[], Awaitable[Any]]) -> Any:
        """`await scan()` in a free slot, within `timeout` seconds; raises ScanError."""

        async def in_slot():
            await self._slots.acquire()
            try:
                return await scan()
            finally:
                self._slots.release()

        work = defer.ensureDeferred(in_slot())
        work.addTimeout(self.timeout, self.clock())
        try:
            return await work
        except defer.TimeoutError:
            raise ScanError(f"no verdict within {self.timeout:g}s") from None

    def scan_failed(self, reason: str) -> int | tuple[int, str]:
        """The hook's answer when the scan gave no verdict."""
        reason = " ".join(reason.split())  # scanner output: one reply line
        if self.defer_on_error:
            self.log(LOGERROR, f"scan failed, deferring: {reason}")
            return DENYSOFT, f"Unable to scan for viruses ({reason}), try again later"
        self.log(LOGWARN, f"scan failed, message passes unscanned: {reason}")
        return DECLINED

    def too_big(self, transaction: Any, max_bytes: int) -> bool:
        """The message is over `max_bytes` and is not scanned (logged)."""
        if transaction.data_size > max_bytes:
            self.log(LOGINFO, f"skip, too big to scan ({transaction.data_size} > {max_bytes} bytes)")
            return True
        return False

    def not_to_scan(self, transaction: Any, max_bytes: int, multipart_only: bool = True,
                    level: int = LOGINFO) -> bool:
        """The message is too big or (with `multipart_only`) carries no attachments: logged, not scanned."""
        if self.too_big(transaction, max_bytes):
            return True
        if multipart_only and not is_multipart(transaction.header):
            self.log(level, "skip, not multipart")
            return True
        return False

    def virus_answer(self, transaction: Any, details: str, deny: bool, message: str,
                     at_top: bool = False) -> int | tuple[int, str]:
        """The hook's answer for a virus: noted for later plugins, then DENY `message`, or the X-Virus headers."""
        note_virus(transaction, details)
        if deny:
            return DENY, message
        add_virus_headers(transaction, details, at_top=at_top)
        return DECLINED

    async def message_file(self, transaction: Any) -> Path:
        """A temp file holding the whole message, removed with the transaction."""
        path = transaction.temp_file()
        mode = _scanner_mode(transaction.spool_dir)
        clock = self.clock()
        await threads.deferToThreadPool(clock, clock.getThreadPool(), _write_message, transaction, path, mode)
        return path

    async def run_program(self, transaction: Any, argv: list[str]) -> tuple[int | str, str]:
        """Run a scanner program (no shell): `(exit status or "killed by signal N", output)`."""
        self.log(LOGDEBUG, "running: " + " ".join(argv))
        process = ScannerProcess(self, transaction, self.clock())
        try:
            process.start(self.clock(), argv, {0: "w", 1: "r", 2: "r"})
        except OSError as exc:
            raise ScanError(f"cannot run {argv[0]}: {exc.strerror}") from None
        return await process.ended


def _scanner_mode(spool_dir: Path) -> int:
    # qpsmtpd's rule: a spool dir the scanner's group (or everybody) may enter
    # means the scanner runs as another user, who must be able to read the file.
    try:
        dir_mode = os.stat(spool_dir).st_mode
    except OSError:
        return 0o600
    return 0o600 | (0o040 if dir_mode & 0o010 else 0) | (0o004 if dir_mode & 0o001 else 0)


def _write_message(transaction: Any, path: Path, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # the umask must not take the scanner's read bit away
    with os.fdopen(fd, "wb") as out:
        out.write(transaction.header_bytes())
        out.write(b"\n")
        with transaction.body_file() as body:
            shutil.copyfileobj(body, out, _COPY_CHUNK)


def add_virus_headers(transaction: Any, details: str, prefix: str = "X-Virus", at_top: bool = True) -> None:
    """`<prefix>-Found: Yes` and `<prefix>-Details`, at the top or the end (as the qpsmtpd plugin did)."""
    index = 0 if at_top else None
    transaction.header.add(f"{prefix}-Found", "Yes", index)
    transaction.header.add(f"{prefix}-Details", details, index)


def note_virus(transaction: Any, details: str) -> None:
    """Tell later plugins (spamassassin, logging) what was found: notes `virus` and `virus_flag`."""
    transaction.notes["virus"] = details
    transaction.notes["virus_flag"] = "Yes"
