"""auth/auth_imap against a private Dovecot IMAP server (tests/dovecot_imap.py), on a fresh reactor."""

from __future__ import annotations

import socket
import threading

import pytest
from auth_smtp import auth_reply
from dovecot_imap import AVAILABLE, dovecot_imap
from harness import make_qp
from reactor_helpers import free_port, run

needs_dovecot = pytest.mark.skipif(not AVAILABLE, reason="dovecot-imapd (Debian) is not installed")


def imap_qp(tmp_path, port, extra=""):
    return make_qp(tmp_path, files={"tls_before_auth": "0"},
                   plugins=[f"auth/auth_imap 127.0.0.1 {port}{extra}", "rcpt_ok"])


@pytest.fixture(scope="module")
def imap_port():
    if not AVAILABLE:
        pytest.skip("dovecot-imapd (Debian) is not installed")
    with dovecot_imap({"good": "se\"cret\\1", "other": "other"}) as port:
        yield port


@needs_dovecot
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_right_password_is_accepted(tmp_path, reactor, imap_port, mechanism):
    qp = imap_qp(tmp_path, imap_port)
    reply = run(reactor, lambda: auth_reply(reactor, qp, mechanism, "good", "se\"cret\\1"))
    assert reply == f"235 {mechanism} authentication successful for good - auth_imap/{mechanism.lower()}"


@needs_dovecot
@pytest.mark.parametrize("user, password", [("good", "wrong"), ("ghost", "other")])
def test_wrong_password_or_unknown_user_gets_535(tmp_path, reactor, imap_port, user, password):
    qp = imap_qp(tmp_path, imap_port)
    reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", user, password))
    assert reply == (f"535 PLAIN authentication failed for {user} from 127.0.0.1"
                     f" - auth_imap - invalid password for {user} at 127.0.0.1:{imap_port}")


def test_quoted_strings_escape_backslash_and_quote():
    import sys
    from pathlib import Path

    from qpsmtpd_py.plugin import plugin_class

    module = sys.modules[plugin_class("auth/auth_imap", [Path(__file__).parents[2] / "plugins"]).__module__]
    assert module.quoted('a"b\\c') == '"a\\"b\\\\c"'


def test_server_down_gets_454(tmp_path, reactor):
    port = free_port()
    qp = imap_qp(tmp_path, port)
    reply = run(reactor, lambda: auth_reply(reactor, qp, "LOGIN", "good", "x"))
    assert reply == ("454 LOGIN authentication temporarily failed for good"
                     f" - auth_imap - could not check the password at 127.0.0.1:{port}")


def test_silent_server_times_out_with_454(tmp_path, reactor):
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []  # kept open: a silent server, not a closed one
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    try:
        qp = imap_qp(tmp_path, listener.getsockname()[1], " timeout 0.3")
        reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "good", "x"))
    finally:
        listener.close()
    assert reply.startswith("454 ")


def test_password_with_a_line_break_is_not_sent(tmp_path, reactor):
    qp = imap_qp(tmp_path, free_port())
    reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "good", "a\r\nb"))
    assert reply.startswith("535 ") and reply.endswith("auth_imap - invalid user name or password")


def test_defaults_and_bad_arguments(tmp_path):
    qp = make_qp(tmp_path, plugins=["auth/auth_imap", "rcpt_ok"])
    assert (qp.plugins[0].host, qp.plugins[0].port, qp.plugins[0].timeout) == ("127.0.0.1", 143, 10.0)
    with pytest.raises(AssertionError, match="port must be a number"):
        make_qp(tmp_path / "bad", plugins=["auth/auth_imap 127.0.0.1 imap", "rcpt_ok"])
