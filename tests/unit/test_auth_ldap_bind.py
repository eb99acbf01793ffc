"""auth/auth_ldap_bind against a private slapd (tests/slapd_server.py), on a fresh reactor."""

from __future__ import annotations

import socket
import threading

import pytest
from auth_smtp import auth_reply
from harness import make_qp
from reactor_helpers import free_port, run
from slapd_server import AVAILABLE, BASE, slapd_server


def ldap_qp(tmp_path, port, extra=""):
    return make_qp(tmp_path, files={"tls_before_auth": "0", "ldap": [f"ldap_base {BASE}", "ldap_host 127.0.0.1"]},
                   plugins=[f"auth/auth_ldap_bind ldap_port {port}{extra}", "rcpt_ok"])


@pytest.fixture(scope="module")
def ldap_port():
    if not AVAILABLE:
        pytest.skip("slapd (Debian) is not installed")
    with slapd_server({"good": "secret", "star*": "x"}) as port:
        yield port


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_right_password_binds(tmp_path, reactor, ldap_port, mechanism):
    qp = ldap_qp(tmp_path, ldap_port)
    reply = run(reactor, lambda: auth_reply(reactor, qp, mechanism, "Good@example.com", "secret"))
    assert reply == f"235 {mechanism} authentication successful for Good@example.com - authldap"


@pytest.mark.parametrize("user, password", [("good@example.com", "wrong"), ("ghost@example.com", "secret"),
                                            ("good@example.com", ""), ("*@example.com", "secret")])
def test_wrong_password_unknown_user_empty_password_or_wildcard_get_535(tmp_path, reactor, ldap_port, user,
                                                                         password):
    qp = ldap_qp(tmp_path, ldap_port)
    reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", user, password))
    assert reply == (f"535 PLAIN authentication failed for {user} from 127.0.0.1"
                     " - authldap - wrong username or password")


def test_other_attribute_names_the_user(tmp_path, reactor, ldap_port):
    qp = ldap_qp(tmp_path, ldap_port, " ldap_auth_filter_attr sn")
    reply = run(reactor, lambda: auth_reply(reactor, qp, "LOGIN", "good", "secret"))
    assert reply.startswith("235 ")


def test_directory_down_gets_454(tmp_path, reactor):
    qp = ldap_qp(tmp_path, free_port())
    reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "good@example.com", "secret"))
    assert reply == ("454 PLAIN authentication temporarily failed for good@example.com"
                     " - authldap - temporary auth error")


def test_silent_directory_times_out_with_454(tmp_path, reactor):
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []  # kept open: a silent server, not a closed one
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    try:
        qp = ldap_qp(tmp_path, listener.getsockname()[1], " ldap_timeout 0.5")
        reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "good@example.com", "secret"))
    finally:
        listener.close()
    assert reply.startswith("454 ")


def test_missing_base_stops_start_up(tmp_path):
    with pytest.raises(AssertionError, match="ldap_base is required"):
        make_qp(tmp_path, plugins=["auth/auth_ldap_bind", "rcpt_ok"])


def test_arguments_override_config_ldap(tmp_path):
    qp = make_qp(tmp_path, files={"ldap": ["ldap_base dc=a", "ldap_port 1389", "ldap_timeout 2"]},
                 plugins=["auth/auth_ldap_bind ldap_base dc=b", "rcpt_ok"])
    plugin = qp.plugins[0]
    assert (plugin.base, plugin.port, plugin.timeout, plugin.host, plugin.attribute) == (
        "dc=b", 1389, 2.0, "127.0.0.1", "uid")
