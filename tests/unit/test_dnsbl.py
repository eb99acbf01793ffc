"""The dnsbl plugin: sessions over a StringTransport, DNS from tests/dns_server.py.

Each test runs its own EPollReactor (as test_dns.py does): the session's
connect hook waits for real UDP answers from the test server; the test's
coroutine polls the transport until the greeting (or refusal) is written.
"""

from __future__ import annotations

import time

import pytest
from dns_server import FakeDNS, silent_udp_port
from harness import SessionDriver, make_qp
from reactor_helpers import run
from twisted.internet import defer, task
from twisted.python.failure import Failure

from qpsmtpd_py.dns import Resolver, nameservers_for

ZONE = """
2.0.0.127.bl      300 IN TXT "Listed in bl: see http://bl.test/?127.0.0.2"
2.0.0.127.abl     300 IN A   127.0.0.2
2.0.0.127.codes   300 IN A   127.0.0.10
2.0.0.127.codes   300 IN TXT "codes says no"
3.0.0.127.codes   300 IN A   127.0.0.3
3.0.0.127.codes   300 IN TXT "codes lists 127.0.0.3"
2.0.0.127.slow    300 IN TXT "slow says no"
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl 300 IN TXT "v6 listed"
"""
GREETING = "220 test.example.org ESMTP"


@pytest.fixture
def server():
    with FakeDNS(ZONE, slow={"2.0.0.127.slow.test": 3.0}) as fake:
        yield fake


def connect(reactor, tmp_path, server_address, zones, args="", ip="127.0.0.2", files=None, timeout=10.0):
    """Start a session from `ip`; returns (first reply line, driver, seconds to it)."""
    files = dict(files or {})
    files.setdefault("dns_servers", server_address)
    files["dnsbl_zones"] = zones
    qp = make_qp(tmp_path, files, plugins=[f"dnsbl {args}".strip(), "rcpt_ok"])
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)
    async def main():
        started = time.monotonic()
        driver = SessionDriver(qp, remote_ip=ip)
        while not driver.transport.value():
            await task.deferLater(reactor, 0.01, lambda: None)
        return driver.take(), driver, time.monotonic() - started

    lines, driver, elapsed = run(reactor, main, timeout)
    return lines[0], driver, elapsed


def test_txt_zone_refuses_with_its_text(reactor, tmp_path, server):
    line, driver, _ = connect(reactor, tmp_path, server.address, ["clean.test", "bl.test"])
    assert line == "550 Listed in bl: see http://bl.test/?127.0.0.2"
    assert driver.closed
    assert driver.session.connection.notes["karma"] == -1


def test_a_zone_uses_the_configured_message(reactor, tmp_path, server):
    line, _, _ = connect(reactor, tmp_path, server.address, ["abl.test:Go away %IP%, see abl"])
    assert line == "550 Go away 127.0.0.2, see abl"
    assert server.count("2.0.0.127.abl.test", "A") == 1


def test_a_zone_without_message(reactor, tmp_path, server):
    line, _, _ = connect(reactor, tmp_path, server.address, ["abl.test:"])
    assert line == "550 Blocked by abl.test"


def test_clean_client_is_greeted(reactor, tmp_path, server):
    line, driver, _ = connect(reactor, tmp_path, server.address, ["bl.test", "abl.test:x"], ip="127.0.0.9")
    assert line.startswith(GREETING)
    assert "karma" not in driver.session.connection.notes


def test_the_first_listing_zone_in_the_file_names_the_reason(reactor, tmp_path, server):
    line, _, _ = connect(reactor, tmp_path, server.address, ["abl.test:from abl", "bl.test"])
    assert line == "550 from abl"


def test_reject_0_only_lowers_karma(reactor, tmp_path, server):
    line, driver, _ = connect(reactor, tmp_path, server.address, ["bl.test"], args="reject 0")
    assert line.startswith(GREETING)
    assert driver.session.connection.notes["karma"] == -1


def test_reject_type_temp(reactor, tmp_path, server):
    line, _, _ = connect(reactor, tmp_path, server.address, ["bl.test"], args="reject_type temp")
    assert line.startswith("450 Listed in bl")


def test_legacy_single_argument_is_the_reject_type(reactor, tmp_path, server):
    line, driver, _ = connect(reactor, tmp_path, server.address, ["bl.test"], args="temp")
    assert line.startswith("450 Listed in bl")


def test_reject_naughty_and_postmaster_exemption(reactor, tmp_path, server):
    line, driver, _ = connect(reactor, tmp_path, server.address, ["bl.test"], args="reject naughty")
    assert line.startswith(GREETING)
    notes = driver.session.connection.notes
    assert notes["naughty"] == "(dnsbl) Listed in bl: see http://bl.test/?127.0.0.2"
    assert driver.command("HELO client.test")[0].startswith("250")
    assert driver.command("MAIL FROM:<a@example.com>")[0].startswith("250")
    assert driver.command("RCPT TO:<Postmaster@test.example.org>")[0].startswith("250")
    assert not notes["naughty"]


def test_return_code_filter(reactor, tmp_path, server):
    line, _, _ = connect(reactor, tmp_path, server.address, ["codes.test=127.0.0.2-127.0.0.9"])
    assert line.startswith(GREETING)  # 127.0.0.10 is not in the filter


def test_return_code_filter_match_uses_txt(reactor, tmp_path, server):
    line, _, _ = connect(reactor, tmp_path, server.address, ["codes.test=127.0.0.3,127.0.0.10-127.0.0.11"])
    assert line == "550 codes says no"


def test_return_code_filter_with_message(reactor, tmp_path, server):
    line, _, _ = connect(reactor, tmp_path, server.address, ["codes.test=127.0.0.10:code 10 for %IP%"])
    assert line == "550 code 10 for 127.0.0.2"


def test_ipv6_client_is_looked_up_by_nibbles(reactor, tmp_path, server):
    line, _, _ = connect(reactor, tmp_path, server.address, ["bl.test"], ip="2001:db8::1")
    assert line == "550 v6 listed"


def test_dnsbl_allow(reactor, tmp_path, server):
    line, _, _ = connect(reactor, tmp_path, server.address, ["bl.test"], files={"dnsbl_allow": ["127.0."]})
    assert line.startswith(GREETING)
    assert server.total() == 0


def test_rblsmtpd_empty_skips(reactor, tmp_path, server, monkeypatch):
    monkeypatch.setenv("RBLSMTPD", "")
    line, _, _ = connect(reactor, tmp_path, server.address, ["bl.test"])
    assert line.startswith(GREETING)
    assert server.total() == 0


def test_rblsmtpd_set_refuses_with_reject_connect(reactor, tmp_path, server, monkeypatch):
    monkeypatch.setenv("RBLSMTPD", "you %IP% are blocked")
    line, _, _ = connect(reactor, tmp_path, server.address, ["bl.test"], args="reject connect",
                         files={"dnsbl_rejectmsg": "Ask your ISP."})
    assert line == "550 Ask your ISP. you 127.0.0.2 are blocked"


def test_rblsmtpd_set_skips_without_reject_connect(reactor, tmp_path, server, monkeypatch):
    monkeypatch.setenv("RBLSMTPD", "blocked")
    line, _, _ = connect(reactor, tmp_path, server.address, ["bl.test"])
    assert line.startswith(GREETING)


def test_zones_are_asked_in_parallel_and_bounded_by_timeout(reactor, tmp_path, server):
    sock, dead_port = silent_udp_port()
    try:
        line, _, elapsed = connect(reactor, tmp_path, f"127.0.0.1:{dead_port}",
                                   ["bl.test", "abl.test:x", "codes.test"], args="timeout 0.5")
    finally:
        sock.close()
    assert line.startswith(GREETING)
    assert elapsed < 1.0


def test_a_slow_zone_costs_at_most_the_timeout(reactor, tmp_path, server):
    line, _, elapsed = connect(reactor, tmp_path, server.address, ["slow.test", "clean.test"],
                               args="timeout 0.5")
    assert line.startswith(GREETING)
    assert elapsed < 1.0


def test_bad_arguments(tmp_path):
    from qpsmtpd_py.config import ConfigReader
    from qpsmtpd_py.qp import Qpsmtpd

    for args in ("reject 2", "reject_type never", "timeout soon", "a b c"):
        config = tmp_path / args.replace(" ", "_")
        config.mkdir()
        (config / "plugins").write_text(f"dnsbl {args}\n")
        (config / "spool_dir").write_text(str(tmp_path / "spool"))
        errors = Qpsmtpd(ConfigReader([config])).load()
        assert errors and "dnsbl" in str(errors[0]), args


def test_parse_zones():
    import importlib.util

    from qpsmtpd_py.paths import bundled_plugin_dir

    spec = importlib.util.spec_from_file_location("dnsbl_module", bundled_plugin_dir() / "dnsbl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    zones, errors = module.parse_zones(["a.test", "b.test:msg: with colon", "c.test=127.0.0.2-127.0.0.4:m",
                                        "d.test=127.0.0.9-127.0.0.1", "", "e.test=nonsense"])
    assert [(z.name, z.message) for z in zones] == [("a.test", None), ("b.test", "msg: with colon"),
                                                     ("c.test", "m")]
    assert zones[2].matches("127.0.0.3") and not zones[2].matches("127.0.0.5")
    assert len(errors) == 2


# -- rhsbl ----------------------------------------------------------------------------------------

RHS_ZONE = """
spammer.example.rhs      300 IN TXT "is a known spam source"
spammer.example.arhs     300 IN A   127.0.0.2
badhelo.example.rhs      300 IN TXT "sends junk"
"""


def mail_session(reactor, tmp_path, server, zones, sender, helo="client.example", args=""):
    """Greeting, HELO, then MAIL; returns the MAIL reply line."""
    qp = make_qp(tmp_path, {"dns_servers": server.address, "rhsbl_zones": zones},
                 plugins=[f"rhsbl {args}".strip(), "rcpt_ok"])
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)
    outcome = []

    async def main():
        driver = SessionDriver(qp)
        assert driver.take()[0].startswith(GREETING)
        assert driver.command(f"HELO {helo}")[0].startswith("250")
        driver.send(f"MAIL FROM:<{sender}>\r\n".encode())
        while not driver.transport.value():
            await task.deferLater(reactor, 0.01, lambda: None)
        return driver.take()[0]

    def start():
        d = defer.ensureDeferred(main())
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    guard = reactor.callLater(10, reactor.stop)
    reactor.run(installSignalHandlers=False)
    if guard.active():
        guard.cancel()
    assert outcome, "no MAIL reply"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


@pytest.fixture
def rhs_server():
    with FakeDNS(RHS_ZONE) as fake:
        yield fake


def test_rhsbl_sender_domain_listed(reactor, tmp_path, rhs_server):
    line = mail_session(reactor, tmp_path, rhs_server, ["rhs.test"], "a@spammer.example")
    assert line == "550 Mail from spammer.example rejected because it is a known spam source"


def test_rhsbl_a_zone_gives_its_text(reactor, tmp_path, rhs_server):
    line = mail_session(reactor, tmp_path, rhs_server, ["arhs.test  is listed in arhs"], "a@Spammer.Example")
    assert line == "550 Mail from spammer.example rejected because it is listed in arhs"


def test_rhsbl_helo_listed(reactor, tmp_path, rhs_server):
    line = mail_session(reactor, tmp_path, rhs_server, ["rhs.test"], "a@good.example", helo="badhelo.example")
    assert line == "550 Mail from HELO badhelo.example rejected because it sends junk"


def test_rhsbl_clean_and_null_sender(reactor, tmp_path, rhs_server):
    assert mail_session(reactor, tmp_path, rhs_server, ["rhs.test"], "a@good.example").startswith("250")
    assert rhs_server.total() == 2  # sender domain and HELO


def test_rhsbl_null_sender_is_not_checked(reactor, tmp_path, rhs_server):
    assert mail_session(reactor, tmp_path, rhs_server, ["rhs.test"], "", helo="badhelo.example").startswith("250")
    assert rhs_server.total() == 0


def test_bad_dns_servers_line_stops_start_up(tmp_path):
    from qpsmtpd_py.config import ConfigReader
    from qpsmtpd_py.qp import Qpsmtpd

    config = tmp_path / "config"
    config.mkdir()
    (config / "plugins").write_text("dnsbl\nrhsbl\n")
    (config / "dns_servers").write_text("ns.example.com\n")
    (config / "spool_dir").write_text(str(tmp_path / "spool"))
    errors = [str(e) for e in Qpsmtpd(ConfigReader([config])).load()]
    assert len(errors) == 2 and all("dns_servers" in e and "ns.example.com" in e for e in errors), errors
