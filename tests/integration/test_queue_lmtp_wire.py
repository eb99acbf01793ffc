"""queue/lmtp in the real daemon, delivering to Dovecot's LMTP server and into a Maildir."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port, wait_until

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

pytestmark = pytest.mark.skipif(not (os.access(DOVECOT, os.X_OK) and Path("/usr/lib/dovecot/lmtp").exists()),
                                reason="dovecot-lmtpd (Debian) is not installed")


@pytest.fixture
def dovecot():
    """Dovecot with LMTP on a loopback port and a unix socket; user `user`, Maildir in a temporary directory."""
    directory = Path(tempfile.mkdtemp(prefix="lmtp-wire-"))  # short: unix socket paths have a limit
    directory.chmod(0o755)
    mail = directory / "mail"
    mail.mkdir()
    mail.chmod(0o777)
    account = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    (directory / "users").write_text(f"user:{{PLAIN}}unused:{account.pw_uid}:{account.pw_gid}::{mail}/user::\n")
    port = free_port()
    (directory / "dovecot.conf").write_text(f"""
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
instance_name = lmtp-wire-{os.getpid()}
protocols = lmtp
listen = 127.0.0.1
ssl = no
default_internal_user = {account.pw_name}
default_login_user = {account.pw_name}
first_valid_uid = {min(account.pw_uid, 500)}
auth_username_format = %Ln
mail_location = maildir:~/Maildir
userdb {{
  driver = passwd-file
  args = {directory}/users
}}
passdb {{
  driver = passwd-file
  args = {directory}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener {directory}/lmtp {{
    mode = 0666
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
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                if (directory / "lmtp").exists():
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "dovecot did not start"
            time.sleep(0.05)
        yield port, directory / "lmtp", mail / "user" / "Maildir" / "new"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_daemon_delivers_into_the_maildir(daemon_factory, dovecot, where):
    port, path, new = dovecot
    server = f"127.0.0.1:{port}" if where == "tcp" else str(path)
    daemon = daemon_factory({"plugins": ["rcpt_ok", f"queue/lmtp {server}"]})
    with daemon.connect() as client:
        client.start_mail(sender="sender@example.com", recipient="user@test.example.org")
        client.send("Subject: wire\r\nMessage-Id: <lmtp-wire@example.com>\r\n\r\nthrough LMTP\r\n"
                    "..dotted\r\n.\r\n")
        code, text = client.reply(timeout=30)
        assert code == 250 and text[0].startswith("Queued (LMTP: 250 2.0.0 <user@test.example.org> "), text
        client.expect(221, "QUIT")
    files = wait_until(lambda: sorted(new.iterdir()) if new.is_dir() else [], timeout=5,
                       message="a message in the Maildir")
    stored = files[0].read_bytes()
    assert b"Return-Path: <sender@example.com>" in stored
    assert b"Message-Id: <lmtp-wire@example.com>" in stored
    assert stored.endswith(b"\n\nthrough LMTP\n.dotted\n")


def test_unknown_user_gets_552(daemon_factory, dovecot):
    port, _, new = dovecot
    daemon = daemon_factory({"plugins": ["rcpt_ok", f"queue/lmtp 127.0.0.1:{port}"]})
    with daemon.connect() as client:
        client.start_mail(sender="sender@example.com", recipient="ghost@test.example.org")
        client.send("Subject: wire\r\n\r\nnobody\r\n.\r\n")
        code, text = client.reply(timeout=30)
        assert code == 552 and "550 5.1.1" in text[0], text
        client.expect(250, "NOOP")
    assert not new.is_dir() or not list(new.iterdir())
