"""Helpers for the AUTH wire tests: a daemon config with STARTTLS, and smtplib logins.

`tls_config(directory, plugins)` writes a CA and server certificate into
`directory` and returns the config files that load the tls plugin with them,
then the auth plugins; `login()` runs one AUTH exchange with smtplib after
STARTTLS and returns the reply (235, 454, 535, ...).
"""

from __future__ import annotations

import base64
import smtplib
import ssl
from pathlib import Path

from qpsmtpd_py.auth import cram_md5_digest, encode
from qpsmtpd_py.tls_cert import make_certificates

MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")
CLEAR_TEXT_MECHANISMS = ("PLAIN", "LOGIN")


def tls_config(directory: Path, plugins: list[str], files: dict | None = None) -> dict:
    """Config files: `tls <cert> <key>` (made in `directory`), then `plugins`, then rcpt_ok."""
    paths = make_certificates(directory, "localhost")
    return {**(files or {}), "plugins": [f"tls {paths['server.crt']} {paths['server.key']}", *plugins, "rcpt_ok"]}


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a throw-away certificate for 127.0.0.1
    return context


def login(daemon, user: str, password: str, mechanism: str) -> tuple[int, str, list[str]]:
    """STARTTLS, EHLO, AUTH <mechanism>: (code, reply text, mechanisms EHLO offered)."""
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as client:
        client.ehlo("client.example.com")
        assert client.has_extn("starttls"), client.esmtp_features
        assert not client.has_extn("auth"), "AUTH offered before TLS"
        client.starttls(context=client_context())
        client.ehlo("client.example.com")
        offered = client.esmtp_features.get("auth", "").upper().split()
        client.user, client.password = user, password
        authobject = {"PLAIN": client.auth_plain, "LOGIN": client.auth_login,
                      "CRAM-MD5": client.auth_cram_md5}[mechanism]
        try:
            code, text = client.auth(mechanism, authobject, initial_response_ok=mechanism == "PLAIN")
        except smtplib.SMTPAuthenticationError as exc:
            code, text = exc.smtp_code, exc.smtp_error
        return code, text.decode("utf-8", "replace"), offered


def auth_line(mechanism: str, user: str, password: str) -> list[str]:
    """The client's lines for one AUTH exchange (CRAM-MD5's answer needs the challenge: see auth_reply)."""
    if mechanism == "PLAIN":
        return ["AUTH PLAIN " + encode(f"\0{user}\0{password}")]
    return ["AUTH LOGIN", encode(user), encode(password)]


async def auth_reply(reactor, qp, mechanism: str, user: str, password: str) -> str:
    """One session over a StringTransport on `reactor` (tls_before_auth 0): the final AUTH reply line."""
    from harness import SessionDriver
    from reactor_helpers import next_reply

    qp.runner.clock = reactor
    for plugin in qp.plugins:
        plugin.reactor = reactor
    driver = SessionDriver(qp)
    driver.take()
    assert driver.command("EHLO client.example.com")[0].startswith("250")
    if mechanism == "CRAM-MD5":
        challenge = driver.command("AUTH CRAM-MD5")[0]
        ticket = base64.b64decode(challenge[4:]).decode()
        driver.send(encode(f"{user} {cram_md5_digest(password, ticket)}").encode() + b"\r\n")
    else:
        *steps, last = auth_line(mechanism, user, password)
        for step in steps:
            assert driver.command(step)[0].startswith("334")
        driver.send(last.encode() + b"\r\n")
    return (await next_reply(reactor, driver))[-1]
