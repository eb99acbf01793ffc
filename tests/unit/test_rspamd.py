"""rspamd: the checkv2 request, verdicts turned into replies and headers, failures, arguments.

A scripted rspamd (twisted.web on the test's own reactor, loopback) answers
each test; the real rspamd is exercised in tests/integration/test_rspamd_wire.py.
"""

from __future__ import annotations

import json

import pytest
from harness import SessionDriver, make_qp, plugin_source
from reactor_helpers import capture_log, dot_stuffed, next_reply, run
from twisted.web import resource, server

HAM = {"is_skipped": False, "score": 1.5, "required_score": 15.0, "action": "no action",
       "symbols": {"MIME_GOOD": {"name": "MIME_GOOD", "score": -0.1}, "MISSING_MID": {"name": "MISSING_MID",
                                                                                       "score": 2.5}},
       "messages": {}}
MESSAGE = "Subject: hello there\r\nFrom: a@example.com\r\n\r\nbody line\r\n.dotted line\r\n"

CAPTURE = plugin_source("""
    class Capture(Plugin):
        def register(self, qp, *args):
            self.messages = []

        def hook_queue(self, transaction):
            self.messages.append((transaction.header.as_string(), transaction.body_bytes(),
                                  dict(transaction.notes)))
            return OK, "Queued"
""")


class FakeRspamd(resource.Resource):
    """Answers every POST with `answer` (a dict, bytes, or None: never answers); keeps the requests."""

    isLeaf = True

    def __init__(self, answer, status=200):
        super().__init__()
        self.answer = answer
        self.status = status
        self.requests = []

    def render_POST(self, request):
        headers = {name.decode().lower(): [v.decode() for v in values]
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((request.path.decode(), headers, request.content.read()))
        if self.answer is None:
            return server.NOT_DONE_YET
        request.setResponseCode(self.status)
        return self.answer if isinstance(self.answer, bytes) else json.dumps(self.answer).encode()


@pytest.fixture
def fake(reactor):
    """(start(answer, status) -> the FakeRspamd, its port)."""
    ports = []

    def start(answer, status=200):
        rspamd = FakeRspamd(answer, status)
        site = server.Site(rspamd)
        site.noisy = False
        ports.append(reactor.listenTCP(0, site, interface="127.0.0.1"))
        return rspamd, ports[-1].getHost().port

    yield start
    for port in ports:
        port.stopListening()


@pytest.fixture
def rspamd_answering(tmp_path, reactor, fake):
    """(answer, arguments) -> a qp whose rspamd plugin asks a fake rspamd that gives `answer`."""

    def make(answer, arguments=""):
        _, port = fake(answer)
        return rspamd_qp(tmp_path, reactor, f"port {port} {arguments}".rstrip())

    return make


def rspamd_qp(tmp_path, reactor, arguments, files=None):
    qp = make_qp(tmp_path, files=files, plugins=["rcpt_ok", f"rspamd {arguments}", "capture"],
                 plugin_files={"capture": CAPTURE})
    qp.runner.clock = reactor
    for plugin in qp.plugins:
        if plugin.name == "rspamd":
            plugin.reactor = reactor
    return qp


def captured(qp):
    return next(p for p in qp.plugins if p.name == "capture").messages


def send(reactor, qp, message=MESSAGE, recipients=("user@test.example.org",), sender="a@example.com",
         remote_ip="192.0.2.9", relay_client=False):
    """One session: the reply to the end of data."""

    async def talk():
        driver = SessionDriver(qp, remote_ip=remote_ip)
        driver.session.connection.relay_client = relay_client
        await next_reply(reactor, driver)
        for command in ["EHLO client.example.com", f"MAIL FROM:<{sender}>",
                        *(f"RCPT TO:<{r}>" for r in recipients), "DATA"]:
            driver.send(command.encode() + b"\r\n")
            reply = await next_reply(reactor, driver)
            assert reply[-1][:3] in ("250", "354"), reply
        driver.send(dot_stuffed(message).encode() + b".\r\n")
        return (await next_reply(reactor, driver))[-1]

    return run(reactor, talk)


# -- the request ------------------------------------------------------------------------------

def test_request_carries_session_facts_and_the_crlf_message(tmp_path, reactor, fake):
    rspamd, port = fake(HAM)
    qp = rspamd_qp(tmp_path, reactor, f"port {port} settings_id inbound")
    assert send(reactor, qp, recipients=("user@test.example.org", "u2@test.example.org")) == "250 Queued"
    [(path, headers, body)] = rspamd.requests
    assert path == "/checkv2"
    assert headers["ip"] == ["192.0.2.9"]
    assert headers["helo"] == ["client.example.com"]
    assert headers["from"] == ["a@example.com"]
    assert headers["rcpt"] == ["user@test.example.org", "u2@test.example.org"]
    assert headers["mta-name"] == ["test.example.org"]
    assert headers["settings-id"] == ["inbound"]
    assert headers["queue-id"][0].count(".") == 1
    assert "user" not in headers and "hostname" not in headers
    assert headers["transfer-encoding"] == ["chunked"]
    assert b"\r\nReceived: from [192.0.2.9] (HELO client.example.com)" in body
    assert body.endswith(b"Subject: hello there\r\nFrom: a@example.com\r\n\r\nbody line\r\n.dotted line\r\n")
    assert b"\n" not in body.replace(b"\r\n", b"")


def test_big_spooled_body_is_streamed_whole(tmp_path, reactor, fake):
    rspamd, port = fake(HAM)
    qp = rspamd_qp(tmp_path, reactor, f"port {port}", files={"size_threshold": "1000"})
    body = "".join(f"line {i} {'x' * 70}\r\n" for i in range(30000))
    assert send(reactor, qp, message="Subject: big\r\n\r\n" + body) == "250 Queued"
    [(_, _, sent)] = rspamd.requests
    assert sent.endswith(b"\r\n\r\n" + body.encode())


def test_authenticated_user_scanned_with_relay_client_scan(tmp_path, reactor, fake):
    rspamd, port = fake(HAM)
    qp = rspamd_qp(tmp_path, reactor, f"port {port} relay_client scan")
    assert send(reactor, qp, relay_client=True) == "250 Queued"
    assert rspamd.requests


def test_relay_client_skipped_by_default(tmp_path, reactor, fake):
    rspamd, port = fake(HAM)
    qp = rspamd_qp(tmp_path, reactor, f"port {port}")
    assert send(reactor, qp, relay_client=True) == "250 Queued"
    assert rspamd.requests == []


def test_message_over_max_size_passes_unscanned(tmp_path, reactor, fake):
    rspamd, port = fake(HAM)
    qp = rspamd_qp(tmp_path, reactor, f"port {port} max_size 100")
    assert send(reactor, qp, message="Subject: x\r\n\r\n" + "y" * 200 + "\r\n") == "250 Queued"
    assert rspamd.requests == []


# -- verdicts -----------------------------------------------------------------------------------

def test_reject_action_rejects_with_rspamd_message(reactor, rspamd_answering):
    qp = rspamd_answering({**HAM, "score": 15.0, "action": "reject", "messages": {"smtp_message": "Gtube pattern"}})
    assert send(reactor, qp) == "552 Gtube pattern"
    assert captured(qp) == []


def test_reject_without_message_and_reject_type_temp(reactor, rspamd_answering):
    qp = rspamd_answering({**HAM, "score": 20.0, "action": "reject"}, "reject_type temp")
    assert send(reactor, qp) == "452 Detected as spam"


def test_soft_reject_defers(reactor, rspamd_answering):
    qp = rspamd_answering({**HAM, "action": "soft reject",
                           "messages": {"smtp_message": "Try again later, ratelimited"}})
    assert send(reactor, qp) == "452 Try again later, ratelimited"


def test_reject_never_keeps_the_message_with_headers_and_subject(reactor, rspamd_answering):
    qp = rspamd_answering({**HAM, "score": 16.0, "action": "reject"}, "reject never soft_reject never")
    assert send(reactor, qp) == "250 Queued"
    [(header, _, notes)] = captured(qp)
    assert "\nSubject: [SPAM] hello there\n" in header
    assert "X-Spam-Status: Yes, score=16.00 required=15.00 action=rewrite subject\n" in header
    assert notes["rspamd"]["action"] == "reject" and notes["rspamd"]["score"] == 16.0


def test_add_header_action_adds_every_header(reactor, rspamd_answering):
    qp = rspamd_answering({**HAM, "score": 8.0, "action": "add header"})
    assert send(reactor, qp) == "250 Queued"
    [(header, body, notes)] = captured(qp)
    assert "X-Spam-Status: Yes, score=8.00 required=15.00 action=add header\n" in header
    assert "X-Rspamd-Score: 8.00\n" in header
    assert "X-Rspamd-Bar: ++++++++\n" in header
    assert "X-Rspamd-Report: MIME_GOOD(-0.1) MISSING_MID(2.5)\n" in header
    assert "Subject: hello there\n" in header
    assert notes["rspamd"]["symbols"] == {"MIME_GOOD": -0.1, "MISSING_MID": 2.5}
    assert body == b"body line\n.dotted line\n"


def test_no_action_adds_no_header(reactor, rspamd_answering):
    qp = rspamd_answering(HAM)
    assert send(reactor, qp) == "250 Queued"
    assert "X-Spam-Status" not in captured(qp)[0][0]


def test_add_header_always_adds_the_chosen_headers_to_ham(reactor, rspamd_answering):
    qp = rspamd_answering(HAM, "add_header always headers status,score")
    assert send(reactor, qp) == "250 Queued"
    header = captured(qp)[0][0]
    assert "X-Spam-Status: No, score=1.50 required=15.00 action=no action\n" in header
    assert "X-Rspamd-Score: 1.50\n" in header and "X-Rspamd-Bar" not in header


def test_rewrite_subject_uses_rspamd_subject(reactor, rspamd_answering):
    qp = rspamd_answering({**HAM, "score": 9.0, "action": "rewrite subject", "subject": "***SPAM*** %s"},
                          "headers none")
    assert send(reactor, qp) == "250 Queued"
    header = captured(qp)[0][0]
    assert "Subject: ***SPAM*** hello there\n" in header and header.count("Subject:") == 1
    assert "X-Spam-Status" not in header


def test_our_reject_threshold_overrides_rspamd_action(reactor, rspamd_answering):
    qp = rspamd_answering({**HAM, "score": 7.5, "action": "no action"}, "reject 7")
    assert send(reactor, qp) == "552 Detected as spam"


def test_score_under_our_reject_threshold_gets_our_rewrite_subject(reactor, rspamd_answering):
    qp = rspamd_answering({**HAM, "score": 7.5, "action": "no action"},
                          "reject 8 rewrite_subject 7.5 subject_prefix [junk]")
    assert send(reactor, qp) == "250 Queued"
    assert "Subject: [junk] hello there\n" in captured(qp)[0][0]


def test_greylist_action_counts_as_no_action(reactor, rspamd_answering):
    qp = rspamd_answering({**HAM, "score": 4.5, "action": "greylist"})
    assert send(reactor, qp) == "250 Queued"
    assert "X-Spam-Status" not in captured(qp)[0][0]


def test_rspamd_milter_block_removes_and_adds_headers(reactor, rspamd_answering):
    milter = {"remove_headers": {"X-Spam": 0, "X-Old": 2},
              "add_headers": {"X-Spam": "Yes", "DKIM-Signature": {"value": "v=1; a=rsa-sha256", "order": 0},
                              "X-Multi": ["one", "two"]}}
    qp = rspamd_answering({**HAM, "milter": milter})
    message = "X-Spam: forged\r\nX-Old: 1\r\nX-Old: 2\r\nX-Old: 3\r\n" + MESSAGE
    assert send(reactor, qp, message=message) == "250 Queued"
    header = captured(qp)[0][0]
    assert header.startswith("DKIM-Signature: v=1; a=rsa-sha256\n")
    assert "X-Spam: forged" not in header and header.endswith("X-Spam: Yes\nX-Multi: one\nX-Multi: two\n")
    assert "X-Old: 1\nX-Old: 3\n" in header


def test_milter_headers_no_ignores_the_block(reactor, rspamd_answering):
    qp = rspamd_answering({**HAM, "milter": {"add_headers": {"X-Spam": "Yes"}}}, "milter_headers no")
    assert send(reactor, qp) == "250 Queued"
    assert "X-Spam:" not in captured(qp)[0][0]


# -- failures -----------------------------------------------------------------------------------

def test_silent_rspamd_times_out_with_452(tmp_path, reactor, fake):
    rspamd, port = fake(None)
    qp = rspamd_qp(tmp_path, reactor, f"port {port} timeout 0.3")
    reply = send(reactor, qp)
    assert reply == (f"452 Unable to check the message with rspamd (127.0.0.1:{port}: no verdict within 0.3s), "
                     "try again later")
    assert len(rspamd.requests) == 1 and captured(qp) == []


def test_unreachable_rspamd_defers(tmp_path, reactor):
    qp = rspamd_qp(tmp_path, reactor, "port 1")
    assert send(reactor, qp) == ("452 Unable to check the message with rspamd (127.0.0.1:1: connection refused), "
                                 "try again later")


def test_unreachable_rspamd_with_defer_on_error_no_passes(tmp_path, reactor):
    qp = rspamd_qp(tmp_path, reactor, "port 1 defer_on_error no")
    log = capture_log(qp)
    assert send(reactor, qp) == "250 Queued"
    assert any("message passes unscanned" in message for _, message in log)


@pytest.mark.parametrize(("answer", "status", "reason"), [
    (b"<html>oops</html>", 200, "an answer that is not JSON"),
    ({"error": "message too big"}, 200, "rspamd error: message too big"),
    ({"score": 1}, 200, "no action in the answer"),
    (b"internal", 500, "HTTP 500: internal"),
])
def test_answers_that_are_no_verdict_defer(tmp_path, reactor, fake, answer, status, reason):
    _, port = fake(answer, status)
    qp = rspamd_qp(tmp_path, reactor, f"port {port}")
    reply = send(reactor, qp)
    assert reply.startswith("452 Unable to check the message with rspamd") and reason in reply, reply


def test_unix_socket(tmp_path, reactor):
    rspamd = FakeRspamd({**HAM, "action": "reject"})
    site = server.Site(rspamd)
    path = tmp_path / "rspamd.sock"
    port = reactor.listenUNIX(str(path), site)
    try:
        qp = rspamd_qp(tmp_path, reactor, f"unix_socket {path}")
        assert send(reactor, qp) == "552 Detected as spam"
        assert rspamd.requests[0][0] == "/checkv2"
    finally:
        port.stopListening()


def test_max_scans_queue_messages_within_the_timeout(tmp_path, reactor, fake):
    rspamd, port = fake(None)
    qp = rspamd_qp(tmp_path, reactor, f"port {port} max_scans 1 timeout 0.3")
    plugin = next(p for p in qp.plugins if p.name == "rspamd")
    assert plugin.max_scans == 1
    assert send(reactor, qp).startswith("452 ")
    assert plugin._slots.tokens == 1  # the slot came back after the time-out


# -- arguments ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "message"), [
    ("rspamd port", "arguments come in pairs"),
    ("rspamd colour red", "unknown argument 'colour'"),
    ("rspamd port 70000", "port must be 1-65535"),
    ("rspamd unix_socket run/rspamd.sock", "unix_socket must be an absolute path"),
    ("rspamd reject lots", "reject must be action, never or a score"),
    ("rspamd add_header sometimes", "add_header must be action, never, always or a score"),
    ("rspamd headers score,colour", "headers: unknown header 'colour'"),
    ("rspamd relay_client maybe", "relay_client must be skip or scan"),
    ("rspamd timeout 0", "timeout must be more than 0 seconds"),
    ("rspamd path checkv2", "path must start with /"),
])
def test_bad_arguments_stop_start_up(tmp_path, line, message):
    with pytest.raises(AssertionError, match=message):
        make_qp(tmp_path, plugins=[line])


def test_defaults(tmp_path):
    qp = make_qp(tmp_path, plugins=["rspamd"])
    [plugin] = qp.plugins
    assert (plugin.server_name, plugin.path, plugin.timeout, plugin.max_scans, plugin.defer_on_error) == \
        ("127.0.0.1:11333", "/checkv2", 29.0, 8, True)
    assert plugin.thresholds == {key: "action" for key in ("reject", "soft_reject", "rewrite_subject", "add_header")}
