"""qpsmtpd_py/virus_scan.py: the limits every virus/* plugin runs under, and the message file scanners get."""

from __future__ import annotations

import os
import stat

import pytest
from harness import make_qp
from reactor_helpers import hand_over
from twisted.internet import defer, task
from virus_helpers import PROGRAMS, multipart, virus_qp

from qpsmtpd_py.virus_scan import ScanError, is_multipart, is_yes


def uvscan_plugin(tmp_path, extra=""):
    qp = make_qp(tmp_path, plugins=[f"virus/uvscan uvscan_location {PROGRAMS / 'uvscan'} {extra}"])
    return qp.plugins[0]


def test_scan_over_the_timeout_gets_452_and_the_scanner_is_killed(tmp_path, reactor, monkeypatch):
    calls = tmp_path / "calls"
    monkeypatch.setenv("FAKE_SCANNER_CALLS", str(calls))
    line = f"virus/uvscan uvscan_location {PROGRAMS / 'uvscan'} timeout 0.5 defer_on_error yes"
    qp = virus_qp(tmp_path, reactor, line)
    reply = hand_over(reactor, qp, multipart("TEST-SLEEP=60"))
    assert reply == "452 Unable to scan for viruses (no verdict within 0.5s), try again later"
    assert calls.exists()  # it did run, and was killed: the session did not wait 60s for it


def test_scan_over_the_timeout_passes_without_defer_on_error(tmp_path, reactor):
    line = f"virus/uvscan uvscan_location {PROGRAMS / 'uvscan'} timeout 0.5"
    qp = virus_qp(tmp_path, reactor, line)
    assert hand_over(reactor, qp, multipart("TEST-SLEEP=60 TEST-VIRUS=X")).startswith("250 ")


def test_no_more_than_max_scans_run_at_once_and_waiting_counts_towards_the_timeout(tmp_path):
    plugin = uvscan_plugin(tmp_path, "max_scans 2 timeout 10")
    clock = task.Clock()
    plugin.reactor = clock
    started = []

    def scan(number):
        async def run():
            started.append(number)
            return await gates[number]
        return run

    gates = [defer.Deferred() for _ in range(3)]
    results = [defer.ensureDeferred(plugin.limited_scan(scan(n))) for n in range(3)]
    assert started == [0, 1]
    gates[0].callback("clean")
    assert started == [0, 1, 2] and results[0].result == "clean"
    clock.advance(10)
    for waiting in results[1:]:
        assert waiting.called
        failure = waiting.result
        waiting.addErrback(lambda _: None)
        with pytest.raises(ScanError, match="no verdict within 10s"):
            failure.raiseException()
    assert plugin._slots.tokens == 2  # the slots of cancelled scans are free again


def test_message_file_holds_header_and_body_and_is_readable_by_the_scanner_group(tmp_path, reactor, monkeypatch):
    seen = {}

    async def keep(transaction, argv):
        path = argv[-1]
        seen["content"] = open(path, "rb").read()
        seen["mode"] = stat.S_IMODE(os.stat(path).st_mode)
        return 0, ""

    line = f"virus/uvscan uvscan_location {PROGRAMS / 'uvscan'}"
    qp = virus_qp(tmp_path, reactor, line, files={"size_threshold": "100"})
    (tmp_path / "spool").chmod(0o750)
    plugin = next(p for p in qp.plugins if p.name.startswith("virus::"))
    monkeypatch.setattr(plugin, "run_program", keep)
    body = "".join(f"line {i}\r\n" for i in range(2000))
    assert hand_over(reactor, qp, multipart(body)).startswith("250 ")
    assert b"\nReceived: from [127.0.0.1]" in seen["content"] and b"\nSubject: scan me\n" in seen["content"]
    assert seen["content"].endswith(b"line 1999\n\n--b1--\n")
    assert seen["mode"] == 0o640


def test_scanner_that_cannot_run_is_a_failed_scan(tmp_path, reactor):
    line = f"virus/uvscan uvscan_location {tmp_path / 'no-such-uvscan'} defer_on_error yes"
    qp = virus_qp(tmp_path, reactor, line)
    reply = hand_over(reactor, qp, multipart("x"))
    assert reply.startswith("452 Unable to scan for viruses (") and "no-such-uvscan" in reply


def test_multipart_detection_follows_qpsmtpd():
    from qpsmtpd_py.header import MessageHeader

    assert is_multipart(MessageHeader.parse(b'Content-Type: multipart/mixed;\n boundary="x"\n'))
    assert not is_multipart(MessageHeader.parse(b"Content-Type: multipart/mixed\n"))
    assert not is_multipart(MessageHeader.parse(b"Content-Type: text/plain\n"))
    assert not is_multipart(MessageHeader.parse(b"Subject: none\n"))


@pytest.mark.parametrize(("value", "expected"), [("yes", True), ("no", False), ("1", True), ("0", False),
                                                  (None, True), ("", True), ("No", False)])
def test_yes_no_arguments(value, expected):
    assert is_yes(value, True) is expected
