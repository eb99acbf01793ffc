"""milter in the real daemon, against real milters started by the tests on loopback:
rspamd's proxy worker in milter mode (Debian's rspamd) and opendkim signing (Debian's opendkim).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import dkim
import pytest
from conftest import free_port
from rspamd_server import GTUBE, RspamdServer, rspamd_available

OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"
OPENDKIM_GENKEY = shutil.which("opendkim-genkey") or "/usr/sbin/opendkim-genkey"
needs_rspamd = pytest.mark.skipif(not rspamd_available(), reason="rspamd (Debian package rspamd) is not installed")
needs_opendkim = pytest.mark.skipif(not (os.access(OPENDKIM, os.X_OK) and os.access(OPENDKIM_GENKEY, os.X_OK)),
                                    reason="opendkim and opendkim-tools (Debian) are not installed")

HAM = ("From: Alice <alice@example.com>\r\nTo: Bob <bob@test.example.org>\r\nSubject: lunch\r\n"
       "Message-Id: <milter-1@example.com>\r\nDate: Thu, 26 Nov 2026 06:00:00 +0000\r\n\r\n"
       "Shall we have lunch on Friday?\r\n.a dotted line\r\n")
SPAM = ("From: a@example.com\r\nTo: bob@test.example.org\r\nSubject: test\r\nMessage-Id: <gtube@example.com>\r\n\r\n"
        f"{GTUBE}\r\n")


def deliver(daemon, message):
    with daemon.connect() as client:
        client.start_mail(sender="alice@example.com", recipient="bob@test.example.org")
        client.send(message.replace("\r\n.", "\r\n..") + ".\r\n")
        code, text = client.reply(timeout=40)
        client.expect(221, "QUIT")
    return code, text


# -- rspamd's milter ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rspamd():
    server = RspamdServer().start()
    yield server
    server.stop()


@needs_rspamd
def test_rspamd_milter_rejects_gtube_with_its_reply_code(daemon_factory, rspamd):
    daemon = daemon_factory(extra_plugins=[f"milter inet:{rspamd.milter_port}@127.0.0.1"])
    code, text = deliver(daemon, SPAM)
    assert (code, text) == (552, ["5.7.1 Gtube pattern"])
    assert daemon.messages() == []


@needs_rspamd
def test_rspamd_milter_passes_ham_and_changes_headers(daemon_factory, rspamd):
    daemon = daemon_factory(extra_plugins=[f"milter inet:{rspamd.milter_port}@127.0.0.1"])
    code, text = deliver(daemon, HAM.replace("Subject: lunch\r\n", "Subject: lunch\r\nX-Spam: forged\r\n"))
    assert code == 250, text
    [stored] = daemon.messages()
    assert b"X-Spam: forged" not in stored  # rspamd removes a client's X-Spam header (change header, empty)
    assert stored.endswith(b"\n\nShall we have lunch on Friday?\n.a dotted line\n")
    assert "milter-1@example.com" in rspamd.log()


# -- opendkim -----------------------------------------------------------------------------------

@pytest.fixture
def opendkim():
    """opendkim signing for example.com (selector `test`) on a loopback port; yields (port, public key record)."""
    directory = Path(tempfile.mkdtemp(prefix="opendkim-"))
    subprocess.run([OPENDKIM_GENKEY, "-D", str(directory), "-d", "example.com", "-s", "test", "-b", "1024"],
                   check=True)
    record = "".join(re.findall(r'"([^"]*)"', (directory / "test.txt").read_text())).encode()
    port = free_port()
    (directory / "opendkim.conf").write_text(
        f"Syslog no\nMode sv\nDomain example.com\nSelector test\nKeyFile {directory}/test.private\n"
        f"Socket inet:{port}@127.0.0.1\nBackground no\nPidFile {directory}/opendkim.pid\n"
        # RequireSafeKeys: the key is under the world-writable temporary directory.
        "Canonicalization relaxed/simple\nInternalHosts 127.0.0.1\nRequireSafeKeys false\n")
    process = subprocess.Popen([OPENDKIM, "-f", "-x", str(directory / "opendkim.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"opendkim did not start: {process.stderr.read().decode(errors='replace')}")
            time.sleep(0.05)
        yield port, record
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stderr.close()
        shutil.rmtree(directory, ignore_errors=True)


@needs_opendkim
def test_opendkim_signs_and_the_signature_verifies(daemon_factory, opendkim):
    port, record = opendkim
    daemon = daemon_factory(extra_plugins=[f"milter inet:{port}@127.0.0.1"])
    code, text = deliver(daemon, HAM)
    assert code == 250, text
    [stored] = daemon.messages()
    assert b"\nDKIM-Signature: " in stored or stored.startswith(b"DKIM-Signature: ")
    # What the next hop gets (CRLF), without the Maildir's own Return-Path/Delivered-To lines.
    message = stored.split(b"\n", 2)[2].replace(b"\n", b"\r\n")
    assert message.startswith(b"DKIM-Signature: ") or b"\r\nDKIM-Signature: " in message

    def dns(name, timeout=5):
        assert name == b"test._domainkey.example.com."
        return record

    assert dkim.verify(message, dnsfunc=dns)
