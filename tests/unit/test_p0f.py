"""ident/p0f: the real p0f (Debian's p0f 3 on the loopback interface) and a scripted API server.

Each test runs its own Twisted reactor. `RealP0f` (tests/p0f_servers.py) is
the real daemon, fingerprinting connections the test makes over 127.0.0.1 and
::1; it needs root to capture, and the tests using it skip only when p0f is
not installed or we are not root. `FakeP0f` speaks p0f 3's and p0f 2's API
from a thread, for chosen OS names, p0f 2, and p0f misbehaving.
"""

from __future__ import annotations

import socket
import struct

import pytest
from harness import SessionDriver, make_qp, plugin_source
from p0f_servers import (
    CAN_CAPTURE,
    V3_BAD_QUERY,
    V3_QUERY_MAGIC,
    WHY_NOT,
    FakeP0f,
    RealP0f,
    loopback_syn,
    v2_answer,
    v3_answer,
    v3_ask,
)
from reactor_helpers import capture_log, next_reply, run, wait_until

from qpsmtpd_py.constants import LOGERROR, LOGINFO

CAPTURE = plugin_source("""
    class Capture(Plugin):
        def hook_queue(self, transaction):
            self.qp.captured_header = transaction.header.as_string()
            return OK, "captured"
""")
WINDOWS = v3_answer("Windows", "7 or 8", link_type="Ethernet or modem", uptime_min=1234)


def p0f_qp(tmp_path, reactor, arguments: str, files: dict | None = None, before=(), plugin_files=None):
    """A qp with `before`, ident/p0f, rcpt_ok and a queue plugin keeping the header, on `reactor`."""
    qp = make_qp(tmp_path, files=files, plugins=[*before, f"ident/p0f {arguments}", "rcpt_ok", "capture"],
                 plugin_files={"capture": CAPTURE, **(plugin_files or {})})
    qp.runner.clock = reactor
    for plugin in qp.plugins:
        plugin.reactor = reactor
    return qp


async def talk(reactor, qp, ip="192.0.2.9", commands=(), local_ip=None):
    """Connect from `ip`, send `commands`; (the connection's notes, the last reply)."""
    driver = SessionDriver(qp, remote_ip=ip, remote_port=40001)
    if local_ip:
        driver.session.connection.local_ip = local_ip
    reply = await next_reply(reactor, driver)
    for command in commands:
        driver.send(command.encode() + b"\r\n")
        reply = await next_reply(reactor, driver)
    return driver.session.connection.notes, reply


def session(reactor, qp, **options):
    """One session, alone on the test's reactor."""
    return run(reactor, lambda: talk(reactor, qp, **options))


def sessions(reactor, qp, *each):
    """One session per dict of options, one after the other, on the test's reactor."""

    async def all_of_them():
        return [await talk(reactor, qp, **options) for options in each]

    return run(reactor, all_of_them)


MESSAGE = ["EHLO client.example.com", "MAIL FROM:<a@example.com>", "RCPT TO:<postmaster@test.example.org>",
           "DATA", "X-P0F-Genre: forged\r\nSubject: p0f\r\n\r\nbody\r\n."]


# -- the real p0f -------------------------------------------------------------------------------

@pytest.mark.skipif(not CAN_CAPTURE, reason=WHY_NOT)
@pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
def test_real_p0f_fingerprint_becomes_the_p0f_note(tmp_path, reactor, ip):
    with RealP0f() as p0f:
        wait_until(lambda: loopback_syn(ip) or p0f.knows(ip), timeout=10)
        _, os_name = v3_ask(p0f.socket, ip)
        notes, reply = session(reactor, p0f_qp(tmp_path, reactor, str(p0f.socket)), ip=ip)
    assert reply[0].startswith("220")
    note = notes["p0f"]
    assert note["magic"] == 0x50304602 and note["status"] == 0x10
    assert note["total_conn"] >= 1 and note["last_seen"] >= note["first_seen"] > 0
    assert note["os_name"] == os_name  # what p0f told the test itself
    if ip == "127.0.0.1":  # p0f's database names Linux's IPv4 SYN; not its IPv6 one over loopback
        assert os_name == "Linux"
        assert note["genre"] == f"Linux {note['os_flavor']}".strip()


# -- p0f 3's API, scripted ---------------------------------------------------------------------

@pytest.mark.parametrize(("ip", "family", "packed"), [
    ("192.0.2.9", 4, socket.inet_aton("192.0.2.9") + b"\0" * 12),
    ("2001:db8::25", 6, socket.inet_pton(socket.AF_INET6, "2001:db8::25")),
])
def test_v3_query_is_magic_address_type_and_16_address_bytes(tmp_path, reactor, ip, family, packed):
    with FakeP0f(tmp_path) as p0f:
        session(reactor, p0f_qp(tmp_path, reactor, str(p0f.socket)), ip=ip)
    assert p0f.queries == [struct.pack("=IB", V3_QUERY_MAGIC, family) + packed]


@pytest.mark.parametrize("ip", ["192.0.2.9", "2001:db8::25"])
def test_v3_answer_is_stored_with_the_p0f_2_names_too(tmp_path, reactor, ip):
    with FakeP0f(tmp_path, {ip: WINDOWS}) as p0f:
        notes, _ = session(reactor, p0f_qp(tmp_path, reactor, str(p0f.socket)), ip=ip)
    note = notes["p0f"]
    assert (note["os_name"], note["os_flavor"], note["genre"]) == ("Windows", "7 or 8", "Windows 7 or 8")
    assert (note["link_type"], note["link"]) == ("Ethernet or modem", "Ethernet or modem")
    assert (note["uptime_min"], note["uptime"], note["distance"], note["language"]) == (1234, 1234, 3, "English")
    assert note["first_seen"] == 1700000000 and note["up_mod_days"] == 49


def test_no_match_sets_no_note_and_the_session_goes_on(tmp_path, reactor):
    with FakeP0f(tmp_path) as p0f:
        qp = p0f_qp(tmp_path, reactor, str(p0f.socket))
        log = capture_log(qp)
        notes, reply = session(reactor, qp, commands=["HELO client.example.com"])
    assert "p0f" not in notes and reply[0].startswith("250")
    assert (LOGINFO, "skip, no match") in log


@pytest.mark.parametrize(("answer", "logged"), [
    (v3_answer("Linux", magic=0x12345678), "skip, bad response magic 0x12345678"),
    (v3_answer(status=V3_BAD_QUERY), "skip, bad query"),
    (v3_answer("Linux")[:100], "skip, p0f closed the socket after 100 of 232 bytes"),
])
def test_bad_answers_are_logged_and_ignored(tmp_path, reactor, answer, logged):
    with FakeP0f(tmp_path, {"192.0.2.9": answer}) as p0f:
        qp = p0f_qp(tmp_path, reactor, str(p0f.socket))
        log = capture_log(qp)
        notes, reply = session(reactor, qp)
    assert "p0f" not in notes and reply[0].startswith("220")
    assert (LOGERROR, logged) in log


def test_p0f_not_running_is_logged_and_the_session_goes_on(tmp_path, reactor):
    qp = p0f_qp(tmp_path, reactor, str(tmp_path / "missing.sock"))
    log = capture_log(qp)
    notes, reply = session(reactor, qp)
    assert "p0f" not in notes and reply[0].startswith("220")
    assert any(level == LOGERROR and text.startswith(f"skip, cannot reach p0f at {tmp_path / 'missing.sock'}")
               for level, text in log)


def test_silent_p0f_times_out_and_the_session_goes_on(tmp_path, reactor):
    with FakeP0f(tmp_path, silent=True) as p0f:
        qp = p0f_qp(tmp_path, reactor, f"{p0f.socket} timeout 0.2")
        log = capture_log(qp)
        notes, reply = session(reactor, qp)
    assert "p0f" not in notes and reply[0].startswith("220")
    assert (LOGERROR, f"skip, no answer from p0f at {p0f.socket} within 0.2s") in log


def test_smite_os_lowers_karma_for_matching_genres_only(tmp_path, reactor):
    answers = {"192.0.2.9": WINDOWS, "192.0.2.10": v3_answer("Linux", "3.11 and newer")}
    with FakeP0f(tmp_path, answers) as p0f:
        qp = p0f_qp(tmp_path, reactor, f"{p0f.socket} smite_os windows")
        (windows, _), (linux, _) = sessions(reactor, qp, {"ip": "192.0.2.9"}, {"ip": "192.0.2.10"})
    assert windows["karma"] == -1
    assert "karma" not in linux


@pytest.mark.parametrize("entry", ["Windows 7 or 8", "/^win/"])
def test_blocked_operating_systems_are_refused_at_rcpt(tmp_path, reactor, entry):
    answers = {"192.0.2.9": WINDOWS, "192.0.2.10": v3_answer("Linux", "3.11 and newer")}
    with FakeP0f(tmp_path, answers) as p0f:
        qp = p0f_qp(tmp_path, reactor, str(p0f.socket), files={"p0f_blocked_operating_systems": [entry]})
        (_, windows), (_, linux) = sessions(reactor, qp, {"ip": "192.0.2.9", "commands": MESSAGE[:3]},
                                            {"ip": "192.0.2.10", "commands": MESSAGE[:3]})
    assert windows == ["550 OS Blocked"]
    assert linux[0].startswith("250")


def test_exact_blocked_entry_must_match_the_whole_genre(tmp_path, reactor):
    with FakeP0f(tmp_path, {"192.0.2.9": WINDOWS}) as p0f:
        qp = p0f_qp(tmp_path, reactor, str(p0f.socket), files={"p0f_blocked_operating_systems": ["Windows"]})
        _, reply = session(reactor, qp, commands=MESSAGE[:3])
    assert reply[0].startswith("250")


@pytest.mark.parametrize(("plugins_before", "excluded"), [(["relay"], True), ([], False)])
def test_relay_clients_are_not_blocked(tmp_path, reactor, plugins_before, excluded):
    with FakeP0f(tmp_path, {"192.0.2.9": WINDOWS}) as p0f:
        qp = p0f_qp(tmp_path, reactor, str(p0f.socket), before=plugins_before,
                    files={"p0f_blocked_operating_systems": ["/windows/"], "relayclients": ["192.0.2.9"]})
        notes, reply = session(reactor, qp, commands=MESSAGE[:3])
    assert notes["p0f_exclude"] is excluded
    assert reply[0].startswith("250") if excluded else reply == ["550 OS Blocked"]


def test_p0f_exclude_note_set_by_another_plugin_prevents_blocking(tmp_path, reactor):
    exclude = plugin_source("""
        class Exclude(Plugin):
            def hook_helo(self, transaction, host):
                self.connection.notes["p0f_exclude"] = host == "trusted.example.com"
                return DECLINED
    """)
    with FakeP0f(tmp_path, {"192.0.2.9": WINDOWS}) as p0f:
        qp = p0f_qp(tmp_path, reactor, str(p0f.socket), before=["exclude"], plugin_files={"exclude": exclude},
                    files={"p0f_blocked_operating_systems": ["/windows/"]})
        commands = ["MAIL FROM:<a@example.com>", "RCPT TO:<postmaster@test.example.org>"]
        (_, trusted), (_, other) = sessions(reactor, qp, {"commands": ["HELO trusted.example.com", *commands]},
                                            {"commands": ["HELO other.example.com", *commands]})
    assert trusted[0].startswith("250")
    assert other == ["550 OS Blocked"]


def test_headers_are_added_on_top_replacing_the_message_s_own(tmp_path, reactor):
    with FakeP0f(tmp_path, {"192.0.2.9": WINDOWS}) as p0f:
        qp = p0f_qp(tmp_path, reactor, str(p0f.socket))
        _, reply = session(reactor, qp, commands=MESSAGE)
    assert reply == ["250 captured"]
    lines = qp.captured_header.splitlines()
    assert lines[:2] == ["X-P0F-Link-Type: Ethernet or modem", "X-P0F-Genre: Windows 7 or 8"]
    assert "X-P0F-Genre: forged" not in lines


def test_add_headers_false_adds_none(tmp_path, reactor):
    with FakeP0f(tmp_path, {"192.0.2.9": WINDOWS}) as p0f:
        qp = p0f_qp(tmp_path, reactor, f"{p0f.socket} add_headers false")
        notes, reply = session(reactor, qp, commands=MESSAGE)
    assert reply == ["250 captured"] and notes["p0f"]["genre"] == "Windows 7 or 8"
    assert "X-P0F-Genre: Windows" not in qp.captured_header


# -- p0f 2's API, scripted ---------------------------------------------------------------------

def test_v2_query_names_both_ends_and_the_answer_becomes_the_note(tmp_path, reactor):
    asked = []

    def answer(query_id, source, destination, sport, dport):
        asked.append((source, destination, sport, dport))
        return v2_answer(query_id, "FreeBSD", "6.x (1)", "ethernet/modem", 1390)

    with FakeP0f(tmp_path, answer_v2=answer) as p0f:
        qp = p0f_qp(tmp_path, reactor, f"{p0f.socket} version 2 local_ip 198.51.100.25 smite_os bsd")
        notes, _ = session(reactor, qp, local_ip="10.0.0.5")
    assert asked == [("192.0.2.9", "198.51.100.25", 40001, 25)]
    assert notes["p0f"] == {"genre": "FreeBSD", "detail": "6.x (1)", "distance": 7, "link": "ethernet/modem",
                            "uptime": 1390}
    assert notes["karma"] == -1


def test_v2_connection_not_in_cache_sets_no_note(tmp_path, reactor):
    with FakeP0f(tmp_path, answer_v2=lambda query_id, *_: v2_answer(query_id, "", "", "", -1, kind=2)) as p0f:
        qp = p0f_qp(tmp_path, reactor, f"{p0f.socket} version 2")
        log = capture_log(qp)
        notes, _ = session(reactor, qp)
    assert "p0f" not in notes
    assert (LOGINFO, "skip, connection not in the cache") in log


def test_v2_answer_to_another_query_is_refused(tmp_path, reactor):
    with FakeP0f(tmp_path, answer_v2=lambda query_id, *_: v2_answer(query_id + 1, "Linux", "", "", 1)) as p0f:
        qp = p0f_qp(tmp_path, reactor, f"{p0f.socket} version 2")
        notes, _ = session(reactor, qp)
    assert "p0f" not in notes


def test_v2_cannot_ask_about_ipv6_clients(tmp_path, reactor):
    with FakeP0f(tmp_path, answer_v2=lambda query_id, *_: v2_answer(query_id, "Linux", "", "", 1)) as p0f:
        qp = p0f_qp(tmp_path, reactor, f"{p0f.socket} version 2")
        log = capture_log(qp)
        notes, _ = session(reactor, qp, ip="2001:db8::25")
    assert "p0f" not in notes and p0f.queries == []
    assert (LOGERROR, "skip, p0f 2 knows IPv4 only, not 2001:db8::25") in log


# -- arguments ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("arguments", "message"), [
    ("", "the path of p0f's API socket comes first"),
    ("version 3", "the path of p0f's API socket comes first"),
    ("/run/p0f.sock version", "after the socket path, arguments are key/value pairs"),
    ("/run/p0f.sock version 4", "version must be 2 or 3"),
    ("/run/p0f.sock local_ip nat", "local_ip must be an IPv4 address"),
    ("/run/p0f.sock smite_os (windows", "smite_os: bad regular expression"),
    ("/run/p0f.sock timeout 0", "timeout must be more than 0 seconds"),
])
def test_bad_arguments_stop_the_start(tmp_path, arguments, message):
    with pytest.raises(AssertionError, match=message):
        make_qp(tmp_path, plugins=[f"ident/p0f {arguments}".strip()])


def test_bad_blocked_os_regex_stops_the_start(tmp_path):
    with pytest.raises(AssertionError, match="p0f_blocked_operating_systems: bad regular expression"):
        make_qp(tmp_path, files={"p0f_blocked_operating_systems": ["/win(/"]}, plugins=["ident/p0f /run/p0f.sock"])
