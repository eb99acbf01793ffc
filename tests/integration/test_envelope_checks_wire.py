"""The envelope checks on local data, in the real daemon, over a socket.

badmailfrom, badmailfromto, badrcptto, rcpt_regexp, rcpt_map, loop and
bogus_bounce in one daemon; parse_addr_withhelo and noop_counter in another.
Every read has a deadline (RawClient).
"""

from __future__ import annotations

RCPT = "postmaster@test.example.org"


def message(received: int = 0, header: str = "") -> str:
    hops = "".join(f"Received: from hop{i}.example by hop{i + 1}.example\r\n" for i in range(received))
    return f"{hops}{header}Subject: wire\r\n\r\nbody\r\n.\r\n"


def test_envelope_checks_and_loop_in_one_session(daemon_factory, tmp_path):
    mapfile = tmp_path / "map_example_org"
    mapfile.write_text("known@example.org  OK\n")
    daemon = daemon_factory(
        files={"badmailfrom": ["spammer@example.net", "@junk.example  no junk here", r"^bulk-\d+@ bulk"],
               "badmailfromto": ["stalker@example.net  " + RCPT],
               "badrcptto": ["bad@test.example.org", "% Sorry, percent hack not accepted here"],
               "rcpt_regexp": [r"/^info@test\.example\.org$/  DENY  User not found."],
               "rcpthosts": ["test.example.org"]},
        extra_plugins=["badmailfrom", "badmailfromto", "badrcptto", "rcpt_regexp",
                       f"rcpt_map domain example.org file {mapfile}", "loop 3", "bogus_bounce deny"])
    with daemon.connect(timeout=5) as client:
        client.expect(220)
        client.expect(250, "EHLO client.example.com")
        assert client.command("MAIL FROM:<Spammer@Example.NET>") == \
            (550, ["Your envelope sender is in my badmailfrom list"])
        assert client.command("MAIL FROM:<x@junk.example>") == (550, ["no junk here"])
        assert client.command("MAIL FROM:<bulk-42@lists.example>") == (550, ["bulk"])

        client.expect(250, "MAIL FROM:<stalker@example.net>")
        assert client.command(f"RCPT TO:<{RCPT}>") == (550, [f"mail to {RCPT} not accepted here"])
        client.expect(250, "RSET")

        client.expect(250, "MAIL FROM:<friend@example.net>")
        assert client.command("RCPT TO:<bad@test.example.org>") == \
            (550, ["mail to bad@test.example.org not accepted here (#5.1.1)"])
        assert client.command("RCPT TO:<a%b@test.example.org>") == (550, ["Sorry, percent hack not accepted here"])
        assert client.command("RCPT TO:<info@test.example.org>") == (550, ["User not found."])
        assert client.command("RCPT TO:<unknown@example.org>") == (550, ["No such user."])
        client.expect(250, "RCPT TO:<known@example.org>")
        client.expect(250, f"RCPT TO:<{RCPT}>")
        client.expect(354, "DATA")
        # Two Received lines, and ours makes three.
        client.send(message(received=2))
        assert client.reply() == (552, ["Too many hops (#5.4.6)"])

        client.expect(250, "MAIL FROM:<friend@example.net>")
        client.expect(250, f"RCPT TO:<{RCPT}>")
        client.expect(354, "DATA")
        client.send(message(received=1))
        code, text = client.reply()
        assert code == 250 and text[0].startswith("Queued"), (code, text)

        client.expect(250, "MAIL FROM:<>")
        client.expect(250, f"RCPT TO:<{RCPT}>")
        client.expect(250, "RCPT TO:<known@example.org>")
        client.expect(354, "DATA")
        client.send(message())
        assert client.reply() == (552, ["fail, this bounce message does not have 1 recipient"])
        client.expect(221, "QUIT")
    assert len(daemon.messages()) == 1


def test_helo_without_parameters_and_noop_counter(daemon_factory):
    daemon = daemon_factory(extra_plugins=["parse_addr_withhelo", "noop_counter 2"])
    with daemon.connect(timeout=5) as client:
        client.expect(220)
        client.expect(250, "HELO client.example.com")
        assert client.command("MAIL FROM:<a@example.com> SIZE=10") == (501, ["No parameters allowed in MAIL"])
        client.expect(250, "MAIL FROM:<a@example.com>")
        assert client.command(f"RCPT TO:<{RCPT}> NOTIFY=NEVER") == (501, ["No parameters allowed in RCPT"])
        client.expect(250, "NOOP")
        client.expect(250, f"RCPT TO:<{RCPT}>")  # starts the count again
        client.expect(250, "NOOP")
        assert client.command("NOOP") == (500, ["Stop wasting my time, too many consecutive NOOPs"])
        assert client.wait_eof(5) == b""
