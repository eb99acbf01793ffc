"""The session's side of TLS: STARTTLS (RFC 3207) and implicit TLS (RFC 8314).

Mixed into SMTPSession. The `tls` plugin decides when (it answers STARTTLS);
this does it safely: whatever the client sent after STARTTLS in plaintext is
thrown away, never executed (CVE-2011-0411), and the session forgets its
greeting and transaction, so the client must EHLO again over TLS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from .constants import LOGINFO, LOGNOTICE
from .tls import cipher_description

HANDSHAKE_TIMEOUT = 30  # seconds a client may take to finish an implicit TLS handshake

try:
    from twisted.internet.interfaces import IHandshakeListener
except ImportError:  # pragma: no cover - every supported Twisted has it
    IHandshakeListener = None

if TYPE_CHECKING:
    from .connection import Connection
    from .qp import Qpsmtpd


@implementer(IHandshakeListener)
class TLSSession:
    """STARTTLS and implicit TLS for SMTPSession (which provides the attributes below)."""

    qp: Qpsmtpd
    connection: Connection
    _buffer: bytearray

    tls_started = False  # a handshake was started on this connection
    _handshake_timer = None  # implicit TLS: the greeting waits for the handshake

    @property
    def tls_active(self) -> bool:
        """The handshake is done: everything now goes over TLS."""
        return self.connection.tls_cipher is not None

    def do_starttls(self, line: str) -> Any:
        """STARTTLS: offered (by the tls plugin) only when there is a certificate."""
        if self.qp.tls is None:
            return self._then(self.run_hooks("unrecognized_command", "starttls", line), self._unrecognized_respond)
        if line.strip():
            self.respond(501, "Syntax error (no parameters allowed)")  # RFC 3207 4; qpsmtpd says 500
        elif self.tls_started:
            self.respond(503, "TLS already active")
        elif self.connection.notes.get("auth_user"):
            self.respond(503, "STARTTLS not allowed after AUTH")
        else:
            self.respond(220, "Go ahead with TLS")
            self.start_tls()
        return None

    def start_tls(self) -> None:
        """Switch the connection to TLS now; the caller has sent the `220` already."""
        dropped = len(self._buffer)
        if dropped:
            self.log(LOGNOTICE, f"discarding {dropped} bytes sent in plaintext after STARTTLS")
        self._buffer.clear()
        self.reset_transaction()
        self.connection.reset_greeting()
        self.tls_started = True
        self.transport.startTLS(self.qp.tls)

    def start_implicit_tls(self) -> None:
        """SMTPS: the handshake comes first; the connect hooks and greeting follow it.

        Nothing may be written before the handshake is done: Twisted's TLS
        layer would buffer it and pause the session, which stops reading the
        handshake itself.
        """
        from twisted.internet import reactor

        self.tls_started = True
        self.transport.startTLS(self.qp.tls)
        self._handshake_timer = reactor.callLater(HANDSHAKE_TIMEOUT, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        if not self.tls_active and not self._gone:
            self.log(LOGINFO, f"no TLS handshake within {HANDSHAKE_TIMEOUT}s, disconnecting")
            self.transport.abortConnection()

    def handshakeCompleted(self) -> None:  # noqa: N802 (Twisted's IHandshakeListener)
        version, cipher = cipher_description(self.transport.getHandle())
        self.connection.tls_cipher = cipher
        self.connection.notes["tls_enabled"] = 1
        self.connection.notes["tls_version"] = version
        self.log(LOGINFO, f"TLS established: {version} {cipher}")
        timer = self._handshake_timer
        if timer is not None and timer.active():
            timer.cancel()
            self._start_command(self._greet())
