"""The dns_whitelist_soft plugin: sessions on a reactor of their own, DNS from tests/dns_server.py."""

from __future__ import annotations

import time

import pytest
from dns_server import FakeDNS, silent_udp_port
from harness import SessionDriver, make_qp
from reactor_helpers import next_reply, reactor, run  # noqa: F401 (reactor is a fixture)
from twisted.internet import task

from qpsmtpd_py.dns import Resolver, nameservers_for

ZONE = """
2.0.0.127.wl        300 IN TXT "listed in wl.test"
2.0.0.127.empty     300 IN TXT ""
3.0.0.127.slow      300 IN TXT "slow listing"
spam.example.rhs    300 IN TXT "is a spam source"
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.wl 300 IN TXT "v6 listed"
"""


@pytest.fixture
def server():
    with FakeDNS(ZONE, servfail={"2.0.0.127.broken.test"}, slow={"3.0.0.127.slow.test": 2.0}) as fake:
        yield fake


def make(reactor, tmp_path, dns_address, zones, args="", plugins=("rcpt_ok",)):  # noqa: F811
    files = {"dns_servers": dns_address, "whitelist_zones": zones}
    qp = make_qp(tmp_path, files, plugins=[f"dns_whitelist_soft {args}".strip(), *plugins])
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)
    return qp


def session(reactor, qp, ip="127.0.0.2", rcpts=1):  # noqa: F811
    """Greeting, HELO, MAIL, `rcpts` RCPTs; returns (notes before RCPT, driver, RCPT replies, seconds)."""

    async def talk():
        driver = SessionDriver(qp, remote_ip=ip)
        assert (await next_reply(reactor, driver))[0].startswith("220")
        assert driver.command("HELO client.example")[0].startswith("250")
        assert driver.command("MAIL FROM:<a@example.com>")[0].startswith("250")
        before = dict(driver.session.connection.notes)
        replies, started = [], time.monotonic()
        for n in range(rcpts):
            driver.send(f"RCPT TO:<user{n}@test.example.org>\r\n".encode())
            replies.append((await next_reply(reactor, driver))[0])
        return before, driver, replies, time.monotonic() - started

    return run(reactor, talk)


def test_listed_client_gets_the_note_at_rcpt(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server.address, ["clean.test", "wl.test  some comment"])
    before, driver, replies, _ = session(reactor, qp)
    assert "whitelisthost" not in before  # as in qpsmtpd: known from the first RCPT on
    assert replies[0].startswith("250")
    assert driver.session.connection.notes["whitelisthost"] == "listed in wl.test"
    assert server.count("2.0.0.127.wl.test", "TXT") == 1
    assert server.count("2.0.0.127.clean.test", "TXT") == 1


def test_lookups_start_at_connect(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server.address, ["wl.test"])

    async def talk():
        driver = SessionDriver(qp, remote_ip="127.0.0.2")
        await next_reply(reactor, driver)
        deadline = time.monotonic() + 3
        while not server.count("2.0.0.127.wl.test", "TXT") and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.01, lambda: None)
        return driver

    driver = run(reactor, talk)  # no command after the greeting: the question went out at connect
    assert "dns_whitelist_soft_lookups" in driver.session.connection.notes
    assert server.count("2.0.0.127.wl.test", "TXT") == 1


def test_unlisted_client(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server.address, ["wl.test"])
    _, driver, replies, _ = session(reactor, qp, ip="127.0.0.9", rcpts=2)
    assert all(r.startswith("250") for r in replies)
    assert "whitelisthost" not in driver.session.connection.notes
    assert server.count("9.0.0.127.wl.test", "TXT") == 1  # asked once, not per RCPT


def test_empty_txt_still_whitelists(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server.address, ["empty.test"])
    _, driver, _, _ = session(reactor, qp)
    assert driver.session.connection.notes["whitelisthost"] == "Whitelisted by empty.test"


def test_ipv6_client(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server.address, ["wl.test"])
    _, driver, _, _ = session(reactor, qp, ip="2001:db8::1")
    assert driver.session.connection.notes["whitelisthost"] == "v6 listed"


def test_servfail_zone_counts_as_unlisted(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server.address, ["broken.test", "wl.test"])
    _, driver, _, _ = session(reactor, qp)
    assert driver.session.connection.notes["whitelisthost"] == "listed in wl.test"


def test_no_zones_no_lookups(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server.address, [])
    _, driver, _, _ = session(reactor, qp)
    assert server.total() == 0
    assert "whitelisthost" not in driver.session.connection.notes


def test_dead_nameserver_costs_at_most_the_timeout(reactor, tmp_path):  # noqa: F811
    sock, port = silent_udp_port()
    try:
        qp = make(reactor, tmp_path, f"127.0.0.1:{port}", ["wl.test", "other.test"], args="timeout 0.5")
        _, driver, replies, elapsed = session(reactor, qp, rcpts=2)
    finally:
        sock.close()
    assert all(r.startswith("250") for r in replies)
    assert elapsed < 1.0
    assert "whitelisthost" not in driver.session.connection.notes


def test_slow_answer_within_timeout_is_waited_for(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server.address, ["slow.test"], args="timeout 3")
    _, driver, _, elapsed = session(reactor, qp, ip="127.0.0.3")
    assert driver.session.connection.notes["whitelisthost"] == "slow listing"


def test_later_plugins_see_the_note(reactor, tmp_path, server):  # noqa: F811
    # rhsbl refuses this sender, unless the host is whitelisted (is_immune): after the first RCPT it is.
    qp = make_qp(tmp_path, {"dns_servers": server.address, "whitelist_zones": ["wl.test"],
                            "rhsbl_zones": ["rhs.test"]},
                 plugins=["dns_whitelist_soft", "rhsbl", "rcpt_ok"])
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)

    async def talk():
        driver = SessionDriver(qp, remote_ip="127.0.0.2")
        await next_reply(reactor, driver)
        driver.command("HELO client.example")
        driver.send(b"MAIL FROM:<a@spam.example>\r\n")
        first = (await next_reply(reactor, driver))[0]
        driver.send(b"MAIL FROM:<a@good.example>\r\n")
        await next_reply(reactor, driver)
        driver.send(b"RCPT TO:<u@test.example.org>\r\n")
        await next_reply(reactor, driver)
        driver.command("RSET")
        driver.send(b"MAIL FROM:<a@spam.example>\r\n")
        return first, (await next_reply(reactor, driver))[0]

    first, after = run(reactor, talk)
    assert first.startswith("550 Mail from spam.example rejected")
    assert after.startswith("250")


def test_bad_arguments(tmp_path):
    from qpsmtpd_py.config import ConfigReader
    from qpsmtpd_py.qp import Qpsmtpd

    for args in ("timeout soon", "timeout 0", "timeout"):
        config = tmp_path / args.replace(" ", "_")
        config.mkdir()
        (config / "plugins").write_text(f"dns_whitelist_soft {args}\n")
        (config / "spool_dir").write_text(str(tmp_path / "spool"))
        errors = Qpsmtpd(ConfigReader([config])).load()
        assert errors and "dns_whitelist_soft" in str(errors[0]), args
