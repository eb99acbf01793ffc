"""The spam filters in the real daemon: spamassassin against a real spamd, dspam against its stand-in.

spamd (Debian's spamd package) is started for this module in a temporary
directory (tests/spamd_server.py); the daemon is the real qpsmtpd-py-prefork
on a loopback port, delivering to a Maildir. DSPAM is not packaged for
Debian 12: dspam runs tests/programs/fake_dspam instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import free_port
from spamd_server import GTUBE, SpamdServer, spamd_available

FAKE_DSPAM = Path(__file__).resolve().parent.parent / "programs" / "fake_dspam"


@pytest.fixture(scope="module")
def spamd():
    if not spamd_available():
        pytest.skip("spamd (Debian package spamd) is not installed")
    server = SpamdServer().start()
    yield server
    server.stop()


def send(daemon, body: str, subject: str = "hello") -> tuple[int, list[str]]:
    """One message over SMTP; the reply to its end of data."""
    with daemon.connect() as client:
        client.start_mail()
        client.send(f"From: a@example.com\r\nSubject: {subject}\r\nMessage-Id: <wire@example.com>\r\n\r\n"
                    f"{body}\r\n.\r\n")
        reply = client.reply(timeout=60)
        client.command("QUIT")
    return reply


def test_gtube_is_refused_and_ham_delivered_with_spamds_headers(daemon_factory, spamd):
    daemon = daemon_factory(extra_plugins=[f"spamassassin spamd_socket 127.0.0.1:{spamd.port} reject 20 "
                                           "munge_subject_threshold 5"])
    assert send(daemon, GTUBE) == (552, ["spam score exceeded threshold"])
    code, _ = send(daemon, "Hello, lunch tomorrow?")
    assert code == 250
    [delivered] = daemon.messages()
    assert b"\nDelivered-To: postmaster@test.example.org\nX-Spam-Checker-Version: SpamAssassin " in delivered
    assert b"\nX-Spam-Status: No, score=" in delivered and b"\nSubject: hello\n" in delivered


def test_spam_under_reject_is_delivered_with_its_subject_marked_over_the_unix_socket(daemon_factory, spamd):
    daemon = daemon_factory(extra_plugins=[f"spamassassin spamd_socket {spamd.socket_path} reject 2000 "
                                           "munge_subject_threshold 10"])
    code, _ = send(daemon, GTUBE)
    assert code == 250
    [delivered] = daemon.messages()
    assert b"\nX-Spam-Flag: YES\n" in delivered and b"\nSubject: *** SPAM *** hello\n" in delivered


def test_spamd_down_gets_452_and_nothing_is_delivered(daemon_factory):
    daemon = daemon_factory(extra_plugins=[f"spamassassin spamd_socket 127.0.0.1:{free_port()} reject 5"])
    code, text = send(daemon, "Hello")
    assert code == 452 and text[0].startswith("Unable to check the message for spam (cannot connect to spamd")
    assert daemon.messages() == []


def test_dspam_trains_on_spamassassins_verdict_in_the_daemon(daemon_factory, spamd, tmp_path, monkeypatch):
    runs = tmp_path / "dspam-runs"
    monkeypatch.setenv("FAKE_DSPAM_LOG", str(runs))  # the daemon passes its environment to dspam
    daemon = daemon_factory(extra_plugins=[
        f"spamassassin spamd_socket {spamd.socket_path}",
        f"dspam dspam_bin {FAKE_DSPAM} reject agree"])
    code, _ = send(daemon, GTUBE + "\r\nDSPAM-TEST-SPAM")
    assert code == 552
    code, _ = send(daemon, "Hello, lunch tomorrow?")
    assert code == 250
    [delivered] = daemon.messages()
    assert b"\nX-DSPAM-Result: Innocent, probability=0.0023, confidence=1.00\n" in delivered
    assert len(runs.read_text().splitlines()) == 2
