"""queue/lmtp - deliver accepted mail over LMTP (RFC 2033) to a local delivery agent.

Hook: queue. The message is handed over while the client waits: the client
gets `250` only once the LMTP server (Dovecot's lmtp, Cyrus' lmtpd, Postfix's
lmtp-speaking peers...) said it stored the message. New in qpsmtpd-py (qpsmtpd
has no LMTP plugin); Haraka's and Postfix's users know the idea. Tested with
Dovecot's LMTP server (dovecot-lmtpd).

Arguments:
    queue/lmtp <server> [timeout <seconds>] [connect_timeout <seconds>] [lhlo <name>]
- <server>: where the LMTP server listens: `host:port` (a host name, an IPv4
  address, or an IPv6 address in brackets, `[::1]:24`), `host` alone for
  port 24, or the absolute path of a unix socket (`/run/dovecot/lmtp`).
- timeout <seconds>: for the whole delivery of one message (default 120);
  past it the client gets 451 (unless some recipients were already
  delivered, see below). Keep it below the daemon's plugin_timeout (300).
- connect_timeout <seconds>: to connect and get the greeting (default 10).
- lhlo <name>: the name sent in LHLO. Default: the `me` config.

The dialogue: greeting, LHLO, MAIL FROM, one RCPT TO per recipient (in one
packet when the server offers PIPELINING), DATA, the message, the final dot;
then LMTP answers once for each recipient it accepted at RCPT, in the same
order, and the connection is closed with QUIT (its answer is not waited for).
The message goes with CRLF line endings, dot-stuffed; TCP_NODELAY is set on
TCP connections. SIZE is declared in MAIL FROM when the server offers it.

Replies to the client (its queue answer). SMTP has one answer for the whole
message, LMTP one per recipient, and the client already got `250` for each
RCPT. Retrying the message after some recipients got it gives those a copy at
every retry, so:
- the server refuses the sender, or DATA: a 5xx gives `552 Unable to queue
  message (<server reply>)` (the client bounces it), a 4xx `451 ...` (it
  retries);
- at RCPT, before anything is delivered: when any recipient gets a 4xx, the
  message is not sent (RSET) and the client gets 451, so a later retry
  reaches everybody once; when every recipient gets a 5xx, 552; when some are
  accepted and the others get a 5xx, the message goes to the accepted ones;
- after the final dot: every accepted recipient delivered: `250 Queued (LMTP:
  <the server's reply>)`; none delivered: 552 when every answer is a 5xx,
  else 451; some delivered and others not (a 5xx, or a 4xx such as a full
  mailbox): `250`, and every recipient that did not get the message is
  logged at LOGERROR with the server's answer. A 451 would have the client
  send the message again to the recipients that already have it, at every
  retry until the others succeed or the client gives up - duplicates that
  nobody asked for - while the failures are on the local delivery side,
  where its administrator sees them in the logs (and in the LMTP server's
  own). Nobody tells the sender about those recipients;
- the server cannot be reached, does not greet, drops the connection, or the
  timeout passes: 451, unless some recipients were already delivered, which
  is the case above. With 451 a following queue plugin may still take the
  message (the hook answers DECLINED).

Example config/plugins lines:
    queue/lmtp /run/dovecot/lmtp
    queue/lmtp 127.0.0.1:24 timeout 60
"""

import re

from twisted.internet import defer

from qpsmtpd_py.constants import DECLINED, DENY, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN, OK
from qpsmtpd_py.mail_client import (
    CONNECT_ERRORS,
    Lost,
    Reply,
    ReplyClient,
    connect,
    connect_error,
    extensions_of,
    host_port,
    is_host_name,
    positive_seconds,
    send_message,
    shorten,
    split_host_port,
    tcp_endpoint,
)
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_PORT = 24
KEYS = {"timeout", "connect_timeout", "lhlo", "loglevel"}


def parse_server(text):
    """`/path` -> ("unix", path); `host[:port]`, `[v6]:port` -> ("tcp", host, port)."""
    if text.startswith("/"):
        return ("unix", text)
    host, port = split_host_port(text, DEFAULT_PORT, "server")
    if not is_host_name(host):
        raise PluginError(f"bad LMTP server {text!r}: host:port or the absolute path of a unix socket")
    return ("tcp", host, port)


class Answer(Exception):
    """The final answer about the message: a hook code and its text."""

    def __init__(self, code, text):
        super().__init__(text)
        self.code = code
        self.text = text


class LMTPClient(ReplyClient):
    """The LMTP client: no TLS, as LMTP is for local delivery, over loopback or a unix socket."""

    protocol_name = "LMTP"


class Delivery:
    """What happened to one message so far (read again when the timeout strikes)."""

    def __init__(self):
        self.client = None
        self.accepted = []  # recipients accepted at RCPT: one answer each after the data
        self.delivered = []  # (recipient, reply)
        self.failed = []  # (recipient, reply or a text)


# -- the plugin -----------------------------------------------------------------------------

class LMTP(Plugin):

    def register(self, qp, *args):
        if not args:
            raise PluginError("No LMTP server given: queue/lmtp <host:port|/path/to/socket> [timeout N]")
        self.server = parse_server(args[0])
        words = list(args[1:])
        options = {}
        while words:
            word = words.pop(0)
            if word not in KEYS:
                raise PluginError(f"unknown argument {word!r} (known: {', '.join(sorted(KEYS))})")
            if not words:
                raise PluginError(f"{word} needs a value")
            options[word] = words.pop(0)
        if "loglevel" in options and not re.fullmatch(r"[0-7]|[+-]\d", options["loglevel"]):
            raise PluginError(f"loglevel must be 0-7, +N or -N, not {options['loglevel']!r}")
        self.args = options
        self.timeout = positive_seconds("timeout", options.get("timeout", "120"))
        self.connect_timeout = positive_seconds("connect_timeout", options.get("connect_timeout", "10"))
        self.lhlo = options.get("lhlo")

    @property
    def server_name(self):
        if self.server[0] == "unix":
            return self.server[1]
        return host_port(*self.server[1:])


    # -- the queue hook ------------------------------------------------------------------------
    def hook_queue(self, transaction):
        delivery = Delivery()
        d = defer.ensureDeferred(self._deliver(transaction, delivery))
        d.addTimeout(self.timeout, self.get_reactor())

        def failed(failure):
            failure.trap(defer.TimeoutError, Lost)
            if failure.check(defer.TimeoutError):
                reason = f"no answer within {self.timeout:g} s"
            else:
                reason = f"connection lost: {failure.value}"
            self.log(LOGERROR, f"{self.server_name}: {reason}")
            if delivery.client is not None:
                delivery.client.abort()
            return self._outcome(delivery, reason)

        return d.addErrback(failed)

    async def _deliver(self, transaction, delivery):
        try:
            client = delivery.client = await self._open()
        except Answer as answer:
            return answer.code, answer.text
        try:
            accepted = delivery.accepted = await self._envelope(client, transaction)
            reply = await client.command("DATA")
            if reply.code != 354:
                raise self._refusal("DATA", reply)
            await send_message(client, transaction)
            for recipient in accepted:
                reply = await client.expect()
                (delivery.delivered if reply.positive else delivery.failed).append((recipient, reply))
        except Answer as answer:
            if not client.closed:
                client.command("RSET").addErrback(lambda _: None)
            client.quit(self.get_reactor())
            return answer.code, answer.text
        except BaseException:
            client.abort()
            raise
        client.quit(self.get_reactor())
        return self._outcome(delivery)

    def _outcome(self, delivery, lost=None):
        """The answer from the per-recipient results after the data (see the manual)."""
        failed = list(delivery.failed)
        if lost is not None and delivery.delivered:
            done = {r for r, _ in delivery.delivered} | {r for r, _ in failed}
            failed += [(r, lost) for r in delivery.accepted if r not in done]
        for recipient, reply in failed:
            self.log(LOGERROR, f"{self.server_name} did not deliver to {recipient}: {reply}"
                               + ("; the message is NOT retried for this recipient" if delivery.delivered else ""))
        if delivery.delivered:
            first = delivery.delivered[0][1]
            self.log(LOGINFO, f"delivered to {len(delivery.delivered)} recipient(s) at {self.server_name}")
            return OK, f"Queued (LMTP: {shorten(str(first), 300)})"
        if lost is not None:
            return DECLINED, f"Unable to queue message ({shorten(lost)})"
        if failed and all(isinstance(reply, Reply) and reply.permanent for _, reply in failed):
            return DENY, f"Unable to queue message ({shorten(str(failed[0][1]))})"
        temporary = next((reply for _, reply in failed if not getattr(reply, "permanent", False)), "no answer")
        return DECLINED, f"Unable to queue message ({shorten(str(temporary))})"

    @staticmethod
    def _refusal(stage, reply):
        code = DENY if reply.permanent else DECLINED
        return Answer(code, f"Unable to queue message ({shorten(str(reply))})")

    async def _open(self):
        """Connect, greeting, LHLO: the client with its `extensions`, or Answer (451)."""
        from twisted.internet import endpoints

        reactor = self.get_reactor()
        self.log(LOGINFO, f"delivering to {self.server_name}")
        if self.server[0] == "unix":
            endpoint = endpoints.UNIXClientEndpoint(reactor, self.server[1], timeout=self.connect_timeout)
        else:
            endpoint = tcp_endpoint(reactor, *self.server[1:], self.connect_timeout)
        try:
            client = await connect(endpoint, LMTPClient, reactor, self.connect_timeout)
        except CONNECT_ERRORS as exc:
            reason = connect_error(exc)
            self.log(LOGERROR, f"{self.server_name}: {reason}")
            raise Answer(DECLINED, f"Unable to queue message ({self.server_name}: {reason})") from exc
        try:
            await client.greeted(reactor, self.connect_timeout)
            reply = await client.command(f"LHLO {self.lhlo or self.qp.config('me') or 'localhost'}")
            if not reply.positive:
                raise Lost(f"LHLO: {reply}")
        except Lost as exc:
            client.abort()
            self.log(LOGERROR, f"{self.server_name}: {exc}")
            raise Answer(DECLINED, f"Unable to queue message ({shorten(f'{self.server_name}: {exc}')})") from exc
        except BaseException:
            client.abort()
            raise
        client.extensions = extensions_of(reply)
        return client

    async def _envelope(self, client, transaction):
        """MAIL FROM and the RCPTs: the recipients accepted, or Answer."""
        params = ""
        if "SIZE" in client.extensions:
            params = f" SIZE={len(transaction.header_bytes()) + 1 + transaction.body_size}"
        mail = f"MAIL FROM:{transaction.sender.format()}{params}"
        recipients = [r.format() for r in transaction.recipients]
        rcpts = [f"RCPT TO:{r}" for r in recipients]
        if "PIPELINING" in client.extensions:
            replies = await client.pipelined([mail, *rcpts])
        else:
            replies = [await client.command(mail)]
            if replies[0].positive:
                for line in rcpts:
                    replies.append(await client.command(line))
        if not replies[0].positive:
            raise self._refusal("MAIL", replies[0])
        accepted, refused = [], []
        for recipient, reply in zip(recipients, replies[1:], strict=True):
            if reply.positive:
                accepted.append(recipient)
            else:
                refused.append((recipient, reply))
        for recipient, reply in refused:
            self.log(LOGWARN, f"{self.server_name} refused {recipient}: {reply}")
        temporary = [(r, reply) for r, reply in refused if not reply.permanent]
        if temporary or not accepted:
            recipient, reply = (temporary or refused)[0]
            code = DECLINED if temporary else DENY
            raise Answer(code, f"Unable to queue message ({shorten(f'{recipient}: {reply}')})")
        if refused:
            self.log(LOGWARN, f"the message goes to {len(accepted)} recipient(s) only, "
                              f"not to the {len(refused)} refused")
        self.log(LOGDEBUG, f"{self.server_name} accepted {', '.join(accepted)}")
        return accepted
