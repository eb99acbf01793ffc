"""The Redis backend of StateStore: a small Twisted client speaking RESP.

Only what the interface needs: GET, SET with EX, INCRBY and EXPIRE inside
MULTI/EXEC (so the count and its time-to-live change together), DEL, SCAN and
MGET. Keys are `<store name>:<key>`, so greylisting and karma can share one
Redis database. One connection per store and child, opened on first use and
again after it is lost; commands are pipelined on it and answered in order.
A command not answered within `timeout` fails with StoreError and drops the
connection (the replies still on their way would answer the wrong commands).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer, endpoints, protocol
from twisted.python.failure import Failure

from ..mail_client import tcp_endpoint
from . import STORE_TIMEOUT, RedisAddress, StoreError

_SCAN_BATCH = 500


class RedisReplyError(StoreError):
    """Redis answered with an error reply (`-ERR ...`)."""


def encode_command(words: tuple[Any, ...]) -> bytes:
    """A RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(words)]
    for word in words:
        data = word if isinstance(word, bytes) else str(word).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse_reply(buffer: bytes | bytearray, start: int = 0) -> tuple[Any, int] | None:
    """One RESP reply from `buffer[start:]`: (value, end), or None while incomplete.

    An error reply comes back as a RedisReplyError value, not raised: inside an
    array (EXEC) it belongs to one command only.
    """
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        return None
    kind, text, after = buffer[start:start + 1], bytes(buffer[start + 1:line_end]), line_end + 2
    if kind == b"+":
        return text.decode(), after
    if kind == b"-":
        return RedisReplyError(f"redis: {text.decode(errors='replace')}"), after
    if kind == b":":
        return int(text), after
    if kind == b"$":
        length = int(text)
        if length < 0:
            return None, after
        if len(buffer) < after + length + 2:
            return None
        return bytes(buffer[after:after + length]).decode(errors="surrogateescape"), after + length + 2
    if kind == b"*":
        count = int(text)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            parsed = parse_reply(buffer, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after
    raise StoreError(f"redis: not a RESP reply: {bytes(buffer[start:line_end])[:60]!r}")


class RESPClient(protocol.Protocol):
    """Commands out, replies back to each command's Deferred in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiting: deque[defer.Deferred] = deque()
        self.lost = False

    def request(self, *words: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if self.lost:
            d.errback(StoreError("redis: connection lost"))
            return d
        self._waiting.append(d)
        self.transport.write(encode_command(words))
        return d

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        start = 0
        while True:
            try:
                parsed = parse_reply(self._buffer, start)
            except (StoreError, ValueError) as exc:
                self.transport.abortConnection()
                self._fail_all(StoreError(f"redis: bad reply ({exc})"))
                return
            if parsed is None:
                break
            value, start = parsed
            if not self._waiting:
                continue  # an answer to a command that already timed out: the connection is being dropped
            d = self._waiting.popleft()
            if not d.called:
                d.errback(value) if isinstance(value, RedisReplyError) else d.callback(value)
        del self._buffer[:start]

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = True
        self._fail_all(StoreError(f"redis: connection lost ({reason.getErrorMessage()})"))

    def _fail_all(self, error: StoreError) -> None:
        while self._waiting:
            d = self._waiting.popleft()
            if not d.called:
                d.errback(error)


class RedisStore:
    """StateStore on a Redis server; every method returns a Deferred (see qpsmtpd_py.state)."""

    def __init__(self, name: str, address: RedisAddress, reactor: Any, timeout: float = STORE_TIMEOUT) -> None:
        self.name = name
        self.address = address
        self.description = f"{address} (keys {name}:*)"
        self.reactor = reactor
        self.timeout = timeout
        self._client: RESPClient | None = None
        self._waiters: list[defer.Deferred] | None = None

    # -- the interface ------------------------------------------------------------------
    def get(self, key: str) -> defer.Deferred[str | None]:
        return self._command("GET", self._key(key))

    def set(self, key: str, value: str, ttl: float | None = None) -> defer.Deferred[None]:
        words = ("SET", self._key(key), value) + (() if ttl is None else ("EX", _seconds(ttl)))
        return self._command(*words).addCallback(lambda _: None)

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> defer.Deferred[int]:
        if ttl is None:
            return self._command("INCRBY", self._key(key), amount)
        return self._transaction(("INCRBY", self._key(key), amount),
                                 ("EXPIRE", self._key(key), _seconds(ttl))).addCallback(lambda replies: replies[0])

    def delete(self, key: str) -> defer.Deferred[int]:
        return self._command("DEL", self._key(key))

    def scan(self, prefix: str = "") -> defer.Deferred[dict[str, str]]:
        return defer.ensureDeferred(self._scan(prefix))

    def close(self) -> defer.Deferred[None]:
        client, self._client = self._client, None
        if client is not None and not client.lost:
            client.transport.loseConnection()
        return defer.succeed(None)

    # -- plumbing -------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return f"{self.name}:{key}"

    def _command(self, *words: Any) -> defer.Deferred:
        return defer.ensureDeferred(self._send([words])).addCallback(lambda replies: replies[0])

    def _transaction(self, *commands: tuple[Any, ...]) -> defer.Deferred:
        """MULTI, the commands, EXEC: the EXEC reply (one value per command)."""
        async def run() -> list:
            replies = await self._send([("MULTI",), *commands, ("EXEC",)])
            results = replies[-1]
            if results is None:
                raise StoreError("redis: transaction aborted")
            for result in results:
                if isinstance(result, RedisReplyError):
                    raise result
            return results
        return defer.ensureDeferred(run())

    async def _send(self, commands: list[tuple[Any, ...]]) -> list:
        client = await self._connected()
        pending = [client.request(*words) for words in commands]
        timed_out = []

        def give_up() -> None:
            timed_out.append(True)
            client.transport.abortConnection()  # fails every pending command

        timer = self.reactor.callLater(self.timeout, give_up)
        try:
            return await defer.gatherResults(pending, consumeErrors=True)
        except defer.FirstError as error:
            if timed_out:
                raise StoreError(f"redis at {self.address} did not answer within {self.timeout:g}s") from None
            raise error.subFailure.value from None
        finally:
            if timer.active():
                timer.cancel()

    async def _connected(self) -> RESPClient:
        if self._client is not None and not self._client.lost:
            return self._client
        waiter: defer.Deferred = defer.Deferred()
        if self._waiters is None:  # the first caller connects; the others wait for that attempt
            self._waiters = [waiter]
            defer.ensureDeferred(self._connect()).addBoth(self._connect_done)
        else:
            self._waiters.append(waiter)
        return await waiter

    def _connect_done(self, result: RESPClient | Failure) -> None:
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            waiter.errback(result) if isinstance(result, Failure) else waiter.callback(result)

    async def _connect(self) -> RESPClient:
        endpoint = tcp_endpoint(self.reactor, self.address.host, self.address.port, self.timeout)
        try:
            client = await endpoints.connectProtocol(endpoint, RESPClient()).addTimeout(self.timeout, self.reactor)
        except Exception as exc:  # refused, unreachable, timed out: all mean "no store now"
            raise StoreError(f"cannot connect to redis at {self.address}: {exc}") from None
        if self.address.db:
            selected = client.request("SELECT", self.address.db)
            selected.addTimeout(self.timeout, self.reactor)
            try:
                await selected
            except Exception as exc:
                client.transport.abortConnection()
                raise StoreError(f"redis at {self.address}: SELECT {self.address.db} failed: {exc}") from None
        self._client = client
        return client

    async def _scan(self, prefix: str) -> dict[str, str]:
        pattern = _glob_escape(self._key(prefix)) + "*"
        strip = len(self.name) + 1
        found: dict[str, str] = {}
        cursor = "0"
        while True:
            (cursor, keys), = await self._send([("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_BATCH)])
            if keys:
                (values,) = await self._send([("MGET", *keys)])
                found.update((key[strip:], value) for key, value in zip(keys, values, strict=True)
                             if value is not None)
            if cursor == "0":
                return found


def _seconds(ttl: float) -> int:
    """Redis EX takes whole seconds, at least 1."""
    return max(1, int(ttl + 0.999))


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
