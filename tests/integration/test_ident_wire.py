"""ident/geoip and ident/p0f in the real daemon.

geoip: the daemon reads .mmdb files the test writes (tests/geoip_databases.py).
Clients connect over loopback, which the plugin skips, so they come through
the `stunnel` plugin with a PROXY header naming an address from those files,
IPv4 or IPv6.

p0f: the real p0f 3 (Debian's `p0f`), started by the test on the loopback
interface with its API socket in a temporary directory, fingerprints the
test's own connections to the daemon over 127.0.0.1 and ::1. It needs root
(CAP_NET_RAW) to capture: those tests skip only when p0f is not installed or
we are not root.

A test plugin copies the connection notes into a header of each message, so
what the plugins noted is checked in the delivered Maildir file.
"""

from __future__ import annotations

import json

import pytest
from conftest import wait_until
from geoip_databases import write_geolite2
from harness import plugin_source
from p0f_servers import CAN_CAPTURE, WHY_NOT, RealP0f, loopback_syn, v3_ask

SHOW_NOTES = plugin_source("""
    import json

    class ShowNotes(Plugin):
        def hook_data_post(self, transaction):
            notes = {key: value for key, value in self.connection.notes.items()
                     if key.startswith(("geoip_", "p0f")) or key == "karma"}
            transaction.header.add("X-Test-Notes", json.dumps(notes))
            return DECLINED
""")


def deliver(client, header: bytes = b"") -> None:
    client.send(header)
    client.start_mail()
    client.send("Subject: ident\r\n\r\nbody\r\n.\r\n")
    code, text = client.reply(timeout=30)
    assert code == 250, text
    client.expect(221, "QUIT")


def delivered_headers(daemon) -> tuple[list[str], dict]:
    """The header lines of the one message delivered, and the notes the test plugin saw."""
    [message] = wait_until(daemon.messages, timeout=10, message="a delivered message")
    lines = message.split(b"\n\n", 1)[0].decode().splitlines()
    [notes] = [json.loads(line.split(": ", 1)[1]) for line in lines if line.startswith("X-Test-Notes: ")]
    return lines, notes


# -- ident/geoip --------------------------------------------------------------------------------

@pytest.mark.parametrize(("proxy", "expected"), [
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\n",
     {"X-GeoIP-Country": "FR", "X-GeoIP-Continent": "EU", "X-GeoIP-City": "Paris", "X-GeoIP-ASN": "64500"}),
    (b"PROXY TCP6 2001:db8:1::25 2001:db8::1 40000 25\r\n",
     {"X-GeoIP-Country": "JP", "X-GeoIP-Continent": "AS", "X-GeoIP-City": "Tokyo", "X-GeoIP-ASN": "64501"}),
])
def test_geoip_notes_and_headers_in_the_delivered_message(daemon_factory, tmp_path, proxy, expected):
    databases = write_geolite2(tmp_path / "GeoIP")
    daemon = daemon_factory(extra_plugins=["stunnel timeout 1",  # the start probe sends no header
                                           f"ident/geoip db_dir {databases} distance 52.52,13.405 too_far 5000",
                                           "show_notes"],
                            plugin_files={"show_notes": SHOW_NOTES})
    with daemon.connect() as client:
        deliver(client, proxy)
    lines, notes = delivered_headers(daemon)
    geoip = [tuple(line.split(": ", 1)) for line in lines if line.startswith("X-GeoIP-")]
    assert geoip == list(reversed(expected.items()))  # each put on top: the last one first
    assert notes["geoip_country"] == expected["X-GeoIP-Country"]
    assert notes["geoip_asn"] == int(expected["X-GeoIP-ASN"])
    far = notes["geoip_distance"] > 5000  # Berlin-Tokyo is, Berlin-Paris is not
    assert far == (expected["X-GeoIP-City"] == "Tokyo")
    assert notes.get("karma", 0) == (-1 if far else 0)


def test_geoip_without_its_database_stops_the_daemon(daemon_factory, tmp_path):
    daemon = daemon_factory(extra_plugins=[f"ident/geoip db_dir {tmp_path / 'nowhere'}"], start=False)
    with pytest.raises(RuntimeError, match="daemon exited"):
        daemon.start()
    assert "no GeoIP2 city or country database in" in daemon.log()


# -- ident/p0f with the real p0f ------------------------------------------------------------------

needs_capture = pytest.mark.skipif(not CAN_CAPTURE, reason=WHY_NOT)


@pytest.fixture
def p0f():
    with RealP0f() as running:
        yield running


def fingerprinted(p0f: RealP0f, ip: str) -> str:
    """Make p0f see a SYN from `ip`; the OS name p0f then gives (may be empty)."""
    wait_until(lambda: loopback_syn(ip) or p0f.knows(ip), timeout=10, message=f"p0f saw {ip}")
    return v3_ask(p0f.socket, ip)[1]


@needs_capture
@pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
def test_p0f_note_and_headers_from_the_real_p0f(daemon_factory, p0f, ip):
    daemon = daemon_factory(extra_plugins=[f"ident/p0f {p0f.socket}", "show_notes"],
                            plugin_files={"show_notes": SHOW_NOTES}, listen=[f"[{ip}]" if ":" in ip else ip])
    os_name = fingerprinted(p0f, ip)
    with daemon.connect() as client:
        deliver(client)
    lines, notes = delivered_headers(daemon)
    note = notes["p0f"]
    assert (note["magic"], note["status"]) == (0x50304602, 0x10)
    assert note["os_name"] == os_name and note["total_conn"] >= 1
    if os_name:
        assert f"X-P0F-Genre: {note['genre']}" in lines and note["genre"].startswith(os_name)
    else:  # p0f saw the client but could not name its OS: no genre, no header
        assert "genre" not in note and not any(line.startswith("X-P0F-Genre") for line in lines)
    if ip == "127.0.0.1":  # p0f's database names Linux's IPv4 SYN over loopback
        assert os_name == "Linux"


@needs_capture
def test_blocked_operating_system_is_refused_at_rcpt(daemon_factory, p0f):
    daemon = daemon_factory({"p0f_blocked_operating_systems": "/^linux/\n"},
                            extra_plugins=[f"ident/p0f {p0f.socket}"])
    assert fingerprinted(p0f, "127.0.0.1") == "Linux"
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, "EHLO client.example.com")
        client.expect(250, "MAIL FROM:<a@example.com>")
        assert client.command("RCPT TO:<postmaster@test.example.org>") == (550, ["OS Blocked"])


def test_p0f_down_does_not_stop_the_mail(daemon_factory, tmp_path):
    daemon = daemon_factory(extra_plugins=[f"ident/p0f {tmp_path / 'no-p0f.sock'}", "show_notes"],
                            plugin_files={"show_notes": SHOW_NOTES})
    with daemon.connect() as client:
        deliver(client)
    _, notes = delivered_headers(daemon)
    assert "p0f" not in notes
    assert "skip, cannot reach p0f at" in daemon.log()
