"""milter: the protocol v6 conversation, every reply type, the changes applied, failures, arguments.

`ScriptedMilter` is a milter written for these tests (Twisted, on the test's
own reactor, loopback or a unix socket): it records every packet it gets and
answers from a script, so each reply type and protocol flag can be asked for
on demand. Real milters (rspamd's proxy, opendkim) are in
tests/integration/test_milter_wire.py.
"""

from __future__ import annotations

import struct

import pytest
from harness import SessionDriver, make_qp, plugin_source
from reactor_helpers import capture_log, dot_stuffed, next_reply, run
from twisted.internet import protocol, task

from qpsmtpd_py import milter_client as m

MESSAGE = "Subject: hello\r\nFrom: a@example.com\r\nX-Folded: one\r\n two\r\n\r\nbody line\r\n.dotted\r\n"

CAPTURE = plugin_source("""
    class Capture(Plugin):
        def register(self, qp, *args):
            self.messages = []

        def hook_queue(self, transaction):
            self.messages.append((transaction.header.as_string(), transaction.sender.format(),
                                  [r.format() for r in transaction.recipients], dict(transaction.notes),
                                  transaction.body_bytes()))
            return OK, "Queued"
""")


def reply(command, data=b""):
    return (command, data)


def strings(*items):
    return m.strings(*items)


class ScriptedMilter(protocol.Protocol):
    """Records (command, data); answers OPTNEG from `optneg`, EOM from `at_eom`, others from `at` or continue."""

    def __init__(self, script):
        self.script = script
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        while len(self.buffer) >= 4:
            (length,) = struct.unpack("!I", self.buffer[:4])
            if len(self.buffer) < 4 + length:
                return
            packet, self.buffer = self.buffer[4:4 + length], self.buffer[4 + length:]
            self.handle(packet[:1], packet[1:])

    def handle(self, command, data):
        script = self.script
        script.received.append((command, data))
        if command == m.SMFIC_OPTNEG:
            version, actions, flags = script.optneg
            self.send(m.SMFIR_OPTNEG, struct.pack("!III", version, actions, flags) + script.macro_lists)
            return
        if command in (m.SMFIC_MACRO, m.SMFIC_QUIT):
            return
        if command == m.SMFIC_BODYEOB:
            answers = script.at_eom
        elif command in script.at:
            answers = script.at[command]
        elif command == m.SMFIC_HEADER and script.optneg[2] & m.SMFIP_NR_HDR:
            return
        elif command == m.SMFIC_RCPT and script.optneg[2] & m.SMFIP_NR_RCPT:
            return
        else:
            answers = [reply(m.SMFIR_CONTINUE)]
        for delay, (code, payload) in enumerate_delays(answers):
            if delay:
                script.reactor.callLater(delay, self.send, code, payload)
            else:
                self.send(code, payload)

    def send(self, command, data=b""):
        if self.transport is not None and self.transport.connected:
            self.transport.write(m.packet(command, data))


def enumerate_delays(answers):
    """Answers are (command, data) or (delay seconds, (command, data))."""
    for answer in answers:
        if isinstance(answer[0], (int, float)):
            yield answer
        else:
            yield 0, answer


class Script(protocol.Factory):
    """What the milter answers; `received` is every packet it got, over all connections."""

    def __init__(self, reactor, at_eom=None, optneg=None, at=None, macro_lists=b""):
        self.reactor = reactor
        self.at_eom = at_eom if at_eom is not None else [reply(m.SMFIR_ACCEPT)]
        self.optneg = optneg or (6, m.SMFIF_ADDHDRS | m.SMFIF_CHGHDRS, 0)
        self.at = at or {}
        self.macro_lists = macro_lists
        self.received = []
        self.noisy = False

    def buildProtocol(self, addr):
        return ScriptedMilter(self)

    def commands(self):
        return [command for command, _ in self.received]

    def data_of(self, command):
        return [data for c, data in self.received if c == command]


@pytest.fixture
def milter(reactor):
    """start(**script) -> (Script, port) listening on 127.0.0.1."""
    ports = []

    def start(**kwargs):
        script = Script(reactor, **kwargs)
        ports.append(reactor.listenTCP(0, script, interface="127.0.0.1"))
        return script, ports[-1].getHost().port

    yield start
    for port in ports:
        port.stopListening()


def milter_qp(tmp_path, reactor, line, files=None):
    qp = make_qp(tmp_path, files=files, plugins=["rcpt_ok", line, "capture"], plugin_files={"capture": CAPTURE})
    qp.runner.clock = reactor
    for plugin in qp.plugins:
        if plugin.name.startswith("milter"):
            plugin.reactor = reactor
    return qp


def captured(qp):
    return next(p for p in qp.plugins if p.name == "capture").messages


def send(reactor, qp, message=MESSAGE, recipients=("user@test.example.org",), sender="a@example.com",
         script=None):
    """One session: the reply to the end of data (with `script`: once the milter got QUIT)."""

    async def talk():
        driver = SessionDriver(qp, remote_ip="192.0.2.9", remote_port=40001)
        await next_reply(reactor, driver)
        for command in ["EHLO client.example.com", f"MAIL FROM:<{sender}>",
                        *(f"RCPT TO:<{r}>" for r in recipients), "DATA"]:
            driver.send(command.encode() + b"\r\n")
            answer = await next_reply(reactor, driver)
            assert answer[-1][:3] in ("250", "354"), answer
        driver.send(dot_stuffed(message).encode() + b".\r\n")
        answer = (await next_reply(reactor, driver))[-1]
        for _ in range(2500):  # the QUIT is sent after the verdict, without waiting
            if script is None or m.SMFIC_QUIT in script.commands():
                break
            await task.deferLater(reactor, 0.002, lambda: None)
        return answer

    return run(reactor, talk)


# -- the conversation ------------------------------------------------------------------------------

def test_whole_conversation_in_milter_order(tmp_path, reactor, milter):
    script, port = milter()
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1")
    assert send(reactor, qp, recipients=("user@test.example.org", "u2@test.example.org"), script=script) == \
        "250 Queued"
    commands = [c for c in script.commands() if c != m.SMFIC_MACRO]
    assert commands[:6] == [m.SMFIC_OPTNEG, m.SMFIC_CONNECT, m.SMFIC_HELO, m.SMFIC_MAIL, m.SMFIC_RCPT, m.SMFIC_RCPT]
    assert commands[6] == m.SMFIC_DATA and commands[-4:] == [m.SMFIC_EOH, m.SMFIC_BODY, m.SMFIC_BODYEOB,
                                                            m.SMFIC_QUIT]
    version, actions, flags = struct.unpack("!III", script.data_of(m.SMFIC_OPTNEG)[0])
    assert (version, actions, flags) == (6, 0x1FF, 0x1FFFFF)  # every action and protocol flag of v6
    assert script.data_of(m.SMFIC_CONNECT) == [b"[192.0.2.9]\x004" + struct.pack("!H", 40001) + b"192.0.2.9\x00"]
    assert script.data_of(m.SMFIC_HELO) == [b"client.example.com\x00"]
    assert script.data_of(m.SMFIC_MAIL) == [b"<a@example.com>\x00"]
    assert script.data_of(m.SMFIC_RCPT) == [b"<user@test.example.org>\x00", b"<u2@test.example.org>\x00"]
    headers = script.data_of(m.SMFIC_HEADER)
    assert headers[-3:] == [b"Subject\x00hello\x00", b"From\x00a@example.com\x00", b"X-Folded\x00one\n two\x00"]
    assert any(h.startswith(b"Received\x00from [192.0.2.9]") for h in headers)
    assert script.data_of(m.SMFIC_BODY) == [b"body line\r\n.dotted\r\n"]


def test_macros_sent_at_each_stage(tmp_path, reactor, milter):
    script, port = milter()
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1")
    assert send(reactor, qp) == "250 Queued"
    macros = {data[:1]: m.split_strings(data[1:]) for data in script.data_of(m.SMFIC_MACRO)}
    connect = dict(zip(macros[m.SMFIC_CONNECT][::2], macros[m.SMFIC_CONNECT][1::2], strict=True))
    assert connect["j"] == "test.example.org" and connect["{client_addr}"] == "192.0.2.9"
    assert connect["{client_port}"] == "40001" and connect["{daemon_name}"] == "qpsmtpd-py"
    assert macros[m.SMFIC_MAIL][:2] == ["{mail_addr}", "a@example.com"]
    assert macros[m.SMFIC_RCPT] == ["{rcpt_addr}", "user@test.example.org"]
    assert macros[m.SMFIC_BODYEOB][0] == "i"


def test_v6_macro_list_limits_the_macros_sent(tmp_path, reactor, milter):
    script, port = milter(macro_lists=struct.pack("!I", 0) + b"{client_addr}\x00")
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1")
    assert send(reactor, qp) == "250 Queued"
    connect = [d for d in script.data_of(m.SMFIC_MACRO) if d[:1] == m.SMFIC_CONNECT]
    assert connect == [b"C{client_addr}\x00192.0.2.9\x00"]


def test_stages_and_replies_the_milter_turns_off_are_left_out(tmp_path, reactor, milter):
    flags = m.SMFIP_NOCONNECT | m.SMFIP_NOHELO | m.SMFIP_NOBODY | m.SMFIP_NR_HDR | m.SMFIP_NR_RCPT
    script, port = milter(optneg=(6, 0, flags))
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1")
    assert send(reactor, qp) == "250 Queued"
    commands = script.commands()
    assert m.SMFIC_CONNECT not in commands and m.SMFIC_HELO not in commands and m.SMFIC_BODY not in commands
    assert m.SMFIC_HEADER in commands and m.SMFIC_BODYEOB in commands


BIG_BODY = "".join(f"line {i} {'z' * 70}\r\n" for i in range(5000))


def test_big_body_goes_in_chunks(tmp_path, reactor, milter):
    script, port = milter()
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1", files={"size_threshold": "1000"})
    assert send(reactor, qp, message="Subject: big\r\n\r\n" + BIG_BODY) == "250 Queued"
    chunks = script.data_of(m.SMFIC_BODY)
    assert len(chunks) > 5 and all(len(c) <= 65535 for c in chunks) and b"".join(chunks) == BIG_BODY.encode()


def test_skip_stops_the_body(tmp_path, reactor, milter):
    script, port = milter(optneg=(6, 0, m.SMFIP_SKIP), at={m.SMFIC_BODY: [reply(m.SMFIR_SKIP)]})
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1", files={"size_threshold": "1000"})
    assert send(reactor, qp, message="Subject: big\r\n\r\n" + BIG_BODY, script=script) == "250 Queued"
    assert len(script.data_of(m.SMFIC_BODY)) == 1 and script.commands()[-2:] == [m.SMFIC_BODYEOB, m.SMFIC_QUIT]


def test_accept_at_mail_ends_the_conversation(tmp_path, reactor, milter):
    script, port = milter(at={m.SMFIC_MAIL: [reply(m.SMFIR_ACCEPT)]})
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1")
    assert send(reactor, qp) == "250 Queued"
    assert m.SMFIC_RCPT not in script.commands() and m.SMFIC_BODYEOB not in script.commands()


# -- verdicts -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("answers", "expected"), [
    ([reply(m.SMFIR_REJECT)], "552 Message rejected by milter"),
    ([reply(m.SMFIR_TEMPFAIL)], "452 Message temporarily rejected by milter, try again later"),
    ([reply(m.SMFIR_REPLYCODE, b"554 5.7.1 Gtube pattern\x00")], "552 5.7.1 Gtube pattern"),
    ([reply(m.SMFIR_REPLYCODE, b"451 4.7.1 Try again later\x00")], "452 4.7.1 Try again later"),
    ([reply(m.SMFIR_CONTINUE)], "250 Queued"),
])
def test_verdicts_at_end_of_message(tmp_path, reactor, milter, answers, expected):
    _, port = milter(at_eom=answers)
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1")
    assert send(reactor, qp) == expected
    assert len(captured(qp)) == (1 if expected.startswith("250") else 0)


def test_reject_at_rcpt_rejects_the_whole_message(tmp_path, reactor, milter):
    script, port = milter(at={m.SMFIC_RCPT: [reply(m.SMFIR_REPLYCODE, b"550 5.1.1 No such user\x00")]})
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1")
    assert send(reactor, qp) == "552 5.1.1 No such user"
    assert m.SMFIC_BODYEOB not in script.commands()


def test_discard_answers_250_and_delivers_nothing(tmp_path, reactor, milter):
    _, port = milter(at_eom=[reply(m.SMFIR_DISCARD)])
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1")
    assert send(reactor, qp) == "250 Queued (discarded by milter)"
    assert captured(qp) == []


def test_every_change_is_applied(tmp_path, reactor, milter):
    changes = [
        reply(m.SMFIR_ADDHEADER, strings("X-Added", " yes")),
        reply(m.SMFIR_INSHEADER, struct.pack("!I", 0) + strings("DKIM-Signature", "v=1; d=example.com")),
        reply(m.SMFIR_CHGHEADER, struct.pack("!I", 1) + strings("Subject", "[tagged] hello")),
        reply(m.SMFIR_CHGHEADER, struct.pack("!I", 1) + strings("X-Folded", "")),
        reply(m.SMFIR_CHGFROM, strings("<bounces@example.net>", "SIZE=100")),
        reply(m.SMFIR_ADDRCPT, strings("<copy@example.net>")),
        reply(m.SMFIR_ADDRCPT_PAR, strings("<other@example.net>", "NOTIFY=NEVER")),
        reply(m.SMFIR_DELRCPT, strings("<user@test.example.org>")),
        reply(m.SMFIR_PROGRESS),
        reply(m.SMFIR_QUARANTINE, strings("looks odd")),
        reply(m.SMFIR_ACCEPT),
    ]
    _, port = milter(at_eom=changes, optneg=(6, m.OFFERED_ACTIONS, 0))
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1")
    assert send(reactor, qp) == "250 Queued"
    [(header, sender, recipients, notes, _)] = captured(qp)
    assert header.startswith("DKIM-Signature: v=1; d=example.com\n")
    assert "Subject: [tagged] hello\n" in header and "X-Folded" not in header
    assert header.endswith("X-Added: yes\n")
    assert sender == "<bounces@example.net>"
    assert recipients == ["<copy@example.net>", "<other@example.net>"]
    assert notes["quarantine"] == "looks odd"


def test_progress_restarts_the_wait(tmp_path, reactor, milter):
    answers = [(0.3, reply(m.SMFIR_PROGRESS)), (0.6, reply(m.SMFIR_PROGRESS)), (0.9, reply(m.SMFIR_ACCEPT))]
    _, port = milter(at_eom=answers)
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1 content_timeout 0.6")
    assert send(reactor, qp) == "250 Queued"


# -- failures -----------------------------------------------------------------------------------

def test_silent_milter_times_out_with_452(tmp_path, reactor, milter):
    _, port = milter(at_eom=[])
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1 content_timeout 0.3")
    assert send(reactor, qp) == (f"452 milter inet:{port}@127.0.0.1 failed (no answer within 0.3s), "
                                 "try again later")
    assert captured(qp) == []


def test_whole_conversation_timeout(tmp_path, reactor, milter):
    _, port = milter(at_eom=[(0.2, reply(m.SMFIR_PROGRESS)), (0.4, reply(m.SMFIR_PROGRESS))])
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1 timeout 0.5")
    assert send(reactor, qp) == f"452 milter inet:{port}@127.0.0.1 failed (no verdict within 0.5s), try again later"


@pytest.mark.parametrize(("action", "expected"), [
    ("tempfail", "452 milter inet:1@127.0.0.1 failed (connection refused), try again later"),
    ("accept", "250 Queued"),
    ("reject", "552 Message rejected: milter inet:1@127.0.0.1 failed (connection refused)"),
])
def test_unreachable_milter_follows_default_action(tmp_path, reactor, action, expected):
    qp = milter_qp(tmp_path, reactor, f"milter inet:1@127.0.0.1 default_action {action}")
    log = capture_log(qp)
    assert send(reactor, qp) == expected
    assert any("connection refused" in message for _, message in log)


def test_milter_wanting_unknown_actions_is_refused(tmp_path, reactor, milter):
    script, port = milter(optneg=(6, m.SMFIF_ADDHDRS | 0x4000, 0))
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1")
    assert send(reactor, qp) == (f"452 milter inet:{port}@127.0.0.1 failed (the milter wants actions we cannot "
                                 "apply: 0x4000), try again later")
    assert script.commands() == [m.SMFIC_OPTNEG]


@pytest.mark.parametrize("size_threshold", ["10", "100000"])  # the old body spooled, or in memory
def test_replaced_body_becomes_the_message_body(tmp_path, reactor, milter, size_threshold):
    pieces = [reply(m.SMFIR_REPLBODY, b"new first line\r"), reply(m.SMFIR_REPLBODY, b"\nsecond\r\n"),
              reply(m.SMFIR_REPLBODY, b"third\r\n"), reply(m.SMFIR_CONTINUE)]
    _, port = milter(at_eom=pieces, optneg=(6, m.SMFIF_CHGBODY, 0))
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1", files={"size_threshold": size_threshold})
    assert send(reactor, qp) == "250 Queued"
    assert list((tmp_path / "spool").iterdir()) == []  # old and new body files went with the transaction
    [(header, _, _, _, body)] = captured(qp)
    assert header.endswith("X-Folded: one\n two\n")
    assert body == b"new first line\nsecond\nthird\n"


def test_broken_reply_is_a_failure(tmp_path, reactor, milter):
    _, port = milter(at_eom=[reply(b"Z", b"what"), reply(m.SMFIR_ACCEPT)])
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1 default_action reject")
    assert send(reactor, qp).startswith(f"552 Message rejected: milter inet:{port}@127.0.0.1 failed (unexpected reply")


def test_change_with_missing_fields_is_a_failure(tmp_path, reactor, milter):
    _, port = milter(at_eom=[reply(m.SMFIR_INSHEADER, struct.pack("!I", 0)), reply(m.SMFIR_ACCEPT)])
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1")
    assert send(reactor, qp).startswith("452 ")
    assert captured(qp) == []


def test_unix_socket(tmp_path, reactor):
    script = Script(reactor, at_eom=[reply(m.SMFIR_REJECT)])
    path = tmp_path / "milter.sock"
    port = reactor.listenUNIX(str(path), script)
    try:
        qp = milter_qp(tmp_path, reactor, f"milter unix:{path}")
        assert send(reactor, qp) == "552 Message rejected by milter"
        assert script.commands()[0] == m.SMFIC_OPTNEG
    finally:
        port.stopListening()


def test_message_over_max_size_skips_the_milter(tmp_path, reactor, milter):
    script, port = milter(at_eom=[reply(m.SMFIR_REJECT)])
    qp = milter_qp(tmp_path, reactor, f"milter inet:{port}@127.0.0.1 max_size 50")
    assert send(reactor, qp, message="Subject: x\r\n\r\n" + "y" * 100 + "\r\n") == "250 Queued"
    assert script.received == []


# -- arguments ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("inet:8891@127.0.0.1", ("tcp", "127.0.0.1", 8891)),
    ("inet6:8891@[::1]", ("tcp", "::1", 8891)),
    ("inet:localhost:11332", ("tcp", "localhost", 11332)),
    ("inet:[::1]:11332", ("tcp", "::1", 11332)),
    ("unix:/run/opendkim/opendkim.sock", ("unix", "/run/opendkim/opendkim.sock")),
    ("local:/var/run/milter.sock", ("unix", "/var/run/milter.sock")),
])
def test_socket_spellings(tmp_path, text, expected):
    qp = make_qp(tmp_path, plugins=[f"milter {text}"])
    assert qp.plugins[0].socket == expected


@pytest.mark.parametrize(("line", "message"), [
    ("milter", "No milter socket given"),
    ("milter 127.0.0.1:8891", "bad milter socket"),
    ("milter inet:70000@127.0.0.1", "bad port"),
    ("milter unix:relative.sock", "bad milter socket"),
    ("milter inet:8891@127.0.0.1 command_timeout", "come in pairs"),
    ("milter inet:8891@127.0.0.1 colour red", "unknown argument 'colour'"),
    ("milter inet:8891@127.0.0.1 content_timeout soon", "content_timeout must be a positive number"),
    ("milter inet:8891@127.0.0.1 default_action discard", "default_action must be tempfail, accept or reject"),
    ("milter inet:8891@127.0.0.1 max_size 0", "max_size must be a whole number"),
])
def test_bad_arguments_stop_start_up(tmp_path, line, message):
    with pytest.raises(AssertionError, match=message):
        make_qp(tmp_path, plugins=[line])
