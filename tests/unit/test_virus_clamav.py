"""virus/clamav with the real clamscan (Debian clamav) and a one-signature database the test writes."""

from __future__ import annotations

import os

import pytest
from clamd_server import CLAMSCAN, SIGNATURE, VIRUS_NAME, write_database
from reactor_helpers import hand_over
from virus_helpers import PROGRAMS, plain, virus_qp

pytestmark = pytest.mark.skipif(not os.access(CLAMSCAN, os.X_OK), reason="clamscan (Debian clamav) is not installed")

INFECTED = plain("x " + SIGNATURE.decode() + " y")


def scan(tmp_path, reactor, options, message):
    database = write_database(tmp_path / "db")
    qp = virus_qp(tmp_path, reactor, f"virus/clamav clamscan_path={CLAMSCAN} database={database} {options}")
    return hand_over(reactor, qp, message), getattr(qp, "after_scan", None)


def test_action_reject_rejects_with_the_virus_name(tmp_path, reactor):
    reply, _ = scan(tmp_path, reactor, "action=reject", INFECTED)
    assert reply == f"552 Virus Found: {VIRUS_NAME}"


def test_default_action_adds_headers_at_the_end(tmp_path, reactor):
    reply, seen = scan(tmp_path, reactor, "", INFECTED)
    assert reply.startswith("250 ")
    assert seen["header"].endswith(f"X-Virus-Found: Yes\nX-Virus-Details: {VIRUS_NAME}\n")


def test_clean_message_is_checked(tmp_path, reactor):
    reply, seen = scan(tmp_path, reactor, "action=reject", plain("clean"))
    assert reply.startswith("250 ") and "X-Virus-Checked: Checked by ClamAV on test.example.org" in seen["header"]


def test_message_over_max_size_is_not_scanned(tmp_path, reactor):
    reply, _ = scan(tmp_path, reactor, "action=reject max_size=100", plain(SIGNATURE.decode() + "x" * 200))
    assert reply.startswith("250 ")


def test_scanner_error_defers_unless_declined_on_fail(tmp_path, reactor):
    # clamscan refuses --config-file (a clamdscan option): exit status 2.
    reply, _ = scan(tmp_path, reactor, "action=reject clamd_conf=/nonexistent/clamd.conf", INFECTED)
    assert reply.startswith("452 Unable to scan for viruses (") and "failed (2)" in reply


def test_declined_on_fail_lets_the_message_pass(tmp_path, reactor):
    reply, _ = scan(tmp_path, reactor, "action=reject clamd_conf=/nonexistent/clamd.conf declined_on_fail",
                    INFECTED)
    assert reply.startswith("250 ")


def test_leading_path_argument_is_the_scanner(tmp_path, reactor):
    qp = virus_qp(tmp_path, reactor, f"virus/clamav {PROGRAMS / 'uvscan'} action=reject")
    plugin = next(p for p in qp.plugins if p.name.startswith("virus::"))
    assert plugin.clamscan == str(PROGRAMS / "uvscan")


@pytest.mark.parametrize("line", ["virus/clamav action=drop", "virus/clamav colour=blue",
                                  "virus/clamav clamscan_path=bin/clamscan", "virus/clamav max_size=lots"])
def test_bad_arguments_refuse_to_start(tmp_path, line):
    from harness import make_qp

    with pytest.raises(AssertionError, match="virus/clamav"):
        make_qp(tmp_path, plugins=[line])
