"""The virus plugins in the real daemon: virus/clamdscan against a real clamd, and a slow scanner.

clamd (Debian clamav-daemon) is started by the test with a one-signature
database (tests/clamd_server.py). Accepted mail goes to the default Maildir.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from clamd_server import SIGNATURE, VIRUS_NAME, ClamdServer, clamd_available
from conftest import wait_until

PROGRAMS = Path(__file__).resolve().parent.parent / "programs"


@pytest.fixture(scope="module")
def clamd():
    if not clamd_available():
        pytest.skip("clamd (Debian clamav-daemon) is not installed")
    server = ClamdServer().start()
    yield server
    server.stop()


def send(client, body: str, subject: str = "wire"):
    client.start_mail(recipient="user@test.example.org")
    client.send(f"Subject: {subject}\r\nMessage-Id: <{subject}@example.com>\r\n\r\n{body}\r\n.\r\n")
    return client.reply(timeout=30)


@pytest.mark.parametrize("where", ["unix", "tcp"])
def test_daemon_rejects_infected_mail_and_delivers_clean_mail_with_headers(daemon_factory, clamd, where):
    line = (f"virus/clamdscan clamd_socket {clamd.socket_path} defer_on_error yes" if where == "unix"
            else f"virus/clamdscan clamd_port {clamd.port} clamd_host 127.0.0.1 defer_on_error yes")
    daemon = daemon_factory(extra_plugins=[line])
    with daemon.connect() as client:
        code, text = send(client, "payload " + SIGNATURE.decode())
        assert (code, text[0]) == (552, f"Virus found: {VIRUS_NAME}")
    with daemon.connect() as client:
        code, _ = send(client, "nothing to see", subject="clean")
        assert code == 250
    files = wait_until(lambda: daemon.maildir_files(), timeout=5, message="a message in the Maildir")
    stored = files[0].read_bytes()
    assert b"X-Virus-Found: No\n" in stored and b"X-Virus-Checked: by ClamAV " in stored
    assert len(files) == 1


def test_daemon_defers_when_clamd_is_down(daemon_factory, tmp_path):
    line = f"virus/clamdscan clamd_socket {tmp_path / 'gone.sock'} defer_on_error yes"
    daemon = daemon_factory(extra_plugins=[line])
    with daemon.connect() as client:
        code, text = send(client, "x")
        assert code == 452 and text[0].startswith("Unable to scan for viruses (cannot connect to clamd at ")
        client.expect(250, "NOOP")


def test_slow_scanner_does_not_hold_up_other_sessions_and_times_out(daemon_factory):
    line = f"virus/uvscan uvscan_location {PROGRAMS / 'uvscan'} timeout 5 defer_on_error yes"
    daemon = daemon_factory(extra_plugins=[line], args=("--children", "1"))
    multipart = ('MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
                 "--b\r\n\r\nTEST-SLEEP=120\r\n--b--")
    with daemon.connect() as slow:
        slow.start_mail(recipient="user@test.example.org")
        slow.send(f"Subject: slow\r\n{multipart}\r\n.\r\n")
        # The same (only) child serves a second session while the scan runs (a blocking
        # scan would hold it for the 120s the stand-in sleeps).
        with daemon.connect() as other:
            other.expect(220)
            other.expect(250, "EHLO other.example")
            other.expect(221, "QUIT")
        code, text = slow.reply(timeout=30)
        assert code == 452 and text[0] == "Unable to scan for viruses (no verdict within 5s), try again later"
