"""The helo plugin: sessions over a StringTransport, DNS from tests/dns_server.py.

Each test runs its own reactor (the `reactor` fixture); the HELO hook waits for
real UDP answers from the test DNS server on 127.0.0.1.
"""

from __future__ import annotations

import time

import pytest
from dns_server import FakeDNS, silent_udp_port
from harness import SessionDriver, make_qp, plugin_source
from reactor_helpers import capture_log, next_reply, run

from qpsmtpd_py.dns import Resolver, nameservers_for

ZONE = """
mail.good.        300 IN A    192.0.2.10
mail.good.        300 IN AAAA 2001:db8::10
other.good.       300 IN A    192.0.2.99
far.good.         300 IN A    198.51.100.7
v6only.good.      300 IN AAAA 2001:db8::25
noaddr.good.      300 IN MX   10 mail.good.
10.2.0.192.in-addr.arpa.  300 IN PTR mail.good.
11.2.0.192.in-addr.arpa.  300 IN PTR mx1.good.
12.2.0.192.in-addr.arpa.  300 IN PTR host.elsewhere.
12.2.0.192.in-addr.arpa.  300 IN TXT "no ptr here"
5.2.0.192.in-addr.arpa.   300 IN TXT "NODATA for PTR"
"""
V6_PTR = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."


@pytest.fixture
def server():
    zone = ZONE + f"{V6_PTR} 300 IN PTR v6only.good.\n"
    with FakeDNS(zone, servfail={"broken.good.", "13.2.0.192.in-addr.arpa"}) as fake:
        yield fake


def helo_qp(tmp_path, reactor, dns_address="127.0.0.1:1", args="", files=None, plugins=("rcpt_ok",)):
    files = dict(files or {})
    files.setdefault("dns_servers", dns_address)
    qp = make_qp(tmp_path, files, plugins=[f"helo {args}".strip(), *plugins])
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)
    return qp


def greet_all(reactor, qp, cases, command="HELO"):
    """One session per (host, ip), each sending `HELO host`: [(reply lines, driver, seconds)]."""

    async def talk():
        results = []
        for host, ip in cases:
            driver = SessionDriver(qp, remote_ip=ip)
            driver.take()
            started = time.monotonic()
            driver.send(f"{command} {host}\r\n".encode())
            lines = await next_reply(reactor, driver)
            results.append((lines, driver, time.monotonic() - started))
        return results

    return run(reactor, talk)


def greet(reactor, qp, host, ip="192.0.2.10", command="HELO"):
    return greet_all(reactor, qp, [(host, ip)], command)[0]


def replies(reactor, tmp_path, cases, args="", server=None, files=None):
    """The first reply line to HELO for each host, or (host, ip); one qp, one reactor run."""
    qp = helo_qp(tmp_path, reactor, server.address if server else "127.0.0.1:1", args, files)
    cases = [case if isinstance(case, tuple) else (case, "192.0.2.10") for case in cases]
    return [lines[0] for lines, _, _ in greet_all(reactor, qp, cases)]


def reply(reactor, tmp_path, host, ip="192.0.2.10", args="", server=None, files=None):
    qp = helo_qp(tmp_path, reactor, server.address if server else "127.0.0.1:1", args, files)
    lines, driver, _ = greet(reactor, qp, host, ip)
    return lines[0], driver


# -- lenient -----------------------------------------------------------------------------------

def test_badhelo_name_refuses_and_disconnects(reactor, tmp_path):
    line, driver = reply(reactor, tmp_path, "Yahoo.COM", files={"badhelo": ["aol.com", "yahoo.com"]})
    assert line == "550 I do not believe you are Yahoo.COM."
    assert driver.closed  # reject_type is always disconnect
    assert driver.session.connection.notes["karma"] == -1


def test_reject_type_argument_is_ignored(reactor, tmp_path):
    line, driver = reply(reactor, tmp_path, "yahoo.com", args="reject_type temp", files={"badhelo": "yahoo.com"})
    assert line.startswith("550 ") and driver.closed


def test_badhelo_regex_and_negated_regex(reactor, tmp_path):
    files = {"badhelo": ["ya.oo\\.com$", "!\\."]}
    lines = replies(reactor, tmp_path, ["yahoo.com", "host-only", "yoda.com"], files=files)
    assert lines[:2] == ["550 I do not believe you are yahoo.com.", "550 I do not believe you are host-only."]
    assert lines[2].startswith("250 ")


def test_badhelo_bad_pattern_is_skipped(reactor, tmp_path):
    line, _ = reply(reactor, tmp_path, "yahoo.com", files={"badhelo": ["(unclosed", "yahoo.com"]})
    assert line == "550 I do not believe you are yahoo.com."


def test_localhost_from_elsewhere(reactor, tmp_path):
    lines = replies(reactor, tmp_path, ["localhost", ("localhost", "127.0.0.1"), ("LOCALHOST", "::1"),
                                        ("localhost", "::ffff:127.0.0.1"), ("LocalHost", "2001:db8::1")])
    assert lines[0] == lines[4] == "550 You are not localhost"
    assert all(line.startswith("250 ") for line in lines[1:4]), lines


def test_plain_ip(reactor, tmp_path):
    lines = replies(reactor, tmp_path, ["192.0.2.10", "254.254.254.254", "10.0.0.255", "2001:db8::10"])
    assert lines == ["550 Plain IP is invalid HELO hostname (RFC 2821)"] * 4


def test_forged_literal(reactor, tmp_path):
    lines = replies(reactor, tmp_path, ["[198.51.100.1]", "[192.0.2.10]", ("[IPv6:2001:db8::10]", "2001:db8::10"),
                                        ("[IPv6:2001:db8::11]", "2001:db8::10"), ("[192.0.2.10]", "::ffff:192.0.2.10")])
    assert lines[0] == lines[3] == "550 Forged IPs not accepted here"
    assert all(line.startswith("250 ") for line in (lines[1], lines[2], lines[4])), lines


def test_private_literal_behind_nat_is_tolerated(reactor, tmp_path):
    assert reply(reactor, tmp_path, "[192.168.1.5]")[0].startswith("250 ")


def test_lenient_asks_no_dns(reactor, tmp_path, server):
    line, _ = reply(reactor, tmp_path, "nosuch.good", server=server)
    assert line.startswith("250 ")
    assert server.total() == 0


def test_reject_0_and_naughty(reactor, tmp_path):
    qp = helo_qp(tmp_path / "a", reactor, args="reject 0")
    qp_naughty = helo_qp(tmp_path / "b", reactor, args="reject naughty")

    async def talk():
        outcome = []
        for one in (qp, qp_naughty):
            driver = SessionDriver(one, remote_ip="192.0.2.10")
            driver.take()
            driver.send(b"HELO localhost\r\n")
            outcome.append(((await next_reply(reactor, driver))[0], driver))
        return outcome

    (line, driver), (line_naughty, driver_naughty) = run(reactor, talk)
    assert line.startswith("250 ") and driver.session.connection.notes["karma"] == -1
    line, driver = line_naughty, driver_naughty
    assert line.startswith("250 ")
    notes = driver.session.connection.notes
    assert notes["naughty"] == "(helo) You are not localhost"
    assert notes["naughty_reject_type"] == "disconnect"


def test_relay_client_is_immune(reactor, tmp_path):
    qp = helo_qp(tmp_path, reactor, files={"relayclients": "192.0.2."}, plugins=("relay", "rcpt_ok"))
    lines, _, _ = greet(reactor, qp, "localhost")
    assert lines[0].startswith("250 ")


def test_ehlo_is_checked_too(reactor, tmp_path):
    qp = helo_qp(tmp_path, reactor)
    lines, _, _ = greet(reactor, qp, "localhost", command="EHLO")
    assert lines == ["550 You are not localhost"]


# -- rfc -----------------------------------------------------------------------------------------

def test_rfc_good_host(reactor, tmp_path, server):
    line, driver = reply(reactor, tmp_path, "mail.good", args="policy rfc", server=server)
    assert line.startswith("250 ")
    notes = driver.session.connection.notes
    assert notes["helo_forward_match"] == 1 and notes["helo_reverse_match"] == 1
    assert server.count("mail.good", "AAAA") == 1  # A and AAAA are both asked


def test_rfc_not_fqdn(reactor, tmp_path, server):
    assert replies(reactor, tmp_path, ["workstation", "bad_name.good"], args="policy rfc", server=server) == [
        "550 HELO name is not fully qualified. Read RFC 2821",
        "550 HELO name contains invalid FQDN characters. Read RFC 1035"]


def test_rfc_address_literals_skip_the_name_checks(reactor, tmp_path, server):
    lines = replies(reactor, tmp_path, ["[192.0.2.10]", ("[IPv6:2001:db8::25]", "2001:db8::25")],
                    args="policy rfc", server=server)
    assert all(line.startswith("250 ") for line in lines), lines


def test_rfc_forward_dns(reactor, tmp_path, server):
    # v6only.good has an AAAA record only: it resolves (qpsmtpd asked for A only)
    lines = replies(reactor, tmp_path, ["nosuch.good", "noaddr.good", ("v6only.good", "2001:db8::25")],
                    args="policy rfc", server=server)
    assert lines[:2] == ["550 HELO hostname does not exist", "550 HELO hostname did not resolve"]
    assert lines[2].startswith("250 ")


def test_rfc_forward_dns_failure_passes(reactor, tmp_path, server):
    line, _ = reply(reactor, tmp_path, "broken.good", args="policy rfc", server=server)
    assert line.startswith("250 ")


def test_rfc_reverse_dns(reactor, tmp_path, server):
    lines = replies(reactor, tmp_path, [("mail.good", "192.0.2.77"), ("mail.good", "192.0.2.5"),
                                        ("mail.good", "192.0.2.13")], args="policy rfc", server=server)
    assert lines[:2] == ["550 no rDNS for 192.0.2.77", "550 no reverse DNS for 192.0.2.5"]
    assert lines[2].startswith("250 ")  # SERVFAIL on the PTR: logged, passes (qpsmtpd refused)


def test_rfc_lookups_are_parallel_and_bounded(reactor, tmp_path):
    sock, port = silent_udp_port()
    try:
        qp = helo_qp(tmp_path, reactor, f"127.0.0.1:{port}", "policy rfc timeout 0.5")
        lines, _, elapsed = greet(reactor, qp, "mail.good")
    finally:
        sock.close()
    assert lines[0].startswith("250 ")  # a dead nameserver: both checks skipped
    assert elapsed < 1.0, elapsed


# -- strict ------------------------------------------------------------------------------------------

def test_strict_address_literal(reactor, tmp_path, server):
    assert reply(reactor, tmp_path, "[192.0.2.10]", args="policy strict", server=server)[0] \
        == "550 RFC 2821 allows an address literal, but we do not"


def test_strict_exact_match_earns_karma(reactor, tmp_path, server):
    line, driver = reply(reactor, tmp_path, "mail.good", args="policy strict", server=server)
    assert line.startswith("250 ")
    assert driver.session.connection.notes["karma"] == 1


def test_strict_fuzzy_matches(reactor, tmp_path, server):
    # other.good is 192.0.2.99: same /24 as the client 192.0.2.11, whose PTR mx1.good shares `good`
    # far.good is in another network, and the PTR of 192.0.2.12 names another domain
    lines = replies(reactor, tmp_path, [("other.good", "192.0.2.11"), ("far.good", "192.0.2.12")],
                    args="policy strict", server=server)
    assert lines[0].startswith("250 ")
    assert lines[1] == "550 That HELO hostname fails FCrDNS"


def test_strict_ipv6_client(reactor, tmp_path, server):
    line, driver = reply(reactor, tmp_path, "v6only.good", ip="2001:db8::25", args="policy strict", server=server)
    assert line.startswith("250 ")
    assert driver.session.connection.notes["karma"] == 1
    assert server.count(V6_PTR, "PTR") == 1


def test_match_notes_are_cleared_by_a_new_helo(reactor, tmp_path, server):
    qp = helo_qp(tmp_path, reactor, server.address, "policy strict")

    async def talk():
        driver = SessionDriver(qp, remote_ip="192.0.2.12")
        driver.take()
        driver.send(b"EHLO mail.good\r\n")  # forward match: 192.0.2.10 is in the client's /24
        first = await next_reply(reactor, driver)
        driver.send(b"EHLO far.good\r\n")
        second = await next_reply(reactor, driver)
        return first, second

    first, second = run(reactor, talk)
    assert first[0].startswith("250-")
    assert second == ["550 That HELO hostname fails FCrDNS"]


# -- data_post and helpers --------------------------------------------------------------------------

CAPTURE = plugin_source("""
    class Capture(Plugin):
        def hook_queue(self, transaction):
            self.qp.captured = transaction.header.as_string()
            return OK, "captured"
""")


def test_x_helo_header(reactor, tmp_path):
    qp = make_qp(tmp_path, {"dns_servers": "127.0.0.1:1"}, plugins=["helo", "rcpt_ok", "capture"],
                 plugin_files={"capture": CAPTURE})
    qp.runner.clock = reactor

    async def talk():
        driver = SessionDriver(qp)
        driver.take()
        for command in ("HELO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@test.example.org>", "DATA"):
            driver.send(f"{command}\r\n".encode())
            await next_reply(reactor, driver)
        driver.send(b"X-HELO: forged\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
        return await next_reply(reactor, driver)

    assert run(reactor, talk) == ["250 captured"]
    assert qp.captured.startswith("X-HELO: client.example\n")
    assert "forged" not in qp.captured


def test_badhelo_log_names_the_pattern(reactor, tmp_path):
    qp = helo_qp(tmp_path, reactor, files={"badhelo": "^spam"})
    log = capture_log(qp)
    lines, _, _ = greet(reactor, qp, "spammer.example")
    assert lines[0] == "550 I do not believe you are spammer.example."
    assert any("badhelo pattern match (^spam)" in message for _, message in log)


def test_fuzzy_helpers():
    import importlib.util

    from qpsmtpd_py.paths import bundled_plugin_dir

    spec = importlib.util.spec_from_file_location("helo_module", bundled_plugin_dir() / "helo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ip = module.parse_ip
    assert module.same_network(ip("192.0.2.1"), ip("192.0.2.2"))
    assert not module.same_network(ip("192.0.2.1"), ip("192.0.1.1"))
    assert module.same_network(ip("2001:db8::1"), ip("2001:0db8:0:0:0:0:0:2"))
    assert not module.same_network(ip("2001:db8::1"), ip("2001:db7::1"))
    assert not module.same_network(ip("192.0.2.1"), ip("2001:db8::1"))
    assert module.same_domain("mx0.example.com", "mx1.example.com")
    assert not module.same_domain("mx0.example.com", "mx0.example.net")
    assert not module.same_domain("localhost", "localhost")
    assert module.literal_address("[IPv6:2001:db8::1]") == ip("2001:db8::1")
    assert module.literal_address("[2001:db8::1]") == ip("2001:db8::1")
    assert module.literal_address("[IPv6:192.0.2.1]") is None
    assert module.literal_address("[mail.example]") is None


def test_bad_arguments(tmp_path):
    from qpsmtpd_py.config import ConfigReader
    from qpsmtpd_py.qp import Qpsmtpd

    for args in ("policy loose", "timeout soon", "reject 2", "policy"):
        config = tmp_path / args.replace(" ", "_")
        config.mkdir()
        (config / "plugins").write_text(f"helo {args}\n")
        (config / "spool_dir").write_text(str(tmp_path / "spool"))
        errors = Qpsmtpd(ConfigReader([config])).load()
        assert errors and "helo" in str(errors[0]), args
