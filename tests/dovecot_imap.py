"""A private Dovecot IMAP server for the auth/auth_imap tests (Debian package dovecot-imapd).

`dovecot_imap(users)` starts Dovecot with its config, state and sockets in a
temporary directory, IMAP on a free loopback port, and a passwd-file of
`users` ({name: password}); it yields the port and stops Dovecot afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
AVAILABLE = os.access(DOVECOT, os.X_OK) and Path("/usr/lib/dovecot/imap").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def dovecot_imap(users: dict[str, str]) -> Iterator[int]:
    directory = Path(tempfile.mkdtemp(prefix="imap-auth-"))  # short: unix socket paths have a limit
    directory.chmod(0o755)
    mail = directory / "mail"
    mail.mkdir()
    mail.chmod(0o777)
    account = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    (directory / "users").write_text("".join(
        f"{name}:{{PLAIN}}{password}:{account.pw_uid}:{account.pw_gid}::{mail}/{name}::\n"
        for name, password in users.items()))
    port = free_port()
    (directory / "dovecot.conf").write_text(f"""
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
instance_name = imap-auth-{os.getpid()}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_failure_delay = 0
default_internal_user = {account.pw_name}
default_login_user = {account.pw_name}
first_valid_uid = {min(account.pw_uid, 500)}
mail_location = maildir:~/Maildir
userdb {{
  driver = passwd-file
  args = {directory}/users
}}
passdb {{
  driver = passwd-file
  args = {directory}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
""")
    process = subprocess.Popen([DOVECOT, "-c", str(directory / "dovecot.conf"), "-F"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"* OK"):
                        break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "dovecot did not start"
            time.sleep(0.05)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)
