"""A line-by-line client conversation over a Twisted endpoint, for plugins that log in to a server.

auth/auth_vpopmaild and auth/auth_imap talk to their servers one line at a
time: read a greeting, send a command, read the answer. `LineClient` keeps
the lines that arrived and hands them out with `read_line()`; `converse()`
connects, runs a conversation coroutine and closes the connection, all within
one deadline. A refused connection, a closed connection or a missed deadline
raise `ServerUnavailable` with a message saying which; a plugin answers that
with DENYSOFT (the client sees 454 and tries again later).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet import defer, endpoints, error
from twisted.protocols.basic import LineOnlyReceiver

MAX_LINE = 8192
T = TypeVar("T")


class ServerUnavailable(Exception):
    """The server could not be reached, closed the connection, or did not answer in time."""


class LineClient(LineOnlyReceiver):
    """Lines in (LF or CRLF ended, the CR stripped), lines out (CRLF ended)."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self) -> None:
        self.lines: deque[str] = deque()
        self.waiting: defer.Deferred[str] | None = None
        self.closed = False

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line.rstrip(b"\r").decode("utf-8", "replace"))
        self._wake()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None and not waiting.called:  # called: cancelled at the deadline
            if self.lines:
                waiting.callback(self.lines.popleft())
            else:
                waiting.errback(ServerUnavailable("the server closed the connection"))

    def read_line(self) -> defer.Deferred[str]:
        """The next line (a Deferred); fails with ServerUnavailable if the connection closes first."""
        if self.lines:
            return defer.succeed(self.lines.popleft())
        if self.closed:
            return defer.fail(ServerUnavailable("the server closed the connection"))
        self.waiting = defer.Deferred()
        return self.waiting

    def send_line(self, line: str) -> None:
        self.transport.write(line.encode("utf-8", "surrogateescape") + b"\r\n")


async def converse(reactor: Any, host: str, port: int, timeout: float,
                   conversation: Callable[[LineClient], Awaitable[T]]) -> T:
    """Connect to host:port, run `conversation(client)`, disconnect; the whole within `timeout` seconds."""

    async def whole() -> T:
        kind = endpoints.TCP6ClientEndpoint if ":" in host else endpoints.TCP4ClientEndpoint
        try:
            client = await endpoints.connectProtocol(kind(reactor, host, port, timeout=timeout), LineClient())
        except (error.ConnectError, error.DNSLookupError) as exc:
            raise ServerUnavailable(f"cannot connect to {host}:{port} ({exc.__class__.__name__})") from None
        try:
            return await conversation(client)
        finally:
            client.transport.loseConnection()

    try:
        return await defer.ensureDeferred(whole()).addTimeout(timeout, reactor)
    except defer.TimeoutError:
        raise ServerUnavailable(f"{host}:{port} did not answer within {timeout:g}s") from None
