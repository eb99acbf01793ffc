"""queue/lmtp: whole sessions delivered to Dovecot's LMTP server, and edge cases.

Each test runs its own Twisted reactor (a fresh instance, never the global
one). The real peer is Dovecot (Debian's dovecot-lmtpd), started per test with
a minimal configuration in a temporary directory: LMTP on a loopback port and
a unix socket, a passwd-file user database, Maildirs in that directory.
`FakeLMTP`, a scripted LMTP server in a thread, covers what Dovecot cannot be
made to do on demand (per-recipient answers after the data, 4xx at each
stage, silence).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from dovecot_server import DovecotServer, dovecot_available
from harness import SessionDriver, make_qp
from reactor_helpers import capture_log, dot_stuffed, free_port, next_reply, run, wait_until
from reactor_helpers import queue_qp as lmtp_qp
from twisted.internet import task

from qpsmtpd_py.constants import LOGERROR

HAVE_DOVECOT = dovecot_available("lmtp")
needs_dovecot = pytest.mark.skipif(not HAVE_DOVECOT, reason="dovecot-lmtpd (Debian) is not installed")

USER = "user@test.example.org"
USER2 = "user2@test.example.org"
MESSAGE = ("Subject: lmtp\r\nMessage-Id: <lmtp1@example.com>\r\n\r\nHello LMTP.\r\n"
           ".a line that starts with a dot\r\n..two dots\r\nlast line\r\n")


def deliver(reactor, qp, recipients=(USER,), message=MESSAGE, sender="a@example.com"):
    """One whole session; the reply to the end of data."""

    async def talk():
        driver = SessionDriver(qp, remote_ip="192.0.2.9", remote_port=40001)
        await next_reply(reactor, driver)
        for command in ["EHLO client.example.com", f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients),
                        "DATA"]:
            driver.send(command.encode() + b"\r\n")
            reply = await next_reply(reactor, driver)
            assert reply[-1][:3] in ("250", "354"), reply
        driver.send(dot_stuffed(message).encode() + b".\r\n")
        reply = await next_reply(reactor, driver)
        driver.send(b"QUIT\r\n")
        await task.deferLater(reactor, 0.03, lambda: None)  # the plugin's QUIT goes out
        return reply[-1]

    return run(reactor, talk)


# -- Dovecot -------------------------------------------------------------------------------------

class Dovecot(DovecotServer):
    """Dovecot's LMTP server on a loopback port and a unix socket, users `user` and `user2`."""

    def __init__(self):
        super().__init__("lmtp", {"user": "unused", "user2": "unused"}, "lmtp-test", "auth_username_format = %Ln")
        try:
            self.start()
        except RuntimeError:
            self.stop()
            raise

    def messages(self, user="user"):
        new = self.maildir_new(user)
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


@pytest.fixture
def dovecot():
    server = Dovecot()
    yield server
    server.stop()


@needs_dovecot
def test_dovecot_over_tcp(tmp_path, reactor, dovecot):
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp 127.0.0.1:{dovecot.port}")
    reply = deliver(reactor, qp)
    assert reply.startswith("250 Queued (LMTP: 250 2.0.0 <user@test.example.org> ") and reply.endswith(" Saved)")
    [stored] = dovecot.messages()
    assert b"Subject: lmtp\n" in stored and b"Message-Id: <lmtp1@example.com>\n" in stored
    assert b"\nReceived: from " in stored or stored.startswith(b"Return-Path: <a@example.com>")
    assert stored.endswith(b"\n\nHello LMTP.\n.a line that starts with a dot\n..two dots\nlast line\n")
    assert b"\r" not in stored
    assert "saved mail to INBOX" in dovecot.log()


@needs_dovecot
def test_dovecot_over_a_unix_socket_two_users(tmp_path, reactor, dovecot):
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp {dovecot.socket}")
    assert deliver(reactor, qp, recipients=(USER, USER2)).startswith("250 Queued (LMTP: 250 ")
    assert len(dovecot.messages("user")) == 1 and len(dovecot.messages("user2")) == 1


@needs_dovecot
def test_dovecot_big_spooled_message(tmp_path, reactor, dovecot):
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp {dovecot.socket}", files={"size_threshold": "1000"})
    body = "".join(f"{'.' if i % 7 == 0 else ''}line {i} {'y' * 60}\r\n" for i in range(20000))
    assert deliver(reactor, qp, message="Subject: big\r\n\r\n" + body).startswith("250 ")
    [stored] = dovecot.messages()
    assert stored.endswith(body.replace("\r\n", "\n").encode())


@needs_dovecot
def test_dovecot_unknown_user_among_known_ones(tmp_path, reactor, dovecot):
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp 127.0.0.1:{dovecot.port}")
    log = capture_log(qp)
    assert deliver(reactor, qp, recipients=(USER, "nobody-here@test.example.org")).startswith("250 Queued")
    assert len(dovecot.messages()) == 1
    assert any("refused <nobody-here@test.example.org>: 550 5.1.1" in message for _, message in log)


@needs_dovecot
def test_dovecot_only_unknown_users_is_552(tmp_path, reactor, dovecot):
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp 127.0.0.1:{dovecot.port}")
    reply = deliver(reactor, qp, recipients=("ghost@test.example.org",))
    assert reply.startswith("552 Unable to queue message (<ghost@test.example.org>: 550 5.1.1 ")


# -- a scripted LMTP server ------------------------------------------------------------------------

class FakeLMTP:
    """A scripted LMTP server in a thread, on a loopback port or a unix socket.

    `answers` maps a command word (LHLO, MAIL, RCPT, DATA, RSET, QUIT) to a reply or to a
    function of the line; "." maps to the list of replies sent after the data, one per
    accepted recipient (None in it: hang up there; a (seconds, reply) pair: answer late).
    """

    def __init__(self, answers=None, extensions=("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
                 greeting="220 fake LMTP ready", unix=None):
        self.answers = answers or {}
        self.extensions = list(extensions)
        self.greeting = greeting
        self.sessions = []
        if unix:
            self.listener = socket.socket(socket.AF_UNIX)
            self.listener.bind(str(unix))
            self.port = None
        else:
            self.listener = socket.socket()
            self.listener.bind(("127.0.0.1", 0))
            self.port = self.listener.getsockname()[1]
        self.listener.listen(8)
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.running = False
        self.listener.close()

    def _accept(self):
        while self.running:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            record = {"lines": [], "raw": [], "messages": []}
            self.sessions.append(record)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _answer(self, word, line, default):
        answer = self.answers.get(word, default)
        return answer(line) if callable(answer) else answer

    @staticmethod
    def _send(conn, reply):
        if isinstance(reply, tuple):
            time.sleep(reply[0])
            reply = reply[1]
        if reply is None:
            raise OSError("hang up")
        conn.sendall(reply.encode() + b"\r\n")

    def _serve(self, conn, record):
        try:
            conn.settimeout(30)
            file = conn.makefile("rb")
            self._send(conn, self.greeting)
            accepted = []
            while True:
                raw = file.readline()
                if not raw:
                    return
                record["raw"].append(raw)
                line = raw.decode().rstrip("\r\n")
                record["lines"].append(line)
                word = line.split(" ", 1)[0].split(":", 1)[0].upper()
                if word == "LHLO":
                    lines = ["fake.example", *self.extensions]
                    default = "\r\n".join(f"250-{e}" for e in lines[:-1]) + f"\r\n250 {lines[-1]}"
                    self._send(conn, self._answer(word, line, default))
                elif word == "MAIL":
                    accepted = []
                    self._send(conn, self._answer(word, line, "250 2.1.0 OK"))
                elif word == "RCPT":
                    reply = self._answer(word, line, "250 2.1.5 OK")
                    if reply.startswith("2"):
                        accepted.append(line[8:])
                    self._send(conn, reply)
                elif word == "DATA":
                    reply = self._answer(word, line, "354 OK")
                    self._send(conn, reply)
                    if not reply.startswith("354"):
                        continue
                    data = bytearray()
                    while True:
                        raw = file.readline()
                        if not raw:
                            return
                        if raw == b".\r\n":
                            break
                        data += raw
                    record["messages"].append(bytes(data))
                    finals = self.answers.get(".", [f"250 2.0.0 {r} Saved" for r in accepted])
                    for reply in finals:
                        self._send(conn, reply)
                elif word == "QUIT":
                    self._send(conn, "221 2.0.0 Bye")
                    return
                elif word == "RSET":
                    self._send(conn, "250 2.0.0 OK")
                else:
                    self._send(conn, "502 5.5.2 unknown command")
        except OSError:
            return
        finally:
            conn.close()


@pytest.fixture
def fakes():
    made = []

    def make(**options):
        server = FakeLMTP(**options)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def test_wire_format_crlf_dot_stuffing_and_pipelining(tmp_path, reactor, fakes):
    server = fakes()
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp 127.0.0.1:{server.port} lhlo relay.example")
    reply = deliver(reactor, qp, recipients=(USER, USER2))
    assert reply == f"250 Queued (LMTP: 250 2.0.0 <{USER}> Saved)"
    [record] = server.sessions
    assert record["lines"][:5] == ["LHLO relay.example", "MAIL FROM:<a@example.com>", f"RCPT TO:<{USER}>",
                                   f"RCPT TO:<{USER2}>", "DATA"]
    assert all(raw.endswith(b"\r\n") for raw in record["raw"])
    [data] = record["messages"]
    assert data.endswith(b"\r\n\r\nHello LMTP.\r\n..a line that starts with a dot\r\n...two dots\r\nlast line\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")
    wait_until(lambda: record["lines"][-1] == "QUIT")


def test_without_pipelining_and_with_size(tmp_path, reactor, fakes):
    server = fakes(extensions=("SIZE 1000000",))
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp 127.0.0.1:{server.port}")
    assert deliver(reactor, qp).startswith("250 Queued")
    assert server.sessions[0]["lines"][1].startswith("MAIL FROM:<a@example.com> SIZE=")


@pytest.mark.parametrize(("finals", "expected", "logged"), [
    (["250 2.0.0 ok", "550 5.2.1 mailbox disabled"], "250 Queued (LMTP: 250 2.0.0 ok)", True),
    (["452 4.2.2 over quota", "250 2.0.0 ok"], "250 Queued (LMTP: 250 2.0.0 ok)", True),
    (["452 4.2.2 over quota", "450 4.3.0 locked"], "451 Unable to queue message (452 4.2.2 over quota)", True),
    (["550 5.2.1 no", "552 5.2.2 full"], "552 Unable to queue message (550 5.2.1 no)", True),
    (["550 5.2.1 no", "451 4.3.0 later"], "451 Unable to queue message (451 4.3.0 later)", True),
])
def test_per_recipient_answers_after_the_data(tmp_path, reactor, fakes, finals, expected, logged):
    server = fakes(answers={".": finals})
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp 127.0.0.1:{server.port}")
    log = capture_log(qp)
    assert deliver(reactor, qp, recipients=(USER, USER2)) == expected
    errors = [message for level, message in log if level == LOGERROR and "did not deliver" in message]
    assert len(errors) == sum(1 for f in finals if not f.startswith("2"))
    if expected.startswith("250"):
        assert all("NOT retried" in message for message in errors)


@pytest.mark.parametrize(("answers", "expected"), [
    ({"LHLO": "421 4.3.2 shutting down"}, "451 Unable to queue message (127.0.0.1:PORT: LHLO: 421 4.3.2 "
                                          "shutting down)"),
    ({"MAIL": "451 4.3.0 try later"}, "451 Unable to queue message (451 4.3.0 try later)"),
    ({"MAIL": "553 5.1.8 bad sender"}, "552 Unable to queue message (553 5.1.8 bad sender)"),
    ({"DATA": "452 4.3.1 no space"}, "451 Unable to queue message (452 4.3.1 no space)"),
    ({"DATA": "554 5.3.4 no"}, "552 Unable to queue message (554 5.3.4 no)"),
    ({"RCPT": lambda line: "450 4.2.1 busy" if "user2" in line else "250 2.1.5 OK"},
     "451 Unable to queue message (<user2@test.example.org>: 450 4.2.1 busy)"),
    ({"RCPT": lambda line: "550 5.1.1 unknown" if "user2" in line else "250 2.1.5 OK"},
     "250 Queued (LMTP: 250 2.0.0 <user@test.example.org> Saved)"),
    ({"RCPT": "550 5.1.1 unknown"}, "552 Unable to queue message (<user@test.example.org>: 550 5.1.1 unknown)"),
])
def test_answers_before_the_data(tmp_path, reactor, fakes, answers, expected):
    server = fakes(answers=answers)
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp 127.0.0.1:{server.port}")
    assert deliver(reactor, qp, recipients=(USER, USER2)) == expected.replace("PORT", str(server.port))
    if not expected.startswith("250"):
        assert server.sessions[0]["messages"] == []  # nothing was delivered


def test_a_4xx_greeting(tmp_path, reactor, fakes):
    server = fakes(greeting="421 4.3.2 not now")
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp 127.0.0.1:{server.port}")
    assert deliver(reactor, qp) == f"451 Unable to queue message (127.0.0.1:{server.port}: greeting: 421 4.3.2 not now)"


def test_server_down(tmp_path, reactor):
    port = free_port()
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp 127.0.0.1:{port}")
    assert deliver(reactor, qp) == f"451 Unable to queue message (127.0.0.1:{port}: connection refused)"


def test_missing_unix_socket(tmp_path, reactor):
    missing = tmp_path / "no-such-socket"
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp {missing}")
    assert deliver(reactor, qp).startswith(f"451 Unable to queue message ({missing}: ")


def test_unix_socket_with_the_fake(tmp_path, reactor, fakes):
    path = tmp_path / "lmtp.sock"
    server = fakes(unix=path)
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp {path}")
    assert deliver(reactor, qp).startswith("250 Queued (LMTP: 250 ")
    assert len(server.sessions[0]["messages"]) == 1


def test_timeout_with_nothing_delivered(tmp_path, reactor, fakes):
    server = fakes(answers={".": [(3, "250 2.0.0 too late")]})
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp 127.0.0.1:{server.port} timeout 0.5")
    assert deliver(reactor, qp) == "451 Unable to queue message (no answer within 0.5 s)"


def test_timeout_after_one_recipient_was_delivered(tmp_path, reactor, fakes):
    server = fakes(answers={".": ["250 2.0.0 first ok", (3, "250 2.0.0 too late")]})
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp 127.0.0.1:{server.port} timeout 0.5")
    log = capture_log(qp)
    assert deliver(reactor, qp, recipients=(USER, USER2)) == "250 Queued (LMTP: 250 2.0.0 first ok)"
    assert any(f"did not deliver to <{USER2}>: no answer within 0.5 s" in m for level, m in log if level == LOGERROR)


@pytest.mark.parametrize(("finals", "expected"), [
    ([None], "451 Unable to queue message (connection lost"),
    (["250 2.0.0 ok", None], "250 Queued (LMTP: 250 2.0.0 ok)"),  # the first recipient has it
])
def test_connection_lost_after_the_data(tmp_path, reactor, fakes, finals, expected):
    server = fakes(answers={".": finals})
    qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp 127.0.0.1:{server.port}")
    assert deliver(reactor, qp, recipients=(USER, USER2)).startswith(expected)


def test_silent_server_at_connect(tmp_path, reactor):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        port = listener.getsockname()[1]
        qp = lmtp_qp(tmp_path, reactor, f"queue/lmtp 127.0.0.1:{port} connect_timeout 0.3")
        assert deliver(reactor, qp) == f"451 Unable to queue message (127.0.0.1:{port}: no greeting within 0.3 s)"
    finally:
        listener.close()


@pytest.mark.parametrize(("line", "message"), [
    ("queue/lmtp", "No LMTP server"),
    ("queue/lmtp relative/path", "bad LMTP server"),
    ("queue/lmtp 127.0.0.1:99999", "bad port"),
    ("queue/lmtp [::1", "bad server"),
    ("queue/lmtp 127.0.0.1 timeout", "timeout needs a value"),
    ("queue/lmtp 127.0.0.1 timeout -1", "positive number"),
    ("queue/lmtp 127.0.0.1 retries 3", "unknown argument"),
])
def test_bad_arguments(tmp_path, line, message):
    with pytest.raises(AssertionError, match=message):
        make_qp(tmp_path, plugins=["rcpt_ok", line])


def test_good_arguments(tmp_path):
    qp = make_qp(tmp_path, plugins=["rcpt_ok", "queue/lmtp [::1]:2424 timeout 30 connect_timeout 2"])
    plugin = qp.plugins[-1]
    assert plugin.server == ("tcp", "::1", 2424) and plugin.timeout == 30 and plugin.connect_timeout == 2
    assert make_qp(tmp_path, plugins=["rcpt_ok", "queue/lmtp mail.internal"]).plugins[-1].server == \
        ("tcp", "mail.internal", 24)
    assert make_qp(tmp_path, plugins=["rcpt_ok", "queue/lmtp /run/dovecot/lmtp"]).plugins[-1].server == \
        ("unix", "/run/dovecot/lmtp")
