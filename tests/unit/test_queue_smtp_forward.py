"""queue/smtp-forward: arguments, and whole sessions relayed to real downstream servers.

Each test runs its own Twisted reactor (a fresh instance, never the global one),
and the downstream is either Postfix's smtp-sink or `FakeDownstream`, a small
scripted SMTP server in a thread for what smtp-sink cannot do (per-recipient
answers, slow answers, XCLIENT attributes, STARTTLS with a test certificate).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from harness import SessionDriver, make_qp
from reactor_helpers import capture_log_with_plugin as capture_log
from reactor_helpers import dot_stuffed, free_port, next_reply, queue_qp, run, wait_until
from twisted.internet import task

from qpsmtpd_py.constants import LOGINFO, LOGWARN
from qpsmtpd_py.mail_client import dot_stuff

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
LOCAL = "user@test.example.org"
OTHER = "other@test.example.org"
MESSAGE = "Subject: forwarded\r\nMessage-Id: <m1@example.com>\r\n\r\nHello downstream.\r\n"


def forwarder(tmp_path, reactor, line, before=(), after=("rcpt_ok",), files=None):
    """A qp whose plugins are `before`, the smtp-forward `line`, then `after`."""
    return queue_qp(tmp_path, reactor, line, files=files, before=before, after=after)


def session(reactor, qp, recipients=(LOCAL,), message=MESSAGE, sender="a@example.com", helo="client.example.com",
            remote_ip="192.0.2.9"):
    """One whole SMTP session: the replies to greeting, EHLO, MAIL, each RCPT, DATA and the message."""

    async def talk():
        driver = SessionDriver(qp, remote_ip=remote_ip, remote_port=40001)
        replies = [await next_reply(reactor, driver)]
        commands = [f"EHLO {helo}", f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients)]
        for command in commands:
            driver.send(command.encode() + b"\r\n")
            replies.append(await next_reply(reactor, driver))
        if any(reply[-1].startswith("250 ") for reply in replies[3:]):
            driver.send(b"DATA\r\n")
            replies.append(await next_reply(reactor, driver))
            if replies[-1][-1].startswith("354"):
                driver.send(dot_stuffed(message).encode())
                driver.send(b".\r\n")
                replies.append(await next_reply(reactor, driver))
        driver.send(b"QUIT\r\n")
        await task.deferLater(reactor, 0.03, lambda: None)  # the plugin's QUIT (or RSET) goes out
        return replies

    return run(reactor, talk)


def final(replies):
    return replies[-1][-1]


# -- a scripted downstream ---------------------------------------------------------------------

class LineReader:
    """Lines from a socket; `reads` counts the recv calls, so pipelined commands share a number."""

    def __init__(self, conn):
        self.conn = conn
        self.buffer = b""
        self.reads = 0

    def readline(self):
        while b"\n" not in self.buffer:
            data = self.conn.recv(65536)
            if not data:
                rest, self.buffer = self.buffer, b""
                return rest
            self.reads += 1
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"


class FakeDownstream:
    """A scripted SMTP server in a thread.

    `answers` maps a command word (EHLO, MAIL, RCPT, DATA, "." for the end of
    data, QUIT...) to a reply, or to a function of the command line returning
    one; a reply may be a (seconds, reply) pair to answer late. `greeting` is
    the first reply. Each session's lines, messages and TLS version are kept.
    """

    def __init__(self, answers=None, extensions=("PIPELINING", "SIZE 10000000", "8BITMIME"),
                 greeting="220 fake.example ESMTP", cert=None):
        self.answers = answers or {}
        self.extensions = list(extensions)
        self.greeting = greeting
        self.cert = cert
        self.sessions: list[dict] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.running = False
        self.listener.close()

    @property
    def messages(self):
        return [m for s in self.sessions for m in s["messages"]]

    def _accept(self):
        while self.running:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            record = {"lines": [], "reads": [], "messages": [], "tls": None}
            self.sessions.append(record)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _answer(self, word, line, default):
        answer = self.answers.get(word, default)
        if callable(answer):
            answer = answer(line)
        if isinstance(answer, tuple):
            time.sleep(answer[0])
            answer = answer[1]
        return answer

    def _serve(self, conn, record):
        try:
            conn.settimeout(30)
            reader = LineReader(conn)
            self._send(conn, self._answer("CONNECT", "", self.greeting))
            envelope = {"mail": None, "rcpts": []}
            while True:
                raw = reader.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\r\n")
                record["lines"].append(line)
                record["reads"].append(reader.reads)
                word = line.split(" ", 1)[0].split(":", 1)[0].upper()
                if word in ("EHLO", "HELO"):
                    default = "\r\n".join(f"250-{e}" for e in ["fake.example", *self.extensions])
                    default = default[:default.rfind("250-")] + "250 " + default[default.rfind("250-") + 4:]
                    self._send(conn, self._answer(word, line, default if word == "EHLO" else "250 fake.example"))
                elif word == "STARTTLS":
                    reply = self._answer(word, line, "220 go ahead")
                    self._send(conn, reply)
                    if reply.startswith("220"):
                        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                        context.load_cert_chain(*self.cert)
                        conn = context.wrap_socket(conn, server_side=True)
                        record["tls"] = conn.version()
                        reader = LineReader(conn)
                elif word == "MAIL":
                    reply = self._answer(word, line, "250 2.1.0 Ok")
                    if reply and reply.startswith("2"):
                        envelope = {"mail": line, "rcpts": []}
                    self._send(conn, reply)
                elif word == "RCPT":
                    reply = self._answer(word, line, "250 2.1.5 Ok")
                    if reply and reply.startswith("2"):
                        envelope["rcpts"].append(line)
                    self._send(conn, reply)
                elif word == "DATA":
                    reply = self._answer(word, line, "354 End data with <CR><LF>.<CR><LF>")
                    self._send(conn, reply)
                    if not reply.startswith("354"):
                        continue
                    data = bytearray()
                    while True:
                        raw = reader.readline()
                        if not raw:
                            return
                        if raw == b".\r\n":
                            break
                        data += raw
                    record["messages"].append({**envelope, "data": bytes(data)})
                    self._send(conn, self._answer(".", "", "250 2.0.0 Ok: queued as 4FAKEID"))
                elif word == "QUIT":
                    self._send(conn, self._answer(word, line, "221 2.0.0 Bye"))
                    return
                elif word == "RSET":
                    envelope = {"mail": None, "rcpts": []}
                    self._send(conn, self._answer(word, line, "250 2.0.0 Ok"))
                else:
                    self._send(conn, self._answer(word, line, "502 5.5.2 Error: command not recognized"))
                if self._closing:
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    _closing = False

    @staticmethod
    def _send(conn, reply):
        if reply is None:  # hang up without a word
            raise OSError("hang up")
        conn.sendall(reply.encode() + b"\r\n")


@pytest.fixture
def downstreams():
    made = []

    def make(**options):
        server = FakeDownstream(**options)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost and 127.0.0.1: (cert file, key file)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return str(cert), str(key)


# -- smtp-sink -------------------------------------------------------------------------------

class Sink:
    """Postfix's smtp-sink on a free loopback port; `dumps()` are the messages it received."""

    def __init__(self, options=()):
        self.port = free_port()
        self.dump_dir = Path(tempfile.mkdtemp(prefix="sink-"))
        os.chmod(self.dump_dir, 0o777)  # smtp-sink drops to nobody to write the dumps
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen([SMTP_SINK, *user, "-d", f"{self.dump_dir}/msg.", *options,
                                         f"127.0.0.1:{self.port}", "10"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"smtp-sink did not start: {self.process.stderr.read()!r}") from None
                time.sleep(0.02)

    def dumps(self):
        return [p.read_bytes() for p in sorted(self.dump_dir.iterdir())]

    def stop(self):
        self.process.terminate()
        self.process.wait(5)
        self.process.stderr.close()
        shutil.rmtree(self.dump_dir, ignore_errors=True)


@pytest.fixture
def sinks():
    if not os.access(SMTP_SINK, os.X_OK):
        pytest.skip("smtp-sink (Debian package postfix) is not installed")
    made = []

    def make(*options):
        sink = Sink(options)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.stop()


# -- arguments ---------------------------------------------------------------------------------

def loaded(tmp_path, line):
    qp = make_qp(tmp_path, plugins=[line, "rcpt_ok"])
    return next(p for p in qp.plugins if p.name == "queue::smtp_2dforward")


@pytest.mark.parametrize(("line", "hosts", "xclient"), [
    ("queue/smtp-forward 10.2.2.2", [("10.2.2.2", 25)], False),
    ("queue/smtp-forward 10.2.2.2 9025", [("10.2.2.2", 9025)], False),
    ("queue/smtp-forward 10.2.2.2 9025 xclient", [("10.2.2.2", 9025)], True),
    ("queue/smtp-forward 10.2.2.2 xclient", [("10.2.2.2", 25)], True),
    ("queue/smtp-forward mx1.example.org,mx2.example.org:2525 26",
     [("mx1.example.org", 26), ("mx2.example.org", 2525)], False),
    ("queue/smtp-forward [2001:db8::1]:2525,::1,[::2]", [("2001:db8::1", 2525), ("::1", 25), ("::2", 25)], False),
])
def test_hosts_ports_and_xclient(tmp_path, line, hosts, xclient):
    plugin = loaded(tmp_path, line)
    assert (plugin.hosts, plugin.xclient) == (hosts, xclient)


def test_defaults(tmp_path):
    plugin = loaded(tmp_path, "queue/smtp-forward 10.2.2.2")
    assert (plugin.connect_timeout, plugin.timeout, plugin.tls, plugin.check_rcpt, plugin.keepalive) == \
        (10, 120, "may", False, 0)
    assert not any(entry.plugin is plugin for entry in plugin.qp.hooks.entries("rcpt"))


def test_options(tmp_path):
    plugin = loaded(tmp_path, "queue/smtp-forward a.example 2525 connect_timeout 2 timeout 30 tls no "
                              "check_rcpt 1 helo relay.example loglevel 7")
    assert (plugin.connect_timeout, plugin.timeout, plugin.tls, plugin.check_rcpt, plugin.helo) == \
        (2, 30, "no", True, "relay.example")
    assert any(entry.plugin is plugin for entry in plugin.qp.hooks.entries("rcpt"))


def test_check_rcpt_after_rcpt_ok_is_warned_about(tmp_path, capfd):
    make_qp(tmp_path, plugins=["rcpt_ok", "queue/smtp-forward 10.2.2.2 check_rcpt 1"])
    assert "put queue/smtp-forward before rcpt_ok" in capfd.readouterr().err


@pytest.mark.parametrize("line", [
    "queue/smtp-forward", "queue/smtp-forward bad/host", "queue/smtp-forward a.example:99999",
    "queue/smtp-forward a.example,,b.example", "queue/smtp-forward [::1", "queue/smtp-forward [10.0.0.1]",
    "queue/smtp-forward a.example frobnicate", "queue/smtp-forward a.example timeout",
    "queue/smtp-forward a.example timeout -1", "queue/smtp-forward a.example tls maybe",
    "queue/smtp-forward a.example check_rcpt yes", "queue/smtp-forward a.example tls_ca /nonexistent.pem",
    "queue/smtp-forward a.example keepalive soon",
])
def test_bad_arguments_stop_start_up(tmp_path, line):
    with pytest.raises(AssertionError, match="smtp"):
        make_qp(tmp_path, plugins=[line, "rcpt_ok"])


# -- through smtp-sink -----------------------------------------------------------------------

def test_message_reaches_smtp_sink(tmp_path, reactor, sinks):
    sink = sinks()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {sink.port}")
    replies = session(reactor, qp, recipients=[LOCAL, OTHER])
    assert final(replies).startswith("250 Queued as ")
    wait_until(lambda: sink.dumps())
    dump = sink.dumps()[0]
    assert f"X-Rcpt-Args: <{LOCAL}>".encode() in dump and f"X-Rcpt-Args: <{OTHER}>".encode() in dump
    assert b"X-Mail-Args: <a@example.com>" in dump
    assert b"Subject: forwarded" in dump and b"Hello downstream." in dump
    assert b"(HELO client.example.com)" in dump  # qpsmtpd-py's own Received header went along


@pytest.mark.parametrize(("options", "code"), [
    (("-r", "RCPT"), "451"),  # every recipient refused for now
    (("-f", "RCPT"), "552"),  # every recipient refused for good
    (("-f", "MAIL"), "552"),
    (("-r", "MAIL"), "451"),
    (("-f", "DATA"), "552"),
    (("-r", "DATA"), "451"),
    (("-f", "."), "552"),
    (("-r", "."), "451"),
    (("-Q", "DATA"), "451"),  # 421 and hang up
    (("-q", "."), "451"),  # hang up after the data, no answer
    (("-f", "EHLO,HELO"), "451"),
    (("-f", "CONNECT"), "451"),
])
def test_smtp_sink_refusals(tmp_path, reactor, sinks, options, code):
    sink = sinks(*options)
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {sink.port}")
    reply = final(session(reactor, qp))
    assert reply.startswith(code + " Unable to queue message ("), reply


def test_xclient_to_smtp_sink(tmp_path, reactor, sinks):
    # smtp-sink offers XCLIENT NAME HELO; its dump shows the EHLO sent after XCLIENT.
    sink = sinks()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {sink.port} xclient")
    assert final(session(reactor, qp, helo="original.example.net")).startswith("250 ")
    wait_until(lambda: sink.dumps())
    assert b"X-Helo-Args: original.example.net" in sink.dumps()[0]


# -- the scripted downstream -----------------------------------------------------------------

def test_queue_id_postfix_style_and_the_transcript(tmp_path, reactor, downstreams):
    down = downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port}")
    assert final(session(reactor, qp, recipients=[LOCAL, OTHER])) == "250 Queued as 4FAKEID"
    record = down.sessions[0]
    lines = record["lines"]
    assert lines[0] == "EHLO test.example.org"
    assert lines[1].startswith("MAIL FROM:<a@example.com> SIZE=")
    assert lines[2:5] == [f"RCPT TO:<{LOCAL}>", f"RCPT TO:<{OTHER}>", "DATA"]
    assert lines[5:] == ["QUIT"]
    # PIPELINING: MAIL and both RCPTs came in one read, DATA after their answers.
    assert record["reads"][1] == record["reads"][2] == record["reads"][3] < record["reads"][4]


def test_no_pipelining_one_command_at_a_time(tmp_path, reactor, downstreams):
    down = downstreams(extensions=("SIZE",))
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port}")
    assert final(session(reactor, qp, recipients=[LOCAL, OTHER])).startswith("250 ")
    reads = down.sessions[0]["reads"]
    assert reads[1] < reads[2] < reads[3] < reads[4]


@pytest.mark.parametrize(("reply", "queue_id"), [
    ("250 OK id=1abcDE-000Fg-Hi", "1abcDE-000Fg-Hi"),  # Exim
    ("250 ok 1700000000 qp 4242", "4242"),  # qmail: the last word, as qpsmtpd
    ("250 2.0.0 Ok: queued as 4XyZ12 (mx1)", "4XyZ12"),
])
def test_queue_id_of_other_servers(tmp_path, reactor, downstreams, reply, queue_id):
    down = downstreams(answers={".": reply})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port}")
    assert final(session(reactor, qp)) == f"250 Queued as {queue_id}"


def test_dot_stuffing_crlf_and_a_spooled_body(tmp_path, reactor, downstreams):
    down = downstreams()
    body = "".join(f".line {i} " + "x" * 70 + "\r\n" for i in range(3000)) + "..\r\n.\tdot\r\nlast"
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port}",
                   files={"size_threshold": "10000"})
    message = "Subject: dots\r\n\r\n" + body + "\r\n"
    assert final(session(reactor, qp, message=message)).startswith("250 ")
    data = down.messages[0]["data"]
    assert b"\n\n" not in data.replace(b"\r\n", b"")  # CRLF only
    unstuffed = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in data.split(b"\r\n"))
    assert unstuffed.endswith(body.encode() + b"\r\n")
    assert data.count(b"\r\n..line ") == 3000 and b"\r\n...\r\n" in data


def test_connection_refused_then_next_host(tmp_path, reactor, downstreams):
    down = downstreams()
    dead = free_port()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1:{dead},127.0.0.1:{down.port}")
    log = capture_log(qp)
    assert final(session(reactor, qp)) == "250 Queued as 4FAKEID"
    assert any(level == LOGWARN and "connection refused" in text for level, _, text in log)


def test_every_host_down_gives_451_naming_each(tmp_path, reactor):
    first, second = free_port(), free_port()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1:{first},[::1]:{second}")
    reply = final(session(reactor, qp))
    assert reply.startswith("451 Unable to queue message (")
    assert f"127.0.0.1:{first}: connection refused" in reply and f"[::1]:{second}:" in reply


def test_host_name_is_resolved(tmp_path, reactor, downstreams):
    down = downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward localhost:{down.port}")
    assert final(session(reactor, qp)).startswith("250 ")


@pytest.mark.parametrize(("stage", "answer"), [
    ("CONNECT", "554 5.3.2 no service"),
    ("EHLO", "421 4.3.2 shutting down"),
    ("MAIL", "451 4.3.0 try later"),
    ("MAIL", "421 4.3.2 shutting down"),
    ("RCPT", "421 4.3.2 shutting down"),
    ("DATA", "421 4.3.2 shutting down"),
])
def test_host_failures_before_the_data_go_to_the_next_host(tmp_path, reactor, downstreams, stage, answer):
    bad, good = downstreams(answers={stage: answer}), downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1:{bad.port},127.0.0.1:{good.port}")
    assert final(session(reactor, qp)) == "250 Queued as 4FAKEID"
    assert not bad.messages and len(good.messages) == 1


@pytest.mark.parametrize(("stage", "answer", "code"), [
    ("MAIL", "553 5.1.8 sender rejected", "552"),
    ("DATA", "554 5.5.1 no valid recipients", "552"),
    ("DATA", "451 4.3.0 later", "451"),
    (".", "554 5.7.1 spam", "552"),
    (".", "452 4.3.1 insufficient storage", "451"),
    (".", "421 4.3.2 going down", "451"),
])
def test_final_answers_are_not_retried_elsewhere(tmp_path, reactor, downstreams, stage, answer, code):
    bad, good = downstreams(answers={stage: answer}), downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1:{bad.port},127.0.0.1:{good.port}")
    reply = final(session(reactor, qp))
    assert reply == f"{code} Unable to queue message ({answer})"
    assert not good.sessions


def test_ehlo_refused_falls_back_to_helo(tmp_path, reactor, downstreams):
    down = downstreams(answers={"EHLO": "502 5.5.1 no ESMTP here"})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port}")
    assert final(session(reactor, qp)).startswith("250 ")
    assert down.sessions[0]["lines"][1] == "HELO test.example.org"
    assert down.sessions[0]["lines"][2] == "MAIL FROM:<a@example.com>"  # no SIZE without EHLO


# -- timeouts ----------------------------------------------------------------------------------

def test_slow_greeting_moves_on_to_the_next_host(tmp_path, reactor, downstreams):
    slow, good = downstreams(greeting=(3, "220 slow")), downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1:{slow.port},127.0.0.1:{good.port} "
                                      "connect_timeout 0.5")
    started = time.monotonic()
    assert final(session(reactor, qp)).startswith("250 ")
    assert time.monotonic() - started < 2.5


def test_slow_answer_to_the_data_gives_451_at_the_timeout(tmp_path, reactor, downstreams):
    slow = downstreams(answers={".": (4, "250 too late")})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {slow.port} timeout 1")
    started = time.monotonic()
    reply = final(session(reactor, qp))
    assert reply == "451 Unable to queue message (no answer within 1 s)"
    assert time.monotonic() - started < 3


def test_silent_downstream_port_times_out(tmp_path, reactor):
    # A listening socket that never accepts: connected by the kernel, never greeted.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {port} connect_timeout 0.3")
        reply = final(session(reactor, qp))
    assert reply == f"451 Unable to queue message (127.0.0.1:{port}: no greeting within 0.3 s)"


# -- recipients --------------------------------------------------------------------------------

def refuse(*addresses, reply="550 5.1.1 User unknown"):
    return lambda line: reply if any(f"<{a}>" in line for a in addresses) else "250 2.1.5 Ok"


def test_some_recipients_refused_for_good_the_others_get_it(tmp_path, reactor, downstreams):
    down = downstreams(answers={"RCPT": refuse(OTHER)})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port}")
    log = capture_log(qp)
    assert final(session(reactor, qp, recipients=[LOCAL, OTHER])) == "250 Queued as 4FAKEID"
    assert down.messages[0]["rcpts"] == [f"RCPT TO:<{LOCAL}>"]
    assert any(level == LOGWARN and f"refused <{OTHER}>: 550 5.1.1 User unknown" in text
               for level, _, text in log)


def test_every_recipient_refused_for_good_gives_552(tmp_path, reactor, downstreams):
    down = downstreams(answers={"RCPT": refuse(LOCAL, OTHER)})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port}")
    reply = final(session(reactor, qp, recipients=[LOCAL, OTHER]))
    assert reply == f"552 Unable to queue message (<{LOCAL}>: 550 5.1.1 User unknown)"
    assert not down.messages


def test_one_recipient_refused_for_now_sends_nothing_and_451(tmp_path, reactor, downstreams):
    down = downstreams(answers={"RCPT": refuse(OTHER, reply="450 4.2.0 greylisted")})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port}")
    reply = final(session(reactor, qp, recipients=[LOCAL, OTHER]))
    assert reply == f"451 Unable to queue message (<{OTHER}>: 450 4.2.0 greylisted)"
    assert not down.messages and "DATA" not in down.sessions[0]["lines"]
    wait_until(lambda: "RSET" in down.sessions[0]["lines"])


def test_check_rcpt_refuses_at_rcpt_time_and_reuses_the_session(tmp_path, reactor, downstreams):
    down = downstreams(answers={"RCPT": refuse(OTHER, reply="550 5.1.1 <other@test.example.org>: no such user")})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} check_rcpt 1")
    replies = session(reactor, qp, recipients=[LOCAL, OTHER])
    assert replies[3] == [f"250 <{LOCAL}>, recipient ok"]
    assert replies[4] == ["550 5.1.1 <other@test.example.org>: no such user"]
    assert final(replies) == "250 Queued as 4FAKEID"
    assert len(down.sessions) == 1  # the RCPT-time session carried the message
    assert down.messages[0]["rcpts"] == [f"RCPT TO:<{LOCAL}>"]
    assert "RSET" not in down.sessions[0]["lines"]


def test_check_rcpt_temporary_refusal_is_450(tmp_path, reactor, downstreams):
    down = downstreams(answers={"RCPT": refuse(OTHER, reply="450 4.2.1 mailbox busy")})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} check_rcpt 1")
    replies = session(reactor, qp, recipients=[OTHER, LOCAL])
    assert replies[3] == ["450 4.2.1 mailbox busy"]
    assert final(replies).startswith("250 ")


def test_check_rcpt_with_the_downstream_down_is_450(tmp_path, reactor):
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {free_port()} check_rcpt 1")
    replies = session(reactor, qp)
    assert replies[3] == ["450 Unable to check the recipient now, try again later"]


def test_check_rcpt_sender_refused_refuses_the_recipient(tmp_path, reactor, downstreams):
    down = downstreams(answers={"MAIL": "553 5.7.1 sender blocked"})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} check_rcpt 1")
    replies = session(reactor, qp)
    assert replies[3] == ["550 5.7.1 sender blocked"]


def test_check_rcpt_then_a_later_plugin_refuses_relaying(tmp_path, reactor, downstreams):
    # The downstream takes a foreign address that rcpt_ok (after us) refuses: the envelope
    # is sent again with the recipients the client was told 250 for.
    down = downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} check_rcpt 1")
    replies = session(reactor, qp, recipients=["x@elsewhere.example", LOCAL])
    assert replies[3] == ["550 Relaying denied (#5.7.1)"]
    assert final(replies).startswith("250 ")
    assert len(down.sessions) == 1 and "RSET" in down.sessions[0]["lines"]
    assert down.messages[0]["rcpts"] == [f"RCPT TO:<{LOCAL}>"]


def test_check_rcpt_session_closed_at_rset(tmp_path, reactor, downstreams):
    down = downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} check_rcpt 1")

    async def talk():
        driver = SessionDriver(qp)
        await next_reply(reactor, driver)
        for command in ("EHLO c.example", "MAIL FROM:<a@example.com>", f"RCPT TO:<{LOCAL}>", "RSET"):
            driver.send(command.encode() + b"\r\n")
            await next_reply(reactor, driver)
        for _ in range(200):
            if down.sessions and down.sessions[0]["lines"][-1:] == ["QUIT"]:
                return True
            await task.deferLater(reactor, 0.01, lambda: None)
        return down.sessions[0]["lines"]

    assert run(reactor, talk) is True


# -- keepalive ---------------------------------------------------------------------------------

def sessions_in_a_row(reactor, qp, count, linger=0.0):
    async def talk():
        finals = []
        for _ in range(count):
            driver = SessionDriver(qp)
            await next_reply(reactor, driver)
            for command in ("EHLO c.example", "MAIL FROM:<a@example.com>", f"RCPT TO:<{LOCAL}>", "DATA"):
                driver.send(command.encode() + b"\r\n")
                await next_reply(reactor, driver)
            driver.send(MESSAGE.encode() + b".\r\n")
            finals.append((await next_reply(reactor, driver))[-1])
            driver.send(b"QUIT\r\n")
            await task.deferLater(reactor, 0.03, lambda: None)
        await task.deferLater(reactor, linger, lambda: None)
        return finals

    return run(reactor, talk)


def test_without_keepalive_each_message_has_its_connection(tmp_path, reactor, downstreams):
    down = downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port}")
    assert all(f.startswith("250 ") for f in sessions_in_a_row(reactor, qp, 3))
    assert len(down.sessions) == 3 and all(s["lines"][-1] == "QUIT" for s in down.sessions)


def test_keepalive_reuses_the_connection(tmp_path, reactor, downstreams):
    down = downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} keepalive 5")
    assert all(f.startswith("250 ") for f in sessions_in_a_row(reactor, qp, 3))
    assert len(down.sessions) == 1 and len(down.sessions[0]["messages"]) == 3
    assert down.sessions[0]["lines"].count("EHLO test.example.org") == 1


def test_keepalive_connection_closes_when_idle(tmp_path, reactor, downstreams):
    down = downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} keepalive 0.2")
    sessions_in_a_row(reactor, qp, 1, linger=0.5)
    assert down.sessions[0]["lines"][-1] == "QUIT"


def test_keepalive_connection_closed_meanwhile_is_replaced(tmp_path, reactor, downstreams):
    # The downstream hangs up at the second MAIL (the kept connection): a new one takes it.
    calls = []

    def mail(line):
        calls.append(line)
        return None if len(calls) == 2 else "250 2.1.0 Ok"

    down = downstreams(answers={"MAIL": mail})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} keepalive 5")
    assert all(f.startswith("250 ") for f in sessions_in_a_row(reactor, qp, 2))
    assert len(down.sessions) == 2 and len(down.messages) == 2


def test_keepalive_serves_check_rcpt_too(tmp_path, reactor, downstreams):
    down = downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} keepalive 5 check_rcpt 1")
    assert all(f.startswith("250 ") for f in sessions_in_a_row(reactor, qp, 2))
    assert len(down.sessions) == 1 and len(down.messages) == 2


# -- XCLIENT -----------------------------------------------------------------------------------

def test_xclient_sends_the_client_and_helo_again(tmp_path, reactor, downstreams):
    down = downstreams(extensions=("XCLIENT NAME ADDR PORT PROTO HELO LOGIN", "SIZE"),
                       answers={"XCLIENT": "220 fake.example ESMTP"})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} xclient")
    assert final(session(reactor, qp, helo="weird+name=x.example", remote_ip="2001:db8::9")).startswith("250 ")
    lines = down.sessions[0]["lines"]
    assert lines[1] == ("XCLIENT NAME=[UNAVAILABLE] ADDR=IPV6:2001:db8::9 PORT=40001 PROTO=ESMTP "
                        "HELO=weird+2Bname+3Dx.example")
    assert lines[2] == "EHLO weird+name=x.example"
    assert lines[3].startswith("MAIL FROM:")


def test_xclient_not_offered_fails_the_host(tmp_path, reactor, downstreams):
    down = downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} xclient")
    reply = final(session(reactor, qp))
    assert reply == (f"451 Unable to queue message (127.0.0.1:{down.port}: "
                     "Server does not advertise XCLIENT support)")


def test_xclient_refused_fails_the_host(tmp_path, reactor, downstreams):
    down = downstreams(extensions=("XCLIENT NAME ADDR",), answers={"XCLIENT": "550 5.7.0 not authorized"})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} xclient")
    assert "XCLIENT failed: 550 5.7.0 not authorized" in final(session(reactor, qp))


# -- STARTTLS ----------------------------------------------------------------------------------

def test_starttls_when_offered_without_verification(tmp_path, reactor, downstreams, certificate):
    down = downstreams(extensions=("STARTTLS", "SIZE"), cert=certificate)
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port}")
    assert final(session(reactor, qp)) == "250 Queued as 4FAKEID"
    record = down.sessions[0]
    assert record["tls"] in ("TLSv1.2", "TLSv1.3")
    assert record["lines"][:3] == ["EHLO test.example.org", "STARTTLS", "EHLO test.example.org"]
    assert b"Hello downstream." in record["messages"][0]["data"]


def test_starttls_verified_with_the_given_ca(tmp_path, reactor, downstreams, certificate):
    down = downstreams(extensions=("STARTTLS",), cert=certificate)
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} tls verify tls_ca {certificate[0]}")
    assert final(session(reactor, qp)).startswith("250 ")
    assert down.sessions[0]["tls"]


def test_starttls_verification_failure_skips_the_host(tmp_path, reactor, downstreams, certificate):
    down = downstreams(extensions=("STARTTLS",), cert=certificate)
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} tls verify")
    reply = final(session(reactor, qp))
    assert reply.startswith("451 Unable to queue message (") and "TLS handshake failed" in reply
    assert not down.messages


def test_tls_verify_requires_starttls(tmp_path, reactor, downstreams):
    down = downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} tls verify")
    assert "no STARTTLS offered" in final(session(reactor, qp))


def test_starttls_refused_goes_on_in_clear(tmp_path, reactor, downstreams):
    down = downstreams(extensions=("STARTTLS",), answers={"STARTTLS": "454 4.7.0 TLS not available"})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port}")
    assert final(session(reactor, qp)).startswith("250 ")
    assert down.sessions[0]["tls"] is None


def test_tls_no_never_starts_tls(tmp_path, reactor, downstreams, certificate):
    down = downstreams(extensions=("STARTTLS",), cert=certificate)
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port} tls no")
    assert final(session(reactor, qp)).startswith("250 ")
    assert "STARTTLS" not in down.sessions[0]["lines"]


def test_plaintext_after_the_starttls_reply_is_not_taken(tmp_path, reactor, downstreams, certificate):
    # A reply injected after 220 (STARTTLS response injection): the host is given up.
    down = downstreams(extensions=("STARTTLS",), cert=certificate,
                       answers={"STARTTLS": "220 go ahead\r\n250 injected"})
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port}")
    assert "data after the reply to STARTTLS" in final(session(reactor, qp))


# -- the client itself -------------------------------------------------------------------------

def test_tcp_nodelay_is_set(reactor, downstreams):
    from twisted.internet import endpoints, protocol

    down = downstreams()
    module = load_plugin_module()

    async def connect():
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", down.port)
        client = await endpoint.connect(protocol.Factory.forProtocol(module.ClientProtocol))
        await client.greeting
        value = client.transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client.abort()
        return value

    assert run(reactor, connect) != 0


def load_plugin_module():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "plugins" / "queue" / "smtp-forward.py"
    spec = importlib.util.spec_from_file_location("smtp_forward_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_xtext_and_dot_stuffing_helpers():
    module = load_plugin_module()
    assert module.xtext("a+b=c d\u00e9") == "a+2Bb+3Dc+20d+C3+A9"
    assert dot_stuff(b".a\n.b\nc", True) == (b"..a\r\n..b\r\nc", False)
    assert dot_stuff(b".a\n", False) == (b".a\r\n", True)


def test_replies_are_logged(tmp_path, reactor, downstreams):
    down = downstreams()
    qp = forwarder(tmp_path, reactor, f"queue/smtp-forward 127.0.0.1 {down.port}")
    log = capture_log(qp)
    session(reactor, qp)
    assert any(level == LOGINFO and "finished queueing to 127.0.0.1" in text for level, _, text in log)
