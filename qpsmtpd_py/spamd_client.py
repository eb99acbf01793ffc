"""The client side of spamd's protocol (SpamAssassin's daemon), for the spamassassin plugin.

One request per connection, as spamc sends it (spamd's protocol, SPAMC/1.x):

    HEADERS SPAMC/1.4            CHECK, SYMBOLS, REPORT, HEADERS or PROCESS
    Content-length: <bytes>
    User: <name>
    <blank line>
    <the message>

and spamd answers `SPAMD/1.1 0 EX_OK`, response headers (`Content-length`,
`Spam: True ; 6.3 / 5.0`), a blank line, then for HEADERS the message's
header as SpamAssassin rewrote it (with its X-Spam-* fields), and closes.
Any other status (`SPAMD/1.0 76 Bad header line`, `EX_UNAVAILABLE`...) is
an error.

The message is streamed as the socket takes it (a pull producer reading
chunks: the body from the spool, never whole in memory), over TCP or a unix
socket. No reactor is imported here: the plugin hands its reactor in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from twisted.internet import defer, endpoints, protocol

from .header import MessageHeader
from .mail_client import connect_error, is_host_name, split_host_port, tcp_endpoint
from .plugin import PluginError

SPAMD_PORT = 783
RESPONSE_LIMIT = 1 << 20  # a HEADERS answer is a message header: far smaller than this
_STATUS_LINE = re.compile(rb"^SPAMD/(\d+\.\d+) +(\d+) *(.*)$")
_SPAM_LINE = re.compile(r"^(True|False|Yes|No)\s*;\s*(-?[\d.]+)\s*/\s*(-?[\d.]+)", re.IGNORECASE)


class SpamdError(Exception):
    """spamd could not be reached, refused the request, or answered something else."""


def parse_address(text: str) -> tuple[str, ...]:
    """`/path/to/socket` -> ("unix", path); `host[:port]` -> ("tcp", host, port); PluginError."""
    if "/" in text:
        if not text.startswith("/"):
            raise PluginError(f"spamd_socket {text!r}: a unix socket must be an absolute path")
        return ("unix", text)
    host, port = split_host_port(text, SPAMD_PORT, "spamd_socket")
    if not host or not is_host_name(host):
        raise PluginError(f"bad spamd_socket {text!r}: host:port or the absolute path of a unix socket")
    return ("tcp", host, port)


def describe(address: tuple[str, ...]) -> str:
    return address[1] if address[0] == "unix" else f"{address[1]}:{address[2]}"


class SpamdResponse:
    """spamd's answer: status, response headers (lower-case names) and the rest (the body)."""

    def __init__(self, code: int, message: str, headers: dict[str, str], body: bytes) -> None:
        self.code = code
        self.message = message
        self.headers = headers
        self.body = body

    def spam_line(self) -> tuple[bool, float, float] | None:
        """The `Spam:` response header as (is spam, score, threshold)."""
        match = _SPAM_LINE.match(self.headers.get("spam", ""))
        if match is None:
            return None
        return match.group(1).lower() in ("true", "yes"), float(match.group(2)), float(match.group(3))

    def spam_fields(self) -> list[tuple[str, str]]:
        """The X-Spam-* fields of the header spamd sent back, in order, folding kept."""
        header = MessageHeader.parse(self.body.replace(b"\r\n", b"\n"))
        return [(field.name, field.value) for field in header if field.name.lower().startswith("x-spam-")]


def parse_response(data: bytes, closed: bool) -> SpamdResponse | None:
    """The response in `data`, or None while it is incomplete; raises SpamdError.

    `closed`: the connection is closed, so whatever came is all there is.
    """
    end = data.find(b"\n")
    if end < 0:
        if closed:
            raise SpamdError(f"spamd closed the connection without an answer{_quote(data)}")
        return None
    match = _STATUS_LINE.match(data[:end].rstrip(b"\r"))
    if match is None:
        raise SpamdError(f"not a spamd answer: {_quote(data[:end])}")
    code, message = int(match.group(2)), match.group(3).decode("utf-8", "replace").strip()
    if code != 0:
        raise SpamdError(f"spamd said: {code} {message}")
    separator = re.compile(rb"\r?\n\r?\n").search(data, end)
    if separator is None:
        if closed:
            raise SpamdError("spamd closed the connection in the middle of its answer")
        return None
    headers = {}
    for line in data[end + 1:separator.start()].split(b"\n"):
        name, _, value = line.decode("utf-8", "replace").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = data[separator.end():]
    length = headers.get("content-length", "")
    if length.isdigit() and len(body) >= int(length):
        return SpamdResponse(code, message, headers, body[:int(length)])
    if not closed:
        return None
    if length.isdigit():
        raise SpamdError("spamd closed the connection in the middle of its answer")
    return SpamdResponse(code, message, headers, body)


def _quote(data: bytes) -> str:
    return f" {data[:80]!r}" if data else ""


class SpamdRequest(protocol.Protocol):
    """One request on its own connection; `answer` fires with a SpamdResponse or SpamdError.

    Cancelling `answer` (the plugin's time-out) aborts the connection.
    """

    def __init__(self, head: bytes, chunks: Iterator[bytes]) -> None:
        self.head = head
        self.chunks: Iterator[bytes] | None = chunks
        self.received = bytearray()
        self.answer: defer.Deferred[SpamdResponse] = defer.Deferred(lambda _: self._abort())

    def connectionMade(self) -> None:
        self.transport.write(self.head)
        self.transport.registerProducer(self, False)

    # -- pull producer: one chunk each time the socket can take more ----------------------
    def resumeProducing(self) -> None:
        chunk = next(self.chunks, None) if self.chunks is not None else None
        if chunk is None:
            self.transport.unregisterProducer()
            self._close_chunks()
            return
        self.transport.write(chunk)

    def stopProducing(self) -> None:
        self._close_chunks()

    def _close_chunks(self) -> None:
        chunks, self.chunks = self.chunks, None
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # a generator closes the spool file it reads

    # -- the answer -----------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) > RESPONSE_LIMIT:
            self._finish(SpamdError("spamd's answer is too long"))
            self._abort()
            return
        self._parse(closed=False)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self._close_chunks()
        self._parse(closed=True)

    def _parse(self, closed: bool) -> None:
        if self.answer.called:
            return
        try:
            response = parse_response(bytes(self.received), closed)
        except SpamdError as exc:
            self._finish(exc)
            if not closed:
                self.transport.loseConnection()
            return
        if response is not None:
            self._finish(response)
            if not closed:
                self.transport.loseConnection()

    def _finish(self, result: SpamdResponse | SpamdError) -> None:
        if self.answer.called:
            return
        if isinstance(result, SpamdError):
            self.answer.errback(result)
        else:
            self.answer.callback(result)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()


async def spamd_request(reactor, address: tuple[str, ...], command: str, user: str, length: int,
                        chunks: Iterator[bytes], timeout: float) -> SpamdResponse:
    """Send `command` for a message of `length` bytes (given in `chunks`); spamd's response.

    Raises SpamdError when spamd cannot be reached or answers an error;
    `timeout` bounds connecting only (the caller bounds the whole request).
    """
    if address[0] == "unix":
        endpoint = endpoints.UNIXClientEndpoint(reactor, address[1], timeout=timeout)
    else:
        endpoint = tcp_endpoint(reactor, address[1], address[2], timeout)
    head = f"{command} SPAMC/1.4\r\nContent-length: {length}\r\nUser: {user}\r\n\r\n"
    request = SpamdRequest(head.encode("utf-8", "surrogateescape"), chunks)
    try:
        await endpoints.connectProtocol(endpoint, request)
    except defer.CancelledError:  # the caller's time-out
        raise
    except Exception as exc:  # Twisted's ConnectError family, DNS errors
        if hasattr(chunks, "close"):
            chunks.close()
        raise SpamdError(f"cannot connect to spamd at {describe(address)}: {connect_error(exc)}") from None
    return await request.answer

