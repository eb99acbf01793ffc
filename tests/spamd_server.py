"""A private, real spamd (Debian's spamd package, SpamAssassin's daemon) for tests.

It runs in the foreground as a child of the test, with its own site config in
a temporary directory (a `.pre` loading only the Check plugin, no Bayes, no
network tests: `--local`), on 127.0.0.1:<free port> and a unix socket in that
directory, and starts in about half a second. The rules are the package's
(/usr/share/spamassassin); GTUBE, SpamAssassin's test string, scores 1000.
As root it runs as `nobody`.
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

SPAMD = shutil.which("spamd") or "/usr/sbin/spamd"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def spamd_available() -> bool:
    return os.access(SPAMD, os.X_OK)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SpamdServer:
    """spamd with its own config, socket and port: `start()`, then `stop()`."""

    def __init__(self) -> None:
        # Short: unix socket paths are limited to about 100 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="spamd-"))
        self.base.chmod(0o755)  # spamd's children run as nobody
        self.socket_path = self.base / "spamd.sock"
        self.port = free_port()
        self.log_path = self.base / "spamd.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> SpamdServer:
        site = self.base / "site"
        site.mkdir()
        (site / "init.pre").write_text("loadplugin Mail::SpamAssassin::Plugin::Check\n")
        (site / "local.cf").write_text("use_bayes 0\nbayes_auto_learn 0\n")
        home = self.base / "home"
        home.mkdir(mode=0o777)
        command = [SPAMD, "--listen", f"127.0.0.1:{self.port}", "--listen", str(self.socket_path),
                   "--socketmode", "0666", "--pidfile", str(self.base / "spamd.pid"),
                   "--siteconfigpath", str(site), "--helper-home-dir", str(home),
                   "--nouser-config", "--local", "--max-children", "2", "--min-children", "1",
                   "--syslog", "stderr"]
        if os.geteuid() == 0:
            command += ["--username", "nobody"]
        log = open(self.log_path, "ab")  # noqa: SIM115  (the process keeps it)
        self.process = subprocess.Popen(command, stdout=log, stderr=log, cwd=self.base)
        log.close()
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"spamd exited with {self.process.returncode}: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"spamd did not start within {timeout}s: {self.log()[-2000:]}")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # spamd stops its children too
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.base, ignore_errors=True)
