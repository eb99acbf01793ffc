"""A private Dovecot (Debian packages dovecot-imapd, dovecot-lmtpd) for tests: IMAP or LMTP.

`DovecotServer(protocol, users)` writes a config, a passwd-file user database
of `users` ({name: password}) and Maildirs into a temporary directory, and
serves `protocol` on a free loopback port (LMTP also on the unix socket
`<directory>/lmtp`); `start()`, then `stop()`. As root the mail user is
`nobody`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Self

from server_process import accepts, free_port, greets, private_directory, read_log, stop_process, wait_until_ready

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def dovecot_available(protocol: str) -> bool:
    """Dovecot and its `protocol` server (imap, lmtp) are installed."""
    return os.access(DOVECOT, os.X_OK) and Path(f"/usr/lib/dovecot/{protocol}").exists()


class DovecotServer:
    def __init__(self, protocol: str, users: dict[str, str], name: str, settings: str = "") -> None:
        self.protocol = protocol
        self.dir = private_directory(f"{name}-", 0o755)  # the mail user must enter it
        self.port = free_port()
        self.socket = self.dir / "lmtp"
        self.mail = self.dir / "mail"
        self.mail.mkdir()
        self.mail.chmod(0o777)
        self.config = self.dir / "dovecot.conf"
        account = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
        (self.dir / "users").write_text("".join(
            f"{user}:{{PLAIN}}{password}:{account.pw_uid}:{account.pw_gid}::{self.mail}/{user}::\n"
            for user, password in users.items()))
        self.config.write_text(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
instance_name = {name}-{os.getpid()}
protocols = {protocol}
listen = 127.0.0.1
ssl = no
{settings}
default_internal_user = {account.pw_name}
default_login_user = {account.pw_name}
first_valid_uid = {min(account.pw_uid, 500)}
mail_location = maildir:~/Maildir
userdb {{
  driver = passwd-file
  args = {self.dir}/users
}}
passdb {{
  driver = passwd-file
  args = {self.dir}/users
}}
{self._service()}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
""")
        self.process: subprocess.Popen | None = None

    def _service(self) -> str:
        if self.protocol == "imap":
            return f"""service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}"""
        return f"""service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
  unix_listener {self.socket} {{
    mode = 0666
  }}
}}"""

    def _ready(self) -> bool:
        if self.protocol == "imap":
            return greets(self.port, b"* OK")
        return accepts(self.port) and self.socket.exists()

    def start(self, timeout: float = 10.0) -> Self:
        # Errors before Dovecot opens its log (a bad config) go to stderr.
        with open(self.dir / "stderr", "wb") as stderr:
            self.process = subprocess.Popen([DOVECOT, "-c", str(self.config), "-F"], stdout=subprocess.DEVNULL,
                                            stderr=stderr)
        wait_until_ready(self.process, self._ready, "dovecot", timeout,
                         lambda: read_log(self.dir / "stderr") + self.log())
        return self

    def log(self) -> str:
        return read_log(self.dir / "dovecot.log")

    def maildir_new(self, user: str) -> Path:
        """Where Dovecot delivers `user`'s new messages."""
        return self.mail / user / "Maildir" / "new"

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)
