"""ident/p0f - what operating system the client runs, from its TCP fingerprint.

Hooks: connect (asks p0f); rcpt (only when config/p0f_blocked_operating_systems
has entries); data_post (the headers, unless `add_headers false`).

p0f (a separate daemon, Debian package `p0f`) watches the network interface
and fingerprints the SYN of every connection. At connect this plugin asks p0f,
over p0f's API unix socket, what it knows about the client's address, and
keeps the answer in the connection note `p0f` (a dict), where other plugins
(greylisting's `p0f` exemption, karma) read it. With p0f 3 the note has p0f's
answer under its field names: magic, status, first_seen, last_seen,
total_conn, uptime_min, up_mod_days, last_nat, last_chg, distance, bad_sw,
os_match_q, os_name, os_flavor, http_name, http_flavor, link_type, language;
when p0f named the OS also the p0f 2 names: genre (`os_name os_flavor`, e.g.
`Windows 7 or 8`), link and uptime. With p0f 2: genre, detail, distance,
link, uptime.

Start p0f watching the SMTP port, with its API socket readable by the user
the daemon runs as, e.g.
    p0f -i eth0 -u p0f -d -s /run/p0f/p0f.sock -f /etc/p0f/p0f.fp 'dst port 25'

Arguments: the socket path first, then key/value pairs:
    ident/p0f <socket> [version 2|3] [local_ip IP] [smite_os REGEX]
              [add_headers true|false] [timeout SECONDS]
- <socket>: p0f's API socket (p0f -s; p0f 2: -Q). Required.
- version 2|3: the p0f API spoken (default 3).
- local_ip <IPv4>: p0f 2 only, whose query names both ends of the connection:
  the address p0f saw as the server, when we run behind NAT (default: the
  address the client connected to).
- smite_os <regex>: -1 karma when the genre matches (case-insensitive Perl
  regex, e.g. `windows`). Default: none.
- add_headers true|false: add X-P0F-Genre and X-P0F-Link-Type to each
  message, replacing any the message had (default true).
- timeout <seconds>: for the whole exchange with p0f (default 2).

config/p0f_blocked_operating_systems: one genre per line, or a `/regex/`
(case-insensitive); a client whose genre equals a line or matches a regex gets
`550 OS Blocked` at RCPT, unless it is immune (relay client, whitelisted) or
the connection note `p0f_exclude` is true.

When p0f is not running, does not answer within the time-out, or knows
nothing of the client, the plugin logs it and the session goes on without
the note: p0f's answer only informs other plugins' policy, and refusing all
mail because an optional helper is slow would be worse than not knowing.

Example config/plugins line:
    ident/p0f /run/p0f/p0f.sock smite_os windows

Differences from qpsmtpd: the query is non-blocking with a time-out (qpsmtpd
waited on the socket for as long as p0f took). IPv6 clients are asked about
with their 16-byte address (qpsmtpd packed the colon-separated groups as
bytes: its PR #333). p0f 2 answers are read with the C struct's padding, so
uptime is right. smite_os applies to p0f 2 genres too. The timeout argument
is new.
"""

import ipaddress
import random
import re
import struct

from twisted.internet import defer, endpoints, error, protocol

from qpsmtpd_py.constants import DECLINED, DENY, LOGDEBUG, LOGERROR, LOGINFO
from qpsmtpd_py.perl_regex import perl_regex
from qpsmtpd_py.plugin import Plugin, PluginError

KNOWN_ARGUMENTS = ("version", "local_ip", "smite_os", "add_headers", "timeout", "loglevel")

# p0f 3's API (p0f's api.h): packed structs in the host's byte order.
V3_QUERY = struct.Struct("=IB16s")  # magic, address type (4 or 6), address
V3_RESPONSE = struct.Struct("=9IhBB32s32s32s32s32s32s")
V3_QUERY_MAGIC = 0x50304601
V3_RESPONSE_MAGIC = 0x50304602
V3_STATUS = {0x00: "bad query", 0x10: "ok", 0x20: "no match"}
V3_FIELDS = ("magic status first_seen last_seen total_conn uptime_min up_mod_days last_nat last_chg distance "
             "bad_sw os_match_q os_name os_flavor http_name http_flavor link_type language").split()

# p0f 2's API (p0f-query.h): C structs with their natural padding.
V2_QUERY = struct.Struct("@IBI4s4sHH")  # magic, type, id, src and dst address, src and dst port
V2_RESPONSE = struct.Struct("@IIB20s40sb30s30sBBBhHi")
V2_MAGIC = 0x0DEFACED
V2_FINGERPRINT_QUERY = 1
V2_TYPE = {0: "ok", 1: "p0f did not honor our query", 2: "connection not in the cache"}


class P0fUnavailable(Exception):
    """No usable answer from p0f (the message says why); `level` is what it is logged at."""

    def __init__(self, message: str, level: int = LOGERROR) -> None:
        super().__init__(message)
        self.level = level


def text_field(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


def v3_query(ip: str) -> bytes:
    address = ipaddress.ip_address(ip)
    return V3_QUERY.pack(V3_QUERY_MAGIC, address.version, address.packed)


def parse_v3(response: bytes) -> dict:
    """p0f 3's answer as the `p0f` note; raises P0fUnavailable unless its status is ok."""
    values = V3_RESPONSE.unpack(response)
    if values[0] != V3_RESPONSE_MAGIC:
        raise P0fUnavailable(f"bad response magic {values[0]:#x}")
    if values[1] == 0x20:  # p0f saw no traffic from the address: normal, e.g. behind a proxy
        raise P0fUnavailable("no match", LOGINFO)
    if values[1] != 0x10:
        raise P0fUnavailable(V3_STATUS.get(values[1], f"unknown status {values[1]:#x}"))
    note = {field: text_field(value) if isinstance(value, bytes) else value
            for field, value in zip(V3_FIELDS, values, strict=True)}
    if note["os_name"]:  # the p0f 2 names, which greylisting and older rules use
        note["genre"] = f"{note['os_name']} {note['os_flavor']}".strip()
        if note["link_type"]:
            note["link"] = note["link_type"]
        if note["uptime_min"]:
            note["uptime"] = note["uptime_min"]
    return note


def v2_query(query_id: int, remote_ip: str, local_ip: str, remote_port: int, local_port: int) -> bytes:
    remote, local = ipaddress.IPv4Address(remote_ip), ipaddress.IPv4Address(local_ip)
    return V2_QUERY.pack(V2_MAGIC, V2_FINGERPRINT_QUERY, query_id, remote.packed, local.packed,
                         remote_port, local_port)


def parse_v2(response: bytes, query_id: int) -> dict:
    """p0f 2's answer as the `p0f` note; raises P0fUnavailable unless it is a fingerprint."""
    (magic, answer_id, kind, genre, detail, distance, link, _tos, _firewall, _nat, _real, _score, _flags,
     uptime) = V2_RESPONSE.unpack(response)
    if magic != V2_MAGIC:
        raise P0fUnavailable(f"bad response magic {magic:#x}")
    if answer_id != query_id:
        raise P0fUnavailable(f"answer to query {answer_id}, not to ours ({query_id})")
    if kind != 0:
        raise P0fUnavailable(V2_TYPE.get(kind, f"unknown answer type {kind}"), LOGINFO if kind == 2 else LOGERROR)
    return {"genre": text_field(genre), "detail": text_field(detail), "distance": distance,
            "link": text_field(link), "uptime": uptime}


class Exchange(protocol.Protocol):
    """Send one query, read one fixed-size answer: p0f closes nothing, so we count bytes."""

    def __init__(self, query: bytes, size: int) -> None:
        self.query = query
        self.size = size
        self.received = bytearray()
        self.answer: defer.Deferred = defer.Deferred(lambda _: self.transport.abortConnection())

    def connectionMade(self) -> None:
        self.transport.write(self.query)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.size and not self.answer.called:
            self.answer.callback(bytes(self.received[:self.size]))
            self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        if not self.answer.called:
            self.answer.errback(P0fUnavailable(f"p0f closed the socket after {len(self.received)} of "
                                               f"{self.size} bytes"))


class P0f(Plugin):

    def register(self, qp, *args):
        if not args or args[0] in KNOWN_ARGUMENTS:
            raise PluginError("the path of p0f's API socket comes first: ident/p0f /run/p0f/p0f.sock [version 3]")
        self.socket_path = args[0]
        if len(args) % 2 == 0:
            raise PluginError("after the socket path, arguments are key/value pairs")
        self.args = dict(zip(args[1::2], args[2::2], strict=True))
        self.warn_unknown_arguments(KNOWN_ARGUMENTS)
        self.version = self.args.get("version", "3")
        if self.version not in ("2", "3"):
            raise PluginError(f"version must be 2 or 3 (p0f's major version), not {self.version!r}")
        self.local_ip = self.args.get("local_ip")
        if self.local_ip is not None:
            try:
                ipaddress.IPv4Address(self.local_ip)
            except ValueError:
                raise PluginError(f"local_ip must be an IPv4 address, not {self.local_ip!r}") from None
        self.smite_os = self.compile("smite_os", self.args.get("smite_os"))
        self.timeout = self.seconds_argument("timeout", 2.0, "error")
        if not re.search("false", self.args.get("add_headers") or "true", re.IGNORECASE):
            self.register_hook("data_post", "add_headers")
        self.blocked_genres, self.blocked_patterns = [], []
        for line in qp.config_list("p0f_blocked_operating_systems"):
            if len(line) > 1 and line.startswith("/") and line.endswith("/"):
                self.blocked_patterns.append(self.compile("p0f_blocked_operating_systems", line[1:-1]))
            else:
                self.blocked_genres.append(line)
        if self.blocked_genres or self.blocked_patterns:
            self.register_hook("rcpt", "block_genres")

    def compile(self, where: str, pattern: str | None) -> re.Pattern | None:
        if pattern is None:
            return None
        try:
            return perl_regex(pattern, re.IGNORECASE)
        except re.error as exc:
            raise PluginError(f"{where}: bad regular expression {pattern!r}: {exc}") from None

    # -- the hooks --------------------------------------------------------------------------
    async def hook_connect(self, transaction):
        try:
            note = await (self.ask_v3() if self.version == "3" else self.ask_v2())
        except P0fUnavailable as exc:
            self.log(exc.level, f"skip, {exc}")
            return DECLINED
        self.connection.notes["p0f"] = note
        genre = note.get("genre")
        self.log(LOGINFO, genre or "no OS fingerprint")
        if genre and self.smite_os and self.smite_os.search(genre):
            self.adjust_karma(-1)
        return DECLINED

    def block_genres(self, transaction, recipient, *params):
        genre = (self.connection.notes.get("p0f") or {}).get("genre")
        if not genre or self.excluded():
            return DECLINED
        if genre in self.blocked_genres or any(pattern.search(genre) for pattern in self.blocked_patterns):
            self.log(LOGINFO, f"fail, {genre} is blocked")
            return DENY, "OS Blocked"
        return DECLINED

    def add_headers(self, transaction):
        note = self.connection.notes.get("p0f") or {}
        for name, key in (("X-P0F-Genre", "genre"), ("X-P0F-Link-Type", "link")):
            if note.get(key):
                transaction.header.delete(name)
                transaction.header.add(name, str(note[key]), 0)
        return DECLINED

    def excluded(self) -> bool:
        """The connection note `p0f_exclude`, set once from is_immune() unless a plugin set it."""
        notes = self.connection.notes
        if notes.get("p0f_exclude") is None:
            notes["p0f_exclude"] = self.is_immune()
        return bool(notes["p0f_exclude"])

    # -- talking to p0f ---------------------------------------------------------------------
    async def ask_v3(self) -> dict:
        try:
            query = v3_query(self.connection.remote_ip)
        except ValueError:
            raise P0fUnavailable(f"no IP address to ask about ({self.connection.remote_ip!r})") from None
        return parse_v3(await self.exchange(query, V3_RESPONSE.size))

    async def ask_v2(self) -> dict:
        connection = self.connection
        query_id = random.getrandbits(32)
        try:
            query = v2_query(query_id, connection.remote_ip, self.local_ip or connection.local_ip,
                             connection.remote_port, connection.local_port)
        except ValueError:
            raise P0fUnavailable(f"p0f 2 knows IPv4 only, not {connection.remote_ip}") from None
        return parse_v2(await self.exchange(query, V2_RESPONSE.size), query_id)

    async def exchange(self, query: bytes, size: int) -> bytes:
        """p0f's answer to `query` (Deferred-based, never blocks); raises P0fUnavailable."""
        reactor = self.get_reactor()
        exchange = Exchange(query, size)
        endpoint = endpoints.UNIXClientEndpoint(reactor, self.socket_path, timeout=self.timeout)
        self.log(LOGDEBUG, f"asking p0f at {self.socket_path}")
        answer = endpoints.connectProtocol(endpoint, exchange).addCallback(lambda _: exchange.answer)
        try:
            return await answer.addTimeout(self.timeout, reactor)
        except defer.TimeoutError:
            raise P0fUnavailable(f"no answer from p0f at {self.socket_path} within {self.timeout:g}s") from None
        except (error.ConnectError, OSError) as exc:
            raise P0fUnavailable(f"cannot reach p0f at {self.socket_path}: {exc}") from None

