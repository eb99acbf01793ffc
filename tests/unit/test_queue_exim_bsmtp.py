"""queue/exim-bsmtp against a BSMTP-speaking program written by the test (not Exim).

Debian's exim4 cannot be installed beside Postfix (both are the
mail-transport-agent). The program reads batched SMTP on its standard input,
checks the dialogue (HELO, MAIL, RCPT..., DATA, the dot-stuffed message, `.`,
QUIT), records what it read and the message it decoded, prints what
FAKE_EXIM_SAY tells it and exits with FAKE_EXIM_EXIT (or kills itself with
FAKE_EXIM_SIGNAL). Each test runs its own Twisted reactor, a fresh instance.
"""

from __future__ import annotations

import sys

import pytest
from harness import make_qp
from reactor_helpers import hand_over, queue_qp

from qpsmtpd_py.constants import LOGERROR

FAKE_EXIM = f"""#!{sys.executable}
import os, re, signal, sys
out = os.environ["FAKE_EXIM_OUT"]
with open(os.path.join(out, "argv"), "w") as f:
    f.write(" ".join(sys.argv[1:]))
raw = sys.stdin.buffer.read()
with open(os.path.join(out, "stdin"), "wb") as f:
    f.write(raw)
lines = raw.split(b"\\n")
problems = []
if not lines[0].startswith(b"HELO "):
    problems.append("no HELO")
if not re.match(rb"MAIL FROM:<[^>]*>$", lines[1]):
    problems.append("no MAIL")
i = 2
while lines[i].startswith(b"RCPT TO:<"):
    i += 1
if i == 2 or lines[i] != b"DATA":
    problems.append("no RCPT or DATA")
message = []
for line in lines[i + 1:]:
    if line == b".":
        break
    if line.startswith(b"."):
        line = line[1:]
    message.append(line)
else:
    problems.append("no final dot")
if lines[-2:] != [b"QUIT", b""]:
    problems.append("no QUIT at the end")
with open(os.path.join(out, "message"), "wb") as f:
    f.write(b"\\n".join(message) + b"\\n")
with open(os.path.join(out, "problems"), "w") as f:
    f.write("; ".join(problems))
if os.environ.get("FAKE_EXIM_SAY"):
    print(os.environ["FAKE_EXIM_SAY"], flush=True)
if os.environ.get("FAKE_EXIM_STDERR"):
    print(os.environ["FAKE_EXIM_STDERR"], file=sys.stderr, flush=True)
if os.environ.get("FAKE_EXIM_SIGNAL"):
    os.kill(os.getpid(), int(os.environ["FAKE_EXIM_SIGNAL"]))
sys.exit(int(os.environ.get("FAKE_EXIM_EXIT", "1" if problems else "0")))
"""

MESSAGE = ("Subject: bsmtp\r\nMessage-Id: <b1@example.com>\r\n\r\nBody line.\r\n.starts with a dot\r\n"
           "..two dots\r\n")


@pytest.fixture
def program(tmp_path, monkeypatch):
    path = tmp_path / "bin" / "exim"
    path.parent.mkdir()
    path.write_text(FAKE_EXIM)
    path.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("FAKE_EXIM_OUT", str(out))
    for name in ("FAKE_EXIM_SAY", "FAKE_EXIM_STDERR", "FAKE_EXIM_EXIT", "FAKE_EXIM_SIGNAL"):
        monkeypatch.delenv(name, raising=False)
    return path

def deliver(reactor, qp, message=MESSAGE, **envelope):
    """One session; the reply to the end of data."""
    return hand_over(reactor, qp, message, **envelope)


def test_bsmtp_dialogue(tmp_path, reactor, program):
    qp = queue_qp(tmp_path, reactor, f"queue/exim-bsmtp exim_path {program}")
    assert deliver(reactor, qp, recipients=("user@test.example.org", "postmaster")) == "250 Queued!"
    out = tmp_path / "out"
    assert (out / "argv").read_text() == "-bS"
    assert (out / "problems").read_text() == ""
    stdin = (out / "stdin").read_bytes()
    assert b"\r" not in stdin  # LF line endings, as qpsmtpd wrote them
    lines = stdin.split(b"\n")
    assert lines[0].startswith(b"HELO ")
    assert lines[1:5] == [b"MAIL FROM:<a@example.com>", b"RCPT TO:<user@test.example.org>", b"RCPT TO:<postmaster>",
                          b"DATA"]
    assert stdin.endswith(b"\n\nBody line.\n..starts with a dot\n...two dots\n.\nQUIT\n")
    message = (out / "message").read_bytes()
    assert b"Subject: bsmtp\nMessage-Id: <b1@example.com>\n" in message and b"\nReceived: from " in message
    assert message.endswith(b"\n\nBody line.\n.starts with a dot\n..two dots\n")


def test_null_sender_and_a_big_spooled_body(tmp_path, reactor, program):
    qp = queue_qp(tmp_path, reactor, f"queue/exim-bsmtp exim_path {program}", files={"size_threshold": "1000"})
    body = "".join(f"{'.' if i % 5 == 0 else ''}line {i} {'y' * 60}\r\n" for i in range(20000))
    assert deliver(reactor, qp, message="Subject: big\r\n\r\n" + body, sender="") == "250 Queued!"
    out = tmp_path / "out"
    assert (out / "problems").read_text() == ""
    assert b"\nMAIL FROM:<>\n" in (out / "stdin").read_bytes()
    assert (out / "message").read_bytes().endswith(body.replace("\r\n", "\n").encode())


@pytest.mark.parametrize(("say", "status", "expected"), [
    ("550 5.1.1 unknown user", "1", "552 5.1.1 unknown user"),
    ("451 4.3.0 spool full", "1", "451 4.3.0 spool full"),  # qpsmtpd answered 552 here
    ("550 refused", "0", "552 refused"),  # a reply counts even with exit status 0
    ("", "1", "451 Internal error enqueuing mail"),
    ("", "2", "451 Internal error enqueuing mail"),
    ("250 OK but odd", "0", "451 Internal error enqueuing mail"),  # a reply outside 4xx/5xx, as qpsmtpd
    ("some words", "0", "250 Queued!"),  # logged, not a reply
])
def test_output_and_exit_status(tmp_path, reactor, program, monkeypatch, say, status, expected):
    if say:
        monkeypatch.setenv("FAKE_EXIM_SAY", say)
    monkeypatch.setenv("FAKE_EXIM_EXIT", status)
    qp = queue_qp(tmp_path, reactor, f"queue/exim-bsmtp exim_path {program}")
    log = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: log.append((level, message))
    assert deliver(reactor, qp) == expected
    if say:
        assert (LOGERROR, f"exim: {say}") in log


def test_output_on_standard_error(tmp_path, reactor, program, monkeypatch):
    monkeypatch.setenv("FAKE_EXIM_STDERR", "exim: 550 5.7.1 sender refused")
    monkeypatch.setenv("FAKE_EXIM_EXIT", "1")
    qp = queue_qp(tmp_path, reactor, f"queue/exim-bsmtp exim_path {program}")
    assert deliver(reactor, qp) == "552 5.7.1 sender refused"


def test_killed_by_a_signal(tmp_path, reactor, program, monkeypatch):
    monkeypatch.setenv("FAKE_EXIM_SIGNAL", "9")
    qp = queue_qp(tmp_path, reactor, f"queue/exim-bsmtp exim_path {program}")
    assert deliver(reactor, qp) == "451 Internal error enqueuing mail"


def test_program_that_does_not_exist(tmp_path, reactor, program):
    qp = queue_qp(tmp_path, reactor, f"queue/exim-bsmtp exim_path {tmp_path / 'bin' / 'rsmtp'}")
    assert deliver(reactor, qp) == "451 Internal error enqueuing mail"


def test_default_path_and_bad_arguments(tmp_path):
    qp = make_qp(tmp_path, plugins=["rcpt_ok", "queue/exim-bsmtp"])
    assert qp.plugins[-1].exim_path == "/usr/sbin/rsmtp"
    with pytest.raises(AssertionError, match="absolute path"):
        make_qp(tmp_path, plugins=["rcpt_ok", "queue/exim-bsmtp exim_path rsmtp"])
    with pytest.raises(AssertionError, match="name/value pairs"):
        make_qp(tmp_path, plugins=["rcpt_ok", "queue/exim-bsmtp /usr/sbin/exim4"])
    with pytest.raises(AssertionError, match="unknown argument"):
        make_qp(tmp_path, plugins=["rcpt_ok", "queue/exim-bsmtp path /usr/sbin/exim4"])
