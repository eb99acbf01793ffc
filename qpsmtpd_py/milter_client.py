"""The client (MTA) side of the milter protocol, version 6, as sendmail and Postfix speak it.

A milter is a filter daemon (opendkim, rspamd's proxy, MIMEDefang, ...) that an
MTA drives over TCP or a unix socket with packets: a 4-byte big-endian length,
a command byte, the data (strings are NUL-terminated). `MilterClient` pairs
each command with its reply; `Conversation` drives one message through the
stages (option negotiation, macros, connect, helo, mail, rcpt, data, header,
end of header, body chunks, end of message) and collects what the milter
answered at the end: a verdict and the changes it asks for.

Option negotiation: we offer version 6, every action (`OFFERED_ACTIONS`)
and every protocol flag; the milter answers with the subset it wants (a
milter asking for more is refused with `MilterError` before any mail data is
sent). A replaced body comes in pieces: each goes to the `new_body` callback
as it arrives, so it is never held whole either. The stages a milter turned off (`SMFIP_NO*`) are not sent, and
replies it turned off (`SMFIP_NR_*`) are not waited for.

Time-outs: each reply has `command_timeout` seconds, the replies after the
end of the message `content_timeout`; a `progress` reply restarts the wait.
Any failure (time-out, closed connection, a packet that makes no sense) is a
`MilterError` whose text says what happened.

No reactor is imported here; the caller passes one.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any, NamedTuple

from twisted.internet import defer, protocol

VERSION = 6
MAX_PACKET = 1 << 21  # replies are small, a replaced body chunk at most 1 MB: more is a broken milter
BODY_CHUNK = 65535  # MILTER_CHUNK_SIZE: the largest body packet every milter accepts

# Commands (MTA -> milter).
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"

# Replies (milter -> MTA). Final answers to a command:
SMFIR_ACCEPT = b"a"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_REJECT = b"r"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"
SMFIR_SKIP = b"s"
SMFIR_CONN_FAIL = b"f"
SMFIR_SHUTDOWN = b"4"
# ... and what may come before the final answer to the end of the message:
SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ADDRCPT_PAR = b"2"
SMFIR_REPLBODY = b"b"
SMFIR_CHGFROM = b"e"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_OPTNEG = b"O"

FINAL = {SMFIR_ACCEPT: "accept", SMFIR_CONTINUE: "continue", SMFIR_DISCARD: "discard", SMFIR_REJECT: "reject",
         SMFIR_TEMPFAIL: "tempfail", SMFIR_REPLYCODE: "replycode", SMFIR_CONN_FAIL: "tempfail",
         SMFIR_SHUTDOWN: "tempfail"}
CHANGES = {SMFIR_ADDRCPT: "add_rcpt", SMFIR_DELRCPT: "del_rcpt", SMFIR_ADDRCPT_PAR: "add_rcpt",
           SMFIR_CHGFROM: "change_from", SMFIR_ADDHEADER: "add_header", SMFIR_INSHEADER: "insert_header",
           SMFIR_CHGHEADER: "change_header", SMFIR_QUARANTINE: "quarantine", SMFIR_REPLBODY: "replace_body"}

# Actions (SMFIF_*) a milter may ask for.
SMFIF_ADDHDRS = 0x01
SMFIF_CHGBODY = 0x02
SMFIF_ADDRCPT = 0x04
SMFIF_DELRCPT = 0x08
SMFIF_CHGHDRS = 0x10
SMFIF_QUARANTINE = 0x20
SMFIF_CHGFROM = 0x40
SMFIF_ADDRCPT_PAR = 0x80
SMFIF_SETSYMLIST = 0x100
OFFERED_ACTIONS = (SMFIF_ADDHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT | SMFIF_DELRCPT | SMFIF_CHGHDRS
                   | SMFIF_QUARANTINE | SMFIF_CHGFROM | SMFIF_ADDRCPT_PAR | SMFIF_SETSYMLIST)
ACTION_NAMES = {SMFIF_ADDHDRS: "add header", SMFIF_CHGBODY: "replace body", SMFIF_ADDRCPT: "add rcpt",
                SMFIF_DELRCPT: "delete rcpt", SMFIF_CHGHDRS: "change header", SMFIF_QUARANTINE: "quarantine",
                SMFIF_CHGFROM: "change from", SMFIF_ADDRCPT_PAR: "add rcpt with args",
                SMFIF_SETSYMLIST: "set macro list"}

# Protocol flags (SMFIP_*): stages the milter does not want, replies it will not send.
SMFIP_NOCONNECT = 0x1
SMFIP_NOHELO = 0x2
SMFIP_NOMAIL = 0x4
SMFIP_NORCPT = 0x8
SMFIP_NOBODY = 0x10
SMFIP_NOHDRS = 0x20
SMFIP_NOEOH = 0x40
SMFIP_NR_HDR = 0x80
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_SKIP = 0x400
SMFIP_RCPT_REJ = 0x800
SMFIP_NR_CONN = 0x1000
SMFIP_NR_HELO = 0x2000
SMFIP_NR_MAIL = 0x4000
SMFIP_NR_RCPT = 0x8000
SMFIP_NR_DATA = 0x10000
SMFIP_NR_UNKN = 0x20000
SMFIP_NR_EOH = 0x40000
SMFIP_NR_BODY = 0x80000
SMFIP_HDR_LEADSPC = 0x100000
OFFERED_PROTOCOL = 0x1FFFFF  # all of the above: we can leave out any stage and any reply

# Which macros go with which command; the stage numbers of a v6 macro list (SMFIM_*).
MACRO_STAGES = {0: SMFIC_CONNECT, 1: SMFIC_HELO, 2: SMFIC_MAIL, 3: SMFIC_RCPT, 4: SMFIC_DATA,
                5: SMFIC_BODYEOB, 6: SMFIC_EOH}


class MilterError(Exception):
    """The conversation failed: time-out, lost connection, or a broken milter."""


class Reply(NamedTuple):
    command: bytes
    data: bytes


def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + command + data


def strings(*items: str) -> bytes:
    """NUL-terminated strings, as every text in the protocol."""
    return b"".join(item.encode("utf-8", "surrogateescape") + b"\0" for item in items)


def split_strings(data: bytes) -> list[str]:
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return [part.decode("utf-8", "surrogateescape") for part in parts]


class MilterClient(protocol.Protocol):
    """Packets in, packets out: `reply(timeout, clock)` is the next packet from the milter."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._replies: deque[Reply] = deque()
        self._waiter: defer.Deferred | None = None
        self.closed = False
        self.error: str | None = None

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.called:
            waiter.errback(MilterError(self.error or "the milter closed the connection"))

    def send(self, command: bytes, data: bytes = b"") -> None:
        if self.closed:
            raise MilterError(self.error or "the milter closed the connection")
        self.transport.write(packet(command, data))

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 4:
            (length,) = struct.unpack("!I", self._buffer[:4])
            if length == 0 or length > MAX_PACKET:
                self.error = f"a packet of {length} bytes"
                self.abort()
                return
            if len(self._buffer) < 4 + length:
                return
            body = bytes(self._buffer[4:4 + length])
            del self._buffer[:4 + length]
            self._replies.append(Reply(body[:1], body[1:]))
        self._deliver()

    def _deliver(self) -> None:
        if self._waiter is not None and self._replies:
            waiter, self._waiter = self._waiter, None
            waiter.callback(self._replies.popleft())

    async def reply(self, timeout: float, clock: Any) -> Reply:
        """The next packet; MilterError when none comes within `timeout` seconds."""
        if self._replies:
            return self._replies.popleft()
        if self.closed:
            raise MilterError(self.error or "the milter closed the connection")
        self._waiter = defer.Deferred()
        try:
            return await self._waiter.addTimeout(timeout, clock)
        except defer.TimeoutError:
            self._waiter = None
            raise MilterError(f"no answer within {timeout:g}s") from None


class Envelope(NamedTuple):
    """What the milter is told about the session and the message."""

    client_name: str
    client_ip: str
    client_port: int
    helo: str | None
    sender: str  # `<address>`
    recipients: list[str]  # `<address>` each
    macros: dict[bytes, dict[str, str]]  # command -> {macro name: value}


class Outcome(NamedTuple):
    """The milter's verdict (accept, continue, reject, tempfail, replycode, discard), its reply text
    (replycode), and the changes it asked for, in order: (kind, strings)."""

    verdict: str
    reply: str
    changes: list[tuple[str, list[str]]]


class Conversation:
    """One message through one milter connection (negotiated already by `negotiate`)."""

    def __init__(self, client: MilterClient, clock: Any, command_timeout: float, content_timeout: float) -> None:
        self.client = client
        self.clock = clock
        self.command_timeout = command_timeout
        self.content_timeout = content_timeout
        self.actions = 0
        self.protocol = 0
        self.wanted_macros: dict[bytes, set[str]] = {}
        self.new_body: Any = None  # called with each piece of a replaced body (CRLF line endings)

    async def negotiate(self) -> None:
        """SMFIC_OPTNEG: what the milter wants among what we offer; MilterError if it wants more."""
        self.client.send(SMFIC_OPTNEG, struct.pack("!III", VERSION, OFFERED_ACTIONS, OFFERED_PROTOCOL))
        reply = await self.client.reply(self.command_timeout, self.clock)
        if reply.command != SMFIR_OPTNEG or len(reply.data) < 12:
            raise MilterError(f"no option negotiation answer (got {reply.command!r})")
        version, actions, protocol_flags = struct.unpack("!III", reply.data[:12])
        if not 2 <= version <= VERSION:
            raise MilterError(f"milter protocol version {version} is not supported")
        missing = actions & ~OFFERED_ACTIONS
        if missing:
            names = ", ".join(name for bit, name in ACTION_NAMES.items() if missing & bit) or hex(missing)
            raise MilterError(f"the milter wants actions we cannot apply: {names}")
        if protocol_flags & ~OFFERED_PROTOCOL:
            raise MilterError(f"the milter wants protocol flags we do not know: {protocol_flags:#x}")
        self.actions, self.protocol = actions, protocol_flags
        self._read_macro_lists(reply.data[12:])

    def _read_macro_lists(self, data: bytes) -> None:
        """v6: the macros the milter wants per stage (`uint32 stage, "name name"\\0` ...)."""
        while len(data) >= 5:
            (stage,) = struct.unpack("!I", data[:4])
            end = data.find(b"\0", 4)
            end = len(data) if end < 0 else end
            names = data[4:end].decode("ascii", "replace").replace(",", " ").split()
            if stage in MACRO_STAGES:
                self.wanted_macros[MACRO_STAGES[stage]] = {name.strip("{}") for name in names}
            data = data[end + 1:]

    def _macros(self, command: bytes, values: dict[str, str] | None) -> None:
        wanted = self.wanted_macros.get(command)
        if wanted is not None and values:
            values = {name: value for name, value in values.items() if name.strip("{}") in wanted}
        if values:
            pairs = [item for name, value in values.items() for item in (name, value)]
            self.client.send(SMFIC_MACRO, command + strings(*pairs))

    async def _step(self, command: bytes, data: bytes, skip_flag: int, no_reply_flag: int,
                    macros: dict[str, str] | None = None) -> Reply | None:
        """Send one stage; its final reply (None: no reply expected, or the stage is off)."""
        if self.protocol & skip_flag:
            return None
        self._macros(command, macros)
        self.client.send(command, data)
        if self.protocol & no_reply_flag:
            return None
        return await self._final(self.command_timeout)

    async def _final(self, timeout: float, changes: list | None = None) -> Reply:
        """The next final reply, collecting changes (only allowed after the end of message)."""
        while True:
            reply = await self.client.reply(timeout, self.clock)
            if reply.command == SMFIR_PROGRESS:
                continue  # the milter is working: the wait starts again
            if reply.command in FINAL or reply.command == SMFIR_SKIP:
                return reply
            if changes is not None and reply.command == SMFIR_REPLBODY and self.new_body is not None:
                if ("replace_body", []) not in changes:
                    changes.append(("replace_body", []))
                self.new_body(reply.data)
                continue
            if changes is not None and reply.command in CHANGES and reply.command != SMFIR_REPLBODY:
                changes.append((CHANGES[reply.command], _change_fields(reply)))
                continue
            raise MilterError(f"unexpected reply {reply.command!r} ({len(reply.data)} bytes)")

    async def run(self, envelope: Envelope, header_fields: list[tuple[str, str]], body_chunks: Any) -> Outcome:
        """Every stage of one message; the outcome at the first final answer that is not `continue`."""
        m = envelope.macros
        family = b"6" if ":" in envelope.client_ip else b"4"
        connect = (strings(envelope.client_name) + family + struct.pack("!H", envelope.client_port)
                   + strings(envelope.client_ip))
        steps = [(SMFIC_CONNECT, connect, SMFIP_NOCONNECT, SMFIP_NR_CONN, m.get(SMFIC_CONNECT))]
        if envelope.helo:
            steps.append((SMFIC_HELO, strings(envelope.helo), SMFIP_NOHELO, SMFIP_NR_HELO, m.get(SMFIC_HELO)))
        steps.append((SMFIC_MAIL, strings(envelope.sender), SMFIP_NOMAIL, SMFIP_NR_MAIL, m.get(SMFIC_MAIL)))
        steps += [(SMFIC_RCPT, strings(rcpt), SMFIP_NORCPT, SMFIP_NR_RCPT, {"{rcpt_addr}": rcpt.strip("<>")})
                  for rcpt in envelope.recipients]
        steps.append((SMFIC_DATA, b"", SMFIP_NODATA, SMFIP_NR_DATA, m.get(SMFIC_DATA)))
        leading_space = bool(self.protocol & SMFIP_HDR_LEADSPC)
        for name, value in header_fields:
            steps.append((SMFIC_HEADER, strings(name, value if leading_space else value.lstrip(" \t")),
                          SMFIP_NOHDRS, SMFIP_NR_HDR, None))
        steps.append((SMFIC_EOH, b"", SMFIP_NOEOH, SMFIP_NR_EOH, m.get(SMFIC_EOH)))
        for command, data, skip_flag, no_reply_flag, macros in steps:
            reply = await self._step(command, data, skip_flag, no_reply_flag, macros)
            if reply is not None and reply.command not in (SMFIR_CONTINUE, SMFIR_SKIP):
                return _outcome(reply, [])
        if not self.protocol & SMFIP_NOBODY:
            for chunk in body_chunks:
                for start in range(0, len(chunk), BODY_CHUNK):
                    reply = await self._step(SMFIC_BODY, chunk[start:start + BODY_CHUNK], 0, SMFIP_NR_BODY)
                    if reply is not None and reply.command == SMFIR_SKIP:
                        break  # the milter has seen enough of the body
                    if reply is not None and reply.command != SMFIR_CONTINUE:
                        return _outcome(reply, [])
                else:
                    continue
                break
        self._macros(SMFIC_BODYEOB, m.get(SMFIC_BODYEOB))
        self.client.send(SMFIC_BODYEOB)
        changes: list[tuple[str, list[str]]] = []
        reply = await self._final(self.content_timeout, changes)
        return _outcome(reply, changes)

    def quit(self) -> None:
        """SMFIC_QUIT and close, without waiting for anything."""
        if not self.client.closed:
            self.client.send(SMFIC_QUIT)
            self.client.transport.loseConnection()


def _change_fields(reply: Reply) -> list[str]:
    if reply.command in (SMFIR_INSHEADER, SMFIR_CHGHEADER):
        if len(reply.data) < 4:
            raise MilterError(f"a short {reply.command!r} reply")
        (index,) = struct.unpack("!I", reply.data[:4])
        return [str(index), *split_strings(reply.data[4:])]
    return split_strings(reply.data)


def _outcome(reply: Reply, changes: list[tuple[str, list[str]]]) -> Outcome:
    verdict = "continue" if reply.command == SMFIR_SKIP else FINAL[reply.command]
    text = split_strings(reply.data)[0] if reply.command == SMFIR_REPLYCODE and reply.data else ""
    return Outcome(verdict, text, changes)
