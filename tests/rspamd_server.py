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
import subprocess
from pathlib import Path

from server_process import accepts, free_port, private_directory, read_log, stop_process, wait_until_ready

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def rspamd_available() -> bool:
    return os.access(RSPAMD, os.X_OK) and Path("/etc/rspamd/common.conf").exists()


class RspamdServer:
    """rspamd with its own config and ports; `start()`, then `stop()`."""

    def __init__(self) -> None:
        self.base = private_directory("rspamd-", 0o777)  # rspamd's workers run as nobody when the tests run as root
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
        try:
            wait_until_ready(self.process, lambda: (accepts(self.port) and accepts(self.milter_port)
                                                    and self.socket_path.exists()), "rspamd", timeout, self.log,
                             interval=0.1)
        except RuntimeError:
            self.stop()
            raise
        return self

    def log(self) -> str:
        return read_log(self.base / "rspamd.log")

    def stop(self) -> None:
        stop_process(self.process, 15)
        shutil.rmtree(self.base, ignore_errors=True)
