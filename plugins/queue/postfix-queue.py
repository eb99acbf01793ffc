"""queue/postfix-queue - hand accepted mail to Postfix's cleanup service.

Hook: queue. Talks to cleanup(8) directly, as Postfix's own smtpd and pickup
do: the message goes into Postfix's queue with no second SMTP hop, and the
client gets `250` only after cleanup has written the queue file. The child
serving the session keeps serving its other sessions meanwhile.

Arguments (as qpsmtpd's):
    queue/postfix-queue [<socket>|<host>:<port>] [FLAG_...]... [timeout <seconds>]
- <socket>: the path of the cleanup service's UNIX socket, starting with `/`.
  Default /var/spool/postfix/public/cleanup (`<queue_directory>/public/cleanup`;
  the daemon's user must be allowed to connect, like any user of sendmail(1)
  through postdrop: write access to the socket and search access to `public`,
  which is mode 0710 group postdrop on Debian). A cleanup service that
  master.cf publishes on TCP is written `<host>:<port>`.
- FLAG_...: cleanup flags, OR-ed together (none by default):
  FLAG_BOUNCE (bounce bad mail rather than keep it), FLAG_FILTER (apply
  header_checks, body_checks and content_filter), FLAG_HOLD (put every
  message on hold), FLAG_DISCARD (discard every message: do not use),
  FLAG_BCC_OK (always_bcc, *_bcc_maps), FLAG_MAP_OK (canonical and virtual
  alias maps), FLAG_MILTER (non_smtpd_milters), FLAG_FILTER_ALL (FILTER and
  MILTER), FLAG_MASK_EXTERNAL (FILTER_ALL, BCC_OK and MAP_OK: what Postfix
  uses for mail from outside, and usually what you want), FLAG_MASK_INTERNAL
  (MAP_OK), FLAG_NONE. Unknown flags are logged and ignored, as in qpsmtpd.
- timeout <seconds>: for the whole hand-over of one message (default 120);
  past it the client gets 451.

Which service: the environment variable POSTFIXQUEUE (one socket or
host:port) wins; else the `cleanup_sockets` config file, one socket or
host:port per line, tried in order until one answers; else the argument;
else the default socket. As in qpsmtpd.

Replies to the client (its queue answer):
- cleanup reports success: `250 Queued as <Postfix queue id>`;
- cleanup reports a permanent failure (no recipients, too many hops,
  message too big, content rejected by header_checks/body_checks or a milter):
  `552 <cleanup's reason>` (e.g. `552 5.7.1 <header_checks text>`, or
  qpsmtpd's text when cleanup gives none, e.g. `message content rejected
  (#5.7.1)`), and the client bounces the message;
- a temporary failure (defer, write error, protocol error, proxy
  failure), an unknown status, no service reachable or the timeout:
  `451 <reason>`, and a following queue plugin may still take the message.
- when cleanup's reason starts with an enhanced status code, its class wins
  over the status bits, as in Postfix's smtpd: `REJECT 4.7.1 later` in
  header_checks gives 451, `REJECT 5.7.1 go away` 552.

What is sent: the flags; the arrival time; the envelope sender and
recipients; the SMTP client's name, address, port, HELO name and protocol
(as Postfix's smtpd passes them, so Postfix's logs and non_smtpd_milters see
the real client) with the `remote` address rewriting context (header
addresses are not completed with $myorigin, as for mail received over SMTP);
then the message, header with its Received line and body, one record per line.
cleanup itself adds the size record and the queue id.

Differences from qpsmtpd: the answer is `Queued as <id>` (qpsmtpd: `Queued!
<Message-Id> (Queue-Id: <id>)`); the socket is never blocked on; a `host:port`
may be the argument too; the client's attributes and the rewriting context
are passed on (qpsmtpd sends none, so Postfix applied the `local` context).

Example config/plugins lines:
    queue/postfix-queue FLAG_MASK_EXTERNAL
    queue/postfix-queue /var/spool/postfix/public/cleanup FLAG_FILTER FLAG_BCC_OK
"""

import math
import os
import re
import time

from twisted.internet import defer, error, protocol

from qpsmtpd_py.constants import DECLINED, DENY, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN, OK
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_SOCKET = "/var/spool/postfix/public/cleanup"
CONNECT_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 120.0
_HOST_PORT = re.compile(r"^\[?([-A-Za-z0-9_.:]+?)\]?:(\d{1,5})$")
_DSN = re.compile(r"^([45])\.\d{1,3}\.\d{1,3}\b")
_MAX_GREETINGS = 4  # attribute groups read before the one with the queue id
_MAX_REPLY = 65536
_RECORD_DATA = 1024  # bytes of a line per record; longer lines are continued
_CHUNK = 1 << 16

# Cleanup request flags (Postfix's cleanup_user.h; qpsmtpd's Postfix/Constants.pm).
FLAGS = {
    "FLAG_NONE": 0,
    "FLAG_BOUNCE": 1 << 0,
    "FLAG_FILTER": 1 << 1,
    "FLAG_HOLD": 1 << 2,
    "FLAG_DISCARD": 1 << 3,
    "FLAG_BCC_OK": 1 << 4,
    "FLAG_MAP_OK": 1 << 5,
    "FLAG_MILTER": 1 << 6,
}
FLAGS["FLAG_FILTER_ALL"] = FLAGS["FLAG_FILTER"] | FLAGS["FLAG_MILTER"]
FLAGS["FLAG_MASK_EXTERNAL"] = FLAGS["FLAG_FILTER_ALL"] | FLAGS["FLAG_BCC_OK"] | FLAGS["FLAG_MAP_OK"]
FLAGS["FLAG_MASK_INTERNAL"] = FLAGS["FLAG_MAP_OK"]
FLAGS["FLAG_MASK_EXTRA"] = FLAGS["FLAG_HOLD"] | FLAGS["FLAG_DISCARD"]

# Cleanup status bits: temporary ones first (a message both too big and not
# written completely is retried), then permanent ones; qpsmtpd's texts.
STAT_TEMPORARY = (
    (1 << 8, "service unavailable (#4.7.1)"),      # DEFER
    (1 << 7, "queue file write error (#4.3.0)"),   # PROXY
    (1 << 0, "internal protocol error (#4.3.0)"),  # BAD
    (1 << 1, "queue file write error (#4.3.0)"),   # WRITE
)
STAT_PERMANENT = (
    (1 << 6, "no recipients specified (#5.1.0)"),  # RCPT
    (1 << 4, "too many hops (#5.4.0)"),            # HOPS
    (1 << 2, "message file too big (#5.3.4)"),     # SIZE
    (1 << 3, "message content rejected (#5.7.1)"),  # CONT
)

# Record types (Postfix's rec_type.h).
REC_TIME = b"T"
REC_ATTR = b"A"
REC_FROM = b"S"
REC_RCPT = b"R"
REC_MESG = b"M"
REC_CONT = b"L"  # a piece of a long line, more follows
REC_NORM = b"N"  # a line (or the last piece of one)
REC_XTRA = b"X"
REC_END = b"E"


def record(kind, data=b""):
    """One record: its type, its length in base 128 (low 7 bits first, a high bit on all but the last)."""
    length = len(data)
    head = bytearray(kind)
    while length >= 0x80:
        head.append(length & 0x7F | 0x80)
        length >>= 7
    head.append(length)
    return bytes(head) + data


def line_records(line):
    """The records of one message line (without its line end)."""
    out = []
    while len(line) > _RECORD_DATA:
        out.append(record(REC_CONT, line[:_RECORD_DATA]))
        line = line[_RECORD_DATA:]
    out.append(record(REC_NORM, line))
    return b"".join(out)


def attributes(**values):
    """An attribute group in Postfix's 0-terminated format: name NUL value NUL ... NUL."""
    return b"".join(name.encode() + b"\0" + str(value).encode("utf-8", "surrogateescape") + b"\0"
                    for name, value in values.items()) + b"\0"


def status_answer(status, reason):
    """(code, text) for a cleanup status other than 0.

    A reason that starts with an enhanced status code decides by its class: a
    header_checks `REJECT 4.7.1 text` sets the CONTent bit, yet Postfix's own
    smtpd answers it with a 4xx.
    """
    dsn = _DSN.match(reason)
    if dsn:
        return (DENY if dsn.group(1) == "5" else DECLINED), reason
    for bit, text in STAT_TEMPORARY:
        if status & bit:
            return DECLINED, reason or text
    for bit, text in STAT_PERMANENT:
        if status & bit:
            return DENY, reason or text
    return DECLINED, reason or f"Unable to queue message (cleanup status {status})"


def parse_flags(names, warn):
    value = 0
    for name in names:
        if name in FLAGS:
            value |= FLAGS[name]
        else:
            warn(f"Ignoring unknown cleanup flag {name}")
    return value


class Failed(Exception):
    """This service cannot take the message (the next one is tried when it never answered)."""

    def __init__(self, text, answered=False):
        super().__init__(text)
        self.answered = answered


class CleanupProtocol(protocol.Protocol):
    """The client side of one cleanup session: attribute groups in, records out."""

    def __init__(self):
        self._buffer = bytearray()
        self._groups = []
        self._waiter = None
        self._paused = False
        self._resumed = None
        self.closed = False
        self.reason = None

    def connectionMade(self):
        self.transport.registerProducer(self, True)

    def dataReceived(self, data):
        self._buffer += data
        while True:
            group = self._take_group()
            if group is None:
                break
            self._groups.append(group)
        if len(self._buffer) > _MAX_REPLY:
            self.reason = "cleanup sent an over-long answer"
            self.transport.abortConnection()
            return
        self._wake()

    def _take_group(self):
        """A complete attribute group from the buffer as a dict, or None."""
        values, position = {}, 0
        while True:
            end = self._buffer.find(b"\0", position)
            if end < 0:
                return None
            if end == position:  # the empty name that ends the group
                del self._buffer[:end + 1]
                return values
            value_end = self._buffer.find(b"\0", end + 1)
            if value_end < 0:
                return None
            name = self._buffer[position:end].decode("ascii", "replace")
            values[name] = self._buffer[end + 1:value_end].decode("utf-8", "replace")
            position = value_end + 1

    def connectionLost(self, reason=protocol.connectionDone):
        self.closed = True
        self.reason = self.reason or reason.getErrorMessage()
        self._wake()
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def _wake(self):
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    async def group(self):
        """The next attribute group (raises Failed when the connection closes first)."""
        while not self._groups:
            if self.closed:
                raise Failed(f"cleanup closed the connection ({self.reason})")
            self._waiter = defer.Deferred()
            await self._waiter
        return self._groups.pop(0)

    # -- flow control (IPushProducer) ------------------------------------------------
    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self):
        pass

    async def write(self, data):
        if self.closed:
            raise Failed(f"cleanup closed the connection ({self.reason})", answered=True)
        self.transport.write(data)
        if self._paused and not self.closed:
            self._resumed = defer.Deferred()
            await self._resumed


class PostfixQueue(Plugin):

    def register(self, qp, *args):
        args = list(args)
        options = {}
        for key in ("timeout", "loglevel"):
            if key in args:
                at = args.index(key)
                if at + 1 >= len(args):
                    raise PluginError(f"{key} needs a value")
                options[key] = args[at + 1]
                del args[at:at + 2]
        if "loglevel" in options and not re.fullmatch(r"[0-7]|[+-]\d", options["loglevel"]):
            raise PluginError(f"loglevel must be 0-7, +N or -N, not {options['loglevel']!r}")
        self.args = {"loglevel": options["loglevel"]} if "loglevel" in options else {}
        self.timeout = DEFAULT_TIMEOUT
        if "timeout" in options:
            try:
                self.timeout = float(options["timeout"])
            except ValueError:
                self.timeout = 0.0
            if not (self.timeout > 0 and math.isfinite(self.timeout)):
                raise PluginError(f"timeout must be a positive number of seconds, not {options['timeout']!r}")
        self.socket = None
        if args and not args[0].startswith("FLAG_"):
            self.socket = args.pop(0)
            if parse_service(self.socket) is None:
                raise PluginError(f"the cleanup service must be a socket path starting with / or host:port, "
                                  f"not {self.socket!r}")
        self.flags = parse_flags(args, lambda text: self.log(LOGWARN, text))
        self.env_socket = os.environ.get("POSTFIXQUEUE") or None


    def services(self):
        """The cleanup services to try, in order (qpsmtpd's precedence)."""
        if self.env_socket:
            return [self.env_socket]
        configured = [line.strip() for line in self.qp.config_list("cleanup_sockets") if line.strip()]
        return configured or [self.socket or DEFAULT_SOCKET]

    def hook_queue(self, transaction):
        transaction.notes["postfix-queue-flags"] = self.flags
        d = defer.ensureDeferred(self._queue(transaction))
        d.addTimeout(self.timeout, self.get_reactor())

        def timed_out(failure):
            failure.trap(defer.TimeoutError, defer.CancelledError)
            self.log(LOGERROR, f"no answer from cleanup within {self.timeout:g} s")
            return DECLINED, f"Unable to queue message (no answer from Postfix within {self.timeout:g} s)"

        d.addErrback(timed_out)
        return d

    async def _queue(self, transaction):
        failures = []
        for service in self.services():
            try:
                client = await self._open(service)
            except Failed as exc:
                self.log(LOGWARN, f"{service}: {exc}")
                failures.append(f"{service}: {exc}")
                continue
            try:
                return await self._inject(client, service, transaction)
            except Failed as exc:
                if exc.answered:
                    self.log(LOGERROR, f"{service}: {exc}")
                    return DECLINED, f"Unable to queue message ({exc})"
                self.log(LOGWARN, f"{service}: {exc}")
                failures.append(f"{service}: {exc}")
            finally:
                if not client.closed:
                    client.transport.abortConnection()
        self.log(LOGERROR, "no cleanup service took the message")
        return DECLINED, f"Unable to queue message ({'; '.join(failures) or 'no cleanup service'})"

    async def _open(self, service):
        target = parse_service(service)
        if target is None:
            raise Failed("neither a socket path starting with / nor host:port")
        reactor = self.get_reactor()
        factory = protocol.ClientFactory.forProtocol(CleanupProtocol)
        connected = defer.Deferred()
        factory.clientConnectionFailed = lambda _, reason: connected.errback(reason)
        factory.buildProtocol = _capture(factory.buildProtocol, connected)
        if target[0] == "unix":
            reactor.connectUNIX(target[1], factory, timeout=CONNECT_TIMEOUT)
        else:
            reactor.connectTCP(target[1], target[2], factory, timeout=CONNECT_TIMEOUT)
        try:
            return await connected
        except error.ConnectError as exc:
            raise Failed(_connect_error(exc)) from None

    async def _inject(self, client, service, transaction):
        queue_id = None
        for _ in range(_MAX_GREETINGS):  # Postfix 3.7 announces `protocol` before the queue id
            group = await client.group()
            queue_id = group.get("queue_id")
            if queue_id:
                break
        if not queue_id:
            raise Failed("cleanup did not give a queue id")
        self.log(LOGDEBUG, f"{service}: queue id {queue_id}")
        await client.write(attributes(flags=transaction.notes.get("postfix-queue-flags", self.flags)))
        await client.write(self.envelope(transaction))
        await client.write(record(REC_MESG))
        header = transaction.header_bytes()
        await client.write(b"".join(line_records(line) for line in header.split(b"\n")[:-1]))
        await client.write(line_records(b""))  # the line between header and body
        partial = b""
        for chunk in transaction.iter_body(_CHUNK):
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            await client.write(b"".join(line_records(line.rstrip(b"\r")) for line in lines))
        if partial:
            await client.write(line_records(partial.rstrip(b"\r")))
        await client.write(record(REC_XTRA) + record(REC_END))
        try:
            answer = await client.group()
        except Failed as exc:
            raise Failed(str(exc), answered=True) from None
        try:
            status = int(answer.get("status", ""))
        except ValueError:
            raise Failed(f"cleanup answered no status: {answer!r}", answered=True) from None
        reason = answer.get("reason", "").strip()
        if status == 0:
            self.log(LOGINFO, f"queued as {queue_id} by {service}")
            return OK, f"Queued as {queue_id}"
        code, text = status_answer(status, reason)
        self.log(LOGERROR, f"{service} refused {queue_id}: status {status}"
                           f"{', permanent' if code == DENY else ''}: {text}")
        return code, text

    def envelope(self, transaction):
        """The records before the message: time, client attributes, sender, recipients."""
        connection = self.connection
        encode = _encode
        records = [record(REC_TIME, str(int(time.time())).encode())]
        name = connection.remote_host or ""
        if not name or name.startswith("[") or name == "Unknown":
            name = "unknown"
        attrs = {
            "rewrite_context": "remote",
            "log_client_name": name,
            "log_client_address": connection.remote_ip or "",
            "log_client_port": connection.remote_port or "",
            "log_helo_name": connection.hello_host or "",
            "log_protocol_name": "ESMTP" if connection.hello == "ehlo" else "SMTP",
            "client_name": name,
            "client_address": connection.remote_ip or "",
            "client_port": connection.remote_port or "",
            "helo_name": connection.hello_host or "",
            "protocol_name": "ESMTP" if connection.hello == "ehlo" else "SMTP",
        }
        for key, value in attrs.items():
            if value != "":
                records.append(record(REC_ATTR, encode(f"{key}={value}")))
        records.append(record(REC_FROM, encode(transaction.sender.address() if transaction.sender else "")))
        records.extend(record(REC_RCPT, encode(r.address())) for r in transaction.recipients)
        return b"".join(records)


def _encode(text):
    return str(text).replace("\n", " ").replace("\r", " ").encode("utf-8", "surrogateescape")


def parse_service(text):
    """`/path` -> ("unix", path); `host:port` -> ("tcp", host, port); None if neither."""
    if text.startswith("/"):
        return ("unix", text)
    match = _HOST_PORT.match(text)
    if match and 0 < int(match.group(2)) < 65536:
        return ("tcp", match.group(1), int(match.group(2)))
    return None


def _capture(build, connected):
    def build_protocol(addr):
        client = build(addr)
        original = client.connectionMade

        def made():
            original()
            if not connected.called:
                connected.callback(client)

        client.connectionMade = made
        return client

    return build_protocol


def _connect_error(exc):
    if isinstance(exc, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, error.TimeoutError):
        return "connection timed out"
    text = str(exc.osError) if getattr(exc, "osError", None) else (exc.args[0] if exc.args else "")
    return text or exc.__class__.__name__
