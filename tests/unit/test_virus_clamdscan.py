"""virus/clamdscan against a real clamd (Debian clamav-daemon) started for these tests.

clamd runs with a one-signature database the tests write (tests/clamd_server.py):
a message containing SIGNATURE is infected with VIRUS_NAME.
"""

from __future__ import annotations

import socket

import pytest
from clamd_server import SIGNATURE, VIRUS_NAME, ClamdServer, clamd_available
from harness import plugin_source
from reactor_helpers import hand_over
from virus_helpers import multipart, plain, virus_qp

pytestmark = pytest.mark.skipif(not clamd_available(), reason="clamd (Debian clamav-daemon) is not installed")

INFECTED = plain("attachment " + SIGNATURE.decode() + " end")


@pytest.fixture(scope="module")
def clamd():
    server = ClamdServer().start()
    yield server
    server.stop()


def scan(tmp_path, reactor, line, message, files=None):
    qp = virus_qp(tmp_path, reactor, line, files)
    reply = hand_over(reactor, qp, message)
    return reply, getattr(qp, "after_scan", None)


@pytest.mark.parametrize("where", ["unix", "tcp"])
def test_infected_message_is_rejected_with_the_virus_name(tmp_path, reactor, clamd, where):
    line = (f"virus/clamdscan clamd_socket {clamd.socket_path}" if where == "unix"
            else f"virus/clamdscan clamd_host 127.0.0.1 clamd_port {clamd.port}")
    reply, _ = scan(tmp_path, reactor, line, INFECTED)
    assert reply == f"552 Virus found: {VIRUS_NAME}"


def test_clean_message_gets_found_no_and_checked_by_clamav_version(tmp_path, reactor, clamd):
    reply, seen = scan(tmp_path, reactor, f"virus/clamdscan clamd_socket {clamd.socket_path}", plain("clean"))
    assert reply.startswith("250 ")
    assert "X-Virus-Found: No\n" in seen["header"]
    assert "X-Virus-Checked: by ClamAV 1." in seen["header"] and " on test.example.org\n" in seen["header"]


def test_deny_viruses_no_adds_headers_and_notes(tmp_path, reactor, clamd):
    line = f"virus/clamdscan clamd_socket {clamd.socket_path} deny_viruses no"
    reply, seen = scan(tmp_path, reactor, line, INFECTED)
    assert reply.startswith("250 ")
    assert seen["header"].startswith(f"X-Virus-Details: {VIRUS_NAME}\nX-Virus-Found: Yes\n")
    assert seen["notes"]["virus"] == VIRUS_NAME


def test_signature_in_a_spooled_body_is_found(tmp_path, reactor, clamd):
    body = "".join(f"filler line {i} {'z' * 60}\r\n" for i in range(20000)) + SIGNATURE.decode()
    line = f"virus/clamdscan clamd_socket {clamd.socket_path} max_size 4000"
    reply, _ = scan(tmp_path, reactor, line, plain(body), files={"size_threshold": "1000"})
    assert reply == f"552 Virus found: {VIRUS_NAME}"


def test_message_over_max_size_is_not_scanned(tmp_path, reactor, clamd):
    line = f"virus/clamdscan clamd_socket {clamd.socket_path} max_size 1"
    reply, _ = scan(tmp_path, reactor, line, plain(SIGNATURE.decode() + "x" * 2000))
    assert reply.startswith("250 ")


def test_scan_all_0_scans_only_multipart_messages(tmp_path, reactor, clamd):
    line = f"virus/clamdscan clamd_socket {clamd.socket_path} scan_all 0"
    reply, _ = scan(tmp_path, reactor, line, INFECTED)
    assert reply.startswith("250 ")


def test_scan_all_0_still_scans_multipart_messages(tmp_path, reactor, clamd):
    line = f"virus/clamdscan clamd_socket {clamd.socket_path} scan_all 0"
    reply, _ = scan(tmp_path, reactor, line, multipart(SIGNATURE.decode()))
    assert reply == f"552 Virus found: {VIRUS_NAME}"


def test_stream_over_clamds_limit_defers_with_defer_on_error(tmp_path, reactor, clamd):
    # The test clamd takes streams up to 4 MB (StreamMaxLength).
    body = "".join(f"{'q' * 99}\r\n" for _ in range(50000))
    line = f"virus/clamdscan clamd_socket {clamd.socket_path} max_size 8000 defer_on_error yes"
    reply, _ = scan(tmp_path, reactor, line, plain(body), files={"size_threshold": "1000"})
    assert reply.startswith("452 Unable to scan for viruses (clamd said: INSTREAM size limit exceeded")


def test_clamd_down_defers_with_defer_on_error(tmp_path, reactor):
    line = f"virus/clamdscan clamd_socket {tmp_path / 'no-clamd.sock'} defer_on_error yes"
    reply, _ = scan(tmp_path, reactor, line, INFECTED)
    assert reply.startswith("452 Unable to scan for viruses (cannot connect to clamd at ")


def test_clamd_down_passes_by_default(tmp_path, reactor):
    reply, seen = scan(tmp_path, reactor, f"virus/clamdscan clamd_socket {tmp_path / 'x.sock'}", INFECTED)
    assert reply.startswith("250 ") and "X-Virus" not in seen["header"]


def test_clamd_that_never_answers_times_out_with_452(tmp_path, reactor):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts connections (the kernel does), never answers
    try:
        line = (f"virus/clamdscan clamd_host 127.0.0.1 clamd_port {silent.getsockname()[1]} timeout 0.5 "
                "defer_on_error yes")
        reply, _ = scan(tmp_path, reactor, line, INFECTED)
    finally:
        silent.close()
    assert reply == "452 Unable to scan for viruses (no verdict within 0.5s), try again later"


def test_naughty_connection_is_not_scanned(tmp_path, reactor, clamd):
    mark_naughty = plugin_source("""
        class MarkNaughty(Plugin):
            def hook_data_post(self, transaction):
                self.connection.notes["naughty"] = "listed"
                return DECLINED
    """)
    qp = virus_qp(tmp_path, reactor, f"virus/clamdscan clamd_socket {clamd.socket_path}",
                  before={"mark_naughty": mark_naughty})
    assert hand_over(reactor, qp, INFECTED).startswith("250 ")


@pytest.mark.parametrize("line", ["virus/clamdscan clamd_port 99999", "virus/clamdscan max_size 0",
                                  "virus/clamdscan clamd_port", "virus/clamdscan max_scans x"])
def test_bad_arguments_refuse_to_start(tmp_path, line):
    from harness import make_qp

    with pytest.raises(AssertionError, match="virus/clamdscan"):
        make_qp(tmp_path, plugins=[line])
