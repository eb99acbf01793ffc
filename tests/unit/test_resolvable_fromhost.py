"""The resolvable_fromhost plugin: MAIL in sessions on a reactor of their own, DNS from tests/dns_server.py."""

from __future__ import annotations

import pytest
from dns_server import FakeDNS, silent_udp_port
from harness import SessionDriver, make_qp
from reactor_helpers import next_reply, reactor, run  # noqa: F401 (reactor is a fixture)

from qpsmtpd_py.dns import Resolver, nameservers_for

ZONE = """
mx.example          300 IN MX  10 mail.mx.example.test.
mail.mx.example     300 IN A   192.0.2.25
a.example           300 IN A   192.0.2.26
aaaa.example        300 IN AAAA 2001:db8::26
nodata.example      300 IN TXT "no mail here"
invalidmx.example   300 IN MX  10 mail.invalidmx.example.test.
mail.invalidmx.example 300 IN A 10.1.2.3
private.example     300 IN A   127.0.0.5
private6.example    300 IN AAAA fd00::5
twomx.example       300 IN MX  10 bad.twomx.example.test.
twomx.example       300 IN MX  20 good.twomx.example.test.
bad.twomx.example   300 IN A   10.0.0.1
good.twomx.example  300 IN A   192.0.2.30
dual.example        300 IN MX  10 dual-mx.example.test.
dual-mx.example     300 IN A   10.0.0.2
dual-mx.example     300 IN AAAA 2001:db8::27
nullmx.example      300 IN MX  0 .
ipmx.example        300 IN MX  10 192.0.2.40.
mxfail.example      300 IN MX  10 broken-mx.example.test.
mxfail.example      300 IN MX  20 mail.invalidmx.example.test.
mxnone.example      300 IN MX  10 nowhere.example.test.
"""
INVALID = ["# private networks", "10.0.0.0/8", "127.0.0.0/8", "fc00::/7", "not a network"]


@pytest.fixture
def server():
    with FakeDNS(ZONE, servfail={"servfail.example.test", "broken-mx.example.test"}) as fake:
        yield fake


def mail(reactor, tmp_path, dns_address, senders, args="", invalid=INVALID, plugins=("rcpt_ok",)):  # noqa: F811
    """One session: each sender in a MAIL (RSET between); [(reply line, transaction notes, karma)]."""
    qp = make_qp(tmp_path, {"dns_servers": dns_address, "invalid_resolvable_fromhost": invalid},
                 plugins=[*plugins[:-1], f"resolvable_fromhost {args}".strip(), plugins[-1]])
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)

    async def talk():
        driver = SessionDriver(qp, remote_ip="192.0.2.200")
        assert (await next_reply(reactor, driver))[0].startswith("220")
        assert driver.command("HELO client.example")[0].startswith("250")
        outcomes = []
        for sender in senders:
            driver.session.connection.notes.pop("karma", None)
            driver.send(f"MAIL FROM:<{sender}>\r\n".encode())
            line = (await next_reply(reactor, driver))[0]
            transaction = driver.session.transaction
            notes = dict(transaction.notes) if transaction is not None else {}
            notes["naughty"] = driver.session.connection.notes.pop("naughty", None)
            outcomes.append((line, notes, driver.session.connection.notes.get("karma", 0)))
            driver.command("RSET")
        return outcomes

    return run(reactor, talk)


def one(reactor, tmp_path, server, sender, **options):  # noqa: F811
    return mail(reactor, tmp_path, server.address, [sender], **options)[0]


def test_passing_domains(reactor, tmp_path, server):  # noqa: F811
    outcomes = mail(reactor, tmp_path, server.address,
                    ["u@mx.example.test", "u@A.Example.test", "u@aaaa.example.test", "u@twomx.example.test",
                     "u@dual.example.test", "u@ipmx.example.test"])
    assert [(line[:3], notes["resolvable_fromhost"], karma) for line, notes, karma in outcomes] == [
        ("250", "mx", 0), ("250", "a", 0), ("250", "a", 0), ("250", "mx", 0), ("250", "mx", 0), ("250", "mx", 0)]
    assert outcomes[1][1]["resolvable_fromhost_host"] == "A.Example.test"


@pytest.mark.parametrize(("sender", "note"), [
    ("u@nxdomain.example.test", "nxdomain.example.test does not exist"),
    ("u@nodata.example.test", "nodata.example.test has no MX or A"),
    ("u@invalidmx.example.test", "invalid MX for invalidmx.example.test"),
    ("u@private.example.test", "invalid A for private.example.test"),
    ("u@private6.example.test", "invalid A for private6.example.test"),
    ("u@nullmx.example.test", "nullmx.example.test has a null MX (accepts no mail)"),
    ("u@mxnone.example.test", "invalid MX for mxnone.example.test"),
    ("postmaster", "unparsable host"),
])
def test_failing_domains_are_deferred(reactor, tmp_path, server, sender, note):  # noqa: F811
    line, notes, karma = one(reactor, tmp_path, server, sender)
    assert line == "450 FQDN required in the envelope sender (#4.1.8)"
    assert notes["resolvable_fromhost"] == note
    assert karma == -1


def test_reject_type_perm(reactor, tmp_path, server):  # noqa: F811
    line, _, _ = one(reactor, tmp_path, server, "u@nodata.example.test", args="reject_type perm")
    assert line == "550 FQDN required in the envelope sender (#5.1.8)"


def test_dns_failure_is_temporary_resolver_failure(reactor, tmp_path, server):  # noqa: F811
    line, notes, karma = one(reactor, tmp_path, server, "u@servfail.example.test")
    assert line == "450 Temporary address resolution failure (#4.4.3)"
    assert notes["resolvable_fromhost"] == "DNS error for servfail.example.test: MX SERVFAIL"
    assert karma == 0


def test_dns_failure_with_perm_reject_type(reactor, tmp_path, server):  # noqa: F811
    line, _, _ = one(reactor, tmp_path, server, "u@servfail.example.test", args="reject_type perm")
    assert line == "550 Temporary address resolution failure (#5.4.3)"


def test_failing_mx_host_and_invalid_other_mx_is_temporary(reactor, tmp_path, server):  # noqa: F811
    line, notes, _ = one(reactor, tmp_path, server, "u@mxfail.example.test")
    assert line == "450 Temporary address resolution failure (#4.4.3)"
    assert "SERVFAIL" in notes["resolvable_fromhost"]


def test_dead_nameserver_bounded_by_timeout(reactor, tmp_path):  # noqa: F811
    sock, port = silent_udp_port()
    try:
        line, notes, _ = mail(reactor, tmp_path, f"127.0.0.1:{port}", ["u@mx.example.test"], args="timeout 0.3")[0]
    finally:
        sock.close()
    assert line == "450 Temporary address resolution failure (#4.4.3)"
    assert notes["resolvable_fromhost"] == "DNS error for mx.example.test: MX TIMEOUT"


def test_address_literals_and_null_sender(reactor, tmp_path, server):  # noqa: F811
    outcomes = mail(reactor, tmp_path, server.address, ["u@[192.0.2.1]", "u@[IPv6:2001:db8::1]", ""])
    assert [(line[:3], notes.get("resolvable_fromhost"), karma) for line, notes, karma in outcomes] == [
        ("250", "ip", -1), ("250", "ip", -1), ("250", "null", 0)]
    assert server.total() == 0


def test_reject_0_tolerates(reactor, tmp_path, server):  # noqa: F811
    line, notes, karma = one(reactor, tmp_path, server, "u@nodata.example.test", args="reject 0")
    assert line.startswith("250")
    assert notes["resolvable_fromhost"] == "nodata.example.test has no MX or A"  # the code's, not `config`
    assert karma == -1


def test_reject_naughty(reactor, tmp_path, server):  # noqa: F811
    line, notes, _ = one(reactor, tmp_path, server, "u@nodata.example.test", args="reject naughty")
    assert line.startswith("250")
    assert notes["naughty"] == "(resolvable_fromhost) FQDN required in the envelope sender (#4.1.8)"


def test_invalid_networks_ignored_without_the_file(reactor, tmp_path, server):  # noqa: F811
    line, notes, _ = one(reactor, tmp_path, server, "u@private.example.test", invalid=[])
    assert line.startswith("250")
    assert notes["resolvable_fromhost"] == "a"


def test_whitelisted_host_is_not_checked(reactor, tmp_path, server):  # noqa: F811
    qp = make_qp(tmp_path, {"dns_servers": server.address, "relayclients": ["192.0.2.200"]},
                 plugins=["relay", "resolvable_fromhost", "rcpt_ok"])
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)

    async def talk():
        driver = SessionDriver(qp, remote_ip="192.0.2.200")
        await next_reply(reactor, driver)
        driver.command("HELO client.example")
        driver.send(b"MAIL FROM:<u@nodata.example.test>\r\n")
        return (await next_reply(reactor, driver))[0], dict(driver.session.transaction.notes)

    line, notes = run(reactor, talk)
    assert line.startswith("250")
    assert notes["resolvable_fromhost"] == "whitelist"
    assert server.total() == 0


def test_parse_networks():
    import importlib.util

    from qpsmtpd_py.paths import bundled_plugin_dir

    spec = importlib.util.spec_from_file_location("rfh_module", bundled_plugin_dir() / "resolvable_fromhost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    networks, errors = module.parse_networks(["10.1.2.3/8", " 192.0.2.1 ", "fc00::/7 # ula", "", "# c", "x/99"])
    assert [str(n) for n in networks] == ["10.0.0.0/8", "192.0.2.1/32", "fc00::/7"]
    assert errors == ["x/99"]
    assert str(module.address_literal("[IPv6:2001:DB8::1]")) == "2001:db8::1"
    assert module.address_literal("[not.an.ip]") is None


def test_bad_arguments(tmp_path):
    from qpsmtpd_py.config import ConfigReader
    from qpsmtpd_py.qp import Qpsmtpd

    for args in ("reject 2", "reject_type never", "timeout soon", "timeout 0", "reject"):
        config = tmp_path / args.replace(" ", "_")
        config.mkdir()
        (config / "plugins").write_text(f"resolvable_fromhost {args}\n")
        (config / "spool_dir").write_text(str(tmp_path / "spool"))
        errors = Qpsmtpd(ConfigReader([config])).load()
        assert errors and "resolvable_fromhost" in str(errors[0]), args
