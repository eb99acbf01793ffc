"""virus/sophie - scan messages with Sophie, the Sophos (SAVI) scan daemon, over its unix socket.

Hook: data_post. Only multipart messages (those that can carry attachments)
up to max_size are scanned. The message (header, blank line, body) is copied
from the spool into a temporary file, readable by Sophie's user when the
spool dir is group or world accessible; the plugin connects to Sophie's
socket, sends the file's path and a newline, and reads one answer line:
- `1` or `1:<names>`: a virus. deny_viruses yes (the default): `552 Virus
  Found: <names>` (`Viruses Found` for a list); no: the message passes with
  `X-Virus-Found: Yes` and `X-Virus-Details: <names>`;
- `0`: clean, `X-Virus-Checked: Checked by SOPHIE on <me>` is added;
- `-1[:<error>]` or anything else, a socket that cannot be reached, no answer
  within timeout: the message passes with a logged warning, or with
  defer_on_error it gets `451 Unable to scan for viruses (<reason>), try again later`.
Tested with a small daemon written for the tests that speaks Sophie's
protocol on a unix socket; Sophie needs the commercial SAVI library.

Arguments (key value pairs):
- sophie_socket <path>: Sophie's socket (default /var/run/sophie).
- deny_viruses yes|no: reject infected messages (default yes).
- max_size <KB>: larger messages are not scanned (default 128).
- defer_on_error yes|no: 451 when no verdict could be had (default no).
- timeout <seconds>: waiting for a scan slot plus the scan (default 60).
- max_scans <n>: scans at once per child, more wait (default 4).

Example config/plugins line:
    virus/sophie sophie_socket /var/run/sophie deny_viruses yes

Differences from qpsmtpd: qpsmtpd blocks the process while Sophie scans,
dies (a 451 for the client, from the crash) when the socket cannot be reached,
and takes Sophie's error answer `-1` for clean; we give no verdict for it.
"""

import re

from twisted.internet import defer, endpoints, protocol

from qpsmtpd_py.constants import DECLINED, LOGERROR
from qpsmtpd_py.virus_scan import ScanError, ScannerPlugin, is_yes, program_path, size_argument

_VIRUS = re.compile(r"^1:?(.*)$")
_ANSWER_LIMIT = 256  # qpsmtpd reads one 256-byte answer


class SophieQuery(protocol.Protocol):
    """Sends one path, collects the answer line; `answer` fires with it."""

    def __init__(self, path: bytes):
        self.path = path
        self.received = bytearray()
        self.answer = defer.Deferred(lambda _: self.transport.abortConnection())

    def connectionMade(self):
        self.transport.write(self.path + b"\n")

    def dataReceived(self, data):
        self.received += data
        if b"\n" in self.received or len(self.received) >= _ANSWER_LIMIT:
            self._finish()
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self._finish()

    def _finish(self):
        if not self.answer.called:
            text = bytes(self.received[:_ANSWER_LIMIT]).split(b"\n")[0]
            self.answer.callback(text.decode("utf-8", "replace").strip())


class Sophie(ScannerPlugin):
    def register(self, qp, *args):
        values = self.key_value_arguments(args, ("sophie_socket", "deny_viruses", "max_size"))
        self.setup_limits(values)
        self.socket = program_path("sophie_socket", values.get("sophie_socket", "/var/run/sophie"))
        self.deny_viruses = is_yes(values.get("deny_viruses"), True)
        self.max_bytes = size_argument("max_size", values.get("max_size"), 128) * 1024

    async def hook_data_post(self, transaction):
        if self.not_to_scan(transaction, self.max_bytes, level=LOGERROR):
            return DECLINED
        try:
            answer = await self.limited_scan(lambda: self.scan(transaction))
        except ScanError as exc:
            return self.scan_failed(str(exc))
        virus = _VIRUS.match(answer)
        if virus:
            names = virus.group(1)
            self.log(LOGERROR, f"virus(es) found: {names}")
            return self.virus_answer(transaction, names, self.deny_viruses,
                                     f"Virus{'es' if ',' in names else ''} Found: {names}")
        if answer != "0":
            return self.scan_failed(f"Sophie said {answer!r}" if answer else "Sophie gave no answer")
        transaction.header.add("X-Virus-Checked", f"Checked by SOPHIE on {self.qp.config('me')}")
        return DECLINED

    async def scan(self, transaction):
        path = await self.message_file(transaction)
        endpoint = endpoints.UNIXClientEndpoint(self.clock(), self.socket, timeout=self.timeout)
        query = SophieQuery(bytes(path))
        try:
            await endpoints.connectProtocol(endpoint, query)
        except defer.CancelledError:  # the time-out
            raise
        except Exception as exc:  # Twisted's ConnectError family
            raise ScanError(f"cannot connect to Sophie at {self.socket}: {exc}") from None
        return await query.answer
