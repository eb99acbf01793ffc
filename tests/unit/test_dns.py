"""qpsmtpd_py.dns against a real DNS server on 127.0.0.1 (tests/dns_server.py).

How the reactor runs: each test gets its own `EPollReactor` instance (the
reactor the daemon's children run), handed to the Resolver explicitly; the
test's coroutine is started with callWhenRunning and the reactor runs until
the coroutine is done (a guard timer stops a hung test). Nothing touches the
process-global reactor, so tests are independent and need no sleeps: every
wait is the reactor waiting for a datagram or a timer.
"""

from __future__ import annotations

import time

import pytest
from dns_server import FakeDNS, silent_udp_port
from reactor_helpers import run
from twisted.internet import defer

from qpsmtpd_py.dns import (
    DNSTemporaryFailure,
    Resolver,
    configured_nameservers,
    parse_nameserver,
    reverse_name,
    system_nameservers,
)

ZONE = """
a       300 IN A     192.0.2.1
a       300 IN A     192.0.2.2
a6      300 IN AAAA  2001:db8::1
mail    300 IN MX    20 mx2.test.
mail    300 IN MX    10 mx1.test.
text    300 IN TXT   "hello " "world"
alias   300 IN CNAME a
short   2   IN A     192.0.2.9
slow    300 IN A     192.0.2.3
1.2.0.192.in-addr.arpa. 300 IN PTR host.test.
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 300 IN PTR host6.test.
big     300 IN TXT   "a big answer"
"""


@pytest.fixture
def server():
    with FakeDNS(ZONE, servfail={"broken.test"}, slow={"slow.test": 1.5}, truncate={"big.test"}) as fake:
        yield fake


def resolver(reactor, server, **options):
    return Resolver([("127.0.0.1", server.port)], reactor=reactor, **options)


# -- configuration -------------------------------------------------------------------------

def test_nameserver_syntax(tmp_path):
    assert parse_nameserver("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_nameserver("192.0.2.1:5353") == ("192.0.2.1", 5353)
    assert parse_nameserver("[2001:db8::1]:5300") == ("2001:db8::1", 5300)
    assert parse_nameserver("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("example.com", "192.0.2.1:x", "[::1", "192.0.2.1:70000"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)
    assert configured_nameservers(["127.0.0.1:1053", "", "::1"]) == [("127.0.0.1", 1053), ("::1", 53)]
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n")
    assert system_nameservers(str(conf)) == [("192.0.2.53", 53), ("fe80::1", 53)]
    assert system_nameservers(str(tmp_path / "missing")) == [("127.0.0.1", 53)]


def test_reverse_name():
    assert reverse_name("127.0.0.2") == "2.0.0.127"
    assert reverse_name("127.0.0.2", "bl.test.") == "2.0.0.127.bl.test"
    assert reverse_name("::ffff:192.0.2.1") == "1.2.0.192"
    assert reverse_name("2001:db8::1", "bl.test") == "1." + "0." * 23 + "8.b.d.0.1.0.0.2.bl.test"


# -- every record type -----------------------------------------------------------------------

def test_record_types(reactor, server):
    res = resolver(reactor, server)

    async def main():
        return (await res.a("a.test"), await res.aaaa("a6.test"), await res.mx("mail.test"),
                await res.txt("text.test"), await res.a("alias.test"), await res.ptr("192.0.2.1"),
                await res.ptr("2001:db8::1"), await res.query("alias.test", "A"))

    a, aaaa, mx, txt, alias, ptr, ptr6, alias_answer = run(reactor, main)
    assert sorted(a) == ["192.0.2.1", "192.0.2.2"]
    assert aaaa == ["2001:db8::1"]
    assert mx == [(10, "mx1.test"), (20, "mx2.test")]
    assert txt == ["hello world"]
    assert sorted(alias) == sorted(a)
    assert [rrset.rdtype.name for rrset in alias_answer.rrsets] == ["CNAME", "A"]
    assert ptr == ["host.test"] and ptr6 == ["host6.test"]


def test_nxdomain_nodata_servfail(reactor, server):
    res = resolver(reactor, server)

    async def main():
        nx = await res.query("missing.test", "A")
        nodata = await res.a("text.test")
        nx_list = await res.a("missing.test")
        try:
            await res.a("broken.test")
        except DNSTemporaryFailure as exc:
            servfail = exc
        return nx, nodata, nx_list, servfail

    nx, nodata, nx_list, servfail = run(reactor, main)
    assert nx.rcode == "NXDOMAIN" and nx.rdata == [] and nx.ttl == 60
    assert nodata == [] and nx_list == []
    assert servfail.rcode == "SERVFAIL"


def test_timeout_is_bounded(reactor, server):
    res = resolver(reactor, server, timeout=0.4)

    async def main():
        started = time.monotonic()
        answer = await res.query("slow.test", "A")
        elapsed = time.monotonic() - started
        try:
            await res.a("slow.test")
        except DNSTemporaryFailure as exc:
            return answer, elapsed, exc

    answer, elapsed, exc = run(reactor, main)
    assert answer.rcode == "TIMEOUT" and exc.rcode == "TIMEOUT"
    assert 0.35 < elapsed < 1.0


def test_dead_nameserver_costs_half_the_timeout(reactor, server):
    sock, dead_port = silent_udp_port()
    try:
        res = Resolver([("127.0.0.1", dead_port), ("127.0.0.1", server.port)], timeout=1.0, reactor=reactor)

        async def main():
            started = time.monotonic()
            first = await res.a("a.test")
            first_time = time.monotonic() - started
            started = time.monotonic()
            second = await res.a("mail.test")  # the dead server is now asked last
            return first, first_time, second, time.monotonic() - started

        first, first_time, second, second_time = run(reactor, main)
    finally:
        sock.close()
    assert sorted(first) == ["192.0.2.1", "192.0.2.2"] and second == []
    assert 0.45 < first_time < 0.9
    assert second_time < 0.3


def test_only_dead_nameservers_time_out(reactor):
    sock, dead_port = silent_udp_port()
    try:
        res = Resolver([("127.0.0.1", dead_port)], timeout=0.3, reactor=reactor)

        async def main():
            return await res.query("a.test")

        assert run(reactor, main).rcode == "TIMEOUT"
    finally:
        sock.close()


def test_truncated_answer_is_asked_again_over_tcp(reactor, server):
    res = resolver(reactor, server)

    async def main():
        return await res.txt("big.test")

    assert run(reactor, main) == ["a big answer"]
    assert server.count("big.test", "TXT") == 2  # UDP, then TCP


# -- caching -----------------------------------------------------------------------------------

def test_cache_hits_and_ttl_expiry(reactor, server):
    now = [1000.0]
    res = resolver(reactor, server, now=lambda: now[0])

    async def main():
        await res.a("a.test")
        cached = await res.query("a.test", "A")
        await res.a("missing.test")
        await res.a("missing.test")
        with pytest.raises(DNSTemporaryFailure):
            await res.a("broken.test")
        with pytest.raises(DNSTemporaryFailure):
            await res.a("broken.test")
        await res.a("short.test")
        now[0] += 1
        await res.a("short.test")
        now[0] += 1.5
        await res.a("short.test")  # TTL 2 expired
        now[0] += 59
        await res.a("missing.test")  # negative TTL 60 expired
        now[0] += 300
        await res.a("a.test")
        return cached

    cached = run(reactor, main)
    assert cached.from_cache and cached.ttl == 300
    assert server.count("a.test", "A") == 2
    assert server.count("short.test", "A") == 2
    assert server.count("missing.test", "A") == 2
    assert server.count("broken.test", "A") == 2  # failures are never cached


def test_concurrent_queries_run_in_parallel(reactor, server):
    res = resolver(reactor, server, timeout=5)

    async def main():
        started = time.monotonic()
        results = await defer.gatherResults([res.query("slow.test", "A"), res.query("slow.test", "A"),
                                             res.query("a.test", "A"), res.query("mail.test", "MX"),
                                             res.query("missing.test", "TXT")])
        return results, time.monotonic() - started

    results, elapsed = run(reactor, main)
    assert [r.rcode for r in results] == ["NOERROR", "NOERROR", "NOERROR", "NOERROR", "NXDOMAIN"]
    assert elapsed < 2.5  # one slow answer (1.5 s), not a queue of them
    assert server.count("slow.test", "A") == 1  # identical questions in flight share one query


def test_spoofed_answers_are_ignored(reactor, server):
    """An answer from another address or to another question does not end a query."""
    import dns.message

    res = resolver(reactor, server, timeout=0.5)

    async def main():
        d = res.query("slow.test", "A")
        query = next(iter(res._pending.values()))
        forged = dns.message.make_response(query.message)
        res._datagram(forged.to_wire(), ("127.0.0.2", server.port))  # wrong source
        other = dns.message.make_query("a.test.", "A")
        other.id = query.qid
        res._datagram(dns.message.make_response(other).to_wire(), ("127.0.0.1", server.port))  # wrong question
        return await d

    assert run(reactor, main).rcode == "TIMEOUT"
