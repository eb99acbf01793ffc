"""SMTPSession: the SMTP state machine. Every verb -> hooks -> one reply.

It subclasses twisted.mail.smtp.ESMTP (the design card) but owns reading,
dispatch, DATA and every reply, because the stock class answers pipelined
commands out of order, executes plaintext injected after STARTTLS, resyncs into
command mode after a long DATA line, and cannot give qpsmtpd's reply texts
(reference/twisted-design.md §1.2).

One command is in flight at a time: while its hooks are pending the session
reads nothing more (the transport is paused), then answers, then takes the next
buffered line. So pipelined clients get their replies in order even when a
plugin answers asynchronously (RFC 2920).

Every public step returns None when it finished synchronously, or a Deferred.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, protocol
from twisted.mail import smtp
from twisted.python.failure import Failure

from . import command
from .address import Address
from .auth import AuthCommand
from .connection import Connection
from .constants import (
    DENY,
    DENY_DISCONNECT,
    DENYSOFT,
    DENYSOFT_DISCONNECT,
    DONE,
    LOGCRIT,
    LOGDEBUG,
    LOGERROR,
    LOGINFO,
    LOGNOTICE,
    OK,
)
from .data_phase import NEED_MORE, DataPhase
from .hooks import NO_RESULT, HookResult, HookTimeout, is_deferred
from .log import current_session
from .session_tls import TLSSession
from .tls import describe_error
from .transaction import Transaction

if TYPE_CHECKING:
    from .data_reader import DataReader
    from .qp import Qpsmtpd
    from .session_factory import SessionFactory

# RFC 5321 4.5.3.1.4: 512 octets for a command line; MAIL and RCPT get room for
# extension parameters (RFC 1869 4.7), AUTH for its initial response (RFC 4954 4).
COMMAND_LINE_LIMIT = 512
LINE_LIMITS = {"mail": 1024, "rcpt": 1024, "auth": 12288}
# A line with no end in sight longer than this closes the session: we cannot resync.
HARD_LINE_LIMIT = 12288 + 2
DEFAULT_DATA_LINE_LIMIT = 64 * 1024
DEFAULT_TIMEOUT = 1200
# Seconds a closing session may take to flush its last replies before it is cut.
CLOSE_GRACE = 2.0
_VERB = re.compile(r"^\w{1,12}$", re.ASCII)
_NULL_SENDERS = frozenset(("<>", "<#@[]>"))


class SMTPSession(DataPhase, AuthCommand, TLSSession, smtp.ESMTP):
    """One SMTP session, from accept to close."""

    def __init__(self, qp: Qpsmtpd, server: SessionFactory) -> None:
        smtp.ESMTP.__init__(self)
        self.qp = qp
        self.server = server
        self.connection: Connection = None  # type: ignore[assignment]  # set at connectionMade
        self._transaction: Transaction | None = None
        self._buffer = bytearray()
        self._busy = True  # until the greeting is sent, nothing is read
        self._write_blocked = False
        self._reading_paused = False
        self._reader: DataReader | None = None  # set while a message is being received
        self._preamble: tuple[Callable[[bytes], int | None], defer.Deferred[bytes]] | None = None
        self._closing = False  # we are closing: read nothing more
        self._closing_since = 0.0
        self._gone = False  # the connection is closed
        self._greeted = False  # the connect stage is over (220 sent)
        self._disconnect_hooks_done = False
        self.last_read = time.monotonic()
        self.scoreboard_slot = -1
        self._auth_results_connection: list[str] = []
        self.commands: dict[str, Callable[[str], Any]] = {
            "helo": self.do_helo, "ehlo": self.do_ehlo, "rset": self.do_rset, "mail": self.do_mail,
            "rcpt": self.do_rcpt, "data": self.do_data, "help": self.do_help, "vrfy": self.do_vrfy,
            "noop": self.do_noop, "quit": self.do_quit, "auth": self.do_auth,
            "starttls": self.do_starttls,
        }

    # -- plumbing ------------------------------------------------------------------------
    @property
    def transaction(self) -> Transaction:
        if self._transaction is None:
            self._transaction = Transaction(self.qp.spool_dir, self.qp.size_threshold)
        return self._transaction

    def log(self, level: int, message: str) -> None:
        current_session.set(self)
        self.qp.logger.log(level, message)

    def config(self, name: str) -> str | None:
        return self.qp.config(name)

    def record_hook_result(self, plugin: str, hook: str, code: int) -> None:
        """Record a plugin's answer in its own notes dict, as qpsmtpd does.

        Only into a dict the plugin already keeps under its name: qpsmtpd's
        autovivified hash is thrown away, so plugins test `notes(name)` for
        their own data and must not see one appear by itself.
        """
        notes = self._transaction.notes if self._transaction is not None else self.connection.notes
        entry = notes.get(plugin)
        if isinstance(entry, dict):
            entry[f"hook_{hook}"] = {"return": code}

    def add_auth_result(self, result: str) -> None:
        """Results found during a transaction belong to that message only (qpsmtpd #320)."""
        if self._transaction is not None and self._transaction.mail_started:
            self._transaction.notes.setdefault("authentication_results", []).append(result)
        else:
            self._auth_results_connection.append(result)

    def auth_results(self) -> list[str]:
        txn = self._transaction.notes.get("authentication_results", []) if self._transaction else []
        return self._auth_results_connection + txn

    def run_hooks(self, hook: str, *args: Any) -> HookResult | defer.Deferred[HookResult]:
        # Most hooks have no plugin: answer those without entering the engine.
        if hook not in self.qp.hooks:
            return NO_RESULT
        return self.qp.runner.run(self, hook, *args)

    def _then(self, outcome: Any, step: Callable[[Any], Any]) -> Any:
        """Call `step` with `outcome` now, or when the Deferred `outcome` fires."""
        if is_deferred(outcome):
            # Once the client is gone, later steps (replies, queueing) have no one to answer.
            return outcome.addCallback(lambda result: None if self._gone else step(result))
        return step(outcome)

    def respond(self, code: int, *lines: str) -> None:
        """Send one reply; multi-line replies use `code-` on all lines but the last."""
        if self._closing and self.transport is None:
            return
        if len(lines) == 1 and "\n" not in lines[0] and "\r" not in lines[0]:
            out = f"{code} {lines[0]}\r\n"  # the common case, kept cheap
        else:
            texts: list[str] = []
            for line in lines:
                texts.extend(str(line).replace("\r", "").split("\n"))
            last = len(texts) - 1
            out = "".join(f"{code}{' ' if i == last else '-'}{text}\r\n" for i, text in enumerate(texts))
        if self.qp.logger.level >= LOGINFO or self.qp.logger.hook_runner is not None:
            self.log(LOGINFO, out.rstrip("\r\n").replace("\r\n", " / "))
        self._send(out.encode("utf-8", "surrogateescape"))

    def _send(self, data: bytes) -> None:
        """Write a reply: straight to the socket when nothing is queued before it.

        Twisted's write() queues the bytes and has the socket watched for
        writability until they are sent: two epoll_ctl calls and a reactor round
        per reply, on top of the send() itself. With nothing queued (the usual
        case: one reply per command) sending now keeps the order; what the kernel
        does not take, and every write on TLS or a closing connection, goes
        through write() as before.
        """
        transport = self.transport
        sock = getattr(transport, "socket", None)
        if (sock is None or getattr(transport, "TLS", True) or not transport.connected or transport.disconnecting
                or transport._writeDisconnected or transport._tempDataBuffer or transport.dataBuffer):
            transport.write(data)
            return
        try:
            sent = sock.send(data)
        except OSError:  # EAGAIN, or an error that write() reports as connectionLost
            sent = 0
        if sent < len(data):
            transport.write(data[sent:])

    def respond_result(self, code: int, result: HookResult, default: str) -> None:
        """Reply with the plugin's message, or qpsmtpd's default text for this case."""
        messages = [m for m in result.messages if isinstance(m, str)]
        if not messages or not messages[0]:
            messages = [default]
        self.respond(code, *messages)

    # -- connection life ------------------------------------------------------------------
    def connectionMade(self) -> None:
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.connection = Connection(peer.host, peer.port, host.host, host.port)
        current_session.set(self)
        self.server.session_started(self)
        self.transport.registerProducer(self, True)
        self.log(LOGNOTICE, f"Connection from {self.connection.remote_info} [{self.connection.remote_ip}]")
        if self.qp.tls is not None and self.connection.local_port in self.server.implicit_tls_ports:
            self.start_implicit_tls()  # greets once the handshake is done
            return
        self._start_command(self._greet())

    def _greet(self) -> Any:
        if "pre-connection" not in self.qp.hooks:
            # Its arguments list every session's client IP from the scoreboard: with
            # thousands of sessions that costs more than the rest of the greeting.
            return self._pre_connection_respond(NO_RESULT)
        info = self.server.pre_connection_info(self)
        return self._then(self.run_hooks("pre-connection", info), self._pre_connection_respond)

    def _pre_connection_respond(self, result: HookResult) -> Any:
        if result.code in (DENYSOFT, DENYSOFT_DISCONNECT):
            self.respond_result(451, result, "Sorry, try again later")
            return self.disconnect()
        if result.code in (DENY, DENY_DISCONNECT):
            self.respond_result(550, result, "Sorry, service not available to you")
            return self.disconnect()
        return self._then(self.run_hooks("connect"), self._connect_respond)

    def _connect_respond(self, result: HookResult) -> Any:
        if result.code in (DENY, DENY_DISCONNECT):
            self.respond_result(550, result, "Connection from you denied, bye bye.")
            return self.disconnect()
        if result.code in (DENYSOFT, DENYSOFT_DISCONNECT):
            self.respond_result(450, result, "Connection from you temporarily denied, bye bye.")
            return self.disconnect()
        if result.code != DONE:
            self.respond(220, self.greeting_text())
        self._greeted = True
        return None

    def greeting_text(self) -> str:
        greeting = self.config("smtpgreeting")
        if greeting:
            if not re.search(r"(^|\W)ESMTP(\W|$)", greeting):
                greeting += " ESMTP"
            return greeting
        return (f"{self.config('me')} ESMTP {self.qp.software} {self.qp.version} ready; "
                "send us your mail, but not your spam.")

    def disconnect(self) -> None:
        """Run the disconnect hooks and close (qpsmtpd's disconnect())."""
        if not self._disconnect_hooks_done:
            self._disconnect_hooks_done = True
            self._fire_and_forget("disconnect")
            self.connection.notes["disconnected"] = 1
            self.reset_transaction()
        if not self._closing:
            self._closing = True
            self._closing_since = time.monotonic()
        self._buffer.clear()
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        current_session.set(self)
        if self.tls_started and not self.tls_active:
            self.log(LOGNOTICE, f"TLS negotiation failed: {describe_error(reason.value)}")
        self._closing = True
        self._gone = True
        if self._busy:
            # A command is in flight (say, a queue plugin writing the message):
            # its transaction must live until it is done; _command_done finishes.
            return
        self._finish_session()

    def _finish_session(self) -> None:
        if self._reader is not None:
            self._reader = None
            self.log(LOGINFO, "connection lost during DATA: message discarded")
        if not self._disconnect_hooks_done:
            self._disconnect_hooks_done = True
            self.reset_transaction()
            self._fire_and_forget("disconnect")
        self._fire_and_forget("post-connection")
        if self._transaction is not None:
            self._transaction.close()
        self.server.session_ended(self)
        current_session.set(None)

    def _fire_and_forget(self, hook: str) -> None:
        """Hooks whose result is ignored; an asynchronous one is not waited for."""
        outcome = self.run_hooks(hook)
        if isinstance(outcome, defer.Deferred):
            outcome.addErrback(lambda f: self.log(LOGERROR, f"hook {hook}: {f.getErrorMessage()}"))
            outcome.addBoth(lambda _: current_session.set(None))  # a late answer leaves no session behind

    def reset_transaction(self) -> None:
        if self._transaction is None:
            return
        self._fire_and_forget("reset_transaction")
        self._transaction.close()
        self._transaction = None

    def read_preamble(self, measure: Callable[[bytes], int | None], timeout: float) -> defer.Deferred[bytes]:
        """Read a header that precedes SMTP (a PROXY protocol header), before the greeting.

        `measure(data)` returns the header's length once `data` holds all of it,
        None while it is incomplete, and raises ValueError for bytes that cannot
        be one. The Deferred fires with the header, which is taken off the input.
        """
        from twisted.internet import reactor

        waiter: defer.Deferred[bytes] = defer.Deferred()
        self._preamble = (measure, waiter)
        timer = reactor.callLater(timeout, self._preamble_failed, TimeoutError("no complete header in time"))
        waiter.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
        if not self._check_preamble():
            self._update_reading()
        return waiter

    def _check_preamble(self) -> bool:
        """Fire the preamble's Deferred if the buffer holds all of it; True when done."""
        if self._preamble is None:
            return True
        measure, waiter = self._preamble
        try:
            length = measure(bytes(self._buffer))
        except ValueError as exc:
            self._preamble_failed(exc)
            return True
        if length is None:
            return False
        header = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._preamble = None
        self._update_reading()
        waiter.callback(header)
        return True

    def _preamble_failed(self, error: Exception) -> None:
        if self._preamble is not None:
            _, waiter = self._preamble
            self._preamble = None
            self._update_reading()
            waiter.errback(error)

    def client_has_sent(self) -> bool:
        """Has the client sent anything we have not processed yet? (for earlytalker)

        Reading is paused while a hook runs, so unread bytes wait in the kernel:
        peek at them without taking them.
        """
        if self._buffer:
            return True
        if self.tls_started:
            return False  # the socket holds TLS records, not commands
        try:
            return bool(self.transport.getHandle().recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (BlockingIOError, AttributeError, OSError):
            return False

    def shutdown(self) -> None:
        """The child is stopping: say so, but never while a command is in flight.

        A message still being received is cut off; its sender got no 250 and retries.
        """
        if self._busy or self._closing:
            return
        current_session.set(self)
        self.respond(421, f"{self.config('me')} Service shutting down, closing transmission channel")
        self.disconnect()

    def check_idle(self, now: float) -> None:
        """Called by the child's sweeper: close a session idle past its timeout.

        A client that does not read what we send would hold a closing session
        forever (loseConnection waits for the send buffer to drain), so a
        session still open CLOSE_GRACE seconds after closing is aborted.
        """
        if self._closing:
            if not self._gone and now - self._closing_since > CLOSE_GRACE:
                self.transport.abortConnection()
            return
        if self._busy:
            return
        limit = self.server.data_timeout if self._reader is not None else self.server.command_timeout
        if now - self.last_read > limit:
            current_session.set(self)
            self.log(LOGINFO, "timeout, disconnecting")
            self.respond(421, "Connection Timed Out")
            self.disconnect()
            if self._write_blocked:
                self.transport.abortConnection()  # it reads nothing: the 421 cannot reach it anyway

    # -- reading ----------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        if self._closing:
            return
        self._buffer += data
        if self._preamble is not None:
            self._check_preamble()
            return
        if not self._busy:
            current_session.set(self)
            self._process()
            current_session.set(None)  # lines logged by timers later belong to no session

    def pauseProducing(self) -> None:
        """The client does not read our replies: stop reading its commands."""
        self._write_blocked = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self._write_blocked = False
        self._update_reading()
        if not self._busy:
            self._process()

    def stopProducing(self) -> None:
        self._closing = True

    def _update_reading(self) -> None:
        # A hook waiting for a preamble needs input even though a command is in flight.
        pause = (self._busy or self._write_blocked) and self._preamble is None
        if pause != self._reading_paused and self.transport is not None and not self._closing:
            self._reading_paused = pause
            if pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def _start_command(self, outcome: Any) -> None:
        """Track one command; reading resumes when it is done."""
        if is_deferred(outcome):
            self._busy = True
            self._update_reading()
            outcome.addErrback(self._command_failed)
            outcome.addBoth(self._command_done)
        else:
            self._busy = False
            self._update_reading()
            if self._buffer and not self._closing:
                self._process()

    def _command_done(self, _: Any) -> None:
        self._busy = False
        if self._gone:
            current_session.set(self)
            self._finish_session()
            return
        if self._closing:
            return
        current_session.set(self)
        self._update_reading()
        self._process()
        current_session.set(None)

    def _command_failed(self, failure: Failure) -> None:
        current_session.set(self)
        if failure.check(HookTimeout):
            reply = f"Timeout in plugin {failure.value.plugin}, try again later"
        else:
            self.log(LOGCRIT, f"internal error: {failure.getTraceback()}")
            reply = "Internal error - try again later"
        if self._gone or self._closing:
            return
        if self._reader is not None:
            # Mid-message: keep reading to the terminator (the body must never be
            # taken for commands), then refuse the message.
            self._reader.reject(451, reply)
            return
        self.respond(451, reply)
        if not self._greeted:
            self.disconnect()  # no connect-stage check may be skipped
        elif self._transaction is not None and self._transaction.header is not None:
            self.reset_transaction()  # the message failed after its data was in

    def _process(self) -> None:
        """Handle buffered input until a command goes asynchronous or input runs out."""
        while self._buffer and not self._busy and not self._closing and not self._write_blocked:
            try:
                if self._reader is not None:
                    outcome = self._feed_data(self._reader)
                    if outcome is NEED_MORE:
                        return
                else:
                    end = self._buffer.find(b"\n")
                    if end < 0:
                        if len(self._buffer) > HARD_LINE_LIMIT:
                            self.respond(500, "Line too long")
                            self.disconnect()
                        return
                    line = bytes(self._buffer[:end])
                    del self._buffer[:end + 1]
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    if self._expect is not None:  # an AUTH exchange waits for this line
                        step, self._expect = self._expect, None
                        outcome = step(line.decode("utf-8", "surrogateescape"))
                    else:
                        outcome = self._dispatch(line)
            except Exception:  # our bug must cost one command, not the session
                self._command_failed(Failure())
                continue
            if is_deferred(outcome):
                self._start_command(outcome)
                return

    # -- commands ---------------------------------------------------------------------
    def _dispatch(self, raw: bytes) -> Any:
        verb, _, rest = raw.partition(b" ")
        name = verb.decode("ascii", "replace").lower()
        if len(raw) + 2 > LINE_LIMITS.get(name, COMMAND_LINE_LIMIT):  # the limits count the CRLF
            self.respond(500, "Line too long")
            return None
        if b"\0" in raw or b"\r" in raw:
            self.respond(500, "Syntax error: NUL or bare CR in command")
            return None
        line = rest.lstrip(b" ").decode("utf-8", "surrogateescape")
        if self.qp.logger.level >= LOGINFO or self.qp.logger.hook_runner is not None:
            shown = raw.decode("utf-8", "replace")
            if name == "auth" and self.qp.logger.level < LOGDEBUG:
                shown = " ".join(shown.split()[:2])  # never log credentials (qpsmtpd #249)
            self.log(LOGINFO, f"dispatching {shown}")
        handler = self.commands.get(name) if _VERB.match(name) else None
        if handler is None:
            return self._then(self.run_hooks("unrecognized_command", name, line), self._unrecognized_respond)
        return handler(line)

    def _unrecognized_respond(self, result: HookResult) -> None:
        if result.code == DENY_DISCONNECT:
            self.respond_result(521, result, "Unrecognized command")
            self.disconnect()
        elif result.code == DENY:
            self.respond_result(500, result, "Unrecognized command")
        elif result.code != DONE:
            self.respond(500, "Unrecognized command")

    def _parse(self, name: str, line: str) -> tuple[int, list[str]]:
        """Qpsmtpd::Command->parse, with a `<name>_parse` hook's parser if one is given."""
        if f"{name}_parse" in self.qp.hooks:
            result = self.qp.runner.run_sync(self, f"{name}_parse")
            parser = result.messages[0] if result.messages and callable(result.messages[0]) else None
            if parser is not None:
                try:
                    code, *values = parser(self, name, line)
                except Exception as exc:
                    self.log(LOGERROR, f"Failed to parse command [{name}]: {exc}")
                    return DENY, [line]
                return code, [str(v) for v in values]
        return command.parse(name, line)

    def do_helo(self, line: str) -> Any:
        return self._hello("helo", line)

    def do_ehlo(self, line: str) -> Any:
        return self._hello("ehlo", line)

    def _hello(self, kind: str, line: str) -> Any:
        code, values = self._parse(kind, line)
        if code != OK or not values or not values[0]:
            self.respond(501, f"{kind} requires domain/address - see RFC-2821 4.1.1.1")
            return None
        if self.connection.hello:
            # RFC 5321 4.1.4: a second EHLO/HELO resets the session like RSET.
            # qpsmtpd refuses it with 503, which breaks clients after STARTTLS.
            self.reset_transaction()
            self.connection.reset_greeting()
        return self._then(self.run_hooks(kind, values[0], *values[1:]),
                          lambda result: self._hello_respond(kind, values[0], result))

    def _deny_reply(self, result: HookResult, default: str) -> bool:
        """qpsmtpd's is_deny_response(): 550/450, and disconnect for *_DISCONNECT."""
        if result.code in (DENY, DENY_DISCONNECT):
            self.respond_result(550, result, default)
        elif result.code in (DENYSOFT, DENYSOFT_DISCONNECT):
            self.respond_result(450, result, default)
        else:
            return False
        if result.code in (DENY_DISCONNECT, DENYSOFT_DISCONNECT):
            self.disconnect()
        return True

    def _hello_respond(self, kind: str, host: str, result: HookResult) -> None:
        if result.code == DONE:
            return
        # qpsmtpd sends nothing for a denial without a message; a client would hang.
        if self._deny_reply(result, f"{kind.upper()} denied"):
            return
        self.connection.hello = kind
        self.connection.hello_host = host
        hi = f"{self.config('me')} Hi {self.connection.remote_info} [{self.connection.remote_ip}]"
        if kind == "helo":
            self.respond(250, f"{hi}; I am so happy to meet you.")
            return
        lines = [hi, "PIPELINING", "8BITMIME"]
        if self.server.databytes:
            lines.append(f"SIZE {self.server.databytes}")
        lines.extend(self.transaction.notes.get("capabilities", []))
        auth = self.auth_capability()
        if auth:
            lines.append(auth)
        self.respond(250, *lines)

    def do_rset(self, line: str) -> None:
        self.reset_transaction()
        self.respond(250, "OK")

    def do_noop(self, line: str) -> Any:
        return self._then(self.run_hooks("noop"), self._noop_respond)

    def _noop_respond(self, result: HookResult) -> None:
        if result.code == DONE:
            return
        if result.code in (DENY, DENY_DISCONNECT):
            self.respond_result(500, result, "Stop wasting my time.")
            if result.code == DENY_DISCONNECT:
                self.disconnect()
            return
        self.respond(250, "OK")

    def do_vrfy(self, line: str) -> Any:
        return self._then(self.run_hooks("vrfy"), self._vrfy_respond)

    def _vrfy_respond(self, result: HookResult) -> None:
        if result.code == DONE:
            return
        if result.code == DENY:
            self.respond_result(554, result, "Access Denied")
            self.reset_transaction()
        elif result.code == OK:
            self.respond_result(250, result, "User OK")
        else:
            self.respond(252, "Just try sending a mail and we'll see how it turns out ...")

    def do_help(self, line: str) -> Any:
        return self._then(self.run_hooks("help", line), self._help_respond)

    def _help_respond(self, result: HookResult) -> None:
        if result.code == DONE:
            return
        if result.code == DENY:
            self.respond_result(500, result, "Syntax error, command not recognized")
            return
        messages = [m for m in result.messages if isinstance(m, str) and m]
        if not messages:
            version = "" if self.config("smtpgreeting") else f" {self.qp.version}"
            messages = [f"This is {self.qp.software}{version}",
                        "See man qpsmtpd-py-prefork(8) and the README of qpsmtpd-py"]
        self.respond(214, *messages)

    def do_quit(self, line: str) -> Any:
        return self._then(self.run_hooks("quit"), self._quit_respond)

    def _quit_respond(self, result: HookResult) -> None:
        if result.code != DONE:
            self.respond_result(221, result, f"{self.config('me')} closing connection. Have a wonderful day.")
        self.disconnect()

    # -- MAIL / RCPT ------------------------------------------------------------------------
    def do_mail(self, line: str) -> Any:
        # qmail-smtpd (and so qpsmtpd) lets a second MAIL start a new transaction.
        self.reset_transaction()
        if not self.connection.hello:
            self.respond(503, "please say hello first ...")
            return None
        self.connection.notes["envelope_from"] = line
        self.transaction.mail_started = True
        code, values = self._parse("mail", line)
        if code != OK:
            self.respond(501, values[0] if values and values[0] else "Syntax error in command")
            return None
        sender_text, params = values[0], command.params_dict(values[1:])
        declared = params.get("size")
        if declared is not None and self.server.databytes:
            if not declared.isdigit():
                self.respond(501, "Syntax error in parameters (SIZE)")
                return None
            if int(declared) > self.server.databytes:
                self.respond(552, "Message size exceeds fixed maximum message size")
                return None
        return self._then(self.run_hooks("mail_pre", sender_text, params),
                          lambda result: self._mail_pre_respond(sender_text, params, result))

    def _mail_pre_respond(self, sender_text: str, params: dict, result: HookResult) -> Any:
        if result.code == OK and result.messages:
            sender_text = result.messages[0]
        if not (sender_text.startswith("<") and sender_text.endswith(">")):
            self.respond(501, "could not parse your mail from command")
            return None
        if sender_text in _NULL_SENDERS or "[undefined]" in sender_text:
            sender: Address | None = Address.null()
        else:
            sender = Address.parse(sender_text)
        if sender is None:
            self.respond(501, "could not parse your mail from command")
            return None
        return self._then(self.run_hooks("mail", sender, params),
                          lambda result: self._mail_respond(sender, result))

    def _mail_respond(self, sender: Address, result: HookResult) -> None:
        code, shown = result.code, sender.format()
        if code == DONE:
            return
        if code in (DENY, DENY_DISCONNECT):
            self.log(LOGINFO, f"deny mail from {shown} ({result.message})")
            self.respond_result(550, result, f"{shown}, denied")
        elif code in (DENYSOFT, DENYSOFT_DISCONNECT):
            self.log(LOGINFO, f"denysoft mail from {shown} ({result.message})")
            self.respond_result(421 if code == DENYSOFT_DISCONNECT else 450, result, f"{shown}, temporarily denied")
        else:
            self.respond(250, f"{shown}, sender OK - how exciting to get mail from you!")
            self.transaction.sender = sender
            return
        if code in (DENY_DISCONNECT, DENYSOFT_DISCONNECT):
            self.disconnect()

    def do_rcpt(self, line: str) -> Any:
        self.connection.notes["envelope_rcpt"] = line
        code, values = self._parse("rcpt", line)
        if code != OK:
            self.respond(501, values[0] if values and values[0] else "Syntax error in command")
            return None
        if self._transaction is None or self._transaction.sender is None:
            self.respond(503, "Use MAIL before RCPT")
            return None
        rcpt_text, params = values[0], command.params_dict(values[1:])
        return self._then(self.run_hooks("rcpt_pre", rcpt_text, params),
                          lambda result: self._rcpt_pre_respond(rcpt_text, params, result))

    def _rcpt_pre_respond(self, rcpt_text: str, params: dict, result: HookResult) -> Any:
        if result.code == OK and result.messages:
            rcpt_text = result.messages[0]
        recipient = Address.parse(rcpt_text) if rcpt_text.startswith("<") and rcpt_text.endswith(">") else None
        if recipient is None or recipient.is_null:
            self.respond(501, "could not parse recipient")
            return None
        return self._then(self.run_hooks("rcpt", recipient, params),
                          lambda result: self._rcpt_respond(recipient, result))

    def _rcpt_respond(self, recipient: Address, result: HookResult) -> None:
        code = result.code
        if code == DONE:
            return
        if code == DENY:
            self.respond_result(550, result, "relaying denied")
        elif code == DENYSOFT:
            self.respond_result(450, result, "relaying denied")
        elif code == DENY_DISCONNECT:
            self.respond_result(550, result, "delivery denied")
            self.disconnect()
        elif code == DENYSOFT_DISCONNECT:
            self.respond_result(421, result, "relaying denied")
            self.disconnect()
        elif code == OK:
            self.respond(250, f"{recipient.format()}, recipient ok")
            self.transaction.add_recipient(recipient)
        else:
            self.respond(450, "No plugin decided if relaying is allowed")
