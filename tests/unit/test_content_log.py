"""The content_log plugin: every message appended to a dated file (written inline instead of in a thread)."""

import re
import time

import pytest
from harness import SessionDriver, make_qp, plugin_source
from twisted.internet import defer

from qpsmtpd_py.constants import LOGERROR

QUEUE = plugin_source("""
    class Queue(Plugin):
        def hook_queue(self, transaction):
            return OK, "Queued"
""")
REFUSE = plugin_source("""
    class Refuse(Plugin):
        def hook_data_post(self, transaction):
            return DENY, "not this one"
""")
MESSAGE = b"Subject: hello\r\nFrom: a@example.com\r\n\r\nline one\r\nline two\r\n"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mail").mkdir()
    return tmp_path


def log_qp(tmp_path, files=None, before=(), after=()):
    qp = make_qp(tmp_path, files=files, plugins=[*before, "content_log", *after, "rcpt_ok", "queue"],
                 plugin_files={"queue": QUEUE, "refuse": REFUSE})
    for plugin in qp.plugins:
        if plugin.name == "content_log":
            plugin.in_thread = lambda function, *args: defer.maybeDeferred(function, *args)
    return qp


def plugin(qp):
    return next(p for p in qp.plugins if p.name == "content_log")


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def send(qp, message=MESSAGE, driver=None):
    driver = driver or SessionDriver(qp)
    driver.take()
    driver.command("HELO client.example")
    assert driver.command("MAIL FROM:<a@example.com>")[0].startswith("250")
    assert driver.command("RCPT TO:<user@test.example.org>")[0].startswith("250")
    assert driver.command("DATA") == ["354 go ahead"]
    driver.send(message + b".\r\n")
    return driver.take()


def logged(directory):
    """The one file written under `directory` (named by the date: no race at midnight)."""
    files = list(directory.iterdir())
    assert len(files) == 1, files
    return files[0].read_bytes()


def test_message_is_appended_to_the_daily_file(workdir):
    qp = log_qp(workdir)
    assert send(qp) == ["250 Queued"]
    head, body = logged(workdir / "mail").split(b"\n\n", 1)
    # The header as it will be queued, with the trace fields the daemon added.
    assert head.startswith(b"Authentication-Results: ") and b"\nReceived: from [127.0.0.1]" in head
    assert re.fullmatch(r"\d{8}", next((workdir / "mail").iterdir()).name)
    assert b"\nSubject: hello\nFrom: a@example.com" in head
    assert body == b"line one\nline two\n"


def test_messages_follow_each_other(workdir):
    qp = log_qp(workdir)
    send(qp, b"Subject: one\r\n\r\nfirst\r\n")
    send(qp, b"Subject: two\r\n\r\nsecond\r\n")
    text = logged(workdir / "mail")
    assert text.count(b"Received: from ") == 2
    assert text.index(b"Subject: one") < text.index(b"first\n") < text.index(b"Subject: two")
    assert text.endswith(b"second\n")


def test_content_log_file_pattern(workdir):
    (workdir / "archive").mkdir()
    qp = log_qp(workdir, files={"content_log_file": f"{workdir}/archive/%Y-%m-%H.log"})
    stamp = time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1))
    assert plugin(qp).content_log_file(stamp) == f"{workdir}/archive/2026-03-05.log"
    send(qp)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d\.log", next((workdir / "archive").iterdir()).name)


def test_default_pattern(workdir):
    qp = log_qp(workdir)
    assert plugin(qp).content_log_file(0) == time.strftime("mail/%Y%m%d", time.localtime(0))


def test_large_message_from_the_spool_file(workdir):
    qp = log_qp(workdir, files={"size_threshold": "1000"})
    body = b"".join(b"line %06d of a long message\r\n" % n for n in range(5000))
    assert send(qp, b"Subject: big\r\n\r\n" + body) == ["250 Queued"]
    assert logged(workdir / "mail").split(b"\n\n", 1)[1] == body.replace(b"\r\n", b"\n")


def test_missing_directory_is_logged_and_the_message_goes_on(workdir):
    qp = log_qp(workdir, files={"content_log_file": "nowhere/%Y"})
    log = capture_log(qp)
    assert send(qp) == ["250 Queued"]
    assert any(level == LOGERROR and message.startswith("cannot write nowhere/")
               for level, _, message in log)
    assert not (workdir / "nowhere").exists()


def test_refused_messages_before_it_are_not_logged(workdir):
    qp = log_qp(workdir, before=["refuse"])
    assert send(qp) == ["552 not this one"]
    assert not list((workdir / "mail").iterdir())


def test_exclude(workdir):
    qp = log_qp(workdir)
    assert plugin(qp).exclude(None) is False
    plugin(qp).exclude = lambda transaction: True
    assert send(qp) == ["250 Queued"]
    assert not list((workdir / "mail").iterdir())


# qpsmtpd's test_content_log_enabled table (config lines are stripped of blanks when read).
@pytest.mark.parametrize(("value", "enabled"), [
    (None, True), ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("yes    ", True),
    ("0", False), ("false", False), ("no", False), ("asdf ", False), ("yess", False),
])
def test_content_log_enabled(workdir, value, enabled):
    files = {} if value is None else {"content_log_enabled": value + "\n"}
    qp = log_qp(workdir, files=files)
    assert plugin(qp).content_log_enabled() is enabled
    assert any(entry.name == "content_log" for entry in qp.hooks.entries("data_post")) is enabled
    send(qp)
    assert bool(list((workdir / "mail").iterdir())) is enabled


def test_arguments(workdir):
    with pytest.raises(AssertionError, match="content_log"):
        make_qp(workdir, plugins=["content_log mail/%Y", "rcpt_ok"])
