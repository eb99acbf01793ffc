"""The fcrdns plugin: sessions on a reactor of their own, PTR/A/AAAA from tests/dns_server.py."""

from __future__ import annotations

import pytest
from dns_server import FakeDNS, silent_udp_port
from harness import SessionDriver, make_qp
from reactor_helpers import next_reply, reactor, run  # noqa: F401 (reactor is a fixture)

from qpsmtpd_py.dns import Resolver, nameservers_for

ZONE = """
1.2.0.192.in-addr.arpa.  300 IN PTR Good.example.test.
good.example             300 IN A   192.0.2.1
2.2.0.192.in-addr.arpa.  300 IN PTR mismatch.test.
mismatch                 300 IN A   198.51.100.7
5.2.0.192.in-addr.arpa.  300 IN PTR net.test.
net                      300 IN A   192.0.2.99
6.2.0.192.in-addr.arpa.  300 IN PTR missing.test.
6.2.0.192.in-addr.arpa.  300 IN PTR ok6.test.
ok6                      300 IN A   192.0.2.6
7.2.0.192.in-addr.arpa.  300 IN PTR nodots.
8.2.0.192.in-addr.arpa.  300 IN PTR fwdfail.test.
9.2.0.192.in-addr.arpa.  300 IN PTR noaddr.test.
noaddr                   300 IN TXT "no address here"
10.2.0.192.in-addr.arpa. 300 IN PTR alias.test.
alias                    300 IN CNAME c10.test.
c10                      300 IN A   192.0.2.10
11.2.0.192.in-addr.arpa. 300 IN PTR bad_name.test.
1.0.0.127.in-addr.arpa.  300 IN PTR localhost.
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 300 IN PTR v6.test.
v6                       300 IN AAAA 2001:db8::1
v6                       300 IN A    198.51.100.1
"""
GREETING = "220 test.example.org ESMTP"


@pytest.fixture
def server():
    with FakeDNS(ZONE, servfail={"4.2.0.192.in-addr.arpa", "fwdfail.test"}) as fake:
        yield fake


def connect(reactor, tmp_path, dns_address, ip, args="", plugins=("rcpt_ok",), commands=()):  # noqa: F811
    """A session from `ip`; returns (greeting line, driver, replies to `commands`)."""
    qp = make_qp(tmp_path, {"dns_servers": dns_address}, plugins=[f"fcrdns {args}".strip(), *plugins])
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)

    async def talk():
        driver = SessionDriver(qp, remote_ip=ip)
        line = (await next_reply(reactor, driver))[0]
        return line, driver, [driver.command(c) for c in commands]

    return run(reactor, talk)


def results(driver):
    return driver.session.connection.notes.get("fcrdns"), driver.session.auth_results()


def test_pass_sets_the_remote_host(reactor, tmp_path, server):  # noqa: F811
    line, driver, replies = connect(reactor, tmp_path, server.address, "192.0.2.1", commands=["EHLO client"])
    assert line.startswith(GREETING)
    connection = driver.session.connection
    assert results(driver) == ("pass", ["iprev=pass"])
    assert connection.notes["karma"] == 1
    assert connection.remote_host == "Good.example.test"
    assert connection.remote_info == "Good.example.test"
    assert "Hi Good.example.test [192.0.2.1]" in replies[0][0]
    assert server.count("good.example.test", "A") == 1
    assert server.count("good.example.test", "AAAA") == 1


def test_cname_is_followed(reactor, tmp_path, server):  # noqa: F811
    _, driver, _ = connect(reactor, tmp_path, server.address, "192.0.2.10")
    assert results(driver) == ("pass", ["iprev=pass"])
    assert driver.session.connection.remote_host == "alias.test"
    assert driver.session.connection.notes["karma"] == 1  # an exact match, not a network match


def test_mismatch_fails(reactor, tmp_path, server):  # noqa: F811
    line, driver, _ = connect(reactor, tmp_path, server.address, "192.0.2.2")
    assert line.startswith(GREETING)  # reject 0 is the default
    assert results(driver) == ("fail", ["iprev=fail"])
    assert driver.session.connection.notes["karma"] == -1
    assert driver.session.connection.remote_host == "[192.0.2.2]"


def test_mismatch_refused_with_reject_1_always_temporary(reactor, tmp_path, server):  # noqa: F811
    line, driver, _ = connect(reactor, tmp_path, server.address, "192.0.2.2", args="reject 1 reject_type perm")
    assert line == "450 Your address 192.0.2.2 has no forward-confirmed reverse DNS"
    assert driver.closed


def test_no_ptr_is_permerror(reactor, tmp_path, server):  # noqa: F811
    line, driver, _ = connect(reactor, tmp_path, server.address, "192.0.2.3", args="reject 1")
    assert line.startswith("450 ")
    assert results(driver) == ("permerror", ["iprev=permerror"])
    assert driver.session.connection.notes["karma"] == -1


def test_servfail_is_temperror_and_not_refused(reactor, tmp_path, server):  # noqa: F811
    line, driver, _ = connect(reactor, tmp_path, server.address, "192.0.2.4", args="reject 1")
    assert line.startswith(GREETING)
    assert results(driver) == ("temperror", ["iprev=temperror"])
    assert "karma" not in driver.session.connection.notes


def test_forward_servfail_is_temperror(reactor, tmp_path, server):  # noqa: F811
    line, driver, _ = connect(reactor, tmp_path, server.address, "192.0.2.8", args="reject 1")
    assert line.startswith(GREETING)
    assert results(driver) == ("temperror", ["iprev=temperror"])


def test_timeout_is_temperror(reactor, tmp_path):  # noqa: F811
    sock, port = silent_udp_port()
    try:
        line, driver, _ = connect(reactor, tmp_path, f"127.0.0.1:{port}", "192.0.2.1", args="timeout 0.3 reject 1")
    finally:
        sock.close()
    assert line.startswith(GREETING)
    assert results(driver) == ("temperror", ["iprev=temperror"])


def test_network_match_passes_without_karma(reactor, tmp_path, server):  # noqa: F811
    _, driver, _ = connect(reactor, tmp_path, server.address, "192.0.2.5")
    assert results(driver) == ("pass", ["iprev=pass"])
    assert "karma" not in driver.session.connection.notes
    assert driver.session.connection.remote_host == "[192.0.2.5]"  # not confirmed exactly


def test_any_ptr_name_may_confirm(reactor, tmp_path, server):  # noqa: F811
    _, driver, _ = connect(reactor, tmp_path, server.address, "192.0.2.6")
    assert results(driver) == ("pass", ["iprev=pass"])
    assert driver.session.connection.remote_host == "ok6.test"


@pytest.mark.parametrize("ip", ["192.0.2.7", "192.0.2.11"])
def test_names_that_are_not_host_names_fail(reactor, tmp_path, server, ip):  # noqa: F811
    _, driver, _ = connect(reactor, tmp_path, server.address, ip)
    assert results(driver) == ("fail", ["iprev=fail"])
    assert server.count("nodots", "A") == 0


def test_ptr_name_without_address_fails(reactor, tmp_path, server):  # noqa: F811
    _, driver, _ = connect(reactor, tmp_path, server.address, "192.0.2.9")
    assert results(driver) == ("fail", ["iprev=fail"])


def test_ipv6_client_confirmed_by_aaaa(reactor, tmp_path, server):  # noqa: F811
    line, driver, _ = connect(reactor, tmp_path, server.address, "2001:db8::1", args="reject 1")
    assert line.startswith(GREETING)
    assert results(driver) == ("pass", ["iprev=pass"])
    assert driver.session.connection.remote_host == "v6.test"


def test_loopback_gets_karma_and_is_never_refused(reactor, tmp_path, server):  # noqa: F811
    line, driver, _ = connect(reactor, tmp_path, server.address, "127.0.0.1", args="reject 1")
    assert line.startswith(GREETING)
    assert results(driver) == ("fail", ["iprev=fail"])  # its PTR name `localhost` has no dot
    assert driver.session.connection.notes["karma"] == 0  # +1 for localhost, -1 for the failure


def test_reject_naughty(reactor, tmp_path, server):  # noqa: F811
    line, driver, _ = connect(reactor, tmp_path, server.address, "192.0.2.3", args="reject naughty")
    assert line.startswith(GREETING)
    notes = driver.session.connection.notes
    assert notes["naughty"] == "(fcrdns) Your address 192.0.2.3 has no forward-confirmed reverse DNS"
    assert notes["naughty_reject_type"] == "temp"


def test_relay_client_is_not_checked(reactor, tmp_path, server):  # noqa: F811
    qp_files = {"relayclients": ["192.0.2.3"]}
    qp = make_qp(tmp_path, {"dns_servers": server.address, **qp_files}, plugins=["relay", "fcrdns reject 1",
                                                                                "rcpt_ok"])
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)

    async def talk():
        driver = SessionDriver(qp, remote_ip="192.0.2.3")
        return (await next_reply(reactor, driver))[0], driver

    line, driver = run(reactor, talk)
    assert line.startswith(GREETING)
    assert server.total() == 0
    assert driver.session.auth_results() == []


def test_ident_remote_info_keeps_the_user(reactor, tmp_path, server):  # noqa: F811
    qp = make_qp(tmp_path, {"dns_servers": server.address}, plugins=["fcrdns", "rcpt_ok"])
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)
    plugin = qp.plugins[0]

    class Connection:
        remote_host = "[192.0.2.1]"
        remote_info = "joe@[192.0.2.1]"

    class Session:
        connection = Connection()

    from qpsmtpd_py.log import current_session

    token = current_session.set(Session())
    try:
        plugin.set_remote_host("mx.example")
    finally:
        current_session.reset(token)
    assert (Session.connection.remote_host, Session.connection.remote_info) == ("mx.example", "joe@mx.example")


def test_bad_arguments(tmp_path):
    from qpsmtpd_py.config import ConfigReader
    from qpsmtpd_py.qp import Qpsmtpd

    for args in ("reject 2", "timeout soon", "timeout"):
        config = tmp_path / args.replace(" ", "_")
        config.mkdir()
        (config / "plugins").write_text(f"fcrdns {args}\n")
        (config / "spool_dir").write_text(str(tmp_path / "spool"))
        errors = Qpsmtpd(ConfigReader([config])).load()
        assert errors and "fcrdns" in str(errors[0]), args
