"""spamassassin: whole sessions against a real spamd, and a scripted one for the rest.

The real peer is SpamAssassin's spamd (Debian's spamd package), started once
for this module in a temporary directory (tests/spamd_server.py). `FakeSpamd`,
a scripted spamd in a thread, gives the answers a test needs (a score, an
error, silence) and records each request; it also counts requests in flight.
Each test runs its own Twisted reactor.
"""

from __future__ import annotations

import hashlib
import socket
import threading

import pytest
from harness import SessionDriver
from reactor_helpers import capture_log, dot_stuffed, free_port, hand_over, next_reply, run, wait_until
from spam_helpers import after_scan, filter_qp, load_errors, message
from spamd_server import GTUBE, SpamdServer, spamd_available
from twisted.internet import task

from qpsmtpd_py.constants import LOGWARN
from qpsmtpd_py.spam_scan import process_user

needs_spamd = pytest.mark.skipif(not spamd_available(), reason="spamd (Debian package spamd) is not installed")


def spamd_answer(*fields: str, spam_line: str | None = "False ; 0.1 / 5.0") -> bytes:
    """An EX_OK answer to HEADERS carrying these header lines (folded ones with \\n\\t)."""
    body = "".join(field.replace("\n", "\r\n") + "\r\n" for field in ("Subject: hello", *fields)) + "\r\n"
    head = "SPAMD/1.1 0 EX_OK\r\n" + f"Content-length: {len(body)}\r\n"
    if spam_line is not None:
        head += f"Spam: {spam_line}\r\n"
    return (head + "\r\n" + body).encode()


HAM = spamd_answer("X-Spam-Checker-Version: SpamAssassin 4.0.1 (2024-03-25) on test", "X-Spam-Level: ",
                   "X-Spam-Status: No, score=0.1 required=5.0 tests=MSGID_SHORT,\n\tNO_RECEIVED "
                   "autolearn=disabled version=4.0.1")


def spam(score: float, required: float = 5.0, autolearn: str = "no") -> bytes:
    return spamd_answer("X-Spam-Flag: YES", "X-Spam-Level: " + "*" * int(score),
                        f"X-Spam-Status: Yes, score={score} required={required} tests=GTUBE "
                        f"autolearn={autolearn} version=4.0.1", spam_line=f"True ; {score} / {required}")


class FakeSpamd:
    """A scripted spamd on a loopback port: `answer` is the bytes sent back (None: say nothing)."""

    def __init__(self, answer: bytes | None = HAM, hold: threading.Event | None = None):
        self.answer = answer
        self.hold = hold
        self.requests: list[tuple[list[str], bytes]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.closed_by_client = threading.Event()
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            length = int(next(line.split(":")[1] for line in lines if line.lower().startswith("content-length")))
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
            self.requests.append((lines, body))
            if self.hold is not None:
                self.hold.wait(30)
            if self.answer is None:
                try:
                    closed = conn.recv(1) == b""
                except ConnectionResetError:  # an aborted connection
                    closed = True
                if closed:
                    self.closed_by_client.set()
                return
            conn.sendall(self.answer)
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.in_flight -= 1

    def close(self):
        self.listener.close()


@pytest.fixture
def fake():
    servers = []

    def make(answer: bytes | None = HAM, hold=None) -> FakeSpamd:
        servers.append(FakeSpamd(answer, hold))
        return servers[-1]

    yield make
    for server in servers:
        if server.hold is not None:
            server.hold.set()
        server.close()


@pytest.fixture(scope="module")
def spamd():
    if not spamd_available():
        pytest.skip("spamd (Debian package spamd) is not installed")
    server = SpamdServer().start()
    yield server
    server.stop()


def check(tmp_path, reactor, args: str, text: str | None = None, files=None, recipients=("user@test.example.org",),
          before=("rcpt_ok",)):
    """One message through `spamassassin <args>`: the reply, and the message after the scan."""
    qp = filter_qp(tmp_path, reactor, f"spamassassin {args}", files, before)
    reply = hand_over(reactor, qp, text or message(), recipients=recipients)
    return reply, after_scan(qp)


# -- against the real spamd ------------------------------------------------------------------------

@needs_spamd
def test_gtube_over_the_reject_score_is_refused_by_real_spamd_over_its_unix_socket(tmp_path, reactor, spamd):
    reply, _ = check(tmp_path, reactor, f"spamd_socket {spamd.socket_path} reject 20", message(body=GTUBE))
    assert reply == "552 spam score exceeded threshold"


@needs_spamd
def test_ham_from_real_spamd_passes_with_its_headers_and_note(tmp_path, reactor, spamd):
    reply, seen = check(tmp_path, reactor, f"spamd_socket 127.0.0.1:{spamd.port} reject 20")
    assert reply.startswith("250 ")
    assert seen["header"].startswith("X-Spam-Checker-Version: SpamAssassin ")
    assert "X-Spam-Status: No, score=" in seen["header"]
    note = seen["notes"]["spamassassin"]
    assert note["is_spam"] == "No" and float(note["score"]) < 5 and note["required"] == "5.0"


@needs_spamd
def test_gtube_below_reject_passes_flagged_with_subject_munged_by_real_spamd(tmp_path, reactor, spamd):
    reply, seen = check(tmp_path, reactor, f"spamd_socket {spamd.socket_path} munge_subject_threshold 10",
                        message(body=GTUBE))
    assert reply.startswith("250 ")
    assert "X-Spam-Flag: YES" in seen["header"] and "tests=GTUBE" in seen["header"]
    assert "\nSubject: *** SPAM *** hello\n" in seen["header"]
    assert seen["karma"] == -1


# -- the request -----------------------------------------------------------------------------------

def test_request_is_headers_with_exact_length_user_and_envelope_line(tmp_path, reactor, fake):
    spamd = fake()
    check(tmp_path, reactor, f"spamd_socket {spamd.address}")
    lines, body = spamd.requests[0]
    assert lines[0] == "HEADERS SPAMC/1.4"
    assert f"Content-length: {len(body)}" in lines and f"User: {process_user()}" in lines
    assert body.startswith(b"X-Envelope-From: <a@example.com>\nAuthentication-Results: ")
    assert b"\nMessage-Id: <spam-test@example.com>\n\nHello" in body
    assert body.endswith(b"\n\nHello, lunch tomorrow?\n")


def test_large_spooled_body_is_streamed_to_spamd_whole(tmp_path, reactor, fake):
    spamd = fake()
    body = "".join(f"line {n} of a long message body, long enough to be spooled\r\n" for n in range(20000))
    reply, _ = check(tmp_path, reactor, f"spamd_socket {spamd.address} size_limit 5000000",
                     message(body=body), files={"size_threshold": "1000"})
    assert reply.startswith("250 ")
    sent = spamd.requests[0][1]
    expected = body.replace("\r\n", "\n").encode()
    assert hashlib.sha256(sent[-len(expected) - 1:-1]).digest() == hashlib.sha256(expected).digest()


def test_vpopmail_user_scans_for_the_single_recipient(tmp_path, reactor, fake):
    spamd = fake()
    check(tmp_path, reactor, f"spamd_socket {spamd.address} spamd_user vpopmail")
    assert "User: user@test.example.org" in spamd.requests[0][0]


def test_several_recipients_scan_for_spamd_user_and_get_x_spam_user(tmp_path, reactor, fake):
    spamd = fake()
    _, seen = check(tmp_path, reactor, f"spamd_socket {spamd.address} spamd_user vpopmail",
                    recipients=("user@test.example.org", "other@test.example.org"))
    assert "User: vpopmail" in spamd.requests[0][0]
    assert "X-Spam-User: vpopmail, 2 recipients\n" in seen["header"]


# -- headers, subject, notes ---------------------------------------------------------------------------

def test_spamd_fields_go_on_top_in_spamds_order_with_folding(tmp_path, reactor, fake):
    spamd = fake()
    _, seen = check(tmp_path, reactor, f"spamd_socket {spamd.address}")
    assert seen["header"].startswith(
        "X-Spam-Checker-Version: SpamAssassin 4.0.1 (2024-03-25) on test\nX-Spam-Level: \n"
        "X-Spam-Status: No, score=0.1 required=5.0 tests=MSGID_SHORT,\n\tNO_RECEIVED autolearn=disabled "
        "version=4.0.1\nAuthentication-Results: ")
    note = seen["notes"]["spamassassin"]
    assert {key: note[key] for key in ("is_spam", "score", "required", "tests", "autolearn", "version")} == {
        "is_spam": "No", "score": "0.1", "required": "5.0", "tests": "MSGID_SHORT,NO_RECEIVED",
        "autolearn": "disabled", "version": "4.0.1"}


FORGED = "X-Spam-Status: No, score=-100.0\r\nX-Spam-Flag: YES\r\n"


def test_incoming_spam_fields_are_renamed_to_x_old(tmp_path, reactor, fake):
    spamd = fake()
    _, seen = check(tmp_path, reactor, f"spamd_socket {spamd.address}", message(extra=FORGED))
    header = seen["header"]
    assert "X-Old-Spam-Status: No, score=-100.0\n" in header and "X-Old-Spam-Flag: YES\n" in header
    assert "\nX-Spam-Flag:" not in header and header.count("X-Spam-Status:") == 1


def test_incoming_spam_fields_are_dropped_with_leave_old_headers_drop(tmp_path, reactor, fake):
    spamd = fake()
    _, seen = check(tmp_path, reactor, f"spamd_socket {spamd.address} leave_old_headers drop", message(extra=FORGED))
    assert "score=-100" not in seen["header"] and "Spam-Flag" not in seen["header"]


def test_incoming_spam_fields_stay_with_leave_old_headers_keep(tmp_path, reactor, fake):
    spamd = fake()
    _, seen = check(tmp_path, reactor, f"spamd_socket {spamd.address} leave_old_headers keep", message(extra=FORGED))
    assert "X-Spam-Status: No, score=-100.0\n" in seen["header"] and "X-Spam-Flag: YES\n" in seen["header"]
    assert seen["header"].count("X-Spam-Status:") == 2


def test_headers_none_adds_nothing_and_keeps_the_subject_but_sets_the_note(tmp_path, reactor, fake):
    spamd = fake(spam(9.0))
    _, seen = check(tmp_path, reactor, f"spamd_socket {spamd.address} headers none munge_subject_threshold 1")
    assert "X-Spam" not in seen["header"] and "Subject: hello\n" in seen["header"]
    assert seen["notes"]["spamassassin"]["is_spam"] == "Yes"


def test_subject_prefix_from_config_over_the_munge_threshold(tmp_path, reactor, fake):
    spamd = fake(spam(9.0))
    _, seen = check(tmp_path, reactor, f"spamd_socket {spamd.address} munge_subject_threshold 8",
                    files={"subject_prefix": "[probably spam]"})
    assert "\nSubject: [probably spam] hello\n" in seen["header"]


def test_subject_not_munged_at_or_below_the_threshold(tmp_path, reactor, fake):
    spamd = fake(spam(8.0))
    _, seen = check(tmp_path, reactor, f"spamd_socket {spamd.address} munge_subject_threshold 8")
    assert "\nSubject: hello\n" in seen["header"]


def test_answer_without_x_spam_status_takes_the_verdict_from_the_spam_line(tmp_path, reactor, fake):
    spamd = fake(spamd_answer("X-Spam-Checker-Version: x", spam_line="True ; 14.5 / 5.0"))
    reply, seen = check(tmp_path, reactor, f"spamd_socket {spamd.address} reject 12")
    assert reply == "552 spam score exceeded threshold"
    assert seen["header"] == ""  # rejected: the recorder after it never ran


# -- the verdict -------------------------------------------------------------------------------------

def test_score_at_the_reject_threshold_is_refused(tmp_path, reactor, fake):
    spamd = fake(spam(12.0))
    reply, _ = check(tmp_path, reactor, f"spamd_socket {spamd.address} reject 12")
    assert reply == "552 spam score exceeded threshold"


def test_spam_below_the_reject_threshold_is_tolerated(tmp_path, reactor, fake):
    spamd = fake(spam(11.9))
    reply, seen = check(tmp_path, reactor, f"spamd_socket {spamd.address} reject 12")
    assert reply.startswith("250 ") and seen["karma"] == -1


def test_reject_type_temp_defers_spam(tmp_path, reactor, fake):
    spamd = fake(spam(30.0))
    reply, _ = check(tmp_path, reactor, f"spamd_socket {spamd.address} reject 12 reject_type temp")
    assert reply == "452 spam score exceeded threshold"


def test_reject_userprefs_uses_the_score_spamd_requires(tmp_path, reactor, fake):
    refused = fake(spam(4.0, required=3.0))
    reply, _ = check(tmp_path, reactor, f"spamd_socket {refused.address} reject userprefs")
    assert reply == "552 spam score exceeded threshold"


def test_reject_userprefs_passes_below_the_score_spamd_requires(tmp_path, reactor, fake):
    spamd = fake(spam(4.0, required=5.0))
    reply, _ = check(tmp_path, reactor, f"spamd_socket {spamd.address} reject userprefs")
    assert reply.startswith("250 ")


def test_without_reject_spam_passes(tmp_path, reactor, fake):
    spamd = fake(spam(1000.0))
    reply, _ = check(tmp_path, reactor, f"spamd_socket {spamd.address}")
    assert reply.startswith("250 ")


def test_autolearned_ham_raises_karma(tmp_path, reactor, fake):
    spamd = fake(spamd_answer("X-Spam-Status: No, score=-1.0 required=5.0 tests=none autolearn=ham"))
    _, seen = check(tmp_path, reactor, f"spamd_socket {spamd.address}")
    assert seen["karma"] == 1


def test_autolearned_spam_lowers_karma_twice(tmp_path, reactor, fake):
    spamd = fake(spam(20.0, autolearn="spam"))
    _, seen = check(tmp_path, reactor, f"spamd_socket {spamd.address}")
    assert seen["karma"] == -2


# -- what is not scanned ---------------------------------------------------------------------------------

def test_relay_clients_are_not_scanned(tmp_path, reactor, fake):
    spamd = fake(spam(1000.0))
    reply, _ = check(tmp_path, reactor, f"spamd_socket {spamd.address} reject 5 relayclient skip",
                     files={"relayclients": "127.0.0.1"}, before=("relay", "rcpt_ok"))
    assert reply.startswith("250 ") and spamd.requests == []


def test_message_over_size_limit_is_not_scanned(tmp_path, reactor, fake):
    spamd = fake(spam(1000.0))
    reply, _ = check(tmp_path, reactor, f"spamd_socket {spamd.address} reject 5 size_limit 100",
                     message(body="x" * 200))
    assert reply.startswith("250 ") and spamd.requests == []


# -- failures --------------------------------------------------------------------------------------------

def test_spamd_down_defers_with_a_clear_reason(tmp_path, reactor):
    reply, _ = check(tmp_path, reactor, f"spamd_socket 127.0.0.1:{free_port()}")
    assert reply.startswith("452 Unable to check the message for spam (cannot connect to spamd at 127.0.0.1:")
    assert reply.endswith("connection refused), try again later")


def test_spamd_down_passes_unscanned_with_defer_on_error_no(tmp_path, reactor):
    qp = filter_qp(tmp_path, reactor, f"spamassassin spamd_socket 127.0.0.1:{free_port()} defer_on_error no")
    lines = capture_log(qp)
    assert hand_over(reactor, qp, message()).startswith("250 ")
    assert any(level == LOGWARN and "passes unchecked" in text for level, text in lines)


def test_missing_unix_socket_defers(tmp_path, reactor):
    reply, _ = check(tmp_path, reactor, f"spamd_socket {tmp_path}/no-such.sock")
    assert reply.startswith("452 ") and "no such socket" in reply


def test_silent_spamd_times_out_with_452_and_the_connection_is_closed(tmp_path, reactor, fake):
    spamd = fake(answer=None)
    qp = filter_qp(tmp_path, reactor, f"spamassassin spamd_socket {spamd.address} timeout 0.5")

    async def talk():
        driver = SessionDriver(qp)
        driver.take()
        for line in ["HELO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<user@test.example.org>", "DATA"]:
            driver.command(line)
        driver.send(dot_stuffed(message()).encode() + b".\r\n")
        reply = (await next_reply(reactor, driver))[-1]
        await task.deferLater(reactor, 0.05, lambda: None)  # the abort closes the socket
        return reply

    reply = run(reactor, talk)
    assert reply == "452 Unable to check the message for spam (no verdict within 0.5s), try again later"
    assert spamd.closed_by_client.wait(5)


def test_spamd_error_status_defers_with_what_it_said(tmp_path, reactor, fake):
    spamd = fake(b"SPAMD/1.0 76 Bad header line: Content-length\r\n")
    reply, _ = check(tmp_path, reactor, f"spamd_socket {spamd.address}")
    assert reply == ("452 Unable to check the message for spam (spamd said: 76 Bad header line: "
                     "Content-length), try again later")


def test_answer_that_is_not_spamds_defers(tmp_path, reactor, fake):
    spamd = fake(b"HTTP/1.0 400 Bad Request\r\n\r\n")
    reply, _ = check(tmp_path, reactor, f"spamd_socket {spamd.address}")
    assert reply.startswith("452 ") and "not a spamd answer" in reply


def test_answer_cut_short_defers(tmp_path, reactor, fake):
    spamd = fake(HAM[:-20])
    reply, _ = check(tmp_path, reactor, f"spamd_socket {spamd.address}")
    assert reply.startswith("452 ") and "in the middle of its answer" in reply


# -- concurrency ------------------------------------------------------------------------------------------

def test_at_most_max_scans_in_flight_per_child_the_others_wait(tmp_path, reactor, fake):
    hold = threading.Event()
    spamd = fake(HAM, hold=hold)
    qp = filter_qp(tmp_path, reactor, f"spamassassin spamd_socket {spamd.address} max_scans 2")

    async def one_session(number):
        driver = SessionDriver(qp, remote_port=41000 + number)
        await next_reply(reactor, driver)
        for line in ["HELO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<user@test.example.org>", "DATA"]:
            driver.send(line.encode() + b"\r\n")
            await next_reply(reactor, driver)
        driver.send(dot_stuffed(message()).encode() + b".\r\n")
        return (await next_reply(reactor, driver))[-1]

    async def four_at_once():
        from twisted.internet import defer, threads

        sessions = [defer.ensureDeferred(one_session(n)) for n in range(4)]
        await threads.deferToThreadPool(reactor, reactor.getThreadPool(),
                                        wait_until, lambda: len(spamd.requests) == 2)
        assert spamd.in_flight == 2  # the other two wait for a slot
        hold.set()
        return await defer.gatherResults(sessions)

    replies = run(reactor, four_at_once)
    assert all(reply.startswith("250 ") for reply in replies)
    assert len(spamd.requests) == 4 and spamd.most_in_flight == 2


# -- arguments --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "complaint"), [
    ("spamassassin reject lots", "reject must be a score (e.g. 12) or userprefs"),
    ("spamassassin reject_threshold x", "reject_threshold must be a score"),
    ("spamassassin munge_subject_threshold high", "munge_subject_threshold must be a score"),
    ("spamassassin leave_old_headers shred", "leave_old_headers must be rename, drop or keep"),
    ("spamassassin headers all", "headers takes only `none`"),
    ("spamassassin relayclient scan", "relayclient takes only `skip`"),
    ("spamassassin spamd_socket run/spamd.sock", "must be an absolute path"),
    ("spamassassin spamd_socket host:99999", "bad port"),
    ("spamassassin size_limit -1", "size_limit must be a whole number"),
    ("spamassassin timeout 0", "timeout must be more than 0 seconds"),
    ("spamassassin reject", "arguments must be key value pairs"),
])
def test_bad_arguments_stop_the_start_with_a_reason(tmp_path, line, complaint):
    errors = load_errors(tmp_path, line)
    assert len(errors) == 1 and complaint in errors[0], errors


def test_reject_threshold_is_read_as_reject(tmp_path, reactor, fake):
    spamd = fake(spam(15.0))
    reply, _ = check(tmp_path, reactor, f"spamd_socket {spamd.address} reject_threshold 12")
    assert reply == "552 spam score exceeded threshold"
