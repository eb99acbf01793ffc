"""The commercial-scanner plugins against the stand-in programs in tests/programs.

aveclient, bdc (bitdefender), antivir (hbedv), kavscanner and uvscan are
programs printing their scanner's documented output and exit codes; sophie is
a daemon on a unix socket speaking Sophie's protocol. The scanned message
tells the stand-in what to report (tests/programs/fake_scanner.py).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from reactor_helpers import capture_log, hand_over, wait_until
from virus_helpers import PROGRAMS, multipart, plain, virus_qp

from qpsmtpd_py.constants import LOGWARN


@pytest.fixture
def calls(tmp_path, monkeypatch):
    path = tmp_path / "calls"
    monkeypatch.setenv("FAKE_SCANNER_CALLS", str(path))
    return lambda: [line.split("\t") for line in path.read_text().splitlines()]


def headers_after(tmp_path, reactor, line, message, files=None):
    """The reply, and what the message looked like after the scan."""
    qp = virus_qp(tmp_path, reactor, line, files)
    reply = hand_over(reactor, qp, message)
    return reply, getattr(qp, "after_scan", {"header": "", "notes": {}, "recipients": []})


# -- aveclient -------------------------------------------------------------------------

def ave_line(tmp_path, extra=""):
    socket_path = tmp_path / "aveserver"
    socket_path.write_text("")  # the stand-in only checks that it exists
    return f"virus/aveclient avclient_bin {PROGRAMS / 'aveclient'} avdaemon_sock {socket_path} {extra}"


def test_aveclient_rejects_an_infected_message_with_its_report(tmp_path, reactor, calls):
    reply, _ = headers_after(tmp_path, reactor, ave_line(tmp_path), plain("TEST-VIRUS=Trojan.Win32.Test"))
    assert reply.startswith("552 Virus found: REPORT: ") and "infected: Trojan.Win32.Test" in reply
    args = calls()[0]
    assert args[:3] == ["-p", str(tmp_path / "aveserver"), "-s"]


def test_aveclient_suspicious_object_is_rejected_too(tmp_path, reactor, calls):
    reply, _ = headers_after(tmp_path, reactor, ave_line(tmp_path), plain("TEST-SUSPICION=Heur.Something"))
    assert reply.startswith("552 ") and "suspicion: Heur.Something" in reply


def test_aveclient_clean_message_gets_checked_header(tmp_path, reactor, calls):
    reply, seen = headers_after(tmp_path, reactor, ave_line(tmp_path), plain("nothing here"))
    assert reply.startswith("250 ")
    assert "X-Virus-Checked: Checked by Kaspersky on test.example.org" in seen["header"]


def test_aveclient_server_unreachable_passes_by_default(tmp_path, reactor, calls):
    line = f"virus/aveclient avclient_bin {PROGRAMS / 'aveclient'} avdaemon_sock {tmp_path / 'missing'}"
    reply, seen = headers_after(tmp_path, reactor, line, plain("TEST-VIRUS=X"))
    assert reply.startswith("250 ") and "X-Virus-Checked" not in seen["header"]


def test_aveclient_blockonerror_defers_when_the_server_is_unreachable(tmp_path, reactor, calls):
    line = f"virus/aveclient avclient_bin {PROGRAMS / 'aveclient'} avdaemon_sock {tmp_path / 'missing'} blockonerror 1"
    reply, _ = headers_after(tmp_path, reactor, line, plain("x"))
    assert reply.startswith("452 Unable to scan for viruses (aveclient failed (1)")


# -- bitdefender -----------------------------------------------------------------------

def bdc_line(extra=""):
    return f"virus/bitdefender bitdefender_location {PROGRAMS / 'bdc'} {extra}"


def test_bitdefender_rejects_an_infected_multipart_message(tmp_path, reactor, calls):
    reply, seen = headers_after(tmp_path, reactor, bdc_line(), multipart("TEST-VIRUS=Win32.Worm.Test"))
    assert reply == "552 Virus Found: Win32.Worm.Test"
    assert calls()[0][:3] == ["--mail", "--all", "--arc"]


def test_bitdefender_skips_non_multipart_messages(tmp_path, reactor, calls):
    reply, _ = headers_after(tmp_path, reactor, bdc_line(), plain("TEST-VIRUS=Win32.Worm.Test"))
    assert reply.startswith("250 ")
    assert not (tmp_path / "calls").exists()


def test_bitdefender_skips_messages_over_max_size(tmp_path, reactor, calls):
    big = multipart("TEST-VIRUS=Win32.Worm.Test\r\n" + "x" * 3000)
    reply, _ = headers_after(tmp_path, reactor, bdc_line("max_size 2"), big)
    assert reply.startswith("250 ")
    assert not (tmp_path / "calls").exists()


def test_bitdefender_deny_viruses_no_adds_headers(tmp_path, reactor, calls):
    reply, seen = headers_after(tmp_path, reactor, bdc_line("deny_viruses no"), multipart("TEST-VIRUS=W32.A"))
    assert reply.startswith("250 ")
    assert "X-Virus-Found: Yes" in seen["header"] and "X-Virus-Details: W32.A" in seen["header"]


# -- hbedv -----------------------------------------------------------------------------

def hbedv_line():
    return f"virus/hbedv hbedvscanner {PROGRAMS / 'antivir'}"


def test_hbedv_without_deny_list_rejects_every_virus_named_once(tmp_path, reactor, calls):
    reply, _ = headers_after(tmp_path, reactor, hbedv_line(), plain("TEST-VIRUS=Worm/Sober.A"))
    assert reply == "552 Virus found: Worm/Sober.A"
    assert calls()[0][:6] == ["--archive-max-recursion=50", "--alltypes", "-z", "-noboot", "-nombr", "-rs"]


def test_hbedv_deny_list_decides_and_headers_are_added(tmp_path, reactor, calls):
    files = {"hbedv_deny": "Worm/NetSky\\..*\n"}
    reply, seen = headers_after(tmp_path, reactor, hbedv_line(), plain("TEST-VIRUS=Worm/Sober.A"), files)
    assert reply.startswith("250 ")
    assert "X-H+BEDV-Virus-Found: Yes" in seen["header"]
    assert "X-H+BEDV-Virus-Details: Worm/Sober.A" in seen["header"]
    assert "X-H+BEDV-Virus-Checked: Checked" in seen["header"]


def test_hbedv_deny_list_match_ignores_case(tmp_path, reactor, calls):
    files = {"hbedv_deny": "Worm/NetSky\\..*\n"}
    reply, _ = headers_after(tmp_path, reactor, hbedv_line(), plain("TEST-VIRUS=worm/netsky.Q"), files)
    assert reply == "552 Virus found: worm/netsky.Q"


def test_hbedv_licence_error_passes_with_a_warning(tmp_path, reactor, calls):
    qp = virus_qp(tmp_path, reactor, hbedv_line())
    log = capture_log(qp)
    assert hand_over(reactor, qp, plain("TEST-EXIT=214")).startswith("250 ")
    assert any(level == LOGWARN and "licence key not found" in text for level, text in log)


def test_hbedv_bad_deny_pattern_refuses_to_start(tmp_path):
    from harness import make_qp

    with pytest.raises(AssertionError, match="hbedv_deny"):
        make_qp(tmp_path, files={"hbedv_deny": "Worm(\n"}, plugins=[hbedv_line()])


# -- kavscanner ------------------------------------------------------------------------

def test_kavscanner_flags_and_copies_to_the_virus_admin(tmp_path, reactor, calls):
    line = f"virus/kavscanner kavscanner_bin {PROGRAMS / 'kavscanner'} bcc_virusadmin viradm@example.com"
    reply, seen = headers_after(tmp_path, reactor, line, plain("TEST-VIRUS=I-Worm.Sober.c TEST-SUSPICION=Type_Win32"))
    assert reply.startswith("250 ")  # kavscanner flags, it never rejects
    assert "X-Virus-Found: Yes" in seen["header"]
    assert "X-Virus-Details: infected by: I-Worm.Sober.c; suspicions: Type_Win32" in seen["header"]
    assert "X-Virus-Checked: Checked by test.example.org" in seen["header"]
    assert seen["notes"]["virus_flag"] == "Yes"
    assert seen["recipients"][-1] == "viradm@example.com"
    assert calls()[0][:6] == ["-Y", "-P", "-B", "-MP", "-MD", "-*"]


def test_kavscanner_clean_message_is_only_checked(tmp_path, reactor, calls):
    line = f"virus/kavscanner kavscanner_bin {PROGRAMS / 'kavscanner'}"
    reply, seen = headers_after(tmp_path, reactor, line, plain("clean"))
    assert reply.startswith("250 ") and "X-Virus-Found" not in seen["header"]
    assert "X-Virus-Checked: Checked by test.example.org" in seen["header"]


def test_kavscanner_bad_bcc_address_refuses_to_start(tmp_path):
    from harness import make_qp

    with pytest.raises(AssertionError, match="bcc_virusadmin"):
        make_qp(tmp_path, plugins=[f"virus/kavscanner kavscanner_bin {PROGRAMS / 'kavscanner'} bcc_virusadmin <>"])


# -- uvscan ----------------------------------------------------------------------------

def uv_line(extra=""):
    return f"virus/uvscan uvscan_location {PROGRAMS / 'uvscan'} {extra}"


def test_uvscan_rejects_with_the_found_text(tmp_path, reactor, calls):
    reply, _ = headers_after(tmp_path, reactor, uv_line(), multipart("TEST-VIRUS=W32/Netsky.p@MM"))
    assert reply == "552 Virus Found: the W32/Netsky.p@MM virus !!!"
    assert calls()[0][:4] == ["--mime", "--unzip", "--secure", "--noboot"]


def test_uvscan_refuses_password_protected_zips(tmp_path, reactor, calls):
    reply, _ = headers_after(tmp_path, reactor, uv_line(), multipart("TEST-OUTPUT=password-protected"))
    assert reply == "552 We do not accept password-protected zip files!"


def test_uvscan_clean_message_gets_checked_header(tmp_path, reactor, calls):
    reply, seen = headers_after(tmp_path, reactor, uv_line(), multipart("clean"))
    assert reply.startswith("250 ")
    assert "X-Virus-Checked: Checked by McAfee uvscan on test.example.org" in seen["header"]


def test_uvscan_missing_dat_file_defers_with_defer_on_error(tmp_path, reactor, calls):
    reply, _ = headers_after(tmp_path, reactor, uv_line("defer_on_error yes"), multipart("TEST-EXIT=8"))
    assert reply.startswith("452 Unable to scan for viruses (") and "no DAT file found" in reply


def test_uvscan_deny_viruses_no_adds_headers(tmp_path, reactor, calls):
    reply, seen = headers_after(tmp_path, reactor, uv_line("deny_viruses no"), multipart("TEST-VIRUS=EICAR"))
    assert reply.startswith("250 ")
    assert "X-Virus-Details: the EICAR virus !!!" in seen["header"]


# -- sophie ----------------------------------------------------------------------------

@pytest.fixture
def sophie(tmp_path):
    socket_path = tmp_path / "sophie.sock"
    process = subprocess.Popen([sys.executable, str(PROGRAMS / "sophie"), str(socket_path)])
    try:
        wait_until(lambda: (tmp_path / "sophie.sock.ready").exists(), timeout=10)
        yield socket_path
    finally:
        process.kill()
        process.wait()


def test_sophie_rejects_viruses_and_names_them_all(tmp_path, reactor, sophie):
    line = f"virus/sophie sophie_socket {sophie}"
    reply, _ = headers_after(tmp_path, reactor, line, multipart("TEST-VIRUS=EICAR-AV-Test TEST-VIRUS=Troj/Two"))
    assert reply == "552 Viruses Found: EICAR-AV-Test, Troj/Two"


def test_sophie_names_a_single_virus(tmp_path, reactor, sophie):
    reply, _ = headers_after(tmp_path, reactor, f"virus/sophie sophie_socket {sophie}", multipart("TEST-VIRUS=EICAR"))
    assert reply == "552 Virus Found: EICAR"


def test_sophie_clean_message_gets_checked_header(tmp_path, reactor, sophie):
    reply, seen = headers_after(tmp_path, reactor, f"virus/sophie sophie_socket {sophie}", multipart("clean"))
    assert reply.startswith("250 ")
    assert "X-Virus-Checked: Checked by SOPHIE on test.example.org" in seen["header"]


def test_sophie_error_answer_defers_with_defer_on_error(tmp_path, reactor, sophie):
    line = f"virus/sophie sophie_socket {sophie} defer_on_error yes"
    reply, _ = headers_after(tmp_path, reactor, line, multipart("TEST-EXIT=1"))
    assert reply == "452 Unable to scan for viruses (Sophie said '-1:scan error'), try again later"


def test_sophie_unreachable_socket_passes_by_default(tmp_path, reactor):
    reply, seen = headers_after(tmp_path, reactor, f"virus/sophie sophie_socket {tmp_path / 'none'}",
                                multipart("TEST-VIRUS=X"))
    assert reply.startswith("250 ") and "X-Virus-Checked" not in seen["header"]


# -- arguments -------------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "virus/uvscan uvscan_location relative/uvscan",
    "virus/bitdefender max_size big",
    "virus/sophie deny_viruses",
    "virus/aveclient timeout 0",
])
def test_bad_arguments_refuse_to_start(tmp_path, line):
    from harness import make_qp

    with pytest.raises(AssertionError, match="virus/"):
        make_qp(tmp_path, plugins=[line])

