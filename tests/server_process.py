"""Real servers the tests run as child processes: the pieces every such fixture needs.

A fixture makes a private directory (`private_directory`), picks a loopback
port (`free_port`), starts the server with `subprocess.Popen`, waits until it
answers (`wait_until_ready`, with a readiness check such as `accepts` or
`greets`) and stops it afterwards (`stop_process`). A server that exits or
does not answer in time fails the test with the tail of its log.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

LOG_TAIL = 2000  # characters of a server's log shown when it does not start


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def private_directory(prefix: str, mode: int | None = None) -> Path:
    """A new temporary directory for one server's config, data, log and sockets.

    Not under pytest's tmp_path: unix socket paths are limited to about 100
    bytes, and servers that drop privileges need `mode` (e.g. 0o755) to reach it.
    """
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    if mode is not None:
        directory.chmod(mode)
    return directory


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts a TCP connection on `port`."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def greets(port: int, expect: bytes, send: bytes = b"", host: str = "127.0.0.1") -> bool:
    """The server on `port` answers (after `send`, when given) with a line starting with `expect`."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            if send:
                sock.sendall(send)
            return sock.recv(100).startswith(expect)
    except OSError:
        return False


def read_log(path: Path) -> str:
    """A server's log file, or "" before it writes one."""
    return path.read_text(errors="replace") if path.exists() else ""


def wait_until_ready(process: subprocess.Popen, ready: Callable[[], bool], name: str, timeout: float = 10.0,
                     log: Callable[[], str] = lambda: "", interval: float = 0.05) -> None:
    """Poll `ready()` until it is true; if `process` exits or `timeout` passes, stop it and raise with its log."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            problem = f"{name} exited with {process.returncode}"
        elif time.monotonic() > deadline:
            problem = f"{name} did not start within {timeout}s"
        else:
            time.sleep(interval)
            continue
        stop_process(process)
        raise RuntimeError(f"{problem}:\n{log()[-LOG_TAIL:]}")


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the server has not exited after `timeout` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
