"""Queue plugins against a real, private Postfix instance (see postfix_fixture.py).

queue/smtp-forward relays to Postfix's smtpd; queue/postfix-queue speaks
Postfix's cleanup protocol to its cleanup service. Each message must get
Postfix's queue id in the 250 reply and really be delivered to a Maildir.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import free_port
from harness import make_qp
from postfix_fixture import DOMAIN, PostfixInstance, postfix_available

from qpsmtpd_py.constants import DECLINED, DENY
from qpsmtpd_py.plugin import plugin_class

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"

MAILBOXES = ["fwd", "checked", "cleanup", "cleanup2", "rejected", "deferred", "unfiltered", "second", "tcp",
             "nobody", "bounce"]
HEADER_CHECKS = [
    "/^Subject: reject me/ REJECT content refused here",
    "/^Subject: defer me/ REJECT 4.7.1 not now, later",
]


@pytest.fixture(scope="module")
def postfix():
    why_not = postfix_available()
    if why_not:
        pytest.skip(why_not)
    instance = PostfixInstance(mailboxes=MAILBOXES, refused={f"refused@{DOMAIN}": "no such user here"},
                               header_checks=HEADER_CHECKS).start()
    try:
        yield instance
    finally:
        instance.stop()


def send(client, recipients, subject, body, extra_headers="", sender="sender@example.com"):
    """One message over the daemon; the replies to the RCPTs and the final reply."""
    client.expect(220)
    client.expect(250, "EHLO client.example.com")
    client.expect(250, f"MAIL FROM:<{sender}>")
    rcpt = [client.command(f"RCPT TO:<{address}>") for address in recipients]
    if not any(code == 250 for code, _ in rcpt):
        return rcpt, None
    client.expect(354, "DATA")
    client.send(f"Subject: {subject}\r\nMessage-Id: <{subject.replace(' ', '-')}@example.com>\r\n{extra_headers}"
                f"\r\n{body}\r\n.\r\n")
    return rcpt, client.reply(timeout=60)


def queued_id(reply):
    code, text = reply
    assert code == 250, reply
    match = re.fullmatch(r"Queued as ([0-9A-Za-z]+)", text[0])
    assert match, text
    return match.group(1)


def assert_delivered(postfix, local_part, queue_id, body, count=1):
    log = postfix.wait_for_log(f"{queue_id}: to=<{local_part}@{DOMAIN}>")
    assert re.search(rf"{queue_id}: to=<{local_part}@{DOMAIN}>.*status=sent", log), log
    messages = postfix.wait_for_mail(local_part, count)
    message = next(m for m in messages if body.encode() in m)
    assert b"(HELO client.example.com)" in message and b" by test.example.org (" in message  # our Received
    return message


# -- queue/smtp-forward -> Postfix's smtpd ---------------------------------------------------

def test_smtp_forward_delivers_through_postfix(daemon_factory, postfix):
    daemon = daemon_factory({"plugins": ["rcpt_ok", f"queue/smtp-forward 127.0.0.1 {postfix.port}"]})
    with daemon.connect() as client:
        _, reply = send(client, [f"fwd@{DOMAIN}"], "forwarded", "through Postfix's smtpd")
        queue_id = queued_id(reply)
        client.expect(221, "QUIT")
    message = assert_delivered(postfix, "fwd", queue_id, "through Postfix's smtpd")
    assert b"Message-Id: <forwarded@example.com>" in message


def test_smtp_forward_check_rcpt_gives_postfix_refusal_at_rcpt(daemon_factory, postfix):
    daemon = daemon_factory({"plugins": [f"queue/smtp-forward 127.0.0.1 {postfix.port} check_rcpt 1", "rcpt_ok"]})
    with daemon.connect() as client:
        rcpt, reply = send(client, [f"refused@{DOMAIN}", f"checked@{DOMAIN}"], "checked", "one of two")
        code, text = rcpt[0]
        assert code == 550 and "no such user here" in text[0], rcpt[0]
        assert rcpt[1][0] == 250, rcpt[1]
        queue_id = queued_id(reply)
        client.expect(221, "QUIT")
    assert_delivered(postfix, "checked", queue_id, "one of two")
    assert not postfix.maildir_files("refused")


# -- queue/postfix-queue -> Postfix's cleanup --------------------------------------------------

def test_postfix_queue_over_the_cleanup_socket(daemon_factory, postfix):
    daemon = daemon_factory({"plugins": ["rcpt_ok", f"queue/postfix-queue {postfix.cleanup_socket} "
                                                    "FLAG_MASK_EXTERNAL"]})
    long_line = "x" * 5000  # sent as continued records
    body = f"via cleanup\r\n..a dot-stuffed line\r\n{long_line}"
    with daemon.connect() as client:
        _, reply = send(client, [f"cleanup@{DOMAIN}", f"cleanup2@{DOMAIN}"], "cleanup", body,
                        extra_headers="Cc: somebody\r\n")
        queue_id = queued_id(reply)
        client.expect(221, "QUIT")
    message = assert_delivered(postfix, "cleanup", queue_id, "via cleanup")
    assert_delivered(postfix, "cleanup2", queue_id, "via cleanup")
    assert b"\n.a dot-stuffed line\n" in message and f"\n{long_line}\n".encode() in message
    # The remote rewriting context: header addresses are left as the client wrote them.
    assert b"\nCc: somebody\n" in message
    assert b"Return-Path: <sender@example.com>" in message
    # cleanup took every record (the client's attributes included) without a complaint.
    assert not [line for line in postfix.log().splitlines() if "cleanup" in line and "warning" in line]


def test_postfix_queue_null_sender(daemon_factory, postfix):
    daemon = daemon_factory({"plugins": ["rcpt_ok", f"queue/postfix-queue {postfix.cleanup_socket}"]})
    with daemon.connect() as client:
        _, reply = send(client, [f"bounce@{DOMAIN}"], "a bounce", "delivery status", sender="")
        queue_id = queued_id(reply)
    assert_delivered(postfix, "bounce", queue_id, "delivery status")
    assert f"{queue_id}: from=<>," in postfix.log()


def test_postfix_queue_content_rejected_by_cleanup_is_permanent(daemon_factory, postfix):
    daemon = daemon_factory({"plugins": ["rcpt_ok", f"queue/postfix-queue {postfix.cleanup_socket} FLAG_FILTER"]})
    with daemon.connect() as client:
        _, reply = send(client, [f"rejected@{DOMAIN}"], "reject me", "bad content")
        assert reply[0] == 552 and "content refused here" in reply[1][0], reply
        client.expect(250, "NOOP")
    assert not postfix.maildir_files("rejected")


def test_postfix_queue_deferred_by_cleanup_is_temporary(daemon_factory, postfix):
    daemon = daemon_factory({"plugins": ["rcpt_ok", f"queue/postfix-queue {postfix.cleanup_socket} FLAG_FILTER"]})
    with daemon.connect() as client:
        _, reply = send(client, [f"deferred@{DOMAIN}"], "defer me", "later")
        assert reply[0] == 451 and "not now, later" in reply[1][0], reply
    assert not postfix.maildir_files("deferred")


def test_postfix_queue_without_filter_flag_skips_header_checks(daemon_factory, postfix):
    daemon = daemon_factory({"plugins": ["rcpt_ok", f"queue/postfix-queue {postfix.cleanup_socket}"]})
    with daemon.connect() as client:
        _, reply = send(client, [f"unfiltered@{DOMAIN}"], "reject me", "no filter flag")
        queue_id = queued_id(reply)
    assert_delivered(postfix, "unfiltered", queue_id, "no filter flag")


def test_postfix_queue_cleanup_sockets_tried_in_order(daemon_factory, postfix, tmp_path):
    dead = tmp_path / "no-such-socket"
    daemon = daemon_factory({"plugins": ["rcpt_ok", "queue/postfix-queue /nowhere/cleanup"],
                             "cleanup_sockets": [str(dead), str(postfix.cleanup_socket)]})
    with daemon.connect() as client:
        _, reply = send(client, [f"second@{DOMAIN}"], "second socket", "the second one answered")
        queue_id = queued_id(reply)
    assert_delivered(postfix, "second", queue_id, "the second one answered")
    assert str(dead) in daemon.log()


def test_postfix_queue_env_wins_and_tcp_cleanup(daemon_factory, postfix, monkeypatch):
    monkeypatch.setenv("POSTFIXQUEUE", f"127.0.0.1:{postfix.cleanup_port}")
    daemon = daemon_factory({"plugins": ["rcpt_ok", "queue/postfix-queue /nowhere/cleanup"],
                             "cleanup_sockets": ["/nowhere/either"]})
    with daemon.connect() as client:
        _, reply = send(client, [f"tcp@{DOMAIN}"], "over tcp", "cleanup on a TCP port")
        queue_id = queued_id(reply)
    assert_delivered(postfix, "tcp", queue_id, "cleanup on a TCP port")


def test_postfix_queue_no_cleanup_reachable_gives_451(daemon_factory, tmp_path):
    dead_socket = tmp_path / "cleanup"
    dead_port = free_port()
    daemon = daemon_factory({"plugins": ["rcpt_ok", "queue/postfix-queue"],
                             "cleanup_sockets": [str(dead_socket), f"127.0.0.1:{dead_port}"]})
    with daemon.connect() as client:
        _, reply = send(client, [f"nobody@{DOMAIN}"], "nowhere", "no cleanup")
        code, text = reply
        assert code == 451 and text[0].startswith("Unable to queue message (") and str(dead_socket) in text[0], reply
        assert f"127.0.0.1:{dead_port}: connection refused" in text[0], reply
        client.expect(250, "NOOP")


# -- the protocol pieces, without Postfix ------------------------------------------------------

def plugin_module():
    return sys.modules[plugin_class("queue/postfix-queue", [PLUGINS]).__module__]


def test_record_lengths_are_base_128_low_bits_first():
    module = plugin_module()
    assert module.record(b"N", b"abc") == b"N\x03abc"
    assert module.record(b"E") == b"E\x00"
    assert module.record(b"N", b"x" * 300) == b"N\xac\x02" + b"x" * 300  # 300 = 0x2c + 2 * 128
    long = module.line_records(b"y" * 2100)
    assert long == (b"L\x80\x08" + b"y" * 1024) * 2 + b"N\x34" + b"y" * 52


def test_attribute_groups():
    module = plugin_module()
    assert module.attributes(flags=50) == b"flags\x0050\x00\x00"


def test_status_answers():
    answer = plugin_module().status_answer
    assert answer(64, "") == (DENY, "no recipients specified (#5.1.0)")
    assert answer(8, "5.7.1 go away") == (DENY, "5.7.1 go away")
    assert answer(8, "4.7.1 later") == (DECLINED, "4.7.1 later")  # the reason's class wins
    assert answer(8 | 2, "") == (DECLINED, "queue file write error (#4.3.0)")  # temporary before permanent
    assert answer(1 << 8, "") == (DECLINED, "service unavailable (#4.7.1)")
    assert answer(1 << 12, "")[0] == DECLINED


def test_arguments(tmp_path, monkeypatch):
    monkeypatch.delenv("POSTFIXQUEUE", raising=False)
    qp = make_qp(tmp_path, plugins=["rcpt_ok", "queue/postfix-queue /run/cleanup FLAG_FILTER FLAG_BCC_OK FLAG_BOGUS "
                                               "timeout 30"])
    plugin = qp.plugins[-1]
    assert (plugin.socket, plugin.flags, plugin.timeout) == ("/run/cleanup", 2 | 16, 30.0)
    assert plugin.services() == ["/run/cleanup"]
    qp = make_qp(tmp_path / "b", plugins=["rcpt_ok", "queue/postfix-queue FLAG_MASK_EXTERNAL"],
                 files={"cleanup_sockets": ["/a/cleanup", "mx.internal:10026"]})
    plugin = qp.plugins[-1]
    assert plugin.flags == 2 | 64 | 16 | 32 and plugin.services() == ["/a/cleanup", "mx.internal:10026"]
    monkeypatch.setenv("POSTFIXQUEUE", "10.0.0.1:10026")
    qp = make_qp(tmp_path / "c", plugins=["rcpt_ok", "queue/postfix-queue"],
                 files={"cleanup_sockets": ["/a/cleanup"]})
    assert qp.plugins[-1].services() == ["10.0.0.1:10026"]
    monkeypatch.delenv("POSTFIXQUEUE")
    qp = make_qp(tmp_path / "d", plugins=["rcpt_ok", "queue/postfix-queue"])
    assert qp.plugins[-1].services() == ["/var/spool/postfix/public/cleanup"]
