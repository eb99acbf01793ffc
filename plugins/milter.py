"""milter - have a milter (opendkim, rspamd's proxy, MIMEDefang...) check and change each message.

Hook: data_post. The milter protocol, version 6 (sendmail's and Postfix's),
spoken as the MTA, so any milter works: once the message is in, one
connection to the milter gets the whole session in milter order (option
negotiation, connect, helo, mail, each rcpt, data, each header, end of
header, the body in chunks with CRLF line endings streamed from the spool,
end of message), then the milter's verdict and changes are applied, and the
connection is closed (QUIT).

Why after DATA rather than at each SMTP stage (as Postfix does): a milter
connection then lives for one message, seconds, not for an SMTP session that
may idle for minutes; the client's pipelined commands never wait for a
milter; a milter failure costs one message a 451 instead of breaking a whole
session; and the message is already spooled, so it is streamed, never held.
What is lost: a milter cannot refuse a single recipient at RCPT time (the
client already got 250). A reject or tempfail at any stage answers for the
whole message - rejecting a recipient the client believes accepted would lose
mail silently. Stages the milter turns off are not sent, replies it turns
off are not waited for (SMFIP_NO* and SMFIP_NR_* flags).

The milter's verdict:
- accept, continue: the message goes on to the queue, with the changes;
- reject: 552 `Message rejected by milter`; tempfail: 452 `Message
  temporarily rejected by milter, try again later` (data_post's codes, as
  qpsmtpd's);
- replycode: the milter's own reply, e.g. `554 5.7.1 Gtube pattern`: a 5xx
  rejects (`552 5.7.1 Gtube pattern`), a 4xx defers (452), with its text;
- discard: the client gets `250 Queued (discarded by milter)` and the
  message goes nowhere (logged at LOGINFO).

Changes applied to the transaction, in the order the milter sent them:
add header (at the end), insert header (at index N of the header, 0 on
top), change header (the N-th field of that name; an empty value deletes
it; a missing one is added), change from (the envelope sender), add rcpt
(with or without ESMTP arguments; the arguments are dropped), delete rcpt,
replace body (written to a spool file piece by piece as it comes, then it
becomes the message's body), quarantine (we have no hold queue: the reason
is stored in `transaction.notes["quarantine"]` and logged at LOGWARN, and the
message is delivered; a queue plugin may act on the note). A change that
cannot be applied (a broken reply) is a milter failure: see below.

The macros a milter may read: `j` (the `me` config), `{daemon_name}`
(qpsmtpd-py), `_`, `{client_addr}`, `{client_name}`, `{client_port}` at
connect; `{tls_version}`, `{cipher}` at helo when TLS is on; `{mail_addr}`,
`{auth_authen}`, `{auth_type}` and `i` (the session id that starts our log
lines) at mail; `{rcpt_addr}` at rcpt; `i` at end of message. A v6 milter
that names the macros it wants gets only those.

Failures (no connection, a time-out, a closed connection, a milter that
makes no sense): `default_action` decides, as Postfix's
milter_default_action: tempfail (the default) answers 452 `milter
<socket> failed (<reason>), try again later`; accept lets the message pass
(logged at LOGERROR); reject answers 552.

Arguments:
    milter <socket> [key value ...]
- <socket>: where the milter listens, as Postfix and sendmail write it:
  `inet:port@host`, `inet6:port@host`, `unix:/path` (or `local:/path`), or
  Postfix's `inet:host:port`.
- connect_timeout <seconds>: to connect (default 10).
- command_timeout <seconds>: each reply (default 30).
- content_timeout <seconds>: the replies to the end of message (default 120).
- timeout <seconds>: the whole conversation, including the wait for a free
  slot (default 240; below the daemon's plugin_timeout of 300).
- max_scans <n>: milter conversations at once per child (default 8).
- max_size <bytes>: bigger messages skip the milter (default 20971520).
- default_action tempfail|accept|reject: see above (default tempfail).
- relay_client skip|scan: skip relay clients (AUTH users too) and
  whitelisted hosts and senders, e.g. for a spam filtering milter (default
  scan: a signing milter wants exactly the relay clients' mail).

Example config/plugins lines:
    milter inet:8891@127.0.0.1
    milter unix:/run/opendkim/opendkim.sock default_action accept
    milter:2 inet:11332@127.0.0.1 content_timeout 60

Differences from qpsmtpd's milter plugin: that one spoke protocol version 2
(Net::Milter), which rspamd and current milters refuse (qpsmtpd's issue
#329), drove the milter at each SMTP stage over a session-long connection,
and applied only header changes.
"""

import re

from twisted.internet import defer, endpoints, protocol

from qpsmtpd_py.address import Address
from qpsmtpd_py.constants import DECLINED, DENY, DENYSOFT, DONE, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN
from qpsmtpd_py.milter_client import (
    SMFIC_BODYEOB,
    SMFIC_CONNECT,
    SMFIC_HELO,
    SMFIC_MAIL,
    Conversation,
    Envelope,
    MilterClient,
    MilterError,
)
from qpsmtpd_py.plugin import PluginError
from qpsmtpd_py.virus_scan import ScanError, ScannerPlugin

KNOWN = {"connect_timeout", "command_timeout", "content_timeout", "timeout", "max_scans", "max_size",
         "default_action", "relay_client", "loglevel"}
_INET = re.compile(r"^(inet6?):(\d+)@(\S+)$")
_POSTFIX_INET = re.compile(r"^inet:(\[[^\]]+\]|[^:]+):(\d+)$")


def parse_socket(text):
    """`inet:port@host`, `inet6:port@host`, `inet:host:port`, `unix:/path`, `local:/path`
    -> ("tcp", host, port) or ("unix", path)."""
    for prefix in ("unix:", "local:"):
        if text.startswith(prefix) and text[len(prefix):].startswith("/"):
            return ("unix", text[len(prefix):])
    match = _INET.match(text)
    if match:
        host, port = match.group(3).strip("[]"), match.group(2)
    else:
        match = _POSTFIX_INET.match(text)
        if not match:
            raise PluginError(f"bad milter socket {text!r}: write inet:port@host, inet6:port@host, "
                              "inet:host:port or unix:/path")
        host, port = match.group(1).strip("[]"), match.group(2)
    if not 0 < int(port) < 65536:
        raise PluginError(f"bad port in milter socket {text!r}")
    return ("tcp", host, int(port))


def _seconds(options, key, default):
    text = options.get(key, default)
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise PluginError(f"{key} must be a positive number of seconds, not {text!r}")
    return value


class NewBody:
    """A body the milter replaces, written to a temp file as its pieces come (CRLF -> LF)."""

    def __init__(self, transaction):
        self.transaction = transaction
        self.path = None
        self._file = None
        self._carriage_return = False  # a piece ended in CR: the next may start with its LF

    def __call__(self, data):
        if self._file is None:
            self.path = self.transaction.temp_file()
            self._file = open(self.path, "wb")  # noqa: SIM115  (closed by close())
        if self._carriage_return:
            data = b"\r" + data
        self._carriage_return = data.endswith(b"\r")
        if self._carriage_return:
            data = data[:-1]
        self._file.write(data.replace(b"\r\n", b"\n"))

    def close(self):
        if self._file is not None:
            if self._carriage_return:
                self._file.write(b"\r")
            self._file.close()
            self._file = None


class Milter(ScannerPlugin):
    default_timeout = 240.0
    default_max_scans = 8

    def register(self, qp, *args):
        if not args:
            raise PluginError("No milter socket given: milter inet:port@host | unix:/path [key value ...]")
        self.socket = parse_socket(args[0])
        words = args[1:]
        if len(words) % 2:
            raise PluginError(f"arguments after the socket come in pairs, not {' '.join(words)!r}")
        options = dict(zip(words[::2], words[1::2], strict=True))
        unknown = sorted(set(options) - KNOWN)
        if unknown:
            raise PluginError(f"unknown argument {unknown[0]!r} (known: {', '.join(sorted(KNOWN))})")
        self.args = {key: value for key, value in options.items() if key == "loglevel"}
        self.connect_timeout = _seconds(options, "connect_timeout", "10")
        self.command_timeout = _seconds(options, "command_timeout", "30")
        self.content_timeout = _seconds(options, "content_timeout", "120")
        self.setup_limits({key: options[key] for key in ("timeout", "max_scans") if key in options})
        max_size = options.get("max_size", "20971520")
        if not max_size.isdigit() or int(max_size) == 0:
            raise PluginError(f"max_size must be a whole number of bytes above 0, not {max_size!r}")
        self.max_size = int(max_size)
        self.default_action = options.get("default_action", "tempfail")
        if self.default_action not in ("tempfail", "accept", "reject"):
            raise PluginError(f"default_action must be tempfail, accept or reject, not {self.default_action!r}")
        self.relay_client = options.get("relay_client", "scan")
        if self.relay_client not in ("skip", "scan"):
            raise PluginError(f"relay_client must be skip or scan, not {self.relay_client!r}")

    @property
    def server_name(self):
        if self.socket[0] == "unix":
            return f"unix:{self.socket[1]}"
        return f"inet:{self.socket[2]}@{self.socket[1]}"

    # -- the hook ---------------------------------------------------------------------------
    def hook_data_post(self, transaction):
        if self.relay_client == "skip" and self.is_immune():
            return DECLINED
        if self.too_big(transaction, self.max_size):
            return DECLINED
        return defer.ensureDeferred(self._check(transaction))

    async def _check(self, transaction):
        try:
            outcome, new_body = await self.limited_scan(lambda: self._converse(transaction))
        except (ScanError, MilterError) as exc:
            return self.scan_failed(f"milter {self.server_name} failed ({exc})")
        return self._apply(transaction, outcome, new_body)

    def scan_failed(self, reason):
        if self.default_action == "accept":
            self.log(LOGERROR, f"{reason}; the message passes (default_action accept)")
            return DECLINED
        self.log(LOGERROR, reason)
        if self.default_action == "reject":
            return DENY, f"Message rejected: {reason}"
        return DENYSOFT, f"{reason}, try again later"

    async def _converse(self, transaction):
        clock = self.clock()
        client = await self._connect(clock)
        conversation = Conversation(client, clock, self.command_timeout, self.content_timeout)
        new_body = conversation.new_body = NewBody(transaction)
        try:
            await conversation.negotiate()
            body = (chunk.replace(b"\n", b"\r\n") for chunk in transaction.iter_body(1 << 15))
            outcome = await conversation.run(self.envelope(transaction), self.header_fields(transaction), body)
        except BaseException:
            client.abort()
            new_body.close()
            raise
        conversation.quit()
        new_body.close()
        return outcome, new_body

    async def _connect(self, clock):
        factory = protocol.Factory.forProtocol(MilterClient)
        factory.noisy = False
        if self.socket[0] == "unix":
            endpoint = endpoints.UNIXClientEndpoint(clock, self.socket[1], timeout=self.connect_timeout)
        else:
            host, port = self.socket[1], self.socket[2]
            endpoint = endpoints.HostnameEndpoint(clock, host, port, timeout=self.connect_timeout)
        try:
            return await endpoint.connect(factory).addTimeout(self.connect_timeout, clock)
        except defer.CancelledError:
            raise
        except defer.TimeoutError:
            raise MilterError(f"no connection within {self.connect_timeout:g}s") from None
        except Exception as exc:
            text = "connection refused" if "refused" in str(exc).lower() else (str(exc) or type(exc).__name__)
            raise MilterError(text) from exc

    def envelope(self, transaction):
        connection = self.connection
        me = self.qp.config("me") or "localhost"
        client_name = connection.remote_host or f"[{connection.remote_ip}]"
        connect = {"j": me, "{daemon_name}": "qpsmtpd-py", "_": f"{client_name} [{connection.remote_ip}]",
                   "{client_addr}": connection.remote_ip, "{client_name}": client_name,
                   "{client_port}": str(connection.remote_port)}
        helo = {"{tls_version}": "TLS", "{cipher}": connection.tls_cipher} if connection.tls_cipher else {}
        sender = transaction.sender
        mail = {"{mail_addr}": sender.address() if sender is not None else "", "i": connection.id}
        user = connection.notes.get("auth_user")
        if user:
            mail["{auth_authen}"] = user
            mail["{auth_type}"] = connection.notes.get("auth_mechanism", "")
        recipients = [r.format() for r in transaction.recipients]
        macros = {SMFIC_CONNECT: connect, SMFIC_HELO: helo, SMFIC_MAIL: mail, SMFIC_BODYEOB: {"i": connection.id}}
        return Envelope(client_name, connection.remote_ip, connection.remote_port or 0, connection.hello_host,
                        sender.format() if sender is not None else "<>", recipients, macros)

    @staticmethod
    def header_fields(transaction):
        """(name, value) of each field: the value as written after the colon, folded lines LF-joined."""
        return [(field.name, field.raw.split(":", 1)[1].rstrip("\n")) for field in transaction.header]

    # -- the outcome -------------------------------------------------------------------------
    def _apply(self, transaction, outcome, new_body):
        self.log(LOGINFO, f"{self.server_name}: {outcome.verdict}"
                          + (f" {outcome.reply}" if outcome.reply else "")
                          + (f", {len(outcome.changes)} change(s)" if outcome.changes else ""))
        if outcome.verdict == "reject":
            return DENY, "Message rejected by milter"
        if outcome.verdict == "tempfail":
            return DENYSOFT, "Message temporarily rejected by milter, try again later"
        if outcome.verdict == "replycode":
            code, _, text = outcome.reply.partition(" ")
            return (DENYSOFT if code.startswith("4") else DENY), text.strip() or "Message rejected by milter"
        if outcome.verdict == "discard":
            self.log(LOGINFO, "message discarded by the milter")
            self.session.respond(250, "Queued (discarded by milter)")
            self.session.reset_transaction()
            return DONE
        for kind, fields in outcome.changes:
            if kind == "replace_body":
                transaction.replace_body(new_body.path)
                self.log(LOGDEBUG, "body replaced")
                continue
            try:
                getattr(self, f"_change_{kind}")(transaction, *fields)
            except (TypeError, ValueError):  # too few or too many strings, an index that is no number
                return self.scan_failed(f"milter {self.server_name} failed (a broken {kind} reply: {fields!r})")
        return DECLINED

    def _change_add_header(self, transaction, name, value=""):
        transaction.header.add(name, value.lstrip(" "))

    def _change_insert_header(self, transaction, index, name, value=""):
        transaction.header.add(name, value.lstrip(" "), min(int(index), len(transaction.header.fields)))

    def _change_change_header(self, transaction, index, name, value=""):
        position = max(int(index), 1) - 1  # the milter counts fields of that name from 1
        if value:
            transaction.header.replace(name, value.lstrip(" "), position)
        else:
            transaction.header.delete(name, position)

    def _change_change_from(self, transaction, sender, *esmtp_args):
        address = Address.parse(sender if sender.startswith("<") else f"<{sender}>")
        if address is None:
            self.log(LOGWARN, f"ignoring change from to a bad address {sender!r}")
            return
        self.log(LOGDEBUG, f"sender changed to {address.format()}")
        transaction.sender = address

    def _change_add_rcpt(self, transaction, recipient, *esmtp_args):
        address = Address.parse(recipient if recipient.startswith("<") else f"<{recipient}>")
        if address is None or address.is_null:
            self.log(LOGWARN, f"ignoring add rcpt of a bad address {recipient!r}")
            return
        transaction.add_recipient(address)

    def _change_del_rcpt(self, transaction, recipient):
        address = Address.parse(recipient if recipient.startswith("<") else f"<{recipient}>")
        transaction.recipients = [r for r in transaction.recipients if r != address]

    def _change_quarantine(self, transaction, reason=""):
        self.log(LOGWARN, f"the milter quarantines the message ({reason}); delivered, see notes quarantine")
        transaction.notes["quarantine"] = reason
