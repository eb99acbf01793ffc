"""virus/clamdscan - scan messages with the ClamAV daemon, clamd, over its socket.

Hook: data_post. The message (header, blank line, body) is streamed from the
spool to clamd with its INSTREAM command, in chunks, over a unix socket or TCP;
clamd answers `stream: OK` or `stream: <name> FOUND`.
- a virus: `552 Virus found: <name>` with deny_viruses (the default); without
  it the message passes with `X-Virus-Found: Yes` and `X-Virus-Details:
  <name>` headers. Either way the connection is marked naughty, karma goes
  down by one, and the notes `virus`/`virus_flag` are set;
- clean: `X-Virus-Found: No` and `X-Virus-Checked: by ClamAV <version> on <me>`;
- clamd down, refusing the message, or not answering within `timeout`: with
  defer_on_error, `451 Unable to scan for viruses (<reason>), try again
  later`; without it (the default) the message passes and a warning is logged.
Messages over max_size, and connections already marked naughty, are not
scanned. Tested against a real clamd (Debian clamav-daemon) started by the
tests with a small signature database they write.

Arguments (key value pairs):
- clamd_socket <path>: clamd's unix socket (default /var/run/clamav/clamd.ctl,
  Debian's LocalSocket).
- clamd_port <port>: clamd's TCP port (usually 3310); when given, TCP is used
  and clamd_socket ignored. Default: unset.
- clamd_host <host>: clamd's TCP address (default localhost).
- deny_viruses yes|no: reject infected messages (default yes).
- defer_on_error yes|no: 451 when no verdict could be had (default no).
- max_size <KB>: larger messages are not scanned (default 1024). Keep it
  below clamd's StreamMaxLength, or clamd refuses the stream.
- scan_all 1|0: scan every message (default 1); with 0 only multipart
  messages (those that can carry attachments).
- timeout <seconds>: for waiting for a scan slot plus the scan (default 30).
- max_scans <n>: scans at once per child, more wait (default 4).

Example config/plugins line:
    virus/clamdscan clamd_socket /run/clamav/clamd.ctl deny_viruses yes defer_on_error yes

Differences from qpsmtpd: qpsmtpd uses ClamAV::Client, which blocks the whole
process during a scan, pings clamd and asks its version on every message, and
over a unix socket asks clamd to open the spool file by path (clamd then needs
read access to the spool). We always stream with INSTREAM (no file
permissions to arrange), ask the version once an hour, and bound the time
and the number of concurrent scans.
"""

import struct
import time

from twisted.internet import defer, endpoints, protocol

from qpsmtpd_py.constants import DECLINED, LOGINFO, LOGNOTICE
from qpsmtpd_py.mail_client import tcp_endpoint
from qpsmtpd_py.plugin import port_argument
from qpsmtpd_py.virus_scan import (
    ScanError,
    ScannerPlugin,
    is_yes,
    size_argument,
)

_CHUNK = 1 << 16
_VERSION_MAX_AGE = 3600.0
_REPLY_LIMIT = 4096


class ClamdCommand(protocol.Protocol):
    """One clamd command (`z` form: NUL-terminated) on its own connection; `answer` fires with the reply."""

    def __init__(self, command: bytes, chunks=None):
        self.command = command
        self.chunks = chunks  # for INSTREAM: an iterator of byte strings to stream
        self.reply = bytearray()
        self.answer = defer.Deferred(lambda _: self.transport.abortConnection())

    def connectionMade(self):
        self.transport.write(b"z" + self.command + b"\0")
        if self.chunks is not None:
            self.transport.registerProducer(self, False)

    # -- pull producer: one chunk each time the transport can take more -----------
    def resumeProducing(self):
        chunk = next(self.chunks, None)
        if chunk is None:
            self.transport.write(b"\0\0\0\0")  # a zero-length chunk ends the stream
            self.transport.unregisterProducer()
            self.chunks = None
            return
        self.transport.write(struct.pack(">I", len(chunk)) + chunk)

    def stopProducing(self):
        self.chunks = None

    def dataReceived(self, data):
        self.reply += data
        if b"\0" in self.reply or len(self.reply) > _REPLY_LIMIT:
            self._finish()
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if self.reply:
            self._finish()
        elif not self.answer.called:
            self.answer.errback(ScanError("clamd closed the connection without an answer"))

    def _finish(self):
        if not self.answer.called:
            self.answer.callback(self.reply.split(b"\0")[0].decode("utf-8", "replace").strip())


def message_chunks(transaction):
    """Header, blank line and body, in chunks read from the spool as clamd takes them."""
    yield transaction.header_bytes() + b"\n"
    with transaction.body_file() as body:
        while chunk := body.read(_CHUNK):
            yield chunk


class ClamdScan(ScannerPlugin):
    default_timeout = 30.0

    def register(self, qp, *args):
        self.key_value_arguments(args, ("clamd_socket", "clamd_host", "clamd_port", "deny_viruses",
                                        "max_size", "scan_all"))
        self.setup_limits(self.args)
        port = self.args.get("clamd_port")
        self.clamd_port = port_argument("clamd_port", port) if port is not None else None
        self.clamd_host = self.args.get("clamd_host") or "localhost"
        self.clamd_socket = self.args.get("clamd_socket") or "/var/run/clamav/clamd.ctl"
        self.deny_viruses = is_yes(self.args.get("deny_viruses"), True)
        self.scan_all = is_yes(self.args.get("scan_all"), True)
        self.max_bytes = size_argument("max_size", self.args.get("max_size"), 1024) * 1024
        self._version = ("", 0.0)

    async def hook_data_post(self, transaction):
        if self.connection.notes.get("naughty"):
            self.log(LOGINFO, "skip, naughty")
            return DECLINED
        if self.not_to_scan(transaction, self.max_bytes, multipart_only=not self.scan_all):
            return DECLINED
        try:
            reply = await self.limited_scan(lambda: self.clamd(b"INSTREAM", message_chunks(transaction)))
            version = await self.version()
        except ScanError as exc:
            return self.scan_failed(str(exc))
        return self.verdict(transaction, reply, version)

    def verdict(self, transaction, reply, version):
        if reply.endswith(" FOUND"):
            found = reply.removeprefix("stream:").removesuffix(" FOUND").strip()
            self.log(LOGNOTICE, f"fail, found virus {found}")
            self.connection.notes["naughty"] = f"Virus found: {found}"
            self.adjust_karma(-1)
            return self.virus_answer(transaction, found, self.deny_viruses, f"Virus found: {found}", at_top=True)
        if not reply.endswith(" OK"):
            return self.scan_failed(f"clamd said: {reply}")
        self.log(LOGINFO, "pass, clean")
        transaction.header.add("X-Virus-Found", "No", 0)
        transaction.header.add("X-Virus-Checked", f"by {version} on {self.qp.config('me')}", 0)
        return DECLINED

    async def version(self):
        """`ClamAV <version>`, asked once an hour (`ClamAV` when clamd does not say)."""
        text, asked = self._version
        if not text or time.monotonic() - asked > _VERSION_MAX_AGE:
            try:
                reply = await self.limited_scan(lambda: self.clamd(b"VERSION"))
            except ScanError:
                reply = ""
            text = reply.split("/")[0] or "ClamAV"
            self._version = (text, time.monotonic())
        return text

    async def clamd(self, command, chunks=None):
        """Send one command to clamd; its reply text."""
        reactor = self.clock()
        if self.clamd_port:
            endpoint = tcp_endpoint(reactor, self.clamd_host, self.clamd_port, self.timeout)
            where = f"{self.clamd_host}:{self.clamd_port}"
        else:
            endpoint = endpoints.UNIXClientEndpoint(reactor, self.clamd_socket, timeout=self.timeout)
            where = self.clamd_socket
        client = ClamdCommand(command, chunks)
        try:
            await endpoints.connectProtocol(endpoint, client)
        except defer.CancelledError:  # the time-out
            raise
        except Exception as exc:  # Twisted's ConnectError family, DNS errors
            raise ScanError(f"cannot connect to clamd at {where}: {exc}") from None
        return await client.answer
