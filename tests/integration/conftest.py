"""Start the real `qpsmtpd-py-prefork` on a free loopback port, per test."""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Self

import pytest
from harness import write_config
from server_process import free_port  # noqa: F401  (the tests import it from here)

DAEMON = Path(sys.executable).parent / "qpsmtpd-py-prefork"


def wait_for_port(port: int, process: subprocess.Popen | None, timeout: float = 10.0,
                  host: str = "127.0.0.1") -> None:
    """Wait for a greeting on `port`; `process` (None for a detached daemon) must stay alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2) as sock:
                # Once connected, wait for the greeting (a child is serving) rather than
                # retrying: each retry would be one more session for the children.
                sock.settimeout(max(0.2, deadline - time.monotonic()))
                sock.recv(512)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"daemon did not listen on {port} within {timeout}s")


class Daemon:
    """One daemon under test.

    `plugin_files` ({name: source}) are written into a test plugin dir listed in
    config/plugin_dirs; `extra_plugins` are config/plugins lines put before the
    default `rcpt_ok` and `queue/maildir` lines; `listen` replaces the default
    `--listen-address 127.0.0.1` (the first address is the one waited for).
    """

    def __init__(self, base: Path, files: dict, args: list[str], plugin_files: dict[str, str] | None = None,
                 extra_plugins: Iterable[str] = (), listen: Iterable[str] | None = None) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.maildir = base / "Maildir"
        self.spool_dir = base / "spool"
        files = dict(files)
        files.setdefault("me", "test.example.org")
        files.setdefault("spool_dir", str(self.spool_dir))
        files.setdefault("plugins", [*extra_plugins, "rcpt_ok", f"queue/maildir {self.maildir}"])
        if plugin_files:
            self.plugin_dir = write_plugins(base / "test-plugins", plugin_files)
            files.setdefault("plugin_dirs", str(self.plugin_dir))
        self.config_dir = write_config(base / "config", files)
        self.log_path = base / "daemon.log"
        self.listen = list(listen) if listen is not None else ["127.0.0.1"]
        listen_args = [arg for address in self.listen for arg in ("--listen-address", address)]
        first = self.listen[0]
        self.host = first[1:first.index("]")] if first.startswith("[") else first.split(":")[0]
        self.args = ["--config-dir", str(self.config_dir), *listen_args, "--port", str(self.port), *args]
        self.process: subprocess.Popen | None = None

    def start(self) -> Daemon:
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed by stop())
        self.process = subprocess.Popen([str(DAEMON), *self.args], stdout=self._log, stderr=self._log,
                                        cwd=self.base)
        wait_for_port(self.port, self.process, host=self.host)
        return self

    def connect(self, timeout: float = 10.0, host: str | None = None, port: int | None = None) -> RawClient:
        """A raw client on the daemon's (first) address; the greeting is not read yet."""
        return RawClient(host or self.host, port or self.port, timeout)

    def wait_exit(self, timeout: float) -> int | None:
        """The master's exit code, or None if it still runs after `timeout` seconds."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.iterdir()) if self.spool_dir.is_dir() else []

    def maildir_files(self, sub: str = "new") -> list[Path]:
        directory = self.maildir / sub
        return sorted(directory.iterdir()) if directory.is_dir() else []

    def signal(self, signo: int) -> None:
        assert self.process is not None
        self.process.send_signal(signo)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def messages(self) -> list[bytes]:
        new = self.maildir / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def children(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True,
                             check=False).stdout
        return [int(pid) for pid in out.split()]

    def live_children(self) -> list[int]:
        """Children that are running (not zombies waiting to be reaped)."""
        return [pid for pid in self.children() if process_state(pid) not in (None, "Z")]


def write_plugins(directory: Path, sources: dict[str, str]) -> Path:
    """Write test plugins ({name: Python source}) as <directory>/<name>.py."""
    for name, source in sources.items():
        path = directory / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return directory


def process_state(pid: int) -> str | None:
    """The state letter from /proc/<pid>/stat (R, S, Z, ...), None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()[0]


def proc_status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05,
               message: str = "condition") -> object:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s")
        time.sleep(interval)


class RawClient:
    """A blocking socket that reads SMTP replies with deadlines.

    Every read is bounded: `reply()` fails the test rather than hang. A reset
    by the peer counts as EOF, so data received before it is still returned.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.timeout = timeout
        self.buffer = bytearray()
        self.eof = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _fill(self, deadline: float) -> bool:
        """Read more into the buffer; False at EOF or when the deadline passed."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        readable, _, _ = select.select([self.sock], [], [], remaining)
        if not readable:
            return False
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def poll_reply(self, timeout: float) -> tuple[int, list[str]] | None:
        """The next complete reply if one arrives within `timeout`, else None."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        consumed = 0
        while True:
            end = self.buffer.find(b"\r\n", consumed)
            if end < 0:
                if not self._fill(deadline):
                    return None
                continue
            line = self.buffer[consumed:end].decode("utf-8", "replace")
            consumed = end + 2
            lines.append(line[4:])
            if len(line) < 4 or line[3] != "-":
                del self.buffer[:consumed]
                return int(line[:3]), lines

    def reply(self, timeout: float | None = None) -> tuple[int, list[str]]:
        """The next reply; fails if none arrives in time."""
        result = self.poll_reply(self.timeout if timeout is None else timeout)
        if result is None:
            raise AssertionError(f"no complete reply (eof={self.eof}, buffered={self.buffer[:200]!r})")
        return result

    def replies(self, count: int, timeout: float | None = None) -> list[tuple[int, list[str]]]:
        return [self.reply(timeout) for _ in range(count)]

    def codes(self, count: int, timeout: float | None = None) -> list[int]:
        return [code for code, _ in self.replies(count, timeout)]

    def command(self, line: bytes | str, timeout: float | None = None) -> tuple[int, list[str]]:
        data = line.encode() if isinstance(line, str) else line
        self.send(data + b"\r\n")
        return self.reply(timeout)

    def expect(self, code: int, line: bytes | str | None = None, timeout: float | None = None) -> list[str]:
        got, text = self.reply(timeout) if line is None else self.command(line, timeout)
        assert got == code, f"expected {code}, got {got} {text} after {line!r}"
        return text

    def wait_eof(self, timeout: float = 5.0) -> bytes:
        """Read until the server closes; returns what arrived meanwhile. Fails on timeout."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                raise AssertionError(f"connection still open after {timeout}s")
        rest = bytes(self.buffer)
        self.buffer.clear()
        return rest

    def is_closed(self, timeout: float = 0.0) -> bool:
        """True once the server closed (within `timeout`); unread data is kept."""
        deadline = time.monotonic() + timeout
        while not self.eof and self._fill(deadline):
            pass
        return self.eof

    def start_mail(self, sender: str = "a@example.com", recipient: str = "postmaster@test.example.org",
                   helo: str = "client.example.com") -> None:
        """Greeting, EHLO, MAIL, RCPT, DATA up to 354, one command at a time."""
        self.expect(220)
        self.expect(250, f"EHLO {helo}")
        self.expect(250, f"MAIL FROM:<{sender}>")
        self.expect(250, f"RCPT TO:<{recipient}>")
        self.expect(354, "DATA")


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator:
    started: list[Daemon] = []

    def make(files: dict | None = None, args: Iterable[str] = ("--children", "2"), start: bool = True,
             **options) -> Daemon:
        daemon = Daemon(tmp_path / f"d{len(started)}", files or {}, list(args), **options)
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in started:
        if daemon.process is not None:
            daemon.stop()  # also closes the log of a daemon that already exited
