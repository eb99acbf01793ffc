"""A private, real rspamd (Debian package `rspamd`) for tests.

Its own config, databases, log and sockets live in a temporary directory:
the normal worker (HTTP `checkv2`) on 127.0.0.1:<free port> and a unix
socket, and the rspamd_proxy worker in milter mode (passing each message to
that normal worker, as Debian's default config does) on 127.0.0.1:<another
free port>. No redis: the modules that would
want it stay off without its config. No network: the fuzzy and RBL modules
are off, and DNS goes to a loopback port where nothing answers, so every
lookup fails at once. Started as a child of the test; it takes several
seconds (it compiles its TLD list and regexps), so test modules share one.
GTUBE gets the `reject` action with the SMTP message `Gtube pattern`.
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

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def rspamd_available() -> bool:
    return os.access(RSPAMD, os.X_OK) and Path("/etc/rspamd/common.conf").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RspamdServer:
    """rspamd with its own config and ports; `start()`, then `stop()`."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="rspamd-"))  # short: unix socket paths are limited
        self.base.chmod(0o777)  # rspamd's workers run as nobody when the tests run as root
        self.port = free_port()
        self.milter_port = free_port()
        self.socket_path = self.base / "normal.sock"
        self.process: subprocess.Popen | None = None

    def _write_config(self) -> Path:
        local = self.base / "local" / "local.d"
        local.mkdir(parents=True)
        for module in ("fuzzy_check", "rbl", "asn", "emails", "replies", "neural", "ratelimit", "greylist"):
            (local / f"{module}.conf").write_text("enabled = false;\n")
        for name in ("db", "run"):
            (self.base / name).mkdir()
            (self.base / name).chmod(0o777)
        config = self.base / "rspamd.conf"
        config.write_text(f"""
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    dns {{
        nameserver = ["127.0.0.1:{free_port()}"];
        timeout = 0.2s;
        retransmits = 1;
    }}
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}}
worker "normal" {{
    bind_socket = "127.0.0.1:{self.port}";
    bind_socket = "{self.socket_path} mode=0666";
    .include "$CONFDIR/worker-normal.inc"
    count = 1;
}}
worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{self.milter_port}";
    milter = yes;
    timeout = 120s;
    count = 1;
    upstream "local" {{
        default = yes;
        hosts = "127.0.0.1:{self.port}";
    }}
}}
""")
        return config

    def start(self, timeout: float = 60.0) -> RspamdServer:
        config = self._write_config()
        user = ["-u", "nobody", "-g", "nogroup"] if os.geteuid() == 0 else []
        variables = [arg for name, value in (("LOCAL_CONFDIR", self.base / "local"), ("DBDIR", self.base / "db"),
                                             ("RUNDIR", self.base / "run"), ("LOGDIR", self.base))
                     for arg in ("--var", f"{name}={value}")]
        self.process = subprocess.Popen([RSPAMD, "-f", "-c", str(config), *user, *variables],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not (self._listening(self.port) and self._listening(self.milter_port) and self.socket_path.exists()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.stop()
                raise AssertionError(f"rspamd did not start:\n{log[-3000:]}")
            time.sleep(0.1)
        return self

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        path = self.base / "rspamd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.base, ignore_errors=True)
