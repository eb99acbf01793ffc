"""DATA over a session: framing, smuggling, limits, headers, trace headers, hooks, spooling."""

import email.utils
import os
import re
from datetime import UTC, datetime

import pytest
from harness import ANSWER, SessionDriver, make_qp, plugin_source
from twisted.internet import task

from qpsmtpd_py import __version__
from qpsmtpd_py.constants import OK

# Queues by keeping what a queue plugin can see of each message.
CAPTURE = plugin_source("""
    import os

    class Capture(Plugin):
        def init(self, qp, *args):
            self.messages = []
            self.headers = []
            self.notes = []
            self.spool = []

        def hook_queue(self, transaction):
            out = io.BytesIO()
            transaction.write_message(out)
            self.messages.append(out.getvalue())
            self.headers.append(transaction.header)
            self.notes.append(dict(transaction.notes))
            self.spool.append(sorted(os.listdir(self.qp.spool_dir)))
            return OK
""")


QUEUED = ["250 Queued"]
RECEIVED_DATE = r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}"


def plugin(qp, name):
    return next(p for p in qp.plugins if p.name == name)


def open_data(tmp_path, plugins=("rcpt_ok", "capture"), files=None, plugin_files=None, hello="EHLO client.example"):
    """A session that has just received `354 go ahead`."""
    qp = make_qp(tmp_path, dict(files or {}), plugins=list(plugins),
                 plugin_files={"capture": CAPTURE, "answer": ANSWER, **(plugin_files or {})})
    driver = SessionDriver(qp)
    driver.take()
    driver.command(hello)
    assert driver.command("MAIL FROM:<a@b.example>")[0].startswith("250 ")
    assert driver.command("RCPT TO:<r@test.example.org>")[0].startswith("250 ")
    assert driver.command("DATA") == ["354 go ahead"]
    return qp, driver


def next_message(driver):
    driver.command("MAIL FROM:<a@b.example>")
    driver.command("RCPT TO:<r@test.example.org>")
    assert driver.command("DATA") == ["354 go ahead"]


def captured(qp):
    return plugin(qp, "capture").messages


def without_trace(message: bytes) -> bytes:
    """The message without our Authentication-Results (1 line) and Received (2 lines) on top."""
    lines = message.split(b"\n", 3)
    assert lines[0].startswith(b"Authentication-Results: ")
    assert lines[1].startswith(b"Received: from ")
    assert lines[2].startswith(b" by ")
    return lines[3]


# -- framing ----------------------------------------------------------------------------------

def test_simple_message_is_queued_with_lf_line_endings(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b"Subject: hi\r\nTo: r@test.example.org\r\n\r\nline1\r\n\r\nline3\r\n.\r\n")
    assert driver.take() == QUEUED
    assert without_trace(captured(qp)[0]) == b"Subject: hi\nTo: r@test.example.org\n\nline1\n\nline3\n"


def test_message_split_across_many_sends_and_terminator_byte_by_byte(tmp_path):
    qp, driver = open_data(tmp_path)
    text = b"Subject: split\r\nX-Long: " + b"v" * 300 + b"\r\n\r\n" + b"".join(
        b"body line %d\r\n" % i for i in range(50))
    for start in range(0, len(text), 7):
        driver.send(text[start:start + 7])
        assert driver.take() == []
    for byte in b".\r\n":
        assert driver.take() == []
        driver.send(bytes([byte]))
    assert driver.take() == QUEUED
    expected = text.replace(b"\r\n", b"\n")
    assert without_trace(captured(qp)[0]) == expected


@pytest.mark.parametrize("cut", range(1, 5))
def test_terminator_split_at_every_position(tmp_path, cut):
    qp, driver = open_data(tmp_path)
    data = b"Subject: t\r\n\r\nbody" + b"\r\n.\r\n"
    driver.send(data[:len(data) - 5 + cut])
    assert driver.take() == []
    driver.send(data[len(data) - 5 + cut:])
    assert driver.take() == QUEUED
    assert without_trace(captured(qp)[0]) == b"Subject: t\n\nbody\n"


def test_dot_unstuffing(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b"Subject: dots\r\n\r\n..one\r\n...two\r\n.three\r\nfour.\r\n")
    driver.send(b"..five\r\n.\r\n")
    assert driver.take() == QUEUED
    assert without_trace(captured(qp)[0]) == b"Subject: dots\n\n.one\n..two\nthree\nfour.\n.five\n"


def test_dot_unstuffing_on_the_first_line_of_data(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b"..starts with a dot\r\n.\r\n")
    assert driver.take() == QUEUED
    assert captured(qp)[0].endswith(b"\n\n.starts with a dot\n")


def test_empty_message(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b".\r\n")
    assert driver.take() == QUEUED
    assert without_trace(captured(qp)[0]) == b"\n"
    assert plugin(qp, "capture").headers[0].names() == ["Authentication-Results", "Received"]


def test_data_sent_together_with_the_data_command(tmp_path):
    qp = make_qp(tmp_path, plugins=["rcpt_ok", "capture"], plugin_files={"capture": CAPTURE})
    driver = SessionDriver(qp)
    driver.take()
    driver.send(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@test.example.org>\r\nDATA\r\n"
                b"Subject: eager\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    replies = driver.take()
    assert replies[-4:] == ["250 <r@test.example.org>, recipient ok", "354 go ahead", "250 Queued",
                            "221 test.example.org closing connection. Have a wonderful day."]
    assert without_trace(captured(qp)[0]) == b"Subject: eager\n\nbody\n"


def test_commands_pipelined_after_the_terminator_are_answered(tmp_path):
    _, driver = open_data(tmp_path)
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<c@d.example>\r\nNOOP\r\n")
    assert driver.take() == ["250 Queued", "250 <c@d.example>, sender OK - how exciting to get mail from you!",
                             "250 OK"]


def test_two_messages_in_one_session_are_independent(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b"Subject: one\r\n\r\nfirst body\r\n.\r\n")
    assert driver.take() == QUEUED
    next_message(driver)
    driver.send(b"Subject: two\r\n\r\nsecond body\r\n.\r\n")
    assert driver.take() == QUEUED
    first, second = captured(qp)
    assert without_trace(first) == b"Subject: one\n\nfirst body\n"
    assert without_trace(second) == b"Subject: two\n\nsecond body\n"


# -- SMTP smuggling: only CRLF.CRLF ends DATA -----------------------------------------------

@pytest.mark.parametrize("fake_end", [b"\n.\r\n", b"\r.\r", b"\n.\n", b"\r\n.\n", b"\r\n.\r"])
def test_fake_terminators_do_not_end_data_and_commands_stay_in_the_body(tmp_path, fake_end):
    qp, driver = open_data(tmp_path)
    smuggled = (b"Subject: smuggle\r\n\r\nhello" + fake_end +
                b"MAIL FROM:<x@y.example>\r\nRCPT TO:<r@test.example.org>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\n")
    driver.send(smuggled)
    assert driver.take() == QUEUED
    assert len(captured(qp)) == 1
    body = without_trace(captured(qp)[0])
    assert b"MAIL FROM:<x@y.example>\nRCPT TO:<r@test.example.org>\nDATA\n" in body
    assert body.endswith(b"smuggled body\n")
    # the session is in command mode again, with no transaction
    assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]


@pytest.mark.parametrize("fake_end", [b"\n.\r\n", b"\r.\r", b"\n.\n"])
def test_fake_terminators_split_across_sends_do_not_end_data(tmp_path, fake_end):
    qp, driver = open_data(tmp_path)
    driver.send(b"Subject: smuggle\r\n\r\nhello")
    for byte in fake_end:
        driver.send(bytes([byte]))
    driver.send(b"RSET\r\n")
    assert driver.take() == []
    driver.send(b".\r\n")
    assert driver.take() == QUEUED
    assert b"RSET\n" in without_trace(captured(qp)[0])


def test_bare_lf_and_cr_are_stored_as_line_breaks_and_noted(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b"Subject: bare\nX-Other: y\r\n\r\nline1\nline2\rline3\r\n.\r\n")
    assert driver.take() == QUEUED
    assert without_trace(captured(qp)[0]) == b"Subject: bare\nX-Other: y\n\nline1\nline2\nline3\n"
    headers = plugin(qp, "capture").headers[0]
    assert headers.get("X-Other") == "y"
    assert plugin(qp, "capture").notes[0]["bare_newline"] == 1


def test_crlf_only_message_has_no_bare_newline_note(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b"Subject: clean\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    assert "bare_newline" not in plugin(qp, "capture").notes[0]


@pytest.mark.parametrize("data", [b"Subject: x\r\n\r\nbare\nlf\r\n.\r\n", b"Subject: x\r\n\r\nbare\rcr\r\n.\r\n",
                                  b"Subject: x\r\n\r\nhello\n.\r\nMAIL FROM:<x@y.example>\r\n.\r\n"])
def test_forbid_bare_newline_refuses_after_the_terminator(tmp_path, data):
    qp, driver = open_data(tmp_path, files={"forbid_bare_newline": "1"})
    driver.send(data[:-3])
    assert driver.take() == []
    driver.send(data[-3:])
    assert driver.take() == ["554 Message contains a bare CR or LF (RFC 5321 2.3.8); use CRLF line endings"]
    assert captured(qp) == []
    assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]
    next_message(driver)
    driver.send(b"Subject: ok\r\n\r\nclean\r\n.\r\n")
    assert driver.take() == QUEUED


def test_forbid_bare_newline_0_stores_bare_newlines(tmp_path):
    _, driver = open_data(tmp_path, files={"forbid_bare_newline": "0"})
    driver.send(b"Subject: x\r\n\r\nbare\nlf\r\n.\r\n")
    assert driver.take() == QUEUED


@pytest.mark.parametrize("setting", ["yes", "2"])
def test_forbid_bare_newline_other_than_0_or_1_is_a_config_error(tmp_path, setting):
    with pytest.raises(AssertionError, match="forbid_bare_newline must be 0 or 1"):
        make_qp(tmp_path, files={"forbid_bare_newline": setting})


# -- limits -----------------------------------------------------------------------------------

def test_message_over_databytes_is_refused_after_the_terminator(tmp_path):
    qp, driver = open_data(tmp_path, files={"databytes": "100"})
    driver.send(b"Subject: big\r\n\r\n")
    for _ in range(10):
        driver.send(b"x" * 50 + b"\r\n")
        assert driver.take() == []
    driver.send(b"MAIL FROM:<evil@x.example>\r\n")
    assert driver.take() == []
    driver.send(b".\r\n")
    assert driver.take() == ["552 Message too big!"]
    assert captured(qp) == []
    assert driver.command("MAIL FROM:<c@d.example>") == [
        "250 <c@d.example>, sender OK - how exciting to get mail from you!"]
    assert driver.command("RCPT TO:<r@test.example.org>")[0].startswith("250 ")
    assert driver.command("DATA") == ["354 go ahead"]
    driver.send(b"Subject: small\r\n\r\nok\r\n.\r\n")
    assert driver.take() == QUEUED


@pytest.mark.parametrize(("body_length", "reply"), [(87, QUEUED), (88, ["552 Message too big!"])])
def test_databytes_counts_lf_line_endings(tmp_path, body_length, reply):
    # "Subject: x\n" (11) + "\n" (1) + body + "\n": 100 bytes with an 87-byte body line
    _, driver = open_data(tmp_path, files={"databytes": "100"})
    driver.send(b"Subject: x\r\n\r\n" + b"a" * body_length + b"\r\n.\r\n")
    assert driver.take() == reply


def test_overlong_data_line_is_refused_after_the_terminator(tmp_path):
    qp, driver = open_data(tmp_path, files={"max_data_line_length": "100"})
    driver.send(b"Subject: long\r\n\r\n" + b"y" * 101 + b"\r\nmore\r\n")
    assert driver.take() == []
    driver.send(b".\r\n")
    assert driver.take() == ["552 Message has a line over 100 bytes"]
    assert captured(qp) == []
    assert driver.command("NOOP") == ["250 OK"]


def test_line_of_exactly_the_limit_is_accepted(tmp_path):
    qp, driver = open_data(tmp_path, files={"max_data_line_length": "100"})
    driver.send(b"Subject: long\r\n\r\n" + b"y" * 100 + b"\r\n.\r\n")
    assert driver.take() == QUEUED
    assert without_trace(captured(qp)[0]).endswith(b"\n" + b"y" * 100 + b"\n")


def test_line_of_exactly_the_limit_with_crlf_split_across_reads_is_accepted(tmp_path):
    _, driver = open_data(tmp_path, files={"max_data_line_length": "100"})
    driver.send(b"Subject: long\r\n\r\n")
    driver.send(b"y" * 100 + b"\r")
    driver.send(b"\n.\r\n")
    assert driver.take() == QUEUED


def test_short_bare_lf_lines_in_one_read_are_not_an_overlong_line(tmp_path):
    qp, driver = open_data(tmp_path, files={"max_data_line_length": "100"})
    driver.send(b"Subject: x\r\n\r\n" + b"0123456789\n" * 20)
    driver.send(b"\r\n.\r\n")
    assert driver.take() == QUEUED
    assert without_trace(captured(qp)[0]) == b"Subject: x\n\n" + b"0123456789\n" * 20 + b"\n"


def test_overlong_line_without_crlf_never_runs_the_rest_as_commands(tmp_path):
    qp, driver = open_data(tmp_path, files={"max_data_line_length": "100"})
    driver.send(b"Subject: long\r\n\r\n")
    for _ in range(5):
        driver.send(b"z" * 90)
    driver.send(b"\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<r@test.example.org>\r\n")
    driver.send(b"RSET\r\nQUIT\r\n")
    assert driver.take() == []
    assert not driver.closed
    driver.send(b".\r\n")
    assert driver.take() == ["552 Message has a line over 100 bytes"]
    assert captured(qp) == []
    assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]


def test_overlong_line_discard_keeps_a_cr_that_starts_the_terminator(tmp_path):
    _, driver = open_data(tmp_path, files={"max_data_line_length": "100"})
    driver.send(b"Subject: long\r\n\r\n" + b"z" * 300 + b"\r")
    driver.send(b"\n.\r\n")
    assert driver.take() == ["552 Message has a line over 100 bytes"]


def test_default_data_line_limit_is_65536(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b"Subject: x\r\n\r\n" + b"a" * 65536 + b"\r\n.\r\n")
    assert driver.take() == QUEUED
    next_message(driver)
    driver.send(b"Subject: x\r\n\r\n" + b"a" * 65537 + b"\r\n.\r\n")
    assert driver.take() == ["552 Message has a line over 65536 bytes"]
    assert len(captured(qp)) == 1


# -- connection loss and timeouts during DATA ---------------------------------------------------

def test_eof_mid_data_discards_the_message_and_its_spool_file(tmp_path):
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "capture", "answer:0 data_post DECLINED",
                                              "answer:1 reset_transaction DECLINED"],
                           files={"size_threshold": "100"})
    qp.trail.clear()
    driver.send(b"Subject: cut\r\n\r\n" + b"x" * 70 + b"\r\n" + b"y" * 70 + b"\r\n")
    assert len(os.listdir(qp.spool_dir)) == 1
    driver.close()
    assert captured(qp) == []
    assert os.listdir(qp.spool_dir) == []
    assert [hook for hook, _ in qp.trail] == ["reset_transaction"]


def test_idle_timeout_during_data_uses_timeout_and_discards(tmp_path):
    qp, driver = open_data(tmp_path, files={"timeoutsmtpd": "30", "timeout": "600", "size_threshold": "10"})
    driver.send(b"Subject: slow\r\n\r\n" + b"x" * 50 + b"\r\n")
    session = driver.session
    session.check_idle(session.last_read + 300)
    assert driver.take() == [] and not driver.closed
    session.check_idle(session.last_read + 601)
    assert driver.take() == ["421 Connection Timed Out"]
    assert driver.closed
    assert os.listdir(qp.spool_dir) == []
    assert captured(qp) == []


HANG_HEADERS_END = plugin_source("""
    class Hang(Plugin):
        def hook_data_headers_end(self, transaction):
            return defer.Deferred()
""")


def test_data_headers_end_timeout_mid_data_never_runs_the_body_as_commands(tmp_path):
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "capture", "hang"],
                           plugin_files={"hang": HANG_HEADERS_END})
    clock = task.Clock()
    qp.runner.clock = clock
    qp.runner.plugin_timeout = 5
    driver.send(b"Subject: x\r\n\r\nfirst line\r\n")
    clock.advance(5)
    driver.take()
    driver.send(b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<r@test.example.org>\r\nDATA\r\nmore body\r\n.\r\n")
    replies = driver.take()
    assert not any(reply.startswith(("250 ", "354 ", "503 ", "500 ")) for reply in replies), replies


def test_data_post_timeout_gives_451_and_resets(tmp_path):
    hang = plugin_source("""
        class Hang(Plugin):
            def hook_data_post(self, transaction):
                return defer.Deferred()
    """)
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "capture", "hang"], plugin_files={"hang": hang},
                           files={"size_threshold": "10"})
    clock = task.Clock()
    qp.runner.clock = clock
    qp.runner.plugin_timeout = 5
    driver.send(b"Subject: x\r\n\r\n" + b"body\r\n" * 10 + b".\r\n")
    assert driver.take() == []
    clock.advance(5)
    assert driver.take() == ["451 Timeout in plugin hang, try again later"]
    assert captured(qp) == []
    assert os.listdir(qp.spool_dir) == []
    assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]


# -- headers ----------------------------------------------------------------------------------

def test_header_folding_and_original_text_are_kept(tmp_path):
    qp, driver = open_data(tmp_path)
    head = (b"Subject: a folded\r\n\tsubject line\r\nX-Spaced:   two  spaces \r\n"
            b"to: lower@case.example\r\nX-8bit: caf\xc3\xa9 \xff\r\n")
    driver.send(head + b"\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    header = plugin(qp, "capture").headers[0]
    assert header.get("subject") == "a folded\n\tsubject line"
    assert header.get("TO") == "lower@case.example"
    assert without_trace(captured(qp)[0]) == head.replace(b"\r\n", b"\n") + b"\nbody\n"


def test_mbox_from_line_becomes_mail_from(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b"From someone@example.com Thu Jan  1 00:00:00 2026\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    header = plugin(qp, "capture").headers[0]
    assert header.get("Mail-From") == "someone@example.com Thu Jan  1 00:00:00 2026"
    assert header.get("Subject") == "x"


def test_first_non_header_line_starts_the_body(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b"Subject: x\r\nthis is not a header\r\nX-Late: y\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    header = plugin(qp, "capture").headers[0]
    assert "X-Late" not in header
    assert captured(qp)[0].endswith(b"Subject: x\n\nthis is not a header\nX-Late: y\n\nbody\n")


def test_message_without_headers(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b"just a body\r\nline two\r\n.\r\n")
    assert driver.take() == QUEUED
    assert without_trace(captured(qp)[0]) == b"\njust a body\nline two\n"


def test_data_headers_end_runs_once_when_headers_end(tmp_path):
    probe = plugin_source("""
        class Probe(Plugin):
            def init(self, qp, *args):
                self.seen = []

            def hook_data_headers_end(self, transaction):
                self.seen.append((transaction.header.get("Subject"), transaction.body_size))
                return DECLINED
    """)
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "capture", "probe"], plugin_files={"probe": probe})
    driver.send(b"Subject: early\r\n")
    assert plugin(qp, "probe").seen == []
    driver.send(b"\r\n")
    assert plugin(qp, "probe").seen == [("early", 0)]
    driver.send(b"Subject: not a header now\r\n" * 3)
    driver.send(b".\r\n")
    assert driver.take() == QUEUED
    assert plugin(qp, "probe").seen == [("early", 0)]


def test_data_headers_end_runs_for_a_message_that_ends_inside_the_headers(tmp_path):
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "capture", "answer data_headers_end DECLINED"])
    driver.send(b"Subject: only headers\r\n.\r\n")
    assert driver.take() == QUEUED
    assert [hook for hook, _ in qp.trail] == ["data_headers_end"]
    assert plugin(qp, "capture").headers[0].get("Subject") == "only headers"


@pytest.mark.parametrize(("code", "reply"), [
    ("DENY_DISCONNECT", "554 Message denied"),
    ("DENYSOFT_DISCONNECT", "421 Message denied temporarily"),
])
def test_data_headers_end_disconnect_answers_at_once_and_closes(tmp_path, code, reply):
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "capture", f"answer data_headers_end {code}"])
    driver.send(b"Subject: x\r\n\r\n")
    assert driver.take() == [reply]
    assert driver.closed
    driver.send(b"MAIL FROM:<evil@x.example>\r\n.\r\n")
    assert driver.take() == []
    assert captured(qp) == []


def test_data_headers_end_disconnect_with_message(tmp_path):
    _, driver = open_data(tmp_path, plugins=["rcpt_ok", "capture", "answer data_headers_end DENY_DISCONNECT spam"])
    driver.send(b"Subject: x\r\n\r\nbody\r\n")
    assert driver.take() == ["554 spam"]
    assert driver.closed


def test_data_headers_end_runs_when_the_whole_message_arrives_in_one_read(tmp_path):
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "capture", "answer data_headers_end DENY_DISCONNECT spam"])
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert [hook for hook, _ in qp.trail] == ["data_headers_end"]
    assert driver.take() == ["554 spam"]
    assert captured(qp) == []


@pytest.mark.parametrize("code", ["DENY", "DENYSOFT", "OK", "DONE"])
def test_data_headers_end_other_codes_are_ignored(tmp_path, code):
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "capture", f"answer data_headers_end {code} no"])
    driver.send(b"Subject: x\r\n\r\n")
    assert [hook for hook, _ in qp.trail] == ["data_headers_end"]
    assert driver.take() == []
    driver.send(b"body\r\n.\r\n")
    assert driver.take() == QUEUED


# -- trace headers ------------------------------------------------------------------------------

def test_received_and_authentication_results_exact_format_for_ehlo(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    message = captured(qp)[0].decode()
    pattern = (r"Authentication-Results: test\.example\.org; auth=none\n"
               r"Received: from \[127\.0\.0\.1\] \(HELO client\.example\) \(127\.0\.0\.1\)\n"
               rf" by test\.example\.org \(qpsmtpd-py/{re.escape(__version__)}\) with ESMTP ; ({RECEIVED_DATE})\n"
               r"Subject: x\n\nbody\n")
    match = re.fullmatch(pattern, message)
    assert match, message
    stamp = email.utils.parsedate_to_datetime(match.group(1))
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 3600


def test_received_says_smtp_after_helo(tmp_path):
    qp, driver = open_data(tmp_path, hello="HELO old.example")
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    received = plugin(qp, "capture").headers[0].get("Received")
    assert re.fullmatch(r"from \[127\.0\.0\.1\] \(HELO old\.example\) \(127\.0\.0\.1\)\n"
                        rf" by test\.example\.org \(qpsmtpd-py/{re.escape(__version__)}\) with SMTP ; {RECEIVED_DATE}",
                        received), received


def test_received_line_hook_ok_replaces_the_value(tmp_path):
    custom = plugin_source("""
        class Custom(Plugin):
            def hook_received_line(self, transaction, proto, auth, ssl):
                self.args_seen = (proto, auth, ssl)
                return OK, "from somewhere\\n  by us"
    """)
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "capture", "custom"], plugin_files={"custom": custom})
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    assert plugin(qp, "custom").args_seen == ("ESMTP", "", "")
    assert b"\nReceived: from somewhere\n  by us\nSubject: x\n" in captured(qp)[0]


def test_me_auth_results_names_the_authserv_id(tmp_path):
    qp, driver = open_data(tmp_path, files={"me-auth-results": "auth.example"})
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    assert captured(qp)[0].startswith(b"Authentication-Results: auth.example; auth=none\nReceived: ")


def test_foreign_authentication_results_are_renamed(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b"Authentication-Results: evil.example; spf=pass\r\nSubject: x\r\n"
                b"authentication-results: evil.example;\r\n dkim=pass\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    header = plugin(qp, "capture").headers[0]
    assert header.get_all("Authentication-Results") == ["test.example.org; auth=none"]
    assert header.get_all("Original-Authentication-Results") == ["evil.example; spf=pass",
                                                                 "evil.example;\n dkim=pass"]
    assert header.get("Subject") == "x"


@pytest.mark.parametrize("h_tag", ["h=From:Subject:Authentication-Results", "h = from : authentication-results",
                                   "h=From:\r\n\tAuthentication-Results:Subject"])
def test_authentication_results_covered_by_dkim_signature_are_kept(tmp_path, h_tag):
    qp, driver = open_data(tmp_path)
    driver.send(b"Authentication-Results: upstream.example; spf=pass\r\n"
                b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel;\r\n\t" + h_tag.encode() +
                b"; bh=abc; b=def\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    header = plugin(qp, "capture").headers[0]
    assert header.get_all("Authentication-Results") == ["test.example.org; auth=none",
                                                        "upstream.example; spf=pass"]
    assert "Original-Authentication-Results" not in header


def test_dkim_signature_not_covering_authentication_results_does_not_protect_them(tmp_path):
    qp, driver = open_data(tmp_path)
    driver.send(b"Authentication-Results: upstream.example; spf=pass\r\n"
                b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=From:Subject; bh=abc; b=def\r\n"
                b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    header = plugin(qp, "capture").headers[0]
    assert header.get_all("Original-Authentication-Results") == ["upstream.example; spf=pass"]


def test_me_auth_results_none_adds_nothing_and_renames_nothing(tmp_path):
    qp, driver = open_data(tmp_path, files={"me-auth-results": "none"})
    driver.send(b"Authentication-Results: upstream.example; spf=pass\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    header = plugin(qp, "capture").headers[0]
    assert header.names() == ["Received", "Authentication-Results", "Subject"]
    assert header.get("Authentication-Results") == "upstream.example; spf=pass"


AUTH_RESULTS = plugin_source("""
    class Results(Plugin):
        def hook_connect(self, transaction):
            self.store_auth_results("iprev=pass policy.iprev=127.0.0.1")
            return DECLINED

        def hook_rcpt(self, transaction, rcpt, params):
            self.store_auth_results(f"x-rcpt=pass smtp.rcptto={rcpt.address()}")
            return OK

        def hook_data_post_headers(self, transaction):
            self.store_auth_results(f"x-body=pass header.subject={transaction.header.get('Subject')}")
            return DECLINED
""")


def test_auth_results_from_a_transaction_stay_with_that_message(tmp_path):
    qp, driver = open_data(tmp_path, plugins=["results", "capture"], plugin_files={"results": AUTH_RESULTS})
    driver.send(b"Subject: one\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    driver.command("MAIL FROM:<c@d.example>")
    driver.command("RCPT TO:<s@test.example.org>")
    driver.command("DATA")
    driver.send(b"Subject: two\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    first, second = (h.get("Authentication-Results") for h in plugin(qp, "capture").headers)
    assert first == ("test.example.org; auth=none; iprev=pass policy.iprev=127.0.0.1; "
                     "x-rcpt=pass smtp.rcptto=r@test.example.org; x-body=pass header.subject=one")
    assert second == ("test.example.org; auth=none; iprev=pass policy.iprev=127.0.0.1; "
                      "x-rcpt=pass smtp.rcptto=s@test.example.org; x-body=pass header.subject=two")


def test_auth_results_from_the_mail_hook_do_not_leak_into_the_next_message(tmp_path):
    spf = plugin_source("""
        class Spf(Plugin):
            def hook_mail(self, transaction, sender, params):
                self.store_auth_results(f"spf=pass smtp.mailfrom={sender.host}")
                return DECLINED
    """)
    qp = make_qp(tmp_path, plugins=["spf", "rcpt_ok", "capture"], plugin_files={"spf": spf, "capture": CAPTURE})
    driver = SessionDriver(qp)
    driver.take()
    driver.command("EHLO client.example")
    for sender in ("one.example", "two.example"):
        driver.command(f"MAIL FROM:<a@{sender}>")
        driver.command("RCPT TO:<r@test.example.org>")
        driver.command("DATA")
        driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        assert driver.take() == QUEUED
    second = plugin(qp, "capture").headers[1].get("Authentication-Results")
    assert second == "test.example.org; auth=none; spf=pass smtp.mailfrom=two.example"


def test_auth_results_of_a_reset_transaction_are_dropped(tmp_path):
    qp, driver = open_data(tmp_path, plugins=["results", "capture"], plugin_files={"results": AUTH_RESULTS})
    driver.send(b".\r\n")
    driver.take()
    driver.command("MAIL FROM:<c@d.example>")
    driver.command("RCPT TO:<gone@test.example.org>")
    driver.command("RSET")
    next_message(driver)
    driver.send(b"Subject: three\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    last = plugin(qp, "capture").headers[-1].get("Authentication-Results")
    assert "gone@" not in last


# -- data_post and queue ------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "reply", "closed"), [
    ("DENY", ["552 Message denied"], False),
    ("DENYSOFT", ["452 Message denied temporarily"], False),
    ("DENY_DISCONNECT", ["552 Message denied"], True),
    ("DENYSOFT_DISCONNECT", ["452 Message denied temporarily"], True),
    ("DONE", [], False),
    ("OK", QUEUED, False),
    ("DECLINED", QUEUED, False),
])
def test_data_post_matrix(tmp_path, code, reply, closed):
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", f"answer data_post {code}", "capture"])
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == reply
    assert driver.closed is closed
    assert len(captured(qp)) == (1 if reply == QUEUED else 0)
    if code in ("DENY", "DENYSOFT"):
        assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]


def test_data_post_denial_with_message(tmp_path):
    _, driver = open_data(tmp_path, plugins=["rcpt_ok", "answer data_post DENY looks like spam", "capture"])
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == ["552 looks like spam"]


def test_data_post_hooks_see_trace_headers(tmp_path):
    peek = plugin_source("""
        class Peek(Plugin):
            def hook_data_post(self, transaction):
                self.names = transaction.header.names()
                return DECLINED
    """)
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "peek", "capture"], plugin_files={"peek": peek})
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    assert plugin(qp, "peek").names == ["Authentication-Results", "Received", "Subject"]


@pytest.mark.parametrize(("line", "reply"), [
    ("answer queue OK", ["250 Queued"]),
    ("answer queue OK Queued as 1234", ["250 Queued as 1234"]),
    ("answer queue DENY", ["552 Message denied"]),
    ("answer queue DENYSOFT", ["452 Message denied temporarily"]),
    ("answer queue DECLINED", ["451 Queuing declined or disabled; try again later"]),
    ("answer queue DONE", []),
    (None, ["451 Queuing declined or disabled; try again later"]),
])
def test_queue_matrix(tmp_path, line, reply):
    plugins = ["rcpt_ok"] + ([line] if line else [])
    _, driver = open_data(tmp_path, plugins=plugins)
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == reply
    assert not driver.closed
    assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]


def test_queue_pre_queue_and_queue_post_run_in_order(tmp_path):
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "answer:0 queue_post DECLINED",
                                              "answer:1 queue OK", "answer:2 queue_pre DECLINED",
                                              "answer:3 data_post DECLINED"])
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    assert [hook for hook, _ in qp.trail] == ["data_post", "queue_pre", "queue", "queue_post"]


def test_queue_pre_done_stops_before_queue(tmp_path):
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "answer:0 queue_pre DONE", "answer:1 queue OK"])
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == []
    assert [hook for hook, _ in qp.trail] == ["queue_pre"]


def test_queue_plugin_reads_back_the_exact_message(tmp_path):
    qp, driver = open_data(tmp_path)
    lines = [b"Subject: exact", b"From: <a@b.example>", b"", b"para one", b"  indented", b"", b"..dot", b"tail"]
    driver.send(b"\r\n".join(lines) + b"\r\n.\r\n")
    assert driver.take() == QUEUED
    expected = b"Subject: exact\nFrom: <a@b.example>\n\npara one\n  indented\n\n.dot\ntail\n"
    assert without_trace(captured(qp)[0]) == expected


# -- pipelining with an asynchronous plugin -------------------------------------------------------

def test_pipelined_rcpt_and_data_answered_after_async_mail_hook(tmp_path):
    slow = plugin_source("""
        class Slow(Plugin):
            def init(self, qp, *args):
                self.gate = defer.Deferred()
                self.calls = 0

            async def hook_mail(self, transaction, sender, params):
                self.calls += 1
                await self.gate
                return DECLINED
    """)
    qp = make_qp(tmp_path, plugins=["slow", "rcpt_ok", "capture"], plugin_files={"slow": slow, "capture": CAPTURE})
    qp.runner.clock = task.Clock()
    driver = SessionDriver(qp)
    driver.take()
    driver.send(b"EHLO client.example\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<r@test.example.org>\r\nDATA\r\n")
    assert driver.take() == ["250-test.example.org Hi [127.0.0.1] [127.0.0.1]", "250-PIPELINING", "250 8BITMIME"]
    assert plugin(qp, "slow").calls == 1
    assert driver.transport.producerState == "paused"
    driver.send(b"Subject: pipelined\r\n\r\nbody\r\n")
    assert driver.take() == []
    plugin(qp, "slow").gate.callback(None)
    assert driver.take() == ["250 <a@b.c>, sender OK - how exciting to get mail from you!",
                             "250 <r@test.example.org>, recipient ok", "354 go ahead"]
    assert driver.transport.producerState == "producing"
    driver.send(b".\r\n")
    assert driver.take() == QUEUED
    assert without_trace(captured(qp)[0]) == b"Subject: pipelined\n\nbody\n"


def test_async_queue_plugin_answers_when_done(tmp_path):
    later = plugin_source("""
        class Later(Plugin):
            def init(self, qp, *args):
                self.pending = []

            def hook_queue(self, transaction):
                d = defer.Deferred()
                self.pending.append((d, transaction.body_bytes()))
                return d
    """)
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "later"], plugin_files={"later": later})
    qp.runner.clock = task.Clock()
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\nNOOP\r\n")
    assert driver.take() == []
    d, body = plugin(qp, "later").pending[0]
    assert body == b"body\n"
    d.callback((OK, "Queued as abc"))
    assert driver.take() == ["250 Queued as abc", "250 OK"]


# -- spooling ---------------------------------------------------------------------------------

def test_big_body_is_spooled_to_a_file_removed_after_the_transaction(tmp_path):
    spool_probe = plugin_source("""
        import os

        class Probe(Plugin):
            def init(self, qp, *args):
                self.seen = []

            def hook_queue(self, transaction):
                path = transaction.body_filename()
                with open(path, "rb") as body:
                    content = body.read()
                self.seen.append((path, os.path.exists(path), content, transaction.body_size))
                return OK
    """)
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "probe"], plugin_files={"probe": spool_probe},
                           files={"size_threshold": "100"})
    body = b"".join(b"%05d " % i + b"x" * 94 + b"\r\n" for i in range(100))
    assert len(body) == 10200
    driver.send(b"Subject: big\r\n\r\n" + body + b".\r\n")
    assert driver.take() == QUEUED
    ((path, existed, content, size),) = plugin(qp, "probe").seen
    assert existed
    assert path.parent == qp.spool_dir
    assert content == body.replace(b"\r\n", b"\n")
    assert size == 10100
    assert not path.exists()
    assert os.listdir(qp.spool_dir) == []


def test_small_body_stays_in_memory(tmp_path):
    qp, driver = open_data(tmp_path, files={"size_threshold": "10000"})
    driver.send(b"Subject: small\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    assert plugin(qp, "capture").spool == [[]]


def test_spool_file_removed_after_a_rejected_message(tmp_path):
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "answer data_post DENY", "capture"],
                           files={"size_threshold": "100"})
    driver.send(b"Subject: big\r\n\r\n" + b"x" * 500 + b"\r\n")
    assert len(os.listdir(qp.spool_dir)) == 1
    driver.send(b".\r\n")
    assert driver.take() == ["552 Message denied"]
    assert os.listdir(qp.spool_dir) == []


# -- the client goes away while a plugin works on the message ------------------------------------

def test_client_leaving_during_async_data_post_never_queues_an_empty_transaction(tmp_path):
    slow = plugin_source("""
        class Slow(Plugin):
            def hook_data_post(self, transaction):
                self.pending = defer.Deferred()
                return self.pending
    """)
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "slow", "capture"], plugin_files={"slow": slow})
    qp.runner.clock = task.Clock()
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    driver.close()
    plugin(qp, "slow").pending.callback(None)
    for message, header in zip(captured(qp), plugin(qp, "capture").headers, strict=True):
        assert header is not None and without_trace(message) == b"Subject: x\n\nbody\n"


def test_client_leaving_during_async_queue_leaves_the_message_readable_until_the_hook_answers(tmp_path):
    slow_queue = plugin_source("""
        class SlowQueue(Plugin):
            def init(self, qp, *args):
                self.delivered = []

            def hook_queue(self, transaction):
                self.pending = defer.Deferred()

                def deliver(_):
                    out = io.BytesIO()
                    transaction.write_message(out)
                    self.delivered.append(out.getvalue())
                    return OK

                return self.pending.addCallback(deliver)
    """)
    qp, driver = open_data(tmp_path, plugins=["rcpt_ok", "slowqueue"], plugin_files={"slowqueue": slow_queue},
                           files={"size_threshold": "10"})
    qp.runner.clock = task.Clock()
    driver.send(b"Subject: x\r\n\r\n" + b"body line\r\n" * 5 + b".\r\n")
    driver.close()
    plugin(qp, "slowqueue").pending.callback(None)
    (delivered,) = plugin(qp, "slowqueue").delivered
    assert without_trace(delivered) == b"Subject: x\n\n" + b"body line\n" * 5
    assert os.listdir(qp.spool_dir) == []


# -- trace headers for TLS and authenticated sessions ---------------------------------------------

SECURE = plugin_source("""
    class Secure(Plugin):
        def hook_connect(self, transaction):
            args = self.arguments
            if "tls" in args:
                self.connection.tls_cipher = "TLS_AES_256_GCM_SHA384"
            if "auth" in args:
                self.connection.notes["auth_user"] = "bob@b.example"
                self.connection.notes["auth_mechanism"] = "PLAIN"
            return DECLINED
""")


@pytest.mark.parametrize(("args", "hello", "with_text"), [
    ("tls", "EHLO", "ESMTPS (TLS_AES_256_GCM_SHA384 encrypted)"),
    ("auth", "EHLO", "ESMTPA "),
    ("tls auth", "EHLO", "ESMTPSA (TLS_AES_256_GCM_SHA384 encrypted)"),
    ("tls auth", "HELO", "SMTP (TLS_AES_256_GCM_SHA384 encrypted)"),
])
def test_received_protocol_names_tls_and_auth(tmp_path, args, hello, with_text):
    qp, driver = open_data(tmp_path, plugins=[f"secure {args}", "rcpt_ok", "capture"],
                           plugin_files={"secure": SECURE}, hello=f"{hello} client.example")
    driver.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == QUEUED
    header = plugin(qp, "capture").headers[0]
    assert re.search(rf" with {re.escape(with_text)}; {RECEIVED_DATE}$", header.get("Received")), header.get("Received")
    expected_auth = "auth=pass (plain) smtp.auth=bob@b.example" if "auth" in args else "auth=none"
    assert header.get("Authentication-Results") == f"test.example.org; {expected_auth}"
