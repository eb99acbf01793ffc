"""auth/auth_vpopmaild against a vpopmaild stand-in (tests/vpopmaild_server.py), on a fresh reactor."""

from __future__ import annotations

import pytest
from auth_smtp import auth_reply
from harness import make_qp
from reactor_helpers import free_port, run
from vpopmaild_server import VpopmaildServer

USERS = {"good@example.com": "secret"}


def vpopmaild_qp(tmp_path, port, extra=""):
    return make_qp(tmp_path, files={"tls_before_auth": "0"},
                   plugins=[f"auth/auth_vpopmaild host 127.0.0.1 port {port}{extra}", "rcpt_ok"])


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_right_password_is_accepted(tmp_path, reactor, mechanism):
    with VpopmaildServer(USERS) as server:
        qp = vpopmaild_qp(tmp_path, server.port)
        reply = run(reactor, lambda: auth_reply(reactor, qp, mechanism, "good@example.com", "secret"))
    assert reply == f"235 {mechanism} authentication successful for good@example.com - auth_vpopmaild"
    assert server.logins == ["login good@example.com secret"]


def test_wrong_password_gets_535(tmp_path, reactor):
    with VpopmaildServer(USERS) as server:
        qp = vpopmaild_qp(tmp_path, server.port)
        reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "good@example.com", "nope"))
    assert reply == ("535 PLAIN authentication failed for good@example.com from 127.0.0.1"
                     " - auth_vpopmaild - wrong user name or password")


def test_password_with_a_space_is_not_sent(tmp_path, reactor):
    with VpopmaildServer(USERS) as server:
        qp = vpopmaild_qp(tmp_path, server.port)
        reply = run(reactor, lambda: auth_reply(reactor, qp, "LOGIN", "good@example.com", "se cret"))
    assert reply.startswith("535 ") and server.logins == []


def test_refused_connection_gets_454(tmp_path, reactor):
    qp = vpopmaild_qp(tmp_path, free_port())
    reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "good@example.com", "secret"))
    assert reply == ("454 PLAIN authentication temporarily failed for good@example.com"
                     " - auth_vpopmaild - the password server is unavailable")


def test_silent_server_times_out_with_454(tmp_path, reactor):
    with VpopmaildServer(USERS, greeting=None) as server:
        qp = vpopmaild_qp(tmp_path, server.port, " timeout 0.3")
        reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "good@example.com", "secret"))
    assert reply.startswith("454 ")


def test_greeting_other_than_ok_gets_454(tmp_path, reactor):
    with VpopmaildServer(USERS, greeting="-ERR busy") as server:
        qp = vpopmaild_qp(tmp_path, server.port)
        reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "good@example.com", "secret"))
    assert reply.startswith("454 ") and not any(line.startswith("login") for line in server.logins)


def test_cram_md5_is_not_offered(tmp_path):
    qp = vpopmaild_qp(tmp_path, 89)
    assert "auth-cram-md5" not in qp.hooks


def test_defaults_are_localhost_port_89(tmp_path):
    qp = make_qp(tmp_path, files={"tls_before_auth": "0"}, plugins=["auth/auth_vpopmaild", "rcpt_ok"])
    plugin = qp.plugins[0]
    assert (plugin.host, plugin.port, plugin.timeout) == ("localhost", 89, 10.0)


@pytest.mark.parametrize("args", ["port 0", "port http", "timeout 0"])
def test_bad_argument_stops_start_up(tmp_path, args):
    with pytest.raises(AssertionError, match="port must be|more than 0"):
        make_qp(tmp_path, plugins=[f"auth/auth_vpopmaild {args}", "rcpt_ok"])
