"""The SMTP wire protocol against the real daemon: raw sockets and smtplib.

Every read has a deadline (RawClient), so a daemon that stops answering fails
a test instead of hanging the suite.
"""

from __future__ import annotations

import hashlib
import select
import smtplib
import socket
import threading
import time

import pytest
from conftest import free_port, proc_status_kb, wait_until

RCPT = "postmaster@test.example.org"

SLOW_MAIL = '''
from qpsmtpd_py.constants import DECLINED
from qpsmtpd_py.plugin import Plugin


class SlowMail(Plugin):
    async def hook_mail(self, transaction, sender, params):
        from twisted.internet import reactor, task

        await task.deferLater(reactor, 0.3, lambda: None)
        return DECLINED
'''


def body_of(message: bytes) -> bytes:
    """What follows the header block of a stored message."""
    return message.split(b"\n\n", 1)[1]


def envelope(sender: str = "a@example.com", recipient: str = RCPT) -> bytes:
    return (f"EHLO client.example.com\r\nMAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n").encode()


# -- pipelining -------------------------------------------------------------------------------


def test_pipelined_burst_with_async_mail_hook_answers_in_order(daemon_factory):
    daemon = daemon_factory(plugin_files={"slow_mail": SLOW_MAIL}, extra_plugins=["slow_mail"])
    burst = envelope() + b"Subject: burst\r\n\r\npipelined body\r\n.\r\nQUIT\r\n"
    with daemon.connect() as client:
        client.send(burst)  # before even the greeting
        replies = client.replies(7, timeout=5)
        assert client.wait_eof() == b""
    codes = [code for code, _ in replies]
    assert codes == [220, 250, 250, 250, 354, 250, 221], replies
    assert "PIPELINING" in replies[1][1]
    assert "sender OK" in replies[2][1][0]
    assert "recipient ok" in replies[3][1][0]
    [message] = daemon.messages()
    assert body_of(message) == b"pipelined body\n"


SLOW_HEADERS_END = '''
from qpsmtpd_py.constants import DECLINED
from qpsmtpd_py.plugin import Plugin


class SlowHeadersEnd(Plugin):
    async def hook_data_headers_end(self, transaction):
        from twisted.internet import reactor, task

        await task.deferLater(reactor, 0.3, lambda: None)
        transaction.notes["seen_subject"] = transaction.header.get("Subject")
        return DECLINED

    def hook_data_post(self, transaction):
        transaction.header.add("X-Seen-Subject", str(transaction.notes.get("seen_subject")).strip())
        return DECLINED
'''


def test_async_data_headers_end_pauses_the_body_without_losing_bytes(daemon_factory):
    daemon = daemon_factory(plugin_files={"slow_headers_end": SLOW_HEADERS_END}, extra_plugins=["slow_headers_end"])
    lines = [b"%06d " % n + b"b" * 90 for n in range(3000)]  # 300 KB: spooled, arrives during the hook
    with daemon.connect() as client:
        client.send(envelope() + b"Subject: paused\r\n\r\n" + b"\r\n".join(lines) + b"\r\n.\r\nQUIT\r\n")
        assert client.codes(7, timeout=10) == [220, 250, 250, 250, 354, 250, 221]
    [message] = daemon.messages()
    assert b"X-Seen-Subject: paused\n" in message
    assert body_of(message) == b"\n".join(lines) + b"\n"


def test_pipelined_transactions_on_one_connection(daemon_factory):
    daemon = daemon_factory(plugin_files={"slow_mail": SLOW_MAIL}, extra_plugins=["slow_mail"])
    one = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<" + RCPT.encode() + b">\r\nDATA\r\n"
    burst = b"EHLO c.example.com\r\n" + b"".join(
        one + f"Subject: n{i}\r\n\r\nmessage {i}\r\n.\r\n".encode() for i in range(3)) + b"QUIT\r\n"
    with daemon.connect() as client:
        client.send(burst)
        codes = client.codes(2 + 4 * 3 + 1, timeout=5)
        client.wait_eof()
    assert codes == [220, 250] + [250, 250, 354, 250] * 3 + [221]
    bodies = sorted(body_of(m) for m in daemon.messages())
    assert bodies == [f"message {i}\n".encode() for i in range(3)]


STUCK_MAIL = '''
from qpsmtpd_py.constants import DECLINED
from qpsmtpd_py.plugin import Plugin


class StuckMail(Plugin):
    async def hook_mail(self, transaction, sender, params):
        from twisted.internet import reactor, task

        if sender.address() == "slow@example.com":
            await task.deferLater(reactor, 30, lambda: None)
        return DECLINED
'''


def test_plugin_timeout_gets_451_and_the_session_continues(daemon_factory):
    daemon = daemon_factory({"plugin_timeout": "1"}, plugin_files={"stuck_mail": STUCK_MAIL},
                            extra_plugins=["stuck_mail"])
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, "EHLO c.example.com")
        started = time.monotonic()
        code, text = client.command("MAIL FROM:<slow@example.com>", timeout=5)
        assert code == 451 and "stuck_mail" in text[0], text
        assert 0.8 < time.monotonic() - started < 3
        client.expect(250, "MAIL FROM:<a@example.com>")
        client.expect(250, f"RCPT TO:<{RCPT}>")
        client.expect(354, "DATA")
        client.send(b"Subject: t\r\n\r\nafter a timeout\r\n.\r\n")
        client.expect(250)
        client.expect(221, "QUIT")
    [message] = daemon.messages()
    assert body_of(message) == b"after a timeout\n"


# -- DATA framing -----------------------------------------------------------------------------


def test_smtp_smuggling_lf_dot_crlf_does_not_end_data(daemon_factory):
    daemon = daemon_factory()
    smuggled = (b"Subject: outer\r\n\r\nhello\n.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<" + RCPT.encode()
                + b">\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\nQUIT\r\n")
    with daemon.connect() as client:
        client.send(envelope() + smuggled)
        codes = client.codes(7, timeout=5)
        client.wait_eof()
    assert codes == [220, 250, 250, 250, 354, 250, 221]
    [message] = daemon.messages()
    assert b"MAIL FROM:<evil@x>\n" in message
    assert b"Subject: smuggled\n" in body_of(message)


@pytest.mark.parametrize("separator", [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n", b"\r\n.\r"])
def test_other_dot_lines_are_content(daemon_factory, separator):
    daemon = daemon_factory()
    with daemon.connect() as client:
        client.start_mail()
        client.send(b"Subject: s\r\n\r\nbefore" + separator + b"after\r\n")
        assert client.poll_reply(0.3) is None, "a dot line other than CRLF.CRLF ended DATA"
        client.send(b".\r\n")
        client.expect(250)
        client.expect(221, "QUIT")
    [message] = daemon.messages()
    body = body_of(message)
    assert body.startswith(b"before\n") and body.endswith(b"after\n")
    assert b"\r" not in body


def test_bare_lf_dot_lf_is_content_and_stored_as_line_breaks(daemon_factory):
    daemon = daemon_factory()
    with daemon.connect() as client:
        client.start_mail()
        client.send(b"Subject: bare\r\n\r\nline1\nline2\n.\nline3\rline4\r\n.\r\n")
        client.expect(250)
        client.expect(221, "QUIT")
    [message] = daemon.messages()
    assert body_of(message) == b"line1\nline2\n.\nline3\nline4\n"


@pytest.mark.parametrize("bare", [b"a\nb", b"a\rb"])
def test_forbid_bare_newline_refuses_with_554_and_session_continues(daemon_factory, bare):
    daemon = daemon_factory({"forbid_bare_newline": "1"})
    with daemon.connect() as client:
        client.start_mail()
        client.send(b"Subject: bare\r\n\r\n" + bare + b"\r\n.\r\n")
        code, text = client.reply()
        assert code == 554, text
        client.expect(250, "MAIL FROM:<a@example.com>")
        client.expect(250, f"RCPT TO:<{RCPT}>")
        client.expect(354, "DATA")
        client.send(b"Subject: clean\r\n\r\nclean\r\n.\r\n")
        client.expect(250)
        client.expect(221, "QUIT")
    [message] = daemon.messages()
    assert body_of(message) == b"clean\n"


def test_nul_and_8bit_bytes_are_stored_byte_exact(daemon_factory):
    daemon = daemon_factory()
    octets = bytes(b for b in range(256) if b not in (10, 13))
    lines = [octets, b"\0\0\0", b"caf\xc3\xa9 \xff\xfe\x80", b"x\0y", b"\x1b[0m"]
    with daemon.connect() as client:
        client.start_mail()
        client.send(b"Subject: binary\r\n\r\n" + b"\r\n".join(lines) + b"\r\n.\r\n")
        client.expect(250)
        client.expect(221, "QUIT")
    [message] = daemon.messages()
    assert body_of(message) == b"\n".join(lines) + b"\n"


def test_8bit_envelope_and_header_bytes_are_stored_byte_exact(daemon_factory):
    daemon = daemon_factory()
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, b"EHLO h\xffst.example")
        client.expect(250, "MAIL FROM:<a@example.com>")
        client.expect(250, b"RCPT TO:<p\xffm@test.example.org>")
        client.expect(354, "DATA")
        client.send(b"Subject: \xe9t\xe9 \xff\r\nX-Nul: a\0b\r\n\r\nbody\r\n.\r\n")
        client.expect(250)
        client.expect(221, "QUIT")
    [message] = daemon.messages()
    assert b"Delivered-To: p\xffm@test.example.org\n" in message
    assert b"(HELO h\xffst.example)" in message
    assert b"\nSubject: \xe9t\xe9 \xff\nX-Nul: a\0b\n\nbody\n" in message


def test_8bit_sender_is_not_accepted_then_failed_forever(daemon_factory):
    daemon = daemon_factory()
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, "EHLO c.example.com")
        code, text = client.command(b"MAIL FROM:<j\xf6rg@example.com>")
        if code != 250:
            assert 500 <= code < 600, text  # refusing it at once is fine too
            return
        client.expect(250, f"RCPT TO:<{RCPT}>")
        client.expect(354, "DATA")
        client.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        code, text = client.reply()
        assert code == 250, f"accepted at MAIL, then {code} {text}"
    [message] = daemon.messages()
    assert message.startswith(b"Return-Path: <") and b"\xf6rg" in message.split(b"\n", 1)[0]


def test_dot_unstuffing(daemon_factory):
    daemon = daemon_factory()
    wire = b"Subject: dots\r\n\r\n..\r\n...\r\n..leading\r\nmid.dle.\r\n. space\r\n.\tx\r\n....\r\n"
    with daemon.connect() as client:
        client.start_mail()
        client.send(wire + b".\r\n")
        client.expect(250)
        client.expect(221, "QUIT")
    [message] = daemon.messages()
    assert body_of(message) == b".\n..\n.leading\nmid.dle.\n space\n\tx\n...\n"


def test_dot_unstuffing_across_tcp_segments(daemon_factory):
    daemon = daemon_factory()
    with daemon.connect() as client:
        client.start_mail()
        for piece in (b"Subject: split\r\n\r\nab\r", b"\n", b".", b".x\r\n.", b".\r\n", b".", b"\r", b"\n"):
            client.send(piece)
            time.sleep(0.02)
        client.expect(250)
        client.expect(221, "QUIT")
    [message] = daemon.messages()
    assert body_of(message) == b"ab\n.x\n.\n"


def test_empty_message_and_header_only_message(daemon_factory):
    daemon = daemon_factory()
    with daemon.connect() as client:
        client.start_mail()
        client.send(b".\r\n")
        client.expect(250)
        client.expect(250, "MAIL FROM:<a@example.com>")
        client.expect(250, f"RCPT TO:<{RCPT}>")
        client.expect(354, "DATA")
        client.send(b"Subject: only a header\r\n.\r\n")
        client.expect(250)
        client.expect(221, "QUIT")
    assert len(daemon.messages()) == 2
    assert any(b"Subject: only a header\n" in m for m in daemon.messages())


def test_250_only_once_the_message_is_in_maildir_new(daemon_factory):
    daemon = daemon_factory()
    with daemon.connect() as client:
        client.start_mail()
        client.send(b"Subject: durable\r\nMessage-Id: <m1@example.com>\r\n\r\nsafe\r\n.\r\n")
        [text] = client.expect(250)
        # no polling: the file must be in new/ when the 250 is read
        [path] = daemon.maildir_files("new")
        assert daemon.maildir_files("tmp") == []
        assert text.split()[:2] == ["Queued!", path.name]
        assert text.endswith("<m1@example.com>")
        assert body_of(path.read_bytes()) == b"safe\n"
        client.expect(221, "QUIT")


def test_maildir_failure_gets_451_and_leaves_no_partial_file(daemon_factory):
    daemon = daemon_factory()
    new = daemon.maildir / "new"
    new.rmdir()
    new.write_text("not a directory")
    with daemon.connect() as client:
        client.start_mail()
        client.send(b"Subject: fails\r\n\r\nnot stored\r\n.\r\n")
        code, text = client.reply()
        assert code == 451, text
        assert daemon.maildir_files("tmp") == []
        new.unlink()
        new.mkdir(mode=0o700)
        client.expect(250, "MAIL FROM:<a@example.com>")
        client.expect(250, f"RCPT TO:<{RCPT}>")
        client.expect(354, "DATA")
        client.send(b"Subject: works\r\n\r\nstored\r\n.\r\n")
        client.expect(250)
        client.expect(221, "QUIT")
    [message] = daemon.messages()
    assert body_of(message) == b"stored\n"
    assert daemon.spool_files() == []


def test_data_line_over_the_limit_gets_552_and_never_resyncs(daemon_factory):
    daemon = daemon_factory({"max_data_line_length": "1000"})
    with daemon.connect() as client:
        client.start_mail()
        client.send(b"Subject: long\r\n\r\n" + b"L" * 5000)  # no end of line yet
        client.send(b"\r\nMAIL FROM:<inside@data>\r\n" + b"M" * 3000 + b"\r\n.\r\n")
        code, text = client.reply()
        assert code == 552, text
        client.expect(250, "MAIL FROM:<a@example.com>")
        client.expect(221, "QUIT")
    assert daemon.messages() == []


def test_long_pipelined_burst_read_late_gets_every_reply(daemon_factory):
    """A client that pipelines a lot before reading: no reply lost, none out of order."""
    daemon = daemon_factory()
    count = 40_000
    with daemon.connect(timeout=30) as client:
        client.expect(220)
        sender = threading.Thread(target=client.send, args=(b"NOOP\r\n" * count + b"QUIT\r\n",))
        sender.start()
        time.sleep(0.3)
        assert client.codes(count, timeout=30) == [250] * count
        client.expect(221, timeout=10)
        sender.join(10)
        assert not sender.is_alive()
        assert client.wait_eof() == b""


# -- size limits --------------------------------------------------------------------------------


def test_size_parameter_over_databytes_is_refused_at_mail(daemon_factory):
    daemon = daemon_factory({"databytes": "1000"})
    with daemon.connect() as client:
        client.expect(220)
        ehlo = client.expect(250, "EHLO c.example.com")
        assert "SIZE 1000" in ehlo
        code, text = client.command("MAIL FROM:<a@example.com> SIZE=1001")
        assert code == 552, text
        client.expect(250, "MAIL FROM:<a@example.com> SIZE=1000")
        client.expect(221, "QUIT")


def test_big_body_without_size_gets_552_after_terminator_and_session_continues(daemon_factory):
    daemon = daemon_factory({"databytes": "1000"})
    with daemon.connect() as client:
        client.start_mail()
        client.send(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n")
        assert client.poll_reply(0.2) is None
        client.send((b"y" * 70 + b"\r\n") * 100)  # over databytes, still inside DATA
        client.send((b"z" * 998 + b"\r\n") * 1000)  # 1 MB more: read and dropped, never spooled
        assert client.poll_reply(0.2) is None, "a reply came before the terminator"
        assert daemon.spool_files() == []
        client.send(b"MAIL FROM:<inside@data>\r\n.\r\n")
        code, text = client.reply()
        assert (code, text) == (552, ["Message too big!"])
        client.expect(250, "RSET")
        client.expect(250, "MAIL FROM:<a@example.com>")
        client.expect(250, f"RCPT TO:<{RCPT}>")
        client.expect(354, "DATA")
        client.send(b"Subject: small\r\n\r\nsmall\r\n.\r\n")
        client.expect(250)
        client.expect(221, "QUIT")
    [message] = daemon.messages()
    assert body_of(message) == b"small\n"
    assert daemon.spool_files() == []


# -- command lines ------------------------------------------------------------------------------


def test_overlong_command_line_gets_500_and_session_continues(daemon_factory):
    daemon = daemon_factory()
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, "EHLO c.example.com")
        assert client.command("NOOP " + "x" * 600) == (500, ["Line too long"])
        # MAIL and RCPT may be longer (room for parameters), up to 1024 octets
        client.expect(250, "MAIL FROM:<a@example.com> " + " ".join(["X-P=" + "v" * 95] * 8))
        assert client.command("RCPT TO:<" + RCPT + "> " + "X-P=" + "v" * 1100)[0] == 500
        client.expect(250, f"RCPT TO:<{RCPT}>")
        client.expect(250, "NOOP")
        client.expect(221, "QUIT")


def test_command_line_limits_count_the_crlf(daemon_factory):
    """RFC 5321 4.5.3.1.4: 512 octets for a command line, CRLF included (1024 for MAIL/RCPT)."""
    daemon = daemon_factory()
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, "EHLO c.example.com")
        assert client.command("NOOP " + "x" * (512 - 2 - 5))[0] == 250  # exactly 512 octets
        assert client.command("NOOP " + "x" * (512 - 2 - 5 + 1)) == (500, ["Line too long"])
        mail = "MAIL FROM:<a@example.com> X-P="
        assert client.command(mail + "v" * (1024 - 2 - len(mail)))[0] == 250  # exactly 1024 octets
        assert client.command(mail + "v" * (1024 - 2 - len(mail) + 1)) == (500, ["Line too long"])
        client.expect(221, "QUIT")


def test_nul_in_command_gets_500(daemon_factory):
    daemon = daemon_factory()
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, "EHLO c.example.com")
        assert client.command(b"MAIL FROM:<a@example.com>\0")[0] == 500
        assert client.command(b"NO\0OP")[0] == 500
        assert client.command(b"NOOP\rRSET")[0] == 500  # a bare CR in a command
        client.expect(250, "MAIL FROM:<a@example.com>")
        client.expect(221, "QUIT")


def test_second_ehlo_is_accepted_and_resets_the_transaction(daemon_factory):
    daemon = daemon_factory()
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, "EHLO one.example.com")
        client.expect(250, "MAIL FROM:<a@example.com>")
        client.expect(250, "EHLO two.example.com")
        client.expect(503, f"RCPT TO:<{RCPT}>")
        client.expect(250, "MAIL FROM:<a@example.com>")
        client.expect(250, f"RCPT TO:<{RCPT}>")
        client.expect(354, "DATA")
        client.send(b"Subject: two\r\n\r\nx\r\n.\r\n")
        client.expect(250)
        client.expect(221, "QUIT")
    [message] = daemon.messages()
    assert b"two.example.com" in message


def test_100kb_line_without_newline_gets_500_and_close(daemon_factory):
    daemon = daemon_factory()
    with daemon.connect() as client:
        client.expect(220)
        sent = 0
        # Send the endless line in pieces and stop once the server answered, so it has
        # read everything we sent before it closes (no reset hides its reply).
        while sent < 100 * 1024:
            try:
                client.send(b"A" * 4096)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 4096
            if select.select([client.sock], [], [], 0.05)[0]:
                break
        assert sent < 100 * 1024, "the server kept reading an endless line"
        assert client.reply(timeout=3) == (500, ["Line too long"])
        client.wait_eof(timeout=3)
    # the daemon still serves
    with daemon.connect() as client:
        client.expect(220)


def test_junk_commands_pipelined_with_count_unrecognized_commands(daemon_factory):
    daemon = daemon_factory(extra_plugins=["count_unrecognized_commands 4"])
    with daemon.connect() as client:
        client.expect(220)
        client.send(b"".join(f"JUNK{i} x\r\n".encode() for i in range(50)))
        replies = client.replies(4, timeout=5)
        assert [code for code, _ in replies] == [500, 500, 500, 521]
        assert "4 unrecognized commands" in replies[3][1][0]
        assert client.wait_eof(timeout=3) == b"", "replies after the 521"


# -- timeouts and disconnects --------------------------------------------------------------------


def test_idle_timeout_gets_421_and_close(daemon_factory):
    daemon = daemon_factory({"timeoutsmtpd": "1"})
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, "EHLO c.example.com")
        started = time.monotonic()
        code, text = client.reply(timeout=4)
        waited = time.monotonic() - started
        assert (code, text) == (421, ["Connection Timed Out"])
        assert 0.8 <= waited <= 3, waited
        assert client.wait_eof(timeout=2) == b""


def test_idle_timeout_inside_data_discards_the_message(daemon_factory):
    daemon = daemon_factory({"timeoutsmtpd": "1", "timeout": "1"})
    with daemon.connect() as client:
        client.start_mail()
        client.send(b"Subject: stalled\r\n\r\n" + (b"s" * 998 + b"\r\n") * 200)
        wait_until(daemon.spool_files, 3, message="body spooled")
        code, text = client.reply(timeout=4)
        assert (code, text) == (421, ["Connection Timed Out"])
        client.wait_eof(timeout=2)
    wait_until(lambda: not daemon.spool_files(), 3, message="spool file removed")
    assert daemon.messages() == []


def test_activity_keeps_a_session_alive_past_the_timeout(daemon_factory):
    daemon = daemon_factory({"timeoutsmtpd": "1"})
    with daemon.connect() as client:
        client.expect(220)
        for _ in range(5):
            time.sleep(0.4)
            client.expect(250, "NOOP")
        client.expect(221, "QUIT")


def test_client_disconnect_mid_data_leaves_nothing_behind(daemon_factory):
    daemon = daemon_factory()
    with daemon.connect() as client:
        client.start_mail()
        client.send(b"Subject: cut\r\n\r\n" + (b"z" * 998 + b"\r\n") * 300)  # past the memory threshold
        wait_until(daemon.spool_files, 5, message="body spooled")
    wait_until(lambda: not daemon.spool_files(), 5, message="spool file removed")
    assert daemon.messages() == []
    assert daemon.maildir_files("tmp") == []
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as smtp:
        smtp.sendmail("a@example.com", [RCPT], b"Subject: after\r\n\r\nstill works\r\n")
    [message] = daemon.messages()
    assert body_of(message) == b"still works\n"


# -- big messages ---------------------------------------------------------------------------------


def test_50mb_message_is_delivered_byte_exact_with_bounded_child_memory(daemon_factory):
    daemon = daemon_factory({"databytes": "60000000"}, args=["--children", "2", "--idle-children", "2"])
    children = daemon.children()
    assert len(children) == 2
    rss_before = {pid: proc_status_kb(pid, "VmRSS") for pid in children}
    line_count, line_length = 50_000, 1000  # 50 MB of CRLF lines on the wire
    expected = hashlib.sha256()
    expected_size = 0
    with daemon.connect(timeout=60) as client:
        client.start_mail()
        header = b"Subject: big\r\n\r\n"
        client.send(header)
        chunk_lines = 1000
        for start in range(0, line_count, chunk_lines):
            lines = [(b"%08d " % n).ljust(line_length - 2, b"0123456789abcdef"[n % 16:n % 16 + 1])
                     for n in range(start, start + chunk_lines)]
            # 8-bit content too, and lines that need dot-stuffing
            lines[0] = b"." + lines[0][1:-1] + b"\xe9"
            wire = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines) + b"\r\n"
            stored = b"\n".join(lines) + b"\n"
            expected.update(stored)
            expected_size += len(stored)
            client.send(wire)
        client.send(b".\r\n")
        client.expect(250, timeout=60)
        client.expect(221, "QUIT")
    hwm_after = {pid: proc_status_kb(pid, "VmHWM") for pid in children if pid in daemon.children()}
    [path] = daemon.maildir_files()
    got = hashlib.sha256()
    size = 0
    with open(path, "rb") as stored_file:
        stored_file.readline()  # the head, up to the blank line after the header
        while stored_file.readline() not in (b"\n", b""):
            pass
        while chunk := stored_file.read(1 << 20):
            got.update(chunk)
            size += len(chunk)
    assert size == expected_size
    assert got.hexdigest() == expected.hexdigest()
    growth_mb = max((hwm_after[pid] - rss_before[pid]) / 1024 for pid in hwm_after)
    assert growth_mb < 20, f"a child grew by {growth_mb:.1f} MB for a 50 MB message"
    assert daemon.spool_files() == []


# -- listening ----------------------------------------------------------------------------------


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")


@needs_ipv6
def test_ipv6_listen_address(daemon_factory):
    daemon = daemon_factory(listen=["[::1]"])
    with smtplib.SMTP("::1", daemon.port, timeout=10) as smtp:
        smtp.sendmail("a@example.com", [RCPT], b"Subject: v6\r\n\r\nover IPv6\r\n")
    [message] = daemon.messages()
    assert body_of(message) == b"over IPv6\n"
    assert b"[::1]" in message  # the Received line names the IPv6 peer
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", daemon.port), timeout=1):
        pass


@needs_ipv6
def test_ipv4_client_on_an_ipv6_socket_is_shown_as_ipv4(daemon_factory):
    daemon = daemon_factory(listen=["[::ffff:127.0.0.1]"])
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as smtp:
        code, text = smtp.ehlo("client.example.com")
        assert code == 250 and b"[127.0.0.1]" in text, text
        smtp.sendmail("a@example.com", [RCPT], b"Subject: mapped\r\n\r\nmapped\r\n")
    [message] = daemon.messages()
    assert b"(127.0.0.1)" in message
    assert b"::ffff:" not in message


def test_two_listen_addresses(daemon_factory):
    second = free_port()
    daemon = daemon_factory(listen=["127.0.0.1", f"127.0.0.1:{second}"])
    for port in (daemon.port, second):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("a@example.com", [RCPT], f"Subject: p\r\n\r\nport {port}\r\n".encode())
    bodies = sorted(body_of(m) for m in daemon.messages())
    assert bodies == sorted(f"port {p}\n".encode() for p in (daemon.port, second))


@needs_ipv6
def test_ipv4_and_ipv6_listen_addresses_on_one_port(daemon_factory):
    daemon = daemon_factory(listen=["127.0.0.1", "[::1]"])
    for host in ("127.0.0.1", "::1"):
        with smtplib.SMTP(host, daemon.port, timeout=10) as smtp:
            smtp.sendmail("a@example.com", [RCPT], f"Subject: h\r\n\r\nvia {host}\r\n".encode())
    assert sorted(body_of(m) for m in daemon.messages()) == [b"via 127.0.0.1\n", b"via ::1\n"]


@needs_ipv6
def test_bracketed_ipv6_address_with_its_own_port(daemon_factory):
    v6_port = free_port()
    daemon = daemon_factory(listen=["127.0.0.1", f"[::1]:{v6_port}"])
    with smtplib.SMTP("::1", v6_port, timeout=10) as smtp:
        assert smtp.noop()[0] == 250
    with pytest.raises(OSError), socket.create_connection(("::1", daemon.port), timeout=1):
        pass


# -- concurrency --------------------------------------------------------------------------------


def test_many_concurrent_sessions_all_delivered_exactly_once(daemon_factory):
    daemon = daemon_factory(args=["--children", "2"])
    threads_count, per_thread = 40, 5
    errors: list[BaseException] = []
    start = threading.Barrier(threads_count)

    def client(n: int) -> None:
        try:
            start.wait(10)
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
                for m in range(per_thread):
                    token = f"token-{n}-{m}"
                    smtp.sendmail("a@example.com", [RCPT], f"Subject: {token}\r\n\r\n{token}\r\n".encode())
        except BaseException as exc:  # collected and reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    bodies = sorted(body_of(m) for m in daemon.messages())
    expected = sorted(f"token-{n}-{m}\n".encode() for n in range(threads_count) for m in range(per_thread))
    assert bodies == expected


def fill_until_blocked(client, line: bytes = b"HELP\r\n", stall: float = 0.3, limit: float = 5.0) -> int:
    """Pipeline `line` without reading replies until the daemon stops reading; returns bytes sent."""
    client.sock.setblocking(False)
    data = line * 20_000
    sent = 0
    last_progress = time.monotonic()
    give_up = last_progress + limit
    while time.monotonic() - last_progress < stall:
        assert time.monotonic() < give_up, f"the daemon kept reading ({sent} bytes) from a client that never reads"
        try:
            sent += client.sock.send(data)
            last_progress = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    client.sock.setblocking(True)
    client.sock.settimeout(client.timeout)
    return sent


def test_idle_timeout_frees_a_session_whose_client_never_reads(daemon_factory):
    """A client that sends but never reads (replies pile up) is still dropped at the timeout."""
    daemon = daemon_factory({"timeoutsmtpd": "1"},
                            args=["--children", "1", "--idle-children", "1", "--sessions-per-child", "1",
                                  "--shutdown-timeout", "1"])
    with daemon.connect() as stuck:
        stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        fill_until_blocked(stuck)
        with daemon.connect() as waiting:
            # the only session slot is taken until the stuck session is dropped
            waiting.expect(220, timeout=4)
            waiting.expect(221, "QUIT")
