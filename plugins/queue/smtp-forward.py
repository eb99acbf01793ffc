"""queue/smtp-forward - forward accepted mail over SMTP to the next mail server.

Hook: queue (and rcpt with `check_rcpt 1`). The message is relayed while the
client waits: the client gets `250` only after the downstream server answered
2xx to the end of the data, so the message is never acknowledged before the
next hop has it. The child serving the session keeps serving its other
sessions meanwhile.

Arguments:
    queue/smtp-forward <hosts> [<port>] [xclient] [<key> <value>]...
The first three are qpsmtpd's: `queue/smtp-forward 10.2.2.2`,
`queue/smtp-forward 10.2.2.2 9025` and `queue/smtp-forward 10.2.2.2 9025 xclient`
mean what they meant there (and `xclient` also works without the port).
- <hosts>: one downstream server, or several separated by commas, tried in
  that order: `mx1.example.org,mx2.example.org:2525,[2001:db8::25]:25`.
  Each is a host name, an IPv4 address or an IPv6 address (in brackets when a
  port follows), with an optional `:port`. A name is looked up in DNS (all
  its addresses, IPv6 and IPv4, are tried); MX records are not used.
- <port>: the port of every host that has none of its own. Default 25.
- xclient: send the original client's name, address, port, protocol and
  HELO name with Postfix's XCLIENT command (see below).
- connect_timeout <seconds>: to connect to one host and get its greeting
  (default 10); past it the next host is tried.
- timeout <seconds>: for the whole forwarding of one message, every host
  tried included (default 120); past it the client gets 451. Keep it below
  the daemon's plugin_timeout (300).
- tls may|verify|no: STARTTLS to the downstream. `may` (the default):
  when the server offers STARTTLS, encrypt, without checking its certificate
  (like Postfix's `smtp_tls_security_level = may`); a server that does not
  offer it, or answers STARTTLS with an error, gets the mail in clear.
  `verify`: TLS is required and the certificate must be valid for the host
  name as written in <hosts> (or the IP address), signed by a CA of the
  system or of `tls_ca`; a host that fails this is skipped. `no`: never.
- tls_ca <file>: PEM file of the CAs trusted with `tls verify`, instead of
  the system's.
- check_rcpt 0|1: 1 checks every recipient with the downstream at RCPT time
  (see below). Default 0.
- helo <name>: the name sent in EHLO. Default: the `me` config.
- keepalive <seconds>: keep the connection of a message that went through
  open for the next message of the same child process, up to that long
  (at most 8 such connections per child); 0, the default, closes each
  connection after its message, as qpsmtpd. Not with `xclient`, whose
  session describes one client. A kept connection found closed when used is
  replaced by a new one, and no message is lost or doubled by this.

Which host: the hosts are tried in order until one takes the message. The
next one is tried when a host cannot be connected to or does not greet in
time, does not greet with 220, refuses EHLO and HELO, fails the TLS
handshake (or does not offer STARTTLS with `tls verify`), lacks XCLIENT when
`xclient` is set, answers 421 or
drops the connection before the message was sent, or answers MAIL FROM with
a 4xx. Once the end of the data has been sent, no other host is tried (the
first may have the message): a lost connection then gives 451.

Replies to the client (its queue answer):
- the downstream's 2xx to the end of data: `250 Queued as <queue id>`, the
  id taken from the downstream's reply (`queued as X` of Postfix, `id=X` of
  Exim, else its last word, as qpsmtpd);
- a 5xx to MAIL, DATA or the end of data, or to every RCPT:
  `552 Unable to queue message (<downstream reply>)`: a permanent refusal
  that the client bounces (qpsmtpd answers 451, so the client retried an
  unknown user for days: its issues #150 and #151);
- a 4xx, no host reachable, the timeout:
  `451 Unable to queue message (<reason>)`; a following queue plugin may
  still take the message (DECLINED), as in qpsmtpd.

Recipients refused at DATA time: the client was already told `250` for each
RCPT, and SMTP has a single answer for the whole message. So:
- any recipient refused with a 4xx: the message is not sent at all (RSET)
  and the client gets 451; it retries every recipient later, and nobody gets
  it twice;
- every recipient refused with a 5xx: 552, the client bounces the message;
- some accepted, the others refused with a 5xx: the accepted ones get the
  message and the client 250; each refused recipient is logged at LOGWARN,
  with the downstream's reply. Nobody tells the sender about them: to
  avoid this, use `check_rcpt 1`.
With `check_rcpt 1`, at the first RCPT a session is opened with the
downstream (MAIL FROM the sender) and each recipient is checked with RCPT
there before the client gets its answer: a downstream 5xx refuses the
recipient with 550 and the downstream's text, a 4xx with 450, an unreachable
downstream with 450; an accepted recipient is left to the plugins that
follow (rcpt_ok decides on relaying, so load queue/smtp-forward before it).
The same session then carries the message, so the per-recipient results hold.

XCLIENT: with the `xclient` flag the downstream must advertise XCLIENT (else
the next host is tried, as in qpsmtpd where the message got 451). The
attributes it lists among NAME (the client's host name, or `[UNAVAILABLE]`
when it has none), ADDR (`IPV6:` before an IPv6 address), PORT, PROTO
(SMTP/ESMTP) and HELO are sent, xtext-encoded, in commands of at most 512
bytes; then EHLO is sent again with the client's HELO name. The downstream
must trust this host with XCLIENT (Postfix's smtpd_authorized_xclient_hosts).
It follows STARTTLS, so the attributes travel encrypted.

Other details: TCP_NODELAY is set on the downstream connection; SIZE is
declared in MAIL FROM when offered; lines are sent with CRLF and dot-stuffed;
MAIL FROM and the RCPT TO commands go in one packet when the downstream
offers PIPELINING (DATA waits for their answers); without keepalive each
message gets its own connection, closed with a QUIT whose answer is not
waited for. STARTTLS uses Python's ssl module (no pyOpenSSL needed).

Example config/plugins lines:
    queue/smtp-forward 10.0.0.25
    queue/smtp-forward mx1.internal,mx2.internal:2525 xclient check_rcpt 1 tls verify
    queue/smtp-forward 127.0.0.1 10025 keepalive 10
"""

import re
import ssl
import weakref

from twisted.internet import defer

from qpsmtpd_py.constants import DECLINED, DENY, DENYSOFT, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN, OK
from qpsmtpd_py.mail_client import (
    CONNECT_ERRORS,
    Lost,
    ReplyClient,
    connect,
    connect_error,
    extensions_of,
    host_port,
    is_host_name,
    port_number,
    positive_seconds,
    send_message,
    shorten,
    split_host_port,
    tcp_endpoint,
)
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_PORT = 25
KEYS = {"connect_timeout", "timeout", "tls", "tls_ca", "check_rcpt", "helo", "keepalive", "loglevel"}
_XCLIENT_ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO")
_XCLIENT_LIMIT = 512
_MAX_IDLE = 8  # kept connections per child process (keepalive)


# -- the arguments --------------------------------------------------------------------------

def parse_hosts(text, default_port):
    """`a,b:2525,[::1]:26,::1` -> [(host, port), ...] (raises PluginError)."""
    hosts = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise PluginError(f"empty host in {text!r}")
        host, port = split_host_port(item, default_port)
        if not is_host_name(host):
            raise PluginError(f"bad data in smtp server: {item!r}")
        hosts.append((host, port))
    return hosts


def xtext(value):
    """RFC 3461 xtext, as XCLIENT wants its values."""
    return "".join(ch if 33 <= ord(ch) <= 126 and ch not in "+=" else
                   "".join(f"+{b:02X}" for b in ch.encode("utf-8", "surrogateescape")) for ch in value)


def queue_id(reply):
    """The downstream's queue id from its reply to the end of data."""
    text = reply.text
    match = re.search(r"queued as ([^\s;,)]+)", text, re.I) or re.search(r"\bid=([^\s;,)]+)", text)
    if match:
        return match.group(1)
    words = text.split()
    return words[-1] if words else ""


# -- failures -------------------------------------------------------------------------------

class HostFailed(Exception):
    """This host cannot take the message now: the next one is tried."""


class Answer(Exception):
    """A final answer about the message (no other host is tried): code, text, the downstream's reply."""

    def __init__(self, code, text, reply=None):
        super().__init__(text)
        self.code = code
        self.text = text
        self.reply = reply


# -- the SMTP client ------------------------------------------------------------------------

class ClientProtocol(ReplyClient):
    """The SMTP client, with STARTTLS over the stdlib ssl module's memory BIOs."""

    def __init__(self):
        super().__init__()
        self._tls = None
        self._tls_in = self._tls_out = None
        self._handshake = None
        self.tls_version = None

    def _other_waiters(self):
        handshake, self._handshake = self._handshake, None
        return [handshake, *super()._other_waiters()]

    def write(self, data):
        if self._tls is None or self.closed:
            super().write(data)  # in clear (nothing once closed)
            return
        self._tls.write(data)
        self._flush_tls()

    def dataReceived(self, data):
        if self._tls is None:
            self._received(data)
            return
        self._tls_in.write(data)
        if self._handshake is not None:
            self._continue_handshake()
            if self._handshake is not None:
                return
        self._read_tls()

    # -- STARTTLS ------------------------------------------------------------------------
    def start_tls(self, context, server_hostname):
        """Switch to TLS after the 220 to STARTTLS; fires once the handshake is done."""
        if self._buffer:
            # Whatever came with the 220 was sent in clear: never take it as TLS data.
            self._fail("data after the reply to STARTTLS")
            return defer.fail(Lost("data after the reply to STARTTLS"))
        self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._tls_in, self._tls_out, server_side=False,
                                     server_hostname=server_hostname)
        self._handshake = waiting = defer.Deferred()
        self._continue_handshake()
        return waiting

    def _continue_handshake(self):
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return
        except (ssl.SSLError, OSError) as exc:
            self._flush_tls()
            waiting, self._handshake = self._handshake, None
            message = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
            self.error = f"TLS handshake failed: {message}"
            waiting.errback(Lost(self.error))
            self.abort()
            return
        self._flush_tls()
        self.tls_version = f"{self._tls.version()} {self._tls.cipher()[0]}"
        waiting, self._handshake = self._handshake, None
        waiting.callback(self.tls_version)

    def _read_tls(self):
        while not self.closed:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.transport.loseConnection()
                break
            except ssl.SSLError as exc:
                self._fail(f"TLS error: {exc}")
                break
            if not chunk:
                break
            self._received(chunk)
        if not self.closed:
            self._flush_tls()

    def _flush_tls(self):
        data = self._tls_out.read()
        if data:
            self.transport.write(data)


class Downstream:
    """One open session with a downstream server, greeted and ready for MAIL."""

    def __init__(self, client, host, port, extensions):
        self.client = client
        self.host = host
        self.port = port
        self.extensions = extensions
        self.accepted = []  # recipients the downstream took in the current transaction
        self.refused = []  # (recipient, reply)
        self.mail_done = False
        self.idle_timer = None  # while kept for the next message (keepalive)

    @property
    def name(self):
        return host_port(self.host, self.port)


# -- the plugin -----------------------------------------------------------------------------

class SMTPForward(Plugin):

    def register(self, qp, *args):
        if not args:
            raise PluginError("No SMTP server specified in smtp-forward config: "
                              "queue/smtp-forward <host>[,<host>...] [port]")
        words = list(args[1:])
        default_port = DEFAULT_PORT
        if words and words[0].isdigit():
            default_port = port_number(words.pop(0), args[1])
        self.hosts = parse_hosts(args[0], default_port)
        self.xclient = False
        options = {}
        while words:
            word = words.pop(0)
            if word.lower() == "xclient":
                self.xclient = True
            elif word in KEYS:
                if not words:
                    raise PluginError(f"{word} needs a value")
                options[word] = words.pop(0)
            else:
                raise PluginError(f"unknown argument {word!r} (known: xclient, {', '.join(sorted(KEYS))})")
        if "loglevel" in options and not re.fullmatch(r"[0-7]|[+-]\d", options["loglevel"]):
            raise PluginError(f"loglevel must be 0-7, +N or -N, not {options['loglevel']!r}")
        self.args = options
        self.connect_timeout = positive_seconds("connect_timeout", options.get("connect_timeout", "10"))
        self.timeout = positive_seconds("timeout", options.get("timeout", "120"))
        keepalive = options.get("keepalive", "0")
        self.keepalive = 0.0 if keepalive == "0" else positive_seconds("keepalive", keepalive)
        self._idle = []  # kept Downstream sessions, the most recent last
        self.tls = options.get("tls", "may").lower()
        if self.tls not in ("may", "verify", "no"):
            raise PluginError(f"tls must be may, verify or no, not {options['tls']!r}")
        self.tls_ca = options.get("tls_ca")
        if self.tls_ca is not None:
            try:
                ssl.create_default_context(cafile=self.tls_ca)
            except (OSError, ssl.SSLError) as exc:
                raise PluginError(f"cannot read the CAs of tls_ca {self.tls_ca}: {exc}") from exc
        check = options.get("check_rcpt", "0")
        if check not in ("0", "1"):
            raise PluginError(f"check_rcpt must be 0 or 1, not {check!r}")
        self.check_rcpt = check == "1"
        self.helo = options.get("helo")
        self._contexts = {}
        self._probes = weakref.WeakKeyDictionary()  # transaction -> Downstream (check_rcpt)
        if self.check_rcpt:
            before = [entry.name for entry in qp.hooks.entries("rcpt")]
            if "rcpt_ok" in before:
                self.log(LOGWARN, "check_rcpt: rcpt_ok is loaded before this plugin and accepts first; "
                                  "put queue/smtp-forward before rcpt_ok in config/plugins")
            self.register_hook("rcpt", "check_recipient")
            self.register_hook("reset_transaction", "drop_probe")


    # -- the queue hook ------------------------------------------------------------------------
    def hook_queue(self, transaction):
        d = defer.ensureDeferred(self._queue(transaction))
        return self._bounded(d, (DECLINED, f"Unable to queue message (no answer within {self.timeout:g} s)"))

    def _bounded(self, d, on_timeout):
        d.addTimeout(self.timeout, self.get_reactor())

        def timed_out(failure):
            failure.trap(defer.TimeoutError)
            self.log(LOGERROR, f"gave up after {self.timeout:g} s")
            return on_timeout

        return d.addErrback(timed_out)

    async def _queue(self, transaction):
        failures = []
        probe = self._probes.pop(transaction, None)
        if probe is not None:
            if probe.client.closed:
                failures.append(f"{probe.name}: {probe.client.error or 'connection lost'}")
            else:
                try:
                    return await self._forward(transaction, probe)
                except HostFailed as exc:
                    self._host_failed(failures, probe.name, exc)
                except Answer as answer:
                    return answer.code, answer.text
        else:
            idle = self._take_idle()
            if idle is not None:
                try:
                    return await self._forward(transaction, idle)
                except HostFailed as exc:
                    self.log(LOGINFO, f"kept connection to {idle.name} failed ({exc}): opening a new one")
                except Answer as answer:
                    return answer.code, answer.text
        for host, port in self.hosts:
            try:
                downstream = await self._open(host, port)
            except HostFailed as exc:
                self._host_failed(failures, host_port(host, port), exc)
                continue
            try:
                return await self._forward(transaction, downstream)
            except HostFailed as exc:
                self._host_failed(failures, downstream.name, exc)
            except Answer as answer:
                return answer.code, answer.text
        return DECLINED, f"Unable to queue message ({shorten('; '.join(failures))})"

    async def _forward(self, transaction, downstream):
        """The envelope (unless check_rcpt already sent it) and the message: the hook's answer."""
        client = downstream.client
        dot_sent = False
        try:
            try:
                wanted = sorted(r.format() for r in transaction.recipients)
                if downstream.mail_done and sorted(downstream.accepted) == wanted:
                    downstream.refused = []  # refused at RCPT time: the client was told so
                else:
                    if downstream.mail_done:
                        reply = await client.command("RSET")
                        if not reply.positive:
                            raise HostFailed(f"RSET: {reply}")
                        downstream.mail_done = False
                    await self._envelope(downstream, transaction, transaction.recipients)
                self._judge_recipients(downstream)
                reply = await client.command("DATA")
                self._check(reply, "DATA")
                await send_message(client, transaction)
                dot_sent = True
                reply = await client.expect()
            except Lost as exc:
                if dot_sent:
                    raise Answer(DECLINED, f"Unable to queue message (connection lost after the data: {exc})") \
                        from exc
                raise HostFailed(str(exc)) from exc
            self._check(reply, "end of data", retry=False)
        except Answer:
            client.quit(self.get_reactor())
            raise
        except BaseException:
            client.abort()
            raise
        self._release(downstream)
        self.log(LOGINFO, f"finished queueing to {downstream.name}: {reply}")
        return OK, f"Queued as {queue_id(reply)}"

    def _host_failed(self, failures, name, exc):
        """Note why a host could not take the message (for the reply, should every host fail)."""
        failures.append(f"{name}: {exc}")
        self.log(LOGWARN, f"{name} failed: {exc}")

    # -- kept connections (keepalive) ------------------------------------------------------------
    def _release(self, downstream):
        """After a message went through: keep the session for the next message, or QUIT."""
        downstream.mail_done = False
        downstream.accepted, downstream.refused = [], []
        if not self.keepalive or self.xclient or downstream.client.closed or len(self._idle) >= _MAX_IDLE:
            downstream.client.quit(self.get_reactor())
            return
        downstream.idle_timer = self.get_reactor().callLater(self.keepalive, self._expire, downstream)
        self._idle.append(downstream)

    def _expire(self, downstream):
        if downstream in self._idle:
            self._idle.remove(downstream)
        downstream.client.quit(self.get_reactor())

    def _take_idle(self):
        """The most recently kept session that is still open, or None."""
        while self._idle:
            downstream = self._idle.pop()
            if downstream.idle_timer is not None and downstream.idle_timer.active():
                downstream.idle_timer.cancel()
            downstream.idle_timer = None
            if not downstream.client.closed:
                return downstream
        return None

    def _check(self, reply, stage, retry=True):
        """A reply that must be positive: a host failure (421, next host) or a final answer."""
        if reply.positive:
            return
        if reply.code == 421 and retry:
            raise HostFailed(f"{stage}: {reply}")
        code = DENY if reply.permanent else DECLINED
        raise Answer(code, f"Unable to queue message ({shorten(str(reply))})", reply)

    async def _envelope(self, downstream, transaction, recipients=()):
        """MAIL FROM, then RCPT TO for each of `recipients`: in one go when PIPELINING is offered."""
        params = ""
        if "SIZE" in downstream.extensions:
            params += f" SIZE={len(transaction.header_bytes()) + 1 + transaction.body_size}"
        addresses = [transaction.sender.format(), *(r.format() for r in transaction.recipients)]
        if "SMTPUTF8" in downstream.extensions and not all(a.isascii() for a in addresses):
            params += " SMTPUTF8"
        mail = f"MAIL FROM:{transaction.sender.format()}{params}"
        client = downstream.client
        if recipients and "PIPELINING" in downstream.extensions:
            replies = await client.pipelined([mail, *(f"RCPT TO:{r.format()}" for r in recipients)])
        else:
            replies = [await client.command(mail)]
        self._mail_reply(downstream, replies[0])
        for index, recipient in enumerate(recipients):
            reply = replies[index + 1] if len(replies) > 1 else \
                await client.command(f"RCPT TO:{recipient.format()}")
            self._rcpt_reply(downstream, recipient, reply)

    def _mail_reply(self, downstream, reply):
        if reply.code == 421 or 400 <= reply.code < 500:
            raise HostFailed(f"MAIL FROM: {reply}")
        if not reply.positive:
            raise Answer(DENY, f"Unable to queue message ({shorten(str(reply))})", reply)
        downstream.mail_done = True
        downstream.accepted, downstream.refused = [], []

    def _rcpt_reply(self, downstream, recipient, reply):
        if reply.code == 421:
            raise HostFailed(f"RCPT TO: {reply}")
        if reply.positive:
            downstream.accepted.append(recipient.format())
        else:
            downstream.refused.append((recipient.format(), reply))
        return reply

    def _judge_recipients(self, downstream):
        """Apply the per-recipient rules (see the manual) before DATA."""
        refused = downstream.refused
        if not refused:
            return
        temporary = [(r, reply) for r, reply in refused if not reply.permanent]
        if temporary or not downstream.accepted:
            first_recipient, first_reply = (temporary or refused)[0]
            for recipient, reply in refused:
                self.log(LOGWARN, f"{downstream.name} refused {recipient}: {reply}")
            code = DECLINED if temporary else DENY
            # The message is not sent: RSET keeps the session clean for QUIT.
            downstream.client.command("RSET").addErrback(lambda _: None)
            downstream.mail_done = False
            raise Answer(code, f"Unable to queue message ({shorten(f'{first_recipient}: {first_reply}')})")
        for recipient, reply in refused:
            self.log(LOGWARN, f"{downstream.name} refused {recipient}: {reply}; "
                              "the message goes to the other recipients only")

    # -- opening a session ---------------------------------------------------------------------
    async def _open(self, host, port):
        """Connect, greet, EHLO, STARTTLS, XCLIENT: a Downstream, or HostFailed."""
        reactor = self.get_reactor()
        self.log(LOGINFO, f"forwarding to {host_port(host, port)}")
        endpoint = tcp_endpoint(reactor, host, port, self.connect_timeout)
        try:
            client = await connect(endpoint, ClientProtocol, reactor, self.connect_timeout)
        except CONNECT_ERRORS as exc:
            raise HostFailed(connect_error(exc)) from exc
        try:
            return await self._greet(client, host, port)
        except (HostFailed, Lost) as exc:
            client.abort()
            raise HostFailed(str(exc)) from exc
        except BaseException:
            client.abort()
            raise

    async def _greet(self, client, host, port):
        await client.greeted(self.get_reactor(), self.connect_timeout)
        me = self.helo or self.qp.config("me") or "localhost"
        extensions = await self._ehlo(client, me)
        if self.tls != "no":
            if "STARTTLS" in extensions:
                reply = await client.command("STARTTLS")
                if reply.code == 220:
                    version = await client.start_tls(self._tls_context(), host)
                    self.log(LOGDEBUG, f"TLS with {host_port(host, port)}: {version}")
                    extensions = await self._ehlo(client, me)
                elif self.tls == "verify":
                    raise HostFailed(f"STARTTLS: {reply}")
                else:
                    self.log(LOGWARN, f"{host_port(host, port)} refused STARTTLS ({reply}): sending in clear")
            elif self.tls == "verify":
                raise HostFailed("no STARTTLS offered (tls verify)")
        if self.xclient:
            if "XCLIENT" not in extensions:
                raise HostFailed("Server does not advertise XCLIENT support")
            await self._send_xclient(client, extensions["XCLIENT"])
            hello = self.connection.hello_host or me
            extensions = await self._ehlo(client, hello)
        return Downstream(client, host, port, extensions)

    async def _ehlo(self, client, name):
        reply = await client.command(f"EHLO {name}")
        if reply.positive:
            return extensions_of(reply)
        if reply.code != 421:
            reply = await client.command(f"HELO {name}")
            if reply.positive:
                return {}
        raise HostFailed(f"EHLO: {reply}")

    def _tls_context(self):
        context = self._contexts.get(self.tls)
        if context is None:
            if self.tls == "verify":
                context = ssl.create_default_context(cafile=self.tls_ca)
            else:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._contexts[self.tls] = context
        return context

    async def _send_xclient(self, client, offered):
        wanted = {part.upper() for part in offered.split()}
        connection = self.connection
        values = {}
        name = connection.remote_host
        values["NAME"] = "[UNAVAILABLE]" if not name or name.startswith("[") or name == "Unknown" else name
        ip = connection.remote_ip
        values["ADDR"] = f"IPV6:{ip}" if ":" in ip else ip
        values["PORT"] = str(connection.remote_port)
        if connection.hello:
            values["PROTO"] = "ESMTP" if connection.hello.lower() == "ehlo" else "SMTP"
        values["HELO"] = connection.hello_host or "[UNAVAILABLE]"
        items = [f"{key}={xtext(values[key])}" for key in _XCLIENT_ATTRIBUTES if key in wanted and key in values]
        while items:
            line = "XCLIENT"
            while items and len(line) + 1 + len(items[0]) <= _XCLIENT_LIMIT - 2:
                line += " " + items.pop(0)
            if line == "XCLIENT":
                items.pop(0)  # an attribute that cannot fit at all is left out
                continue
            reply = await client.command(line)
            if not reply.positive:
                raise HostFailed(f"XCLIENT failed: {reply}")

    # -- check_rcpt ----------------------------------------------------------------------------
    def check_recipient(self, transaction, recipient, params):
        d = defer.ensureDeferred(self._check_recipient(transaction, recipient))
        return self._bounded(d, (DENYSOFT, "Unable to check the recipient now, try again later"))

    async def _check_recipient(self, transaction, recipient):
        probe = self._probes.get(transaction)
        if probe is not None and probe.client.closed:
            del self._probes[transaction]
            probe = None
        try:
            if probe is None:
                try:
                    probe = await self._mail_session(transaction)
                except Answer as answer:
                    self.log(LOGINFO, f"the downstream refuses the sender: {answer.reply}")
                    return DENY, answer.reply.text or str(answer.reply)
                self._probes[transaction] = probe
            reply = self._rcpt_reply(probe, recipient,
                                     await probe.client.command(f"RCPT TO:{recipient.format()}"))
        except (HostFailed, Lost) as exc:
            self.log(LOGERROR, f"cannot check {recipient.format()}: {exc}")
            self.drop_probe(transaction)
            return DENYSOFT, "Unable to check the recipient now, try again later"
        except defer.CancelledError:
            self.drop_probe(transaction)
            raise
        if reply.positive:
            self.log(LOGDEBUG, f"{probe.name} accepts {recipient.format()}: {reply}")
            return DECLINED
        self.log(LOGINFO, f"{probe.name} refuses {recipient.format()}: {reply}")
        return (DENY if reply.permanent else DENYSOFT), reply.text or str(reply)

    async def _mail_session(self, transaction):
        """A session past MAIL FROM (a kept one, or the first host that works); raises HostFailed or Answer."""
        idle = self._take_idle()
        if idle is not None:
            try:
                await self._envelope(idle, transaction)
                return idle
            except (HostFailed, Lost) as exc:
                idle.client.abort()
                self.log(LOGINFO, f"kept connection to {idle.name} failed ({exc}): opening a new one")
            except Answer:
                idle.client.quit(self.get_reactor())
                raise
            except BaseException:
                idle.client.abort()
                raise
        failures = []
        for host, port in self.hosts:
            try:
                downstream = await self._open(host, port)
            except HostFailed as exc:
                self._host_failed(failures, host_port(host, port), exc)
                continue
            try:
                await self._envelope(downstream, transaction)
            except (HostFailed, Lost) as exc:
                downstream.client.abort()
                self._host_failed(failures, downstream.name, exc)
                continue
            except Answer:
                downstream.client.quit(self.get_reactor())
                raise
            except BaseException:
                downstream.client.abort()
                raise
            return downstream
        raise HostFailed("; ".join(failures))

    def drop_probe(self, transaction):
        probe = self._probes.pop(transaction, None)
        if probe is not None:
            probe.client.quit(self.get_reactor())
        return DECLINED
