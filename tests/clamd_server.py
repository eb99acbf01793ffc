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
import subprocess
from pathlib import Path

from server_process import free_port, greets, private_directory, read_log, stop_process, wait_until_ready

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


class ClamdServer:
    """clamd with its own config, database, socket and port; `start()`, then `stop()`."""

    def __init__(self) -> None:
        self.base = private_directory("clamd-", 0o755)
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
        wait_until_ready(self.process, lambda: greets(self.port, b"PONG", send=b"zPING\0"), "clamd", timeout,
                         self.log)
        return self

    def log(self) -> str:
        return read_log(self.base / "clamd.log")

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.base, ignore_errors=True)
