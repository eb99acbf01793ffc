"""rspamd in the real daemon, against a real rspamd (Debian's) started by the tests on loopback."""

from __future__ import annotations

import pytest
from conftest import free_port
from rspamd_server import GTUBE, RspamdServer, rspamd_available

pytestmark = pytest.mark.skipif(not rspamd_available(), reason="rspamd (Debian package rspamd) is not installed")

HAM = ("From: Alice <alice@example.com>\r\nTo: Bob <bob@test.example.org>\r\nSubject: lunch\r\n"
       "Message-Id: <ham-1@example.com>\r\nDate: Thu, 26 Nov 2026 06:00:00 +0000\r\n\r\n"
       "Shall we have lunch on Friday?\r\n.and a dotted line\r\n")
SPAM = ("From: a@example.com\r\nTo: bob@test.example.org\r\nSubject: test\r\nMessage-Id: <gtube@example.com>\r\n\r\n"
        f"{GTUBE}\r\n")


@pytest.fixture(scope="module")
def rspamd():
    server = RspamdServer().start()
    yield server
    server.stop()


def deliver(daemon, message):
    with daemon.connect() as client:
        client.start_mail(sender="alice@example.com", recipient="bob@test.example.org")
        client.send(message.replace("\r\n.", "\r\n..") + ".\r\n")
        code, text = client.reply(timeout=40)
        client.expect(221, "QUIT")
    return code, text


def test_gtube_is_rejected_with_rspamd_message(daemon_factory, rspamd):
    daemon = daemon_factory(extra_plugins=[f"rspamd port {rspamd.port}"])
    assert deliver(daemon, SPAM) == (552, ["Gtube pattern"])
    assert daemon.messages() == []


def test_gtube_over_the_unix_socket_with_reject_type_temp(daemon_factory, rspamd):
    daemon = daemon_factory(extra_plugins=[f"rspamd unix_socket {rspamd.socket_path} reject_type temp"])
    assert deliver(daemon, SPAM) == (452, ["Gtube pattern"])


def test_ham_is_delivered_with_rspamd_headers(daemon_factory, rspamd):
    daemon = daemon_factory(extra_plugins=[f"rspamd port {rspamd.port} add_header always reject never"])
    code, text = deliver(daemon, HAM)
    assert code == 250, text
    [stored] = daemon.messages()
    status = next(line for line in stored.decode().split("\n") if line.startswith("X-Spam-Status: "))
    assert " required=15.00 action=" in status
    assert b"\nX-Rspamd-Score: " in stored and b"\nX-Rspamd-Report: " in stored
    assert stored.endswith(b"\n\nShall we have lunch on Friday?\n.and a dotted line\n")


def test_rspamd_sees_the_envelope(daemon_factory, rspamd):
    """rspamd logs the envelope it was told: our Queue-Id, sender and recipient are in its log."""
    daemon = daemon_factory(extra_plugins=[f"rspamd port {rspamd.port}"])
    assert deliver(daemon, HAM)[0] == 250
    log = rspamd.log()
    assert "<ham-1@example.com>" in log
    assert "alice@example.com" in log and "bob@test.example.org" in log


def test_rspamd_down_gives_452(daemon_factory):
    port = free_port()
    daemon = daemon_factory(extra_plugins=[f"rspamd port {port} timeout 10"])
    code, text = deliver(daemon, HAM)
    assert code == 452 and text == [f"Unable to check the message with rspamd (127.0.0.1:{port}: "
                                    "connection refused), try again later"]
    assert daemon.messages() == []
