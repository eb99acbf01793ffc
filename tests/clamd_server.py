"""A private, real clamd (Debian clamav-daemon) for tests, with a signature database the tests write.

No signature download is possible (or wanted) in tests: the database is one
`.ndb` body signature, `QPTest.Virus.Sig`, matching `SIGNATURE` anywhere in a
file; clamd reports it as `QPTest.Virus.Sig.UNOFFICIAL`. clamd listens on a unix
socket in its temporary directory and on 127.0.0.1:<free port>, runs in the
foreground as a child of the test, and starts in well under a second with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
CLAMSCAN = shutil.which("clamscan") or "/usr/bin/clamscan"
SIGNATURE = b"QPSMTPD-PY-VIRUS-TEST-SIGNATURE"
VIRUS_NAME = "QPTest.Virus.Sig.UNOFFICIAL"


def clamd_available() -> bool:
    return os.access(CLAMD, os.X_OK)


def write_database(directory: Path) -> Path:
    """A signature database directory holding the test signature only."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "test.ndb").write_text(f"QPTest.Virus.Sig:0:*:{SIGNATURE.hex()}\n")
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ClamdServer:
    """clamd with its own config, database, socket and port; `start()`, then `stop()`."""

    def __init__(self) -> None:
        # Short: unix socket paths are limited to about 100 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="clamd-"))
        self.base.chmod(0o755)
        self.socket_path = self.base / "clamd.sock"
        self.port = free_port()
        self.database = write_database(self.base / "db")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> ClamdServer:
        config = self.base / "clamd.conf"
        config.write_text(f"Foreground yes\nLocalSocket {self.socket_path}\nTCPSocket {self.port}\n"
                          f"TCPAddr 127.0.0.1\nDatabaseDirectory {self.database}\n"
                          f"LogFile {self.base / 'clamd.log'}\nStreamMaxLength 4M\n")
        self.process = subprocess.Popen([CLAMD, "-c", str(config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self._answers():
            assert self.process.poll() is None, f"clamd exited: {self.log()}"
            assert time.monotonic() < deadline, f"clamd did not start: {self.log()}"
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"zPING\0")
                return sock.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def log(self) -> str:
        path = self.base / "clamd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.base, ignore_errors=True)
