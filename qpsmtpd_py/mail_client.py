"""The client side of SMTP and LMTP, shared by the queue plugins that talk to a mail server.

Used by queue/smtp-forward (SMTP to the next hop, which adds STARTTLS and
XCLIENT on top of `ReplyClient`) and queue/lmtp (LMTP to a local delivery
agent). Both speak the same reply syntax (RFC 5321 4.2: `NNN-text` lines
continued by `NNN text`), send the message CRLF and dot-stuffed with flow
control, and connect with the same timeouts; what is here is that common part:
- the argument helpers: `host:port` items, ports, timeouts;
- `Reply` and `ReplyClient`: a protocol whose commands return a Deferred of
  their reply, in order, with PIPELINING, flow control and a QUIT that does
  not wait;
- `connect`, `tcp_endpoint`: connecting with a timeout, and what a failure is
  called in a reply;
- `send_message`: the header and body of a transaction, dot-stuffed.

No reactor is imported at module level: plugin modules are loaded in the
master before a child installs its reactor; what needs one is given it.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import deque

from twisted.internet import defer, error, protocol

from qpsmtpd_py.plugin import PluginError

REPLY_LINE = re.compile(rb"^([2-5]\d\d)([ -]?)(.*)$", re.S)
MAX_LINE = 8192  # a reply line longer than this is a broken or hostile server
MAX_REPLY_LINES = 500
QUIT_WAIT = 5.0  # seconds a QUIT is given before the connection is cut
_HOSTNAME = re.compile(r"^[A-Za-z0-9_][-A-Za-z0-9_.]*$")

# What connecting raises when the server cannot be reached (see `connect`).
CONNECT_ERRORS = (error.ConnectError, error.DNSLookupError, defer.TimeoutError, OSError)


# -- the arguments ------------------------------------------------------------------------------

def split_host_port(item: str, default_port: int, noun: str = "host") -> tuple[str, int]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address -> (host, port).

    Raises PluginError naming the item as a `noun`; the host name itself is
    checked with `is_host_name` by the caller, whose message says what it wanted.
    """
    host, port = item, default_port
    if host.startswith("["):
        close = host.find("]")
        rest = host[close + 1:]
        if close < 0 or (rest and not rest.startswith(":")):
            raise PluginError(f"bad {noun} {item!r}: write an IPv6 address as [address] or [address]:port")
        if rest:
            port = port_number(rest[1:], item)
        host = host[1:close]
        if not is_ip(host, 6):
            raise PluginError(f"bad IPv6 address in {item!r}")
    elif host.count(":") == 1:
        host, port_text = host.split(":")
        port = port_number(port_text, item)
    elif host.count(":") > 1:
        if not is_ip(host, 6):
            raise PluginError(f"bad {noun} {item!r}")
    return host, port


def is_host_name(host: str) -> bool:
    """An IPv6 address (it has colons) or something that may be a host name or IPv4 address."""
    return ":" in host or bool(_HOSTNAME.match(host))


def port_number(text: str, item: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise PluginError(f"bad port in {item!r}")
    return int(text)


def is_ip(text: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version


def positive_seconds(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):
        raise PluginError(f"{key} must be a positive number of seconds, not {text!r}")
    return value


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- replies ------------------------------------------------------------------------------------

def shorten(text: str, limit: int = 400) -> str:
    """Keep a reply line within SMTP's 512 bytes."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def dot_stuff(chunk: bytes, at_line_start: bool) -> tuple[bytes, bool]:
    """One chunk of an LF message in wire form: CRLF, a dot doubled at line starts."""
    data = chunk.replace(b"\n.", b"\n..")
    if at_line_start and data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\n", b"\r\n"), chunk.endswith(b"\n")


class Lost(Exception):
    """The connection to the server closed."""


class Reply:
    """One whole reply: its code and the text of each of its lines."""

    __slots__ = ("code", "lines")

    def __init__(self, code, lines):
        self.code = code
        self.lines = lines

    @property
    def text(self):
        return " ".join(line.strip() for line in self.lines).strip()

    @property
    def positive(self):
        return 200 <= self.code < 400

    @property
    def permanent(self):
        return self.code >= 500

    def __str__(self):
        return f"{self.code} {self.text}".rstrip()


def extensions_of(reply: Reply) -> dict[str, str]:
    """EHLO (or LHLO) reply -> {KEYWORD: parameters}."""
    found = {}
    for line in reply.lines[1:]:
        words = line.split(None, 1)
        if words:
            found[words[0].upper()] = words[1] if len(words) > 1 else ""
    return found


# -- the client ---------------------------------------------------------------------------------

class ReplyClient(protocol.Protocol):
    """A small SMTP/LMTP client: each command returns a Deferred of its reply, in order.

    Twisted's ESMTPClient drives a whole transaction from callbacks: it cannot
    take LMTP's one reply per recipient after the data, talk XCLIENT, or send
    RCPT commands one by one while the client's session goes on. This one only
    pairs commands with replies; the plugins say what to send.
    """

    protocol_name = "SMTP"  # in the error about a line that is no reply

    def __init__(self):
        self.greeting = defer.Deferred()
        self._waiters = deque([self.greeting])
        self._buffer = bytearray()
        self._lines = []
        self._paused = False
        self._resumed = None
        self.closed = False
        self.error = None

    # -- connection -------------------------------------------------------------------------
    def connectionMade(self):
        if hasattr(self.transport.getHost(), "port"):  # TCP, not a unix socket
            self.transport.setTcpNoDelay(True)  # Nagle + delayed ACK cost ~40 ms per message
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason=protocol.connectionDone):
        self.closed = True
        failure = Lost(self.error or reason.getErrorMessage() or "connection lost")
        waiters, self._waiters = self._waiters, deque()
        for pending in [*waiters, *self._other_waiters()]:
            if pending is not None and not pending.called:
                pending.errback(failure)

    def _other_waiters(self):
        """The Deferreds besides replies that fail with the connection (taken away)."""
        resumed, self._resumed = self._resumed, None
        return [resumed]

    def abort(self):
        if not self.closed and self.transport is not None:
            self.transport.abortConnection()

    def quit(self, clock):
        """QUIT without waiting: the connection is closed at the reply or after a few seconds."""
        if self.closed:
            return
        try:
            reply = self.command("QUIT")
        except Exception:
            self.abort()
            return
        timer = clock.callLater(QUIT_WAIT, self.abort)

        def done(_):
            if timer.active():
                timer.cancel()
            if not self.closed:
                self.transport.loseConnection()

        reply.addBoth(done)

    async def greeted(self, clock, timeout: float) -> Reply:
        """The 220 greeting; Lost when it does not come in time or is something else."""
        try:
            greeting = await self.greeting.addTimeout(timeout, clock)
        except defer.TimeoutError as exc:
            raise Lost(f"no greeting within {timeout:g} s") from exc
        if greeting.code != 220:
            raise Lost(f"greeting: {greeting}")
        return greeting

    # -- flow control (IPushProducer) -------------------------------------------------------
    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        waiting, self._resumed = self._resumed, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self):
        pass

    def drained(self):
        """A Deferred that fires when the transport can take more data."""
        if not self._paused:
            return defer.succeed(None)
        if self._resumed is None:
            self._resumed = defer.Deferred()
        return self._resumed

    # -- commands ---------------------------------------------------------------------------
    def expect(self):
        """The next reply."""
        waiter = defer.Deferred()
        if self.closed:
            waiter.errback(Lost(self.error or "connection closed"))
        else:
            self._waiters.append(waiter)
        return waiter

    def command(self, line):
        return self.commands([line])[0]

    def commands(self, lines):
        """Several commands in one write (PIPELINING): a Deferred reply for each."""
        waiters = [self.expect() for _ in lines]
        self.write("".join(line + "\r\n" for line in lines).encode("utf-8", "surrogateescape"))
        return waiters

    async def pipelined(self, lines: list[str]) -> list[Reply]:
        """Several commands in one write, and all their replies (the first failure raised)."""
        results = await defer.DeferredList(self.commands(lines), consumeErrors=True)
        for ok, value in results:
            if not ok:
                value.raiseException()
        return [value for _, value in results]

    def write(self, data):
        if not self.closed:
            self.transport.write(data)

    # -- replies ----------------------------------------------------------------------------
    def dataReceived(self, data):
        self._received(data)

    def _received(self, data):
        """Clear text from the server: whole replies go to the waiting commands."""
        self._buffer += data
        while not self.closed:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    self._fail("a reply line is too long")
                return
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[:end + 1]
            match = REPLY_LINE.match(line)
            if match is None:
                self._fail(f"not an {self.protocol_name} reply: {line[:80]!r}")
                return
            self._lines.append(match.group(3).decode("utf-8", "replace"))
            if match.group(2) == b"-":
                if len(self._lines) > MAX_REPLY_LINES:
                    self._fail("a reply is too long")
                continue
            reply, self._lines = Reply(int(match.group(1)), self._lines), []
            if self._waiters:
                self._waiters.popleft().callback(reply)
            elif reply.code == 421:
                self.error = str(reply)  # closing down on its own: the next command will see it
            # any other unsolicited reply is ignored

    def _fail(self, message):
        self.error = message
        self.abort()


async def send_message(client: ReplyClient, transaction) -> None:
    """The header and body after DATA's 354, dot-stuffed, then the final dot."""
    data, at_line_start = dot_stuff(transaction.header_bytes() + b"\n", True)
    client.write(data)
    for chunk in transaction.iter_body():
        if not chunk:
            continue
        data, at_line_start = dot_stuff(chunk, at_line_start)
        client.write(data)
        await client.drained()
    client.write(b".\r\n" if at_line_start else b"\r\n.\r\n")


# -- connecting ---------------------------------------------------------------------------------

def tcp_endpoint(reactor, host: str, port: int, timeout: float):
    """A client endpoint: an IP address directly, a name through the resolver."""
    from twisted.internet import endpoints

    if is_ip(host):  # no resolver round trip through a thread
        kind = endpoints.TCP6ClientEndpoint if ":" in host else endpoints.TCP4ClientEndpoint
        return kind(reactor, host, port, timeout=timeout)
    return endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)


async def connect(endpoint, client_class: type[ReplyClient], reactor, timeout: float) -> ReplyClient:
    """A connected client (not yet greeted); raises one of CONNECT_ERRORS."""
    factory = protocol.Factory.forProtocol(client_class)
    factory.noisy = False  # no "Starting factory" line per message
    return await endpoint.connect(factory).addTimeout(timeout, reactor)


def connect_error(exc: BaseException) -> str:
    """What a failure to connect is called in the log and in the reply."""
    if isinstance(exc, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (defer.TimeoutError, error.TimeoutError)):
        return "connect timed out"
    if isinstance(exc, error.DNSLookupError):
        return f"DNS lookup failed: {exc}"
    if isinstance(exc, error.BadFileError) or "No such file" in str(exc):
        return "no such socket"  # a unix socket path that does not exist
    return str(exc) or type(exc).__name__
