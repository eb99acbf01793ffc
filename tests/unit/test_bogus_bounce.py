"""The bogus_bounce plugin: null-sender mail to several recipients or with a return path."""

import pytest
from harness import SessionDriver, make_qp, plugin_source, write_config

from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import LOGINFO
from qpsmtpd_py.qp import Qpsmtpd

QUEUE = plugin_source("""
    class Accept(Plugin):
        def hook_queue(self, transaction):
            return OK
""")
QUEUED = ["250 Queued"]
NOT_ONE = "fail, this bounce message does not have 1 recipient"
RETURN_PATH = "a bounce return path must be empty (RFC 3834)"


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def bb_qp(tmp_path, args=""):
    return make_qp(tmp_path, plugins=[f"bogus_bounce {args}".strip(), "rcpt_ok", "accept"],
                   plugin_files={"accept": QUEUE})


def send(qp, sender="<>", recipients=("a@test.example.org",), header="Subject: bounce\r\n"):
    driver = SessionDriver(qp, remote_ip="192.0.2.9")
    driver.take()
    driver.command("HELO client.example")
    assert driver.command(f"MAIL FROM:{sender}")[0].startswith("250 ")
    for recipient in recipients:
        assert driver.command(f"RCPT TO:<{recipient}>")[0].startswith("250 ")
    assert driver.command("DATA") == ["354 go ahead"]
    driver.send((header + "\r\nbody\r\n").encode())
    return driver.command(".")


TWO = ("a@test.example.org", "b@test.example.org")


def test_real_bounce_passes(tmp_path):
    qp = bb_qp(tmp_path, "deny")
    log = capture_log(qp)
    assert send(qp) == QUEUED
    assert (LOGINFO, "bogus_bounce", "pass, single recipient, empty Return-Path") in log


def test_other_senders_are_not_checked(tmp_path):
    qp = bb_qp(tmp_path, "deny")
    log = capture_log(qp)
    assert send(qp, sender="<s@example.net>", recipients=TWO, header="Return-Path: <s@example.net>\r\n") == QUEUED
    assert (LOGINFO, "bogus_bounce", "pass, not a null sender") in log


def test_bounce_to_two_recipients_is_refused_with_deny(tmp_path):
    qp = bb_qp(tmp_path, "deny")
    log = capture_log(qp)
    assert send(qp, recipients=TWO) == [f"552 {NOT_ONE}"]
    assert (LOGINFO, "bogus_bounce", "fail, bogus bounce to: <a@test.example.org>,<b@test.example.org>") in log


def test_bounce_with_a_return_path_is_refused_with_deny(tmp_path):
    qp = bb_qp(tmp_path, "deny")
    log = capture_log(qp)
    assert send(qp, header="Return-Path: <someone@example.net>\r\n") == [f"552 {RETURN_PATH}"]
    assert (LOGINFO, "bogus_bounce", "fail, bounce messages must not have a Return-Path") in log


@pytest.mark.parametrize("value", ["<>", " <> ", ""])
def test_empty_return_path_passes(tmp_path, value):
    assert send(bb_qp(tmp_path, "deny"), header=f"Return-Path:{value}\r\n") == QUEUED


def test_denysoft_refuses_temporarily(tmp_path):
    qp = bb_qp(tmp_path, "denysoft")
    assert send(qp, recipients=TWO) == [f"452 {NOT_ONE}"]
    assert send(qp, header="Return-Path: <x@example.net>\r\n") == [f"452 {RETURN_PATH}"]


@pytest.mark.parametrize("args", ["", "log", "LOG", "action log", "action deny reject 0"])
def test_log_only_logs(tmp_path, args):
    qp = bb_qp(tmp_path, args)
    log = capture_log(qp)
    assert send(qp, recipients=TWO) == QUEUED
    assert (LOGINFO, "bogus_bounce", "fail, tolerated") in log


@pytest.mark.parametrize(("args", "reply"), [
    ("reject 1", "552"),
    ("action deny", "552"),
    ("Deny", "552"),
    ("reject 1 reject_type temp", "452"),
    ("action denysoft reject_type perm", "452"),  # denysoft always means temp, as in qpsmtpd
])
def test_key_value_arguments(tmp_path, args, reply):
    assert send(bb_qp(tmp_path, args), recipients=TWO) == [f"{reply} {NOT_ONE}"]


def test_reject_naughty_stores_the_refusal(tmp_path):
    qp = bb_qp(tmp_path, "action deny reject naughty")
    driver = SessionDriver(qp)
    driver.take()
    driver.command("HELO client.example")
    driver.command("MAIL FROM:<>")
    driver.command("RCPT TO:<a@test.example.org>")
    driver.command("RCPT TO:<b@test.example.org>")
    driver.command("DATA")
    driver.send(b"\r\nbody\r\n")
    assert driver.command(".") == QUEUED
    assert driver.session.connection.notes["naughty"] == f"(bogus_bounce) {NOT_ONE}"


def test_reject_disconnect_closes(tmp_path):
    qp = bb_qp(tmp_path, "action deny reject_type disconnect")
    driver = SessionDriver(qp)
    driver.take()
    driver.command("HELO client.example")
    driver.command("MAIL FROM:<>")
    driver.command("RCPT TO:<a@test.example.org>")
    driver.command("DATA")
    driver.send(b"Return-Path: <x@example.net>\r\n\r\nbody\r\n")
    assert driver.command(".") == [f"552 {RETURN_PATH}"]
    assert driver.closed


@pytest.mark.parametrize(("line", "problem"), [
    ("bogus_bounce refuse", "the action must be one of log, deny, denysoft, not 'refuse'"),
    ("bogus_bounce deny loglevel 6", "give one action"),
    ("bogus_bounce reject 2", "reject must be 0, 1 or naughty"),
])
def test_bad_arguments_stop_start_up(tmp_path, line, problem):
    config = write_config(tmp_path / "config", {"me": "t.example", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": [line]})
    errors = [str(e) for e in Qpsmtpd(ConfigReader([config])).load()]
    assert len(errors) == 1 and problem in errors[0], errors
