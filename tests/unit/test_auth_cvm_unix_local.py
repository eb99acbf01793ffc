"""auth/auth_cvm_unix_local against Debian's cvm-pwfile module (package cvm), on a fresh reactor."""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from auth_smtp import auth_reply
from cvm_module import AVAILABLE, cvm_pwfile
from harness import make_qp
from reactor_helpers import run

from qpsmtpd_py.plugin import plugin_class

LINE = "auth/auth_cvm_unix_local cvm_socket {} enable_smtp yes"
PLUGINS = Path(__file__).parents[2] / "plugins"


def plugin_module():
    """The plugin's module, for its protocol functions."""
    return sys.modules[plugin_class("auth/auth_cvm_unix_local", [PLUGINS]).__module__]


@pytest.fixture
def short_dir():
    with tempfile.TemporaryDirectory(prefix="cvm-") as directory:  # unix socket paths are short
        yield Path(directory)


def cvm_qp(tmp_path, socket_path, line=LINE):
    return make_qp(tmp_path, files={"tls_before_auth": "0"}, plugins=[line.format(socket_path), "rcpt_ok"])


def test_request_is_version_2_with_nonce_and_tagged_credentials():
    cvm_request = plugin_module().cvm_request
    assert cvm_request("user@example.com", "pw", b"\x01\x02") == (
        b"\x02\x02\x01\x02" b"\x01\x04user" b"\x02\x0bexample.com" b"\x03\x02pw" b"\x00")


def test_user_without_domain_is_sent_with_domain_localhost():
    cvm_request = plugin_module().cvm_request
    assert b"\x02\x09localhost" in cvm_request("user", "pw", b"")


def test_success_whose_echo_does_not_match_is_no_answer():
    result_code = plugin_module().result_code
    assert result_code(b"\x00\x02ab\x00", b"ab") == 0
    assert result_code(b"\x00\x02xy\x00", b"ab") is None
    assert result_code(b"\x64", b"ab") == 100
    assert result_code(b"", b"ab") is None


needs_cvm = pytest.mark.skipif(not AVAILABLE, reason="cvm-pwfile (Debian package cvm) is not installed")


@needs_cvm
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_right_password_is_accepted(tmp_path, short_dir, reactor, mechanism):
    with cvm_pwfile(short_dir, {"good": "secret"}) as socket_path:
        qp = cvm_qp(tmp_path, socket_path)
        reply = run(reactor, lambda: auth_reply(reactor, qp, mechanism, "good@example.com", "secret"))
    assert reply == (f"235 {mechanism} authentication successful for good@example.com"
                     " - auth success for good@example.com")


@needs_cvm
@pytest.mark.parametrize("user, password", [("good@example.com", "wrong"), ("ghost@example.com", "secret")])
def test_rejected_credentials_get_535(tmp_path, short_dir, reactor, user, password):
    with cvm_pwfile(short_dir, {"good": "secret"}) as socket_path:
        qp = cvm_qp(tmp_path, socket_path)
        reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", user, password))
    assert reply == f"535 PLAIN authentication failed for {user} from 127.0.0.1 - auth failure (100)"


def test_module_not_running_gets_454(tmp_path, short_dir, reactor):
    qp = cvm_qp(tmp_path, short_dir / "absent.sock")
    reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "good@example.com", "secret"))
    assert reply == ("454 PLAIN authentication temporarily failed for good@example.com"
                     " - authcvm - the password check is unavailable")


def test_silent_module_times_out_with_454(tmp_path, short_dir, reactor):
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(short_dir / "silent.sock"))
    listener.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    try:
        qp = cvm_qp(tmp_path, short_dir / "silent.sock", LINE + " timeout 0.3")
        reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "good@example.com", "secret"))
    finally:
        listener.close()
    assert reply.startswith("454 ")


def test_temporary_error_code_gets_454(tmp_path, short_dir, reactor):
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(short_dir / "busy.sock"))
    listener.listen()

    def answer_config_error():
        connection, _ = listener.accept()
        connection.recv(512)
        connection.sendall(b"\x06")  # CVME_CONFIG
        connection.close()

    threading.Thread(target=answer_config_error, daemon=True).start()
    try:
        qp = cvm_qp(tmp_path, short_dir / "busy.sock")
        reply = run(reactor, lambda: auth_reply(reactor, qp, "LOGIN", "good@example.com", "secret"))
    finally:
        listener.close()
    assert reply.endswith("authcvm - temporary failure (6)") and reply.startswith("454 ")


def test_plain_smtp_is_declined_unless_enable_smtp(tmp_path, short_dir, reactor):
    qp = cvm_qp(tmp_path, short_dir / "absent.sock", "auth/auth_cvm_unix_local cvm_socket {}")
    reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "good@example.com", "secret"))
    assert reply == "535 PLAIN authentication failed for good@example.com from 127.0.0.1"


@pytest.mark.parametrize("args, message", [("", "cvm_socket <path> is required"),
                                           ("cvm_socket /tmp/x.sock enable_smtp maybe", "yes or no")])
def test_bad_argument_stops_start_up(tmp_path, args, message):
    with pytest.raises(AssertionError, match=message):
        make_qp(tmp_path, plugins=[f"auth/auth_cvm_unix_local {args}".strip(), "rcpt_ok"])
