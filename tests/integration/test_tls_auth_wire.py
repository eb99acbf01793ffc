"""STARTTLS, implicit TLS and AUTH against the real daemon, with smtplib and raw sockets."""

import email
import smtplib
import socket
import ssl
import subprocess

import pytest
from auth_smtp import MECHANISMS, client_context, login, tls_config
from conftest import DAEMON, free_port, wait_until

from qpsmtpd_py.tls_cert import make_certificates

USERS = ["good@example.com:good_pass"]
MESSAGE = "From: good@example.com\r\nSubject: over TLS\r\n\r\nhello\r\n"


@pytest.fixture
def tls_daemon(daemon_factory, tmp_path):
    def make(files=None, args=(), plugins=("auth/auth_flat_file",)):
        config = tls_config(tmp_path / "ssl", list(plugins), {"flat_auth_pw": USERS, **(files or {})})
        config["plugins"].append(f"queue/maildir {tmp_path / 'Maildir'}")
        daemon = daemon_factory(files=config, args=["--children", "1", *args])
        daemon.maildir = tmp_path / "Maildir"
        return daemon
    return make


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_starttls_then_each_mechanism_authenticates_and_relays(tls_daemon, mechanism):
    daemon = tls_daemon()
    code, text, offered = login(daemon, "good@example.com", "good_pass", mechanism)
    assert offered == ["PLAIN", "LOGIN", "CRAM-MD5"]
    assert (code, text) == (235, f"{mechanism} authentication successful for good@example.com - authflat")
    code, _, _ = login(daemon, "good@example.com", "wrong", mechanism)
    assert code == 535


def test_authenticated_mail_over_tls_is_received_with_esmtpsa_and_the_cipher(tls_daemon):
    daemon = tls_daemon()
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as client:
        client.starttls(context=client_context())
        client.login("good@example.com", "good_pass")
        # Relaying to a foreign domain works only because the client authenticated.
        client.sendmail("good@example.com", ["someone@elsewhere.example"], MESSAGE)
    [raw] = wait_until(daemon.messages, 10, message="message delivered")
    message = email.message_from_bytes(raw)
    received = message["Received"]
    assert " with ESMTPSA (TLS_" in received and " encrypted)" in received
    # smtplib prefers CRAM-MD5 when offered.
    assert "auth=pass (cram-md5) smtp.auth=good@example.com" in " ".join(message["Authentication-Results"].split())


def test_without_auth_a_foreign_recipient_is_refused(tls_daemon):
    daemon = tls_daemon(plugins=("auth/auth_flat_file", "relay"))
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as client:
        client.starttls(context=client_context())
        client.ehlo()
        client.mail("good@example.com")
        code, _ = client.rcpt("someone@elsewhere.example")
        assert code == 550


def test_plaintext_sent_after_starttls_is_discarded_not_executed(tls_daemon):
    """CVE-2011-0411: a MAIL injected in the same packet as STARTTLS must not survive the handshake."""
    daemon = tls_daemon(files={"loglevel": "6"})
    with socket.create_connection((daemon.host, daemon.port), timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        raw.sendall(b"EHLO client.example\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
        assert reader.readline() == b"220 Go ahead with TLS\r\n"
        with client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            tls_reader = tls.makefile("rb")
            tls.sendall(b"EHLO client.example\r\n")
            while not tls_reader.readline().startswith(b"250 "):
                pass
            tls.sendall(b"RCPT TO:<good@example.com>\r\n")
            assert tls_reader.readline() == b"503 Use MAIL before RCPT\r\n"
    assert "discarding" in daemon.log() and "injected@evil.example" not in daemon.log()


def test_starttls_needs_a_new_ehlo_and_is_not_offered_twice(tls_daemon):
    daemon = tls_daemon()
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as client:
        client.starttls(context=client_context())
        assert client.mail("a@example.com")[0] == 503  # smtplib forgot EHLO too: the server must ask
        client.ehlo()
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS")[0] == 503


def test_starttls_with_a_parameter_gets_501(tls_daemon):
    daemon = tls_daemon()
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as client:
        client.ehlo()
        assert client.docmd("STARTTLS", "now") == (501, b"Syntax error (no parameters allowed)")


def test_auth_is_refused_before_tls_when_tls_before_auth_is_set(tls_daemon):
    daemon = tls_daemon(files={"tls_before_auth": "1"})
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN AGdvb2RAZXhhbXBsZS5jb20AZ29vZF9wYXNz") == (
            503, b"SSL/TLS required before AUTH")


def test_implicit_tls_listener_greets_after_the_handshake(tls_daemon):
    tls_port = free_port()
    daemon = tls_daemon(args=["--tls-listen-address", f"127.0.0.1:{tls_port}"])
    with smtplib.SMTP_SSL(daemon.host, tls_port, context=client_context(), timeout=30) as client:
        code, _ = client.ehlo()
        assert code == 250 and not client.has_extn("starttls")
        assert client.has_extn("auth")  # TLS from the first byte: AUTH needs no STARTTLS
        client.login("good@example.com", "good_pass")
        client.sendmail("good@example.com", ["someone@elsewhere.example"], MESSAGE)
    [raw] = wait_until(daemon.messages, 10, message="message delivered")
    assert b" with ESMTPSA (TLS_" in raw


def test_a_failed_handshake_is_logged_with_its_reason_and_the_daemon_serves_on(tls_daemon):
    daemon = tls_daemon(files={"loglevel": "5"})
    with socket.create_connection((daemon.host, daemon.port), timeout=10) as raw:
        reader = raw.makefile("rb")
        reader.readline()
        raw.sendall(b"EHLO client.example\r\nSTARTTLS\r\n")
        while reader.readline() != b"220 Go ahead with TLS\r\n":
            pass
        raw.sendall(b"this is not a TLS client hello\r\n" * 4)
    wait_until(lambda: "TLS negotiation failed" in daemon.log(), 10, message="handshake failure logged")
    assert login(daemon, "good@example.com", "good_pass", "PLAIN")[0] == 235


def test_tls_protocols_can_require_tls_1_3(tls_daemon):
    daemon = tls_daemon(files={"tls_protocols": "TLSv1_3"})
    context = client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as client:
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected)):
            client.starttls(context=context)
    assert login(daemon, "good@example.com", "good_pass", "LOGIN")[0] == 235


def test_tls_listener_without_a_certificate_stops_start_up(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "plugins").write_text("rcpt_ok\n")
    result = subprocess.run([str(DAEMON), "--config-dir", str(tmp_path / "config"), "--listen-address",
                             f"127.0.0.1:{free_port()}", "--tls-listen-address", f"127.0.0.1:{free_port()}",
                             "--check-config"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert "--tls-listen-address needs a certificate" in result.stderr + result.stdout


def test_tls_plugin_without_a_certificate_offers_no_starttls(daemon_factory):
    daemon = daemon_factory(extra_plugins=["tls"], args=["--children", "1"])
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
    assert "STARTTLS is not offered" in daemon.log()


def test_tls_cert_command_makes_a_chain_openssl_verifies(tmp_path):
    paths = make_certificates(tmp_path, "mx.example.org")
    result = subprocess.run(["openssl", "verify", "-CAfile", str(paths["ca.crt"]), str(paths["server.crt"])],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert paths["server.key"].stat().st_mode & 0o077 == 0
