"""queue/lmtp in the real daemon, delivering to Dovecot's LMTP server and into a Maildir."""

from __future__ import annotations

import pytest
from conftest import wait_until
from dovecot_server import DovecotServer, dovecot_available

pytestmark = pytest.mark.skipif(not dovecot_available("lmtp"), reason="dovecot-lmtpd (Debian) is not installed")


@pytest.fixture
def dovecot():
    """Dovecot with LMTP on a loopback port and a unix socket; user `user`, Maildir in a temporary directory."""
    server = DovecotServer("lmtp", {"user": "unused"}, "lmtp-wire", "auth_username_format = %Ln")
    try:
        server.start()
        yield server.port, server.socket, server.maildir_new("user")
    finally:
        server.stop()


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
