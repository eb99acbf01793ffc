"""queue/qmail-queue against a qmail-queue-compatible program written by the test.

The program records what it reads on fd 0 (the message) and fd 1 (the
envelope) and exits as the environment tells it (FAKE_QQ_EXIT, FAKE_QQ_SIGNAL,
FAKE_QQ_NOREAD); the plugin passes the daemon's environment on. Each test runs
its own Twisted reactor, a fresh instance, so child processes are reaped.
"""

from __future__ import annotations

import sys
import time

import pytest
from harness import make_qp
from reactor_helpers import hand_over, queue_qp

from qpsmtpd_py.constants import LOGWARN

FAKE_QMAIL_QUEUE = f"""#!{sys.executable}
import os, signal, sys
out = os.environ["FAKE_QQ_OUT"]
if os.environ.get("FAKE_QQ_NOREAD"):
    sys.stderr.write("refusing to read\\n")
    sys.exit(int(os.environ.get("FAKE_QQ_EXIT", "0")))
def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
message = read_all(0)
envelope = read_all(1)
with open(os.path.join(out, "message"), "wb") as f:
    f.write(message)
with open(os.path.join(out, "envelope"), "wb") as f:
    f.write(envelope)
with open(os.path.join(out, "pid"), "w") as f:
    f.write(str(os.getpid()))
if os.environ.get("FAKE_QQ_LINGER"):  # close every descriptor, exit a little later
    for fd in (0, 1, 2):
        os.close(fd)
    import time
    time.sleep(float(os.environ["FAKE_QQ_LINGER"]))
if os.environ.get("FAKE_QQ_SIGNAL"):
    os.kill(os.getpid(), int(os.environ["FAKE_QQ_SIGNAL"]))
sys.exit(int(os.environ.get("FAKE_QQ_EXIT", "0")))
"""

MESSAGE = "Subject: queued\r\nMessage-Id: <qq1@example.com>\r\n\r\nBody line.\r\n"


@pytest.fixture
def program(tmp_path, monkeypatch):
    path = tmp_path / "bin" / "qmail-queue"
    path.parent.mkdir()
    path.write_text(FAKE_QMAIL_QUEUE)
    path.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("FAKE_QQ_OUT", str(out))
    monkeypatch.delenv("QMAILQUEUE", raising=False)
    monkeypatch.delenv("QMAIL", raising=False)
    return path

def deliver(reactor, qp, message=MESSAGE, **envelope):
    """One session; the reply to the end of data."""
    return hand_over(reactor, qp, message, **envelope)


def test_queued_message_and_envelope(tmp_path, reactor, program):
    qp = queue_qp(tmp_path, reactor, f"queue/qmail-queue {program}")
    reply = deliver(reactor, qp, recipients=("user@test.example.org", "postmaster"))
    pid = (tmp_path / "out" / "pid").read_text()
    assert reply.startswith("250 Queued! ")
    words = reply.split()
    assert words[3] == "qp" and words[4] == pid and words[5] == "<qq1@example.com>"
    assert abs(int(words[2]) - time.time()) < 10
    assert (tmp_path / "out" / "envelope").read_bytes() == b"Fa@example.com\0Tuser@test.example.org\0Tpostmaster\0\0"
    message = (tmp_path / "out" / "message").read_bytes()
    assert b"\r" not in message  # LF line endings, as qmail wants
    assert b"\nReceived: from [127.0.0.1] (HELO client.example)" in message
    assert message.endswith(b"\n\nBody line.\n")
    assert b"Subject: queued\nMessage-Id: <qq1@example.com>\n" in message


def test_null_sender_and_a_spooled_body(tmp_path, reactor, program):
    qp = queue_qp(tmp_path, reactor, f"queue/qmail-queue {program}", files={"size_threshold": "1000"})
    body = "".join(f"line {i} {'y' * 60}\r\n" for i in range(5000))
    assert deliver(reactor, qp, message="Subject: big\r\n\r\n" + body, sender="").startswith("250 ")
    assert (tmp_path / "out" / "envelope").read_bytes().startswith(b"F\0T")
    assert (tmp_path / "out" / "message").read_bytes().endswith(body.replace("\r\n", "\n").encode())


def test_message_id_is_wrapped_in_brackets(tmp_path, reactor, program):
    qp = queue_qp(tmp_path, reactor, f"queue/qmail-queue {program}")
    assert deliver(reactor, qp, message="Subject: x\r\n\r\nno id\r\n").endswith(" <>")


@pytest.mark.parametrize(("status", "code"), [
    (11, "552"),  # address too long: permanent
    (31, "552"),  # permanently refuses the message
    (40, "552"),
    (1, "451"),
    (51, "451"),  # out of memory
    (53, "451"),  # write error, disk full
    (71, "451"),  # temporarily refuses
    (81, "451"),  # internal bug
    (91, "451"),  # envelope format error
    (100, "451"),
])
def test_exit_status_classes(tmp_path, reactor, program, monkeypatch, status, code):
    monkeypatch.setenv("FAKE_QQ_EXIT", str(status))
    qp = queue_qp(tmp_path, reactor, f"queue/qmail-queue {program}")
    assert deliver(reactor, qp) == f"{code} Unable to queue message ({status})"


@pytest.mark.parametrize("status", [0, 71])
def test_program_closing_its_descriptors_before_it_exits(tmp_path, reactor, program, monkeypatch, status):
    # Its pipes close 0.3 s before it exits: the exit is still seen without SIGCHLD.
    monkeypatch.setenv("FAKE_QQ_LINGER", "0.3")
    monkeypatch.setenv("FAKE_QQ_EXIT", str(status))
    qp = queue_qp(tmp_path, reactor, f"queue/qmail-queue {program}")
    reply = deliver(reactor, qp)
    assert reply.startswith("250 Queued! ") if status == 0 else reply == "451 Unable to queue message (71)"


def test_killed_by_a_signal_is_temporary(tmp_path, reactor, program, monkeypatch):
    monkeypatch.setenv("FAKE_QQ_SIGNAL", "9")
    qp = queue_qp(tmp_path, reactor, f"queue/qmail-queue {program}")
    assert deliver(reactor, qp) == "451 Unable to queue message (killed by signal 9)"


def test_program_that_exits_without_reading(tmp_path, reactor, program, monkeypatch):
    # It stops reading at once: writing the big message fails, its exit status decides.
    monkeypatch.setenv("FAKE_QQ_NOREAD", "1")
    monkeypatch.setenv("FAKE_QQ_EXIT", "31")
    qp = queue_qp(tmp_path, reactor, f"queue/qmail-queue {program}", files={"size_threshold": "1000"})
    log = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: log.append((level, message))
    body = "x" * 70 + "\r\n"
    assert deliver(reactor, qp, message="Subject: big\r\n\r\n" + body * 20000) == "552 Unable to queue message (31)"
    assert (LOGWARN, f"{program} said: refusing to read") in log


def test_program_that_does_not_exist(tmp_path, reactor, program):
    missing = tmp_path / "bin" / "missing-queue"
    qp = queue_qp(tmp_path, reactor, f"queue/qmail-queue {missing}")
    reply = deliver(reactor, qp)
    assert reply.startswith("451 Unable to queue message (")


def test_qmailqueue_environment_wins(tmp_path, monkeypatch, program):
    monkeypatch.setenv("QMAILQUEUE", str(program))
    qp = make_qp(tmp_path, plugins=["rcpt_ok", "queue/qmail-queue /nonexistent/qmail-queue"])
    assert qp.plugins[-1].queue_exec == str(program)


def test_default_path_follows_qmail(tmp_path, monkeypatch, program):
    monkeypatch.setenv("QMAIL", "/opt/qmail")
    qp = make_qp(tmp_path, plugins=["rcpt_ok", "queue/qmail-queue"])
    assert qp.plugins[-1].queue_exec == "/opt/qmail/bin/qmail-queue"
    monkeypatch.delenv("QMAIL")
    qp = make_qp(tmp_path, plugins=["rcpt_ok", "queue/qmail-queue loglevel 7"])
    assert qp.plugins[-1].queue_exec == "/var/qmail/bin/qmail-queue"


@pytest.mark.parametrize("path", ["relative/qmail-queue", "/var/qmail/bin/qmail-queue;rm", "/opt/q$mail/qq"])
def test_unsafe_path_stops_start_up(tmp_path, program, path):
    with pytest.raises(AssertionError, match="absolute path"):
        make_qp(tmp_path, plugins=["rcpt_ok", f"queue/qmail-queue {path}"])

