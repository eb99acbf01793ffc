"""The loop plugin: messages with too many Received and Delivered-To lines are refused."""

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
TOO_MANY = ["552 Too many hops (#5.4.6)"]


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def loop_qp(tmp_path, args=""):
    return make_qp(tmp_path, plugins=[f"loop {args}".strip(), "rcpt_ok", "accept"], plugin_files={"accept": QUEUE})


def send(qp, received=0, delivered_to=0):
    driver = SessionDriver(qp, remote_ip="192.0.2.9")
    driver.take()
    driver.command("HELO client.example")
    driver.command("MAIL FROM:<a@example.com>")
    driver.command("RCPT TO:<b@test.example.org>")
    assert driver.command("DATA") == ["354 go ahead"]
    header = "".join(f"Received: from hop{i}.example by hop{i + 1}.example\r\n" for i in range(received))
    header += "".join(f"Delivered-To: box{i}@example.org\r\n" for i in range(delivered_to))
    driver.send((header + "Subject: loop\r\n\r\nbody\r\n").encode())
    return driver.command(".")


def test_default_limit_is_100_hops_counting_our_own_received_line(tmp_path):
    qp = loop_qp(tmp_path)
    assert send(qp, received=98) == QUEUED  # 99 with ours
    log = capture_log(qp)
    assert send(qp, received=99) == TOO_MANY  # 100 with ours
    assert (LOGINFO, "loop", "fail, 100 hops (max 100)") in log


def test_delivered_to_lines_count_too(tmp_path):
    qp = loop_qp(tmp_path, "5")
    assert send(qp, received=2, delivered_to=1) == QUEUED
    assert send(qp, received=2, delivered_to=2) == TOO_MANY
    assert send(qp, delivered_to=4) == TOO_MANY


def test_header_names_ignore_case(tmp_path):
    qp = loop_qp(tmp_path, "3")
    driver = SessionDriver(qp)
    driver.take()
    driver.command("HELO client.example")
    driver.command("MAIL FROM:<a@example.com>")
    driver.command("RCPT TO:<b@test.example.org>")
    driver.command("DATA")
    driver.send(b"RECEIVED: x\r\ndelivered-to: y\r\n\r\nbody\r\n")
    assert driver.command(".") == TOO_MANY


def test_refused_message_leaves_the_session_usable(tmp_path):
    qp = loop_qp(tmp_path, "1")
    driver = SessionDriver(qp)
    driver.take()
    driver.command("HELO client.example")
    driver.command("MAIL FROM:<a@example.com>")
    driver.command("RCPT TO:<b@test.example.org>")
    driver.command("DATA")
    assert driver.command(".") == TOO_MANY
    assert driver.command("MAIL FROM:<a@example.com>")[0].startswith("250 ")


@pytest.mark.parametrize("argument", ["0", "many", "-5"])
def test_max_hops_must_be_a_positive_number(tmp_path, argument):
    config = write_config(tmp_path / "config", {"me": "t.example", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": [f"loop {argument}"]})
    errors = [str(e) for e in Qpsmtpd(ConfigReader([config])).load()]
    assert len(errors) == 1 and "max_hops must be a positive whole number" in errors[0]


def test_extra_arguments_are_logged_and_ignored(tmp_path, capfd):
    qp = make_qp(tmp_path, plugins=["loop 2 3", "rcpt_ok", "accept"], plugin_files={"accept": QUEUE})
    assert "Ignoring additional arguments" in capfd.readouterr().err
    assert send(qp, received=1) == TOO_MANY
