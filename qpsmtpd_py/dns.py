"""One asynchronous DNS resolver per child process.

Plugins never block the reactor on DNS. Queries are built and parsed with
dnspython's wire format (`dns.message`) and sent over a Twisted UDP port, so
the child keeps its epoll reactor (no asyncio loop underneath).

API
---

    from qpsmtpd_py.dns import resolver_for, DNSTemporaryFailure

    resolver = resolver_for(self.qp)          # the child's shared resolver
    answer = await resolver.query("2.0.0.127.zen.example", "TXT", timeout=5)
    answer.rcode      # "NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "TIMEOUT", ...
    answer.rdata      # dnspython rdata objects of the asked type (CNAMEs followed)
    answer.ttl        # seconds the answer may be cached
    answer.from_cache

    await resolver.a(name)      # ["192.0.2.1", ...]
    await resolver.aaaa(name)   # ["2001:db8::1", ...]
    await resolver.txt(name)    # ["text of one record", ...] (strings of a record joined)
    await resolver.mx(name)     # [(preference, "exchange.example"), ...] sorted by preference
    await resolver.ptr(ip)      # ["host.example", ...] (IPv4 or IPv6 address)

`query()` returns a Deferred that always fires with an `Answer` (a timeout is
the rcode "TIMEOUT"), never with a failure. The helpers return Deferreds of
lists: empty for NXDOMAIN and NODATA, a `DNSTemporaryFailure` failure for
SERVFAIL, REFUSED, a timeout or a malformed answer. Names are given without
the trailing dot, or with it; they are never searched in a domain list.

Behaviour
---------

* Nameservers: `config/dns_servers`, one per line, `ip`, `ip:port`,
  `[ipv6]:port` or a bare IPv6 address; without that file, the `nameserver`
  lines of /etc/resolv.conf (none there: 127.0.0.1, as the C library does).
* Timeout: each query has a budget (`timeout`, per resolver or per call). It
  goes to the first nameserver; without an answer after half the budget the
  same question goes to the next nameserver (the first still may answer); at
  the end of the budget the answer is TIMEOUT. So a dead nameserver costs at
  most the budget, never a multiple of it. A nameserver that timed out is
  asked last until it answers again. SERVFAIL or REFUSED from one nameserver
  sends the question to the next at once.
* Answers are matched by query id, question and the nameserver they came
  from; anything else is dropped (spoofing, late answers).
* A truncated UDP answer (TC bit) is asked again over TCP to the same server,
  within what is left of the budget.
* Concurrent queries run in parallel; identical questions in flight share one
  query.
* Cache, shared by every session of the child: positive answers for their
  smallest TTL (at most `max_ttl`, 1 day); NXDOMAIN and NODATA for the
  authority SOA's negative TTL (min of its TTL and MINIMUM, RFC 2308, at most
  `max_negative_ttl`, 1 hour; not cached without an SOA); failures never. At
  most `cache_size` entries (oldest dropped first).

The resolver touches the reactor only when it sends its first query, so
`resolver_for(qp)` is safe to call in any hook; it creates the resolver
lazily in the process that calls it (a child), never sharing one across fork.
"""

from __future__ import annotations

import ipaddress
import os
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
from twisted.internet import defer, protocol

DEFAULT_TIMEOUT = 5.0
DEFAULT_PORT = 53
MAX_TTL = 86400
MAX_NEGATIVE_TTL = 3600
CACHE_SIZE = 10000
RESOLV_CONF = "/etc/resolv.conf"
TEMPORARY = ("SERVFAIL", "REFUSED", "TIMEOUT", "FORMERR", "NOTIMP", "BADANSWER")


class DNSTemporaryFailure(Exception):
    """SERVFAIL, timeout, ...: the answer is unknown now; try again later."""

    def __init__(self, name: str, rdtype: str, rcode: str) -> None:
        super().__init__(f"{name}/{rdtype}: {rcode}")
        self.name, self.rdtype, self.rcode = name, rdtype, rcode


@dataclass
class Answer:
    name: str
    rdtype: str
    rcode: str
    rrsets: list = field(default_factory=list)  # the answer section (dnspython RRsets)
    ttl: float = 0.0
    from_cache: bool = False

    @property
    def rdata(self) -> list:
        """The records of the asked type (after any CNAME chain)."""
        wanted = dns.rdatatype.from_text(self.rdtype)
        return [rd for rrset in self.rrsets if rrset.rdtype == wanted for rd in rrset]

    @property
    def temporary(self) -> bool:
        return self.rcode in TEMPORARY


# -- nameserver configuration ------------------------------------------------------------

def parse_nameserver(text: str) -> tuple[str, int]:
    """`192.0.2.1`, `192.0.2.1:5353`, `[2001:db8::1]:53`, `2001:db8::1` -> (ip, port); ValueError."""
    text = text.strip()
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed [ in nameserver {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"bad port in nameserver {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if not port_text.isdigit():
            raise ValueError(f"bad port in nameserver {text!r}")
        port = int(port_text)
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in nameserver {text!r}")
    return str(address), port


def system_nameservers(path: str = RESOLV_CONF) -> list[tuple[str, int]]:
    servers = []
    try:
        with open(path) as handle:
            for line in handle:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    try:
                        servers.append(parse_nameserver(words[1].split("%", 1)[0]))
                    except ValueError:
                        continue
    except OSError:
        pass
    return servers or [("127.0.0.1", DEFAULT_PORT)]


def configured_nameservers(lines: Iterable[str]) -> list[tuple[str, int]]:
    """config/dns_servers lines -> nameservers (bad lines raise ValueError naming them)."""
    return [parse_nameserver(line) for line in lines if line.strip()]


def reverse_name(ip: str, zone: str | None = None) -> str:
    """`192.0.2.1` -> `1.2.0.192`; IPv6 nibble-reversed; with `zone`, `<reversed>.<zone>`."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.version == 4:
        reversed_ip = ".".join(reversed(str(address).split(".")))
    else:
        reversed_ip = ".".join(reversed(address.exploded.replace(":", "")))
    return f"{reversed_ip}.{zone.strip('.')}" if zone else reversed_ip


# -- transports --------------------------------------------------------------------------

class _UDPProtocol(protocol.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802 (Twisted's name)
        self.resolver._datagram(data, (str(ipaddress.ip_address(addr[0].split("%", 1)[0])), addr[1]))


class _TCPQuery(protocol.Protocol):
    """One query over TCP: send the length-prefixed message, read one answer."""

    def __init__(self, wire: bytes, done: defer.Deferred) -> None:
        self.wire, self.done, self.buffer = wire, done, b""

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(struct.pack("!H", len(self.wire)) + self.wire)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        if len(self.buffer) >= 2:
            (length,) = struct.unpack("!H", self.buffer[:2])
            if len(self.buffer) >= 2 + length and not self.done.called:
                self.done.callback(self.buffer[2:2 + length])
                self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if not self.done.called:
            self.done.errback(ConnectionError("TCP connection closed before an answer"))


class _TCPFactory(protocol.ClientFactory):
    def __init__(self, wire: bytes, done: defer.Deferred) -> None:
        self.wire, self.done = wire, done

    def buildProtocol(self, addr: Any) -> protocol.Protocol:  # noqa: N802
        proto = _TCPQuery(self.wire, self.done)
        proto.factory = self
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:  # noqa: N802
        if not self.done.called:
            self.done.errback(reason)


# -- the resolver --------------------------------------------------------------------------

class _Query:
    """One question in flight: who waits for it, where it was sent, its timers."""

    def __init__(self, key: tuple[str, str], qid: int, message: dns.message.Message, timeout: float) -> None:
        self.key = key
        self.qid = qid
        self.message = message
        self.wire = message.to_wire()
        self.timeout = timeout
        self.waiters: list[defer.Deferred] = []
        self.sent_to: list[tuple[str, int]] = []
        self.timers: list[Any] = []
        self.started = 0.0
        self.done = False


class Resolver:
    def __init__(self, nameservers: Iterable[tuple[str, int] | str], timeout: float = DEFAULT_TIMEOUT,
                 reactor: Any = None, now: Callable[[], float] | None = None, cache_size: int = CACHE_SIZE,
                 max_ttl: float = MAX_TTL, max_negative_ttl: float = MAX_NEGATIVE_TTL) -> None:
        self.nameservers = [parse_nameserver(ns) if isinstance(ns, str) else (str(ns[0]), int(ns[1]))
                            for ns in nameservers]
        if not self.nameservers:
            raise ValueError("a resolver needs at least one nameserver")
        self.timeout = float(timeout)
        self._reactor = reactor
        self._now = now
        self.cache_size = cache_size
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self.cache: dict[tuple[str, str], tuple[float, Answer]] = {}
        self.pid = os.getpid()
        self._ports: dict[int, Any] = {}  # address family version -> listening UDP port
        self._pending: dict[int, _Query] = {}
        self._inflight: dict[tuple[str, str], _Query] = {}
        self._slow: set[tuple[str, int]] = set()  # timed out lately: asked last
        self.queries_sent = 0

    # -- time and I/O ----------------------------------------------------------------------
    @property
    def reactor(self) -> Any:
        """The given reactor (tests), else the process's, looked up on first use."""
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def now(self) -> float:
        """The cache's clock: `now` if given (tests), else the reactor's."""
        return self._now() if self._now is not None else self.reactor.seconds()

    # -- the public API ------------------------------------------------------------------
    def query(self, name: str, rdtype: str | int = "A", timeout: float | None = None) -> defer.Deferred:
        """Deferred[Answer] for `name`/`rdtype`; never fails (a timeout is rcode TIMEOUT)."""
        rdtype_text = dns.rdatatype.to_text(dns.rdatatype.from_text(rdtype) if isinstance(rdtype, str)
                                            else dns.rdatatype.RdataType.make(rdtype))
        qname = name.rstrip(".").lower() + "."
        key = (qname, rdtype_text)
        cached = self.cache.get(key)
        if cached is not None:
            expires, answer = cached
            if self.now() < expires:
                return defer.succeed(_copy(answer, from_cache=True, ttl=expires - self.now()))
            del self.cache[key]
        waiter: defer.Deferred = defer.Deferred(lambda d: self._forget_waiter(key, d))
        running = self._inflight.get(key)
        if running is not None:
            running.waiters.append(waiter)
            return waiter
        try:
            message = dns.message.make_query(qname, rdtype_text, use_edns=0, payload=1232)
        except (dns.exception.DNSException, ValueError):
            return defer.succeed(Answer(qname, rdtype_text, "FORMERR"))
        message.id = self._new_id()
        query = _Query(key, message.id, message, self.timeout if timeout is None else float(timeout))
        query.waiters.append(waiter)
        self._inflight[key] = query
        self._pending[query.qid] = query
        query.started = self.reactor.seconds()
        query.timers.append(self.reactor.callLater(query.timeout, self._finish, query,
                                                 Answer(qname, rdtype_text, "TIMEOUT")))
        if len(self.nameservers) > 1:
            query.timers.append(self.reactor.callLater(query.timeout / 2, self._retry, query))
        self._send(query, self._order()[0])
        return waiter

    def a(self, name: str, timeout: float | None = None) -> defer.Deferred:
        return self._records(name, "A", lambda rd: rd.address, timeout)

    def aaaa(self, name: str, timeout: float | None = None) -> defer.Deferred:
        return self._records(name, "AAAA", lambda rd: rd.address, timeout)

    def txt(self, name: str, timeout: float | None = None) -> defer.Deferred:
        return self._records(name, "TXT", lambda rd: b"".join(rd.strings).decode("utf-8", "replace"), timeout)

    def mx(self, name: str, timeout: float | None = None) -> defer.Deferred:
        d = self._records(name, "MX", lambda rd: (rd.preference, rd.exchange.to_text(omit_final_dot=True)),
                          timeout)
        return d.addCallback(sorted)

    def ptr(self, ip: str, timeout: float | None = None) -> defer.Deferred:
        name = dns.reversename.from_address(ip.split("%", 1)[0]).to_text()
        return self._records(name, "PTR", lambda rd: rd.target.to_text(omit_final_dot=True), timeout)

    def close(self) -> None:
        """Stop listening (tests; a child simply exits)."""
        for query in list(self._pending.values()):
            self._finish(query, Answer(query.key[0], query.key[1], "TIMEOUT"))
        for port in self._ports.values():
            port.stopListening()
        self._ports.clear()

    # -- internals -----------------------------------------------------------------------
    def _records(self, name: str, rdtype: str, convert: Callable[[Any], Any],
                 timeout: float | None) -> defer.Deferred:
        def extract(answer: Answer) -> list:
            if answer.rcode in ("NOERROR", "NXDOMAIN"):
                return [convert(rd) for rd in answer.rdata]
            raise DNSTemporaryFailure(name, rdtype, answer.rcode)

        return self.query(name, rdtype, timeout).addCallback(extract)

    def _new_id(self) -> int:
        while True:
            qid = random.randrange(0, 65536)
            if qid not in self._pending:
                return qid

    def _order(self) -> list[tuple[str, int]]:
        fast = [ns for ns in self.nameservers if ns not in self._slow]
        return fast + [ns for ns in self.nameservers if ns in self._slow]

    def _port_for(self, host: str) -> Any:
        version = ipaddress.ip_address(host).version
        port = self._ports.get(version)
        if port is None:
            interface = "::" if version == 6 else "0.0.0.0"
            port = self.reactor.listenUDP(0, _UDPProtocol(self), interface=interface)
            self._ports[version] = port
        return port

    def _send(self, query: _Query, server: tuple[str, int]) -> None:
        if query.done:
            return
        query.sent_to.append(server)
        self.queries_sent += 1
        try:
            self._port_for(server[0]).write(query.wire, server)
        except OSError:
            self._next_server(query)

    def _next_server(self, query: _Query) -> bool:
        """Ask a nameserver not asked yet; False when all were asked."""
        for server in self._order():
            if server not in query.sent_to:
                self._send(query, server)
                return True
        return False

    def _retry(self, query: _Query) -> None:
        if query.done:
            return
        self._slow.update(query.sent_to)
        self._next_server(query)

    def _datagram(self, data: bytes, source: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        (qid,) = struct.unpack("!H", data[:2])
        query = self._pending.get(qid)
        if query is None or source not in query.sent_to:
            return
        try:
            response = dns.message.from_wire(data, ignore_trailing=True, raise_on_truncation=False)
        except dns.exception.DNSException:
            return  # garbage: wait for a real answer or the timeout
        if not query.message.is_response(response):
            return
        self._slow.discard(source)
        if response.flags & dns.flags.TC:
            self._tcp(query, source)
            return
        self._answered(query, response)

    def _answered(self, query: _Query, response: dns.message.Message) -> None:
        rcode = dns.rcode.to_text(response.rcode())
        if rcode in ("SERVFAIL", "REFUSED", "NOTIMP", "FORMERR") and self._next_server(query):
            return
        self._finish(query, self._to_answer(query, response, rcode))

    def _tcp(self, query: _Query, server: tuple[str, int]) -> None:
        if getattr(query, "tcp", False):
            return
        query.tcp = True  # type: ignore[attr-defined]
        done: defer.Deferred = defer.Deferred()
        remaining = max(0.1, query.started + query.timeout - self.reactor.seconds())
        self.reactor.connectTCP(server[0], server[1], _TCPFactory(query.wire, done), timeout=remaining)

        def got(data: bytes) -> None:
            if query.done:
                return
            try:
                response = dns.message.from_wire(data, ignore_trailing=True)
            except dns.exception.DNSException:
                self._finish(query, Answer(query.key[0], query.key[1], "BADANSWER"))
                return
            if query.message.is_response(response):
                self._answered(query, response)

        def failed(reason: Any) -> None:
            if not query.done:
                self._finish(query, Answer(query.key[0], query.key[1], "SERVFAIL"))

        done.addCallbacks(got, failed)

    def _to_answer(self, query: _Query, response: dns.message.Message, rcode: str) -> Answer:
        qname, rdtype = query.key
        answer = Answer(qname, rdtype, rcode, list(response.answer))
        if rcode == "NOERROR" and answer.rdata:
            answer.ttl = min(min(rrset.ttl for rrset in response.answer), self.max_ttl)
        elif rcode in ("NOERROR", "NXDOMAIN"):
            soa = [rrset for rrset in response.authority if rrset.rdtype == dns.rdatatype.SOA]
            if soa:
                answer.ttl = min(soa[0].ttl, soa[0][0].minimum, self.max_negative_ttl)
        return answer

    def _finish(self, query: _Query, answer: Answer) -> None:
        if query.done:
            return
        query.done = True
        for timer in query.timers:
            if timer.active():
                timer.cancel()
        self._pending.pop(query.qid, None)
        if self._inflight.get(query.key) is query:
            del self._inflight[query.key]
        if answer.rcode == "TIMEOUT":
            self._slow.update(query.sent_to)
        if answer.ttl > 0 and not answer.temporary:
            self.cache[query.key] = (self.now() + answer.ttl, answer)
            while len(self.cache) > self.cache_size:
                del self.cache[next(iter(self.cache))]
        for waiter in query.waiters:
            if not waiter.called:
                waiter.callback(_copy(answer))

    def _forget_waiter(self, key: tuple[str, str], waiter: defer.Deferred) -> None:
        query = self._inflight.get(key)
        if query is not None and waiter in query.waiters:
            query.waiters.remove(waiter)  # the query goes on: its answer still fills the cache


def _copy(answer: Answer, **changes: Any) -> Answer:
    fields = dict(vars(answer))
    fields.update(changes)
    return Answer(**fields)


# -- one resolver per child ------------------------------------------------------------------

def nameservers_for(qp: Any) -> list[tuple[str, int]]:
    lines = qp.config_list("dns_servers")
    return configured_nameservers(lines) if lines else system_nameservers()


def require_nameservers(qp: Any) -> None:
    """Start-up check for DNS plugins: a bad config/dns_servers line stops start-up, not every session."""
    from .plugin import PluginError

    try:
        nameservers_for(qp)
    except ValueError as exc:
        raise PluginError(f"config/dns_servers: {exc}") from None


def resolver_for(qp: Any, timeout: float = DEFAULT_TIMEOUT) -> Resolver:
    """The calling process's resolver, shared by its sessions; made on first use."""
    resolver = getattr(qp, "_dns_resolver", None)
    if resolver is None or resolver.pid != os.getpid():
        resolver = Resolver(nameservers_for(qp), timeout)
        qp._dns_resolver = resolver
    return resolver
