"""The content and session policy plugins in the real daemon.

headers + naughty + whitelist together; quit_fortune, content_log and help
doing their blocking work in the reactor's threads; loadcheck and random_error
turning clients away at connect.
"""

import re
import time

from conftest import wait_until

NO_FROM = "Subject: no author\r\n\r\nbody\r\n."


def send_message(client, sender, recipient, message, expect=250):
    client.expect(250, f"MAIL FROM:<{sender}>")
    client.expect(250, f"RCPT TO:<{recipient}>")
    client.expect(354, "DATA")
    return client.expect(expect, message)


def test_headers_naughty_and_whitelist_together(daemon_factory):
    daemon = daemon_factory(
        files={"whitelistsenders": "trusted.example\n", "loglevel": "6"},
        extra_plugins=["whitelist", "naughty reject rcpt", "headers reject naughty"])
    with daemon.connect(timeout=5) as client:
        client.expect(220)
        client.expect(250, "EHLO client.example")

        # A whitelisted sender: immune to headers, and rcpt_ok lets it relay.
        client.expect(250, "MAIL FROM:<boss@trusted.example>")
        client.expect(250, "RCPT TO:<friend@elsewhere.example>")
        client.expect(354, "DATA")
        client.expect(250, NO_FROM)

        # Anyone else: the missing From is only noted (reject naughty) and the message queued ...
        send_message(client, "someone@elsewhere.example", "postmaster@test.example.org", NO_FROM)

        # ... and naughty refuses the next recipient with headers' text and type (perm: no disconnect).
        client.expect(250, "MAIL FROM:<someone@elsewhere.example>")
        code, text = client.command("RCPT TO:<postmaster@test.example.org>")
        assert (code, text) == (550, ["(headers) We require a valid From header"])
        client.expect(221, "QUIT")
        client.wait_eof()
    assert len(daemon.messages()) == 2
    log = daemon.log()
    assert "headers: skip, whitelisted sender" in log
    assert "headers: fail, NAUGHTY, RFC 5322 validation errors" in log
    assert "naughty: disconnecting" in log


def test_headers_rejects_at_once_and_naughty_disconnects(daemon_factory):
    daemon = daemon_factory(extra_plugins=["headers future 1", "naughty reject data"])
    with daemon.connect(timeout=5) as client:
        client.expect(220)
        client.expect(250, "EHLO client.example")
        future = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(time.time() + 5 * 86400))
        text = send_message(client, "a@example.com", "postmaster@test.example.org",
                            f"From: a@example.com\r\nDate: {future}\r\n\r\nbody\r\n.", expect=552)
        assert text == ["The Date header is too far in the future"]
        text = send_message(client, "a@example.com", "postmaster@test.example.org",
                            "From: a@example.com\r\nTo: x@example.com\r\nTo: y@example.com\r\n\r\nbody\r\n.",
                            expect=552)
        assert text == ["Only one To header allowed. See RFC 5322, Section 3.6"]
        client.expect(221, "QUIT")
    assert daemon.messages() == []


def test_fortune_content_log_and_help_use_threads(daemon_factory, tmp_path):
    fortune = tmp_path / "fortune"
    fortune.write_text("#!/bin/sh\necho 'Today is a good day to test.'\necho \"(asked with $1)\"\n")
    fortune.chmod(0o755)
    daemon = daemon_factory(start=False, extra_plugins=[f"quit_fortune fortune {fortune}", "content_log", "help"])
    # The daemon's working directory holds the default help/ and mail/ directories.
    (daemon.base / "help").mkdir()
    (daemon.base / "help" / "mail").write_text("MAIL FROM:<sender>\nStarts a message.\n")
    (daemon.base / "mail").mkdir()
    daemon.start()
    with daemon.connect(timeout=5) as client:
        client.expect(220)
        client.expect(250, "HELO client.example")
        assert client.command("HELP MAIL") == (214, ["MAIL FROM:<sender>", "Starts a message."])
        assert client.command("HELP") == (214, ["Try 'HELP COMMAND' for getting help on COMMAND"])
        send_message(client, "a@example.com", "postmaster@test.example.org",
                     "From: a@example.com\r\nSubject: archived\r\n\r\nkeep me\r\n.")
        assert client.command("QUIT") == (221, ["test.example.org closing connection.",
                                                "  / Today is a good day to test.",
                                                "  / (asked with -s)"])
        client.wait_eof()
    logs = list((daemon.base / "mail").iterdir())
    assert len(logs) == 1 and re.fullmatch(r"\d{8}", logs[0].name)
    archived = logs[0].read_bytes()
    assert b"\nSubject: archived\n\nkeep me\n" in archived and b"\nReceived: from " in archived
    assert len(daemon.messages()) == 1

    # An EHLO client gets no fortune.
    with daemon.connect(timeout=5) as client:
        client.expect(220)
        client.expect(250, "EHLO client.example")
        assert client.command("QUIT") == (221, ["test.example.org closing connection. Have a wonderful day."])


def test_loadcheck_turns_clients_away_while_the_load_is_high(daemon_factory, tmp_path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("9.50 1.00 1.00 1/100 1234\n")
    daemon = daemon_factory(args=["--children", "1"], extra_plugins=[f"loadcheck loadavg {loadavg} cache_time 0.05"])
    with daemon.connect(timeout=5) as client:
        assert client.reply() == (450, ["Server load too high, please try again later."])
        client.wait_eof()
    loadavg.write_text("0.50 1.00 1.00 1/100 1234\n")
    time.sleep(0.1)  # past cache_time

    def greeted():
        with daemon.connect(timeout=5) as client:
            code, _ = client.reply()
            return code == 220
    wait_until(greeted, 5, interval=0.1, message="greeting once the load is low")


def test_random_error_at_100_percent_refuses_every_connection(daemon_factory):
    daemon = daemon_factory(extra_plugins=["random_error 100"])
    for _ in range(3):
        with daemon.connect(timeout=5) as client:
            assert client.reply() == (450, ["random failure"])
            client.wait_eof()
