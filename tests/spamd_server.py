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
import subprocess

from server_process import accepts, free_port, private_directory, read_log, stop_process, wait_until_ready

SPAMD = shutil.which("spamd") or "/usr/sbin/spamd"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def spamd_available() -> bool:
    return os.access(SPAMD, os.X_OK)


class SpamdServer:
    """spamd with its own config, socket and port: `start()`, then `stop()`."""

    def __init__(self) -> None:
        self.base = private_directory("spamd-", 0o755)  # spamd's children run as nobody
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
        wait_until_ready(self.process, lambda: self.socket_path.exists() and accepts(self.port), "spamd", timeout,
                         self.log)
        return self

    def log(self) -> str:
        return read_log(self.log_path)

    def stop(self) -> None:
        stop_process(self.process, 20)  # SIGTERM: spamd stops its children too
        shutil.rmtree(self.base, ignore_errors=True)
