"""What the Python bench scripts share: the daemon on a copy of config/, and smtp-source.

`BenchDaemon` copies the embedded config/ into a temp dir, delivers into a Maildir
there, accepts mail for example.com, puts `plugins_first` before the other
plugins and points DNS at `dns_address`; `prepare(config_dir)` may add files
before the daemon starts on 127.0.0.1:`port` with 2 children.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def find_smtp_source() -> str | None:
    """Postfix's load client (Debian package postfix), if installed."""
    found = shutil.which("smtp-source")
    if found:
        return found
    return "/usr/sbin/smtp-source" if os.access("/usr/sbin/smtp-source", os.X_OK) else None


class BenchDaemon:
    def __init__(self, port: int, dns_address: str, plugins_first: list[str], prefix: str = "bench-",
                 prepare: Callable[[Path], None] | None = None) -> None:
        self.port = port
        self.work = Path(tempfile.mkdtemp(prefix=prefix))
        config = self.work / "config"
        shutil.copytree(ROOT / "config", config)
        plugins = [f"queue/maildir {self.work}/Maildir" if line.startswith("queue/maildir ") else line
                   for line in (config / "plugins").read_text().splitlines()]
        first = next(n for n, line in enumerate(plugins) if line.strip() and not line.startswith("#"))
        plugins[first:first] = plugins_first
        (config / "plugins").write_text("\n".join(plugins) + "\n")
        (config / "spool_dir").write_text(f"{self.work}/spool\n")
        rcpthosts = (config / "rcpthosts").read_text().split()
        if "example.com" not in rcpthosts:
            (config / "rcpthosts").write_text("\n".join(rcpthosts + ["example.com"]) + "\n")
        (config / "dns_servers").write_text(dns_address + "\n")
        if prepare is not None:
            prepare(config)
        self.log = open(self.work / "daemon.log", "wb")
        self.process = subprocess.Popen(
            [str(ROOT / ".venv/bin/qpsmtpd-py-prefork"), "--config-dir", str(config), "--listen-address",
             "127.0.0.1", "--port", str(port), "--children", "2", "--idle-children", "2",
             "--child-lifetime", "1000000"], stdout=self.log, stderr=subprocess.STDOUT, cwd=self.work)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.close()
                    raise SystemExit(f"the daemon did not start; its log:\n{self.log_text()}") from None
                time.sleep(0.1)

    def log_text(self) -> str:
        path = self.work / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def messages(self) -> list[Path]:
        new = self.work / "Maildir" / "new"
        return sorted(new.iterdir()) if new.is_dir() else []

    def delivered(self) -> int:
        return len(self.messages())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.work, ignore_errors=True)
