"""auth/auth_vpopmaild and auth/auth_cvm_unix_local in the real daemon: smtplib, STARTTLS, AUTH.

vpopmaild has no Debian package: a stand-in speaking its login exchange
(tests/vpopmaild_server.py). CVM is Debian's cvm-pwfile module (package cvm).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from auth_smtp import CLEAR_TEXT_MECHANISMS, login, tls_config
from conftest import free_port
from cvm_module import AVAILABLE, cvm_pwfile
from vpopmaild_server import VpopmaildServer


def test_vpopmaild_login_with_each_mechanism(daemon_factory, tmp_path):
    with VpopmaildServer({"good@example.com": "secret"}) as server:
        daemon = daemon_factory(tls_config(tmp_path / "certs",
                                           [f"auth/auth_vpopmaild host 127.0.0.1 port {server.port}"]))
        for mechanism in CLEAR_TEXT_MECHANISMS:
            code, text, offered = login(daemon, "good@example.com", "secret", mechanism)
            assert offered == ["PLAIN", "LOGIN"]
            assert (code, text) == (235, f"{mechanism} authentication successful for good@example.com"
                                         " - auth_vpopmaild")
            assert login(daemon, "good@example.com", "wrong", mechanism)[0] == 535


def test_vpopmaild_down_gets_454(daemon_factory, tmp_path):
    daemon = daemon_factory(tls_config(tmp_path / "certs",
                                       [f"auth/auth_vpopmaild host 127.0.0.1 port {free_port()}"]))
    code, text, _ = login(daemon, "good@example.com", "secret", "LOGIN")
    assert (code, text) == (454, "LOGIN authentication temporarily failed for good@example.com"
                                 " - auth_vpopmaild - the password server is unavailable")


@pytest.mark.skipif(not AVAILABLE, reason="cvm-pwfile (Debian package cvm) is not installed")
def test_cvm_login_with_each_mechanism(daemon_factory, tmp_path):
    with tempfile.TemporaryDirectory(prefix="cvm-") as directory, \
            cvm_pwfile(Path(directory), {"good": "secret"}) as socket_path:
        daemon = daemon_factory(tls_config(
            tmp_path / "certs", [f"auth/auth_cvm_unix_local cvm_socket {socket_path} enable_smtp yes"]))
        for mechanism in CLEAR_TEXT_MECHANISMS:
            code, text, offered = login(daemon, "good@example.com", "secret", mechanism)
            assert offered == ["PLAIN", "LOGIN"]
            assert code == 235, text
            code, text, _ = login(daemon, "good@example.com", "wrong", mechanism)
            assert (code, text) == (535, f"{mechanism} authentication failed for good@example.com from 127.0.0.1"
                                         " - auth failure (100)")
