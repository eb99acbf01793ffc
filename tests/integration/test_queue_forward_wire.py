"""queue/smtp-forward in the real daemon, relaying to Postfix's smtp-sink."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port, wait_until

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"

pytestmark = pytest.mark.skipif(not os.access(SMTP_SINK, os.X_OK),
                                reason="smtp-sink (Debian package postfix) is not installed")


@pytest.fixture
def sink():
    """smtp-sink on a free loopback port, dumping each message into a directory."""
    port = free_port()
    dumps = Path(tempfile.mkdtemp(prefix="sink-"))
    os.chmod(dumps, 0o777)  # run as root, smtp-sink writes as nobody
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen([SMTP_SINK, *user, "-d", f"{dumps}/msg.", f"127.0.0.1:{port}", "10"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and process.poll() is None, "smtp-sink did not start"
            time.sleep(0.02)
    yield port, dumps
    process.terminate()
    process.wait(5)
    shutil.rmtree(dumps, ignore_errors=True)


def send(client, body: str) -> tuple[int, list[str]]:
    client.start_mail(sender="sender@example.com", recipient="user@test.example.org")
    client.send(f"Subject: wire\r\nMessage-Id: <wire@example.com>\r\n\r\n{body}\r\n.\r\n")
    return client.reply(timeout=30)


def test_daemon_forwards_to_smtp_sink(daemon_factory, sink):
    port, dumps = sink
    daemon = daemon_factory({"plugins": ["rcpt_ok", f"queue/smtp-forward 127.0.0.1 {port}"]})
    with daemon.connect() as client:
        code, text = send(client, "through the relay")
        assert code == 250 and text[0].startswith("Queued as "), text
        client.expect(221, "QUIT")
    files = wait_until(lambda: sorted(dumps.iterdir()), timeout=5, message="a dump from smtp-sink")
    dump = files[0].read_bytes()
    assert b"X-Mail-Args: <sender@example.com>" in dump and b"X-Rcpt-Args: <user@test.example.org>" in dump
    assert b"Message-Id: <wire@example.com>" in dump and b"\n\nthrough the relay\n" in dump


def test_downstream_down_gives_the_client_451(daemon_factory):
    dead = free_port()
    daemon = daemon_factory({"plugins": ["rcpt_ok", f"queue/smtp-forward 127.0.0.1 {dead}"]})
    with daemon.connect() as client:
        code, text = send(client, "nowhere to go")
        assert code == 451 and text == [f"Unable to queue message (127.0.0.1:{dead}: connection refused)"]
        client.expect(250, "NOOP")  # the session goes on
    assert "connection refused" in daemon.log()
