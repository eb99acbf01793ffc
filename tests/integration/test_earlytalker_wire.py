"""earlytalker against the real daemon: the wait runs on the reactor, the peek sees unread bytes."""

import time


def daemon_with(daemon_factory, earlytalker_line: str, children: int = 2):
    return daemon_factory(args=["--children", str(children), "--idle-children", str(children)],
                          extra_plugins=[earlytalker_line])


def test_client_talking_before_the_greeting_is_refused(daemon_factory):
    daemon = daemon_with(daemon_factory, "earlytalker wait 0.5")
    with daemon.connect() as client:
        client.send("EHLO impatient.example\r\n")
        code, text = client.reply(timeout=5)
        assert (code, text) == (550, ["Connecting host started transmitting before SMTP greeting"])
        client.wait_eof()


def test_polite_client_is_greeted_after_the_wait(daemon_factory):
    daemon = daemon_with(daemon_factory, "earlytalker wait 0.5")
    with daemon.connect() as client:
        started = time.monotonic()
        client.expect(220, timeout=5)
        assert time.monotonic() - started >= 0.4
        client.expect(250, "EHLO polite.example")
        client.expect(221, "QUIT")


def test_other_sessions_are_served_while_one_waits(daemon_factory):
    daemon = daemon_with(daemon_factory, "earlytalker wait 1.5", children=1)  # one child serves both
    with daemon.connect() as first, daemon.connect() as second:
        started = time.monotonic()
        first.expect(220, timeout=5)
        second.expect(220, timeout=5)
        assert time.monotonic() - started < 2.5  # both waits ran at once, not one after the other


def test_data_sent_before_354_is_refused_with_check_at_data(daemon_factory):
    daemon = daemon_with(daemon_factory, "earlytalker wait 0.3 check-at DATA")
    with daemon.connect() as client:
        client.expect(220, timeout=5)
        client.expect(250, "EHLO c.example")
        client.expect(250, "MAIL FROM:<a@example.com>")
        client.expect(250, "RCPT TO:<postmaster@test.example.org>")
        client.send("DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n")  # without waiting for 354
        code, text = client.reply(timeout=5)
        assert (code, text) == (554, ["Connecting host started transmitting before SMTP greeting"])


def test_defer_reject_greets_then_refuses_mail(daemon_factory):
    daemon = daemon_with(daemon_factory, "earlytalker wait 0.3 defer-reject 1")
    with daemon.connect() as client:
        client.send("EHLO impatient.example\r\n")
        client.expect(220, timeout=5)
        client.expect(250)
        code, text = client.command("MAIL FROM:<a@example.com>")
        assert (code, text) == (550, ["Connecting host started transmitting before SMTP greeting"])
