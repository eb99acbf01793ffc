"""rspamd - scan each message with rspamd, and act on its verdict.

Hook: data_post. The message (header and body, CRLF line endings, streamed
from the spool with chunked transfer encoding) is posted to rspamd's normal
worker with its HTTP `checkv2` protocol, as `rspamc` does, with what rspamd
wants to know about the session in request headers: `IP`, `Hostname` (when
the client has one), `Helo`, `From` (the envelope sender), one `Rcpt` per
recipient, `Queue-Id` (the session id that starts our log lines, to find the
message in both logs), `User` (the AUTH user), `TLS-Cipher`, `MTA-Name` (the
`me` config) and `Settings-ID` when configured. New in qpsmtpd-py
(qpsmtpd's issue #293); arguments and behaviour follow Haraka's rspamd
plugin.

rspamd answers with a score, its `required_score` and an action (`no
action`, `greylist`, `add header`, `rewrite subject`, `soft reject`,
`reject`). By default the plugin does what the action says; each action can
instead follow a score threshold of ours, or be turned off:
- reject: the message is refused with rspamd's SMTP message (GTUBE gives
  `Gtube pattern`) or `Detected as spam`; 552 (`reject_type temp` makes it
  a 452);
- soft reject: refused for now, 452, rspamd's message or `Deferred by policy`;
- rewrite subject: the Subject becomes rspamd's `subject` (its `%s` is the
  old one) or `<subject_prefix> <old subject>`; the headers below are added;
- add header: the headers below are added;
- greylist, no action: the message passes. We do not greylist (qpsmtpd's
  greylisting plugin does that), so `greylist` counts as no action.
A stronger action implies the weaker ones: a message rspamd would reject,
with `reject never`, still gets the headers and a rewritten subject.

The headers (with `headers`; each replaces an older one of that name):
    X-Spam-Status: Yes, score=8.00 required=15.00 action=add header
    X-Rspamd-Score: 8.00
    X-Rspamd-Bar: ++++++++
    X-Rspamd-Report: MISSING_MID(2.5) HFILTER_HOSTNAME_UNKNOWN(2.5) ...
rspamd's own header changes (its `milter` block: `remove_headers` and
`add_headers`, e.g. from its DKIM signing or `milter_headers` module) are
applied too, unless `milter_headers no`.

The verdict is kept in `transaction.notes["rspamd"]` ({action, score,
required_score, symbols: {name: score}}) for later plugins and logging.

When rspamd cannot be reached, answers something that is not a verdict, or
does not answer within `timeout` seconds: with `defer_on_error yes` (the
default) the client gets 452 `Unable to check the message with rspamd
(<reason>), try again later`, so no message passes unscanned; with
`defer_on_error no` the message passes (logged at LOGWARN). At most
`max_scans` scans run at once in each child; the wait for a free slot counts
in the `timeout`. (452, not 451: data_post's DENYSOFT reply, as qpsmtpd.)

Arguments (key/value pairs, all optional):
- host <name or IP>: where rspamd's normal worker listens (default 127.0.0.1).
- port <n>: its port (default 11333).
- unix_socket </path>: its unix socket instead (overrides host and port).
- path </path>: the HTTP path (default /checkv2).
- timeout <seconds>: for the whole scan, waiting for a slot to verdict
  (default 29, as Haraka; keep it below plugin_timeout).
- max_scans <n>: scans at once per child (default 8).
- max_size <bytes>: bigger messages are not scanned, and pass (default
  20971520, 20 MB; rspamd itself refuses over 50 MB).
- defer_on_error yes|no: see above (default yes).
- reject, soft_reject, rewrite_subject, add_header: `action` (default: do
  it when rspamd's action says so), `never`, or a score: do it when the
  score is at least this, whatever rspamd's action. `add_header` also takes
  `always`: headers on every scanned message.
- reject_type perm|temp|...: as every qpsmtpd plugin (default perm).
- subject_prefix <word>: for rewrite subject when rspamd gives no subject
  (default `[SPAM]`).
- headers <list>: which headers to add, comma-separated among status,
  score, bar, report; or `none` (default status,score,bar,report).
- milter_headers yes|no: apply rspamd's header changes (default yes).
- relay_client skip|scan: skip messages from relay clients (relay_client,
  AUTH users) and whitelisted hosts and senders, as qpsmtpd's spamassassin
  `relayclient skip` and Haraka do (default skip); `scan` scans them, with
  `User` telling rspamd who authenticated (rspamd then skips its inbound
  checks and may sign with DKIM).
- settings_id <id>: rspamd settings profile (the `Settings-ID` header).

Example config/plugins lines:
    rspamd
    rspamd host 10.0.0.5 port 11333 timeout 15 reject 12 add_header 5
    rspamd unix_socket /run/rspamd/normal.sock relay_client scan

Differences from Haraka: failures defer the message by default (Haraka lets
it pass), thresholds of our own are possible, arguments are config/plugins
words rather than an ini file, and there is no HTTPS (rspamd's worker speaks
plain HTTP; use its unix socket or loopback).
"""

import json
import math
import re
import textwrap

from twisted.internet import defer, endpoints, error, protocol
from twisted.web.client import Agent, PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from qpsmtpd_py.constants import DECLINED, DENYSOFT, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN
from qpsmtpd_py.plugin import PluginError
from qpsmtpd_py.virus_scan import ScanError, ScannerPlugin, is_yes

# rspamd's actions, weakest first: a stronger one implies the weaker ones.
ACTIONS = ("no action", "greylist", "add header", "rewrite subject", "soft reject", "reject")
STRENGTH = {name: rank for rank, name in enumerate(ACTIONS)}
THRESHOLD_ARGUMENTS = {"reject": "reject", "soft_reject": "soft reject", "rewrite_subject": "rewrite subject",
                       "add_header": "add header"}
HEADER_NAMES = {"status": "X-Spam-Status", "score": "X-Rspamd-Score", "bar": "X-Rspamd-Bar",
                "report": "X-Rspamd-Report"}
KNOWN = {"host", "port", "unix_socket", "path", "timeout", "max_scans", "max_size", "defer_on_error",
         "reject_type", "subject_prefix", "headers", "milter_headers", "relay_client", "settings_id", "loglevel",
         *THRESHOLD_ARGUMENTS}
MAX_ANSWER = 4 << 20  # an rspamd answer is a few KB; more is a broken server
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


def _count(options, key, default, minimum):
    value = options.get(key, default)
    if not value.isdigit() or int(value) < minimum:
        raise PluginError(f"{key} must be a whole number of at least {minimum}, not {value!r}")
    return int(value)


def parse_threshold(key, value):
    """`action` | `never` | a score (| `always` for add_header)."""
    if value in ("action", "never") or (value == "always" and key == "add_header"):
        return value
    if _NUMBER.match(value):
        return float(value)
    allowed = "action, never, always or a score" if key == "add_header" else "action, never or a score"
    raise PluginError(f"{key} must be {allowed}, not {value!r}")


def spam_bar(score):
    if score >= 1:
        return "+" * min(int(score), 50)
    if score <= -1:
        return "-" * min(int(-score), 50)
    return "/"


@implementer(IBodyProducer)
class MessageProducer:
    """The message for the HTTP request, read from the spool as the socket takes it."""

    length = UNKNOWN_LENGTH

    def __init__(self, transaction):
        self._transaction = transaction
        self._paused = None
        self._stopped = False

    def startProducing(self, consumer):
        return defer.ensureDeferred(self._produce(consumer))

    async def _produce(self, consumer):
        consumer.write((self._transaction.header_bytes() + b"\n").replace(b"\n", b"\r\n"))
        for chunk in self._transaction.iter_body():
            if self._stopped:
                return
            consumer.write(chunk.replace(b"\n", b"\r\n"))  # the wire form, as the next hop gets it
            if self._paused is not None:
                await self._paused

    def pauseProducing(self):
        if self._paused is None:
            self._paused = defer.Deferred()

    def resumeProducing(self):
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self):
        self._stopped = True
        self.resumeProducing()


class AnswerReader(protocol.Protocol):
    """The response body, up to MAX_ANSWER bytes."""

    def __init__(self, done):
        self.done = done
        self.data = bytearray()
        self.transport = None

    def dataReceived(self, data):
        self.data += data
        if len(self.data) > MAX_ANSWER:
            self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(ScanError(f"an answer of more than {MAX_ANSWER} bytes"))

    def connectionLost(self, reason=protocol.connectionDone):
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(bytes(self.data))
        else:
            self.done.errback(ScanError(f"answer cut short: {reason.getErrorMessage()}"))


class Rspamd(ScannerPlugin):
    default_timeout = 29.0
    default_max_scans = 8
    reject_values = re.compile(r"^(?:action|never|-?\d+(?:\.\d+)?)$")
    reject_help = "action, never or a score"

    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("arguments come in pairs (`rspamd host 127.0.0.1 port 11333`), "
                              f"not {' '.join(args)!r}")
        options = self.args
        unknown = sorted(set(options) - KNOWN)
        if unknown:
            raise PluginError(f"unknown argument {unknown[0]!r} (known: {', '.join(sorted(KNOWN))})")
        self.host = options.get("host", "127.0.0.1")
        self.port = _count(options, "port", "11333", 1)
        if self.port > 65535:
            raise PluginError(f"port must be 1-65535, not {self.port}")
        self.unix_socket = options.get("unix_socket")
        if self.unix_socket is not None and not self.unix_socket.startswith("/"):
            raise PluginError(f"unix_socket must be an absolute path, not {self.unix_socket!r}")
        self.path = options.get("path", "/checkv2")
        if not self.path.startswith("/"):
            raise PluginError(f"path must start with /, not {self.path!r}")
        self.setup_limits(options, defer_default=True)
        self.max_size = _count(options, "max_size", "20971520", 1)
        self.milter_headers = is_yes(options.get("milter_headers"), True)
        self.thresholds = {key: parse_threshold(key, options.get(key, "action")) for key in THRESHOLD_ARGUMENTS}
        self.subject_prefix = options.get("subject_prefix", "[SPAM]")
        headers = options.get("headers", "status,score,bar,report")
        wanted = [] if headers == "none" else headers.split(",")
        bad = [name for name in wanted if name not in HEADER_NAMES]
        if bad:
            raise PluginError(f"headers: unknown header {bad[0]!r}; give a comma-separated list of "
                              f"{', '.join(HEADER_NAMES)}, or none")
        self.headers = wanted
        self.scan_relay_clients = options.get("relay_client", "skip")
        if self.scan_relay_clients not in ("skip", "scan"):
            raise PluginError(f"relay_client must be skip or scan, not {self.scan_relay_clients!r}")
        self.settings_id = options.get("settings_id")
        self._agent = None

    @property
    def server_name(self):
        return self.unix_socket or (f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}")

    # -- the hook ---------------------------------------------------------------------------
    def hook_data_post(self, transaction):
        if self.scan_relay_clients == "skip" and self.is_immune():
            return DECLINED
        if self.too_big(transaction, self.max_size):
            return DECLINED
        return defer.ensureDeferred(self._check(transaction))

    async def _check(self, transaction):
        try:
            verdict = await self.limited_scan(lambda: self._request(transaction, self.clock()))
        except ScanError as exc:
            return self.scan_failed(f"{self.server_name}: {exc}")
        return self._act(transaction, verdict)

    def scan_failed(self, reason):
        if self.defer_on_error:
            self.log(LOGERROR, f"no verdict, deferring: {reason}")
            return DENYSOFT, f"Unable to check the message with rspamd ({reason}), try again later"
        self.log(LOGWARN, f"no verdict, message passes unscanned: {reason}")
        return DECLINED

    async def _request(self, transaction, reactor):
        headers = Headers()
        for name, value in self.request_headers(transaction):
            headers.addRawHeader(name, value.encode("utf-8", "surrogateescape"))
        try:
            response = await self._http(reactor).request(b"POST", self._url(), headers,
                                                          MessageProducer(transaction))
        except Exception as exc:
            if cancelled(exc):  # the time-out: limited_scan turns it into a ScanError
                raise defer.CancelledError() from exc
            raise ScanError(describe(exc)) from exc
        reader = AnswerReader(defer.Deferred(lambda _: reader.transport and reader.transport.stopProducing()))
        response.deliverBody(reader)
        body = await reader.done
        if response.code != 200:
            raise ScanError(f"HTTP {response.code}: {body[:200].decode('utf-8', 'replace')}")
        try:
            verdict = json.loads(body)
        except ValueError as exc:
            raise ScanError(f"an answer that is not JSON: {body[:80]!r}") from exc
        if not isinstance(verdict, dict) or verdict.get("action") not in STRENGTH:
            error = verdict.get("error") if isinstance(verdict, dict) else None
            raise ScanError(f"rspamd error: {error}" if error else f"no action in the answer: {body[:80]!r}")
        return verdict

    def _http(self, reactor):
        if self._agent is None:
            if self.unix_socket:
                path = self.unix_socket

                class UnixEndpoints:
                    def endpointForURI(self, uri):
                        return endpoints.UNIXClientEndpoint(reactor, path)

                self._agent = Agent.usingEndpointFactory(reactor, UnixEndpoints())
            else:
                self._agent = Agent(reactor)
        return self._agent

    def _url(self):
        if self.unix_socket:
            return b"http://localhost" + self.path.encode()
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}".encode()

    def request_headers(self, transaction):
        """(name, value) pairs telling rspamd about the session, as rspamc and Haraka send them."""
        connection = self.connection
        pairs = [("IP", connection.remote_ip)]
        if connection.remote_host and not connection.remote_host.startswith("["):
            pairs.append(("Hostname", connection.remote_host))
        if connection.hello_host:
            pairs.append(("Helo", connection.hello_host))
        if transaction.sender is not None:
            pairs.append(("From", transaction.sender.address()))
        pairs += [("Rcpt", recipient.address()) for recipient in transaction.recipients]
        pairs.append(("Queue-Id", connection.id))
        user = connection.notes.get("auth_user")
        if user:
            pairs.append(("User", user))
        if connection.tls_cipher:
            pairs.append(("TLS-Cipher", connection.tls_cipher))
        me = self.qp.config("me")
        if me:
            pairs.append(("MTA-Name", me))
        if self.settings_id:
            pairs.append(("Settings-ID", self.settings_id))
        return [(name, value.replace("\r", " ").replace("\n", " ")) for name, value in pairs]

    # -- the verdict ------------------------------------------------------------------------
    def decide(self, verdict):
        """The action we take: rspamd's, or one from our thresholds."""
        score = _score(verdict.get("score"))
        theirs = STRENGTH[verdict["action"]]
        chosen = "no action"
        for key, action in THRESHOLD_ARGUMENTS.items():
            setting = self.thresholds[key]
            applies = ((setting == "action" and theirs >= STRENGTH[action])
                       or (isinstance(setting, float) and score >= setting))
            if applies and STRENGTH[action] > STRENGTH[chosen]:
                chosen = action
        return chosen

    def _act(self, transaction, verdict):
        score = _score(verdict.get("score"))
        required = _score(verdict.get("required_score"))
        symbols = verdict.get("symbols") if isinstance(verdict.get("symbols"), dict) else {}
        transaction.notes["rspamd"] = {
            "action": verdict["action"], "score": score, "required_score": required,
            "symbols": {name: _score(s.get("score")) for name, s in symbols.items() if isinstance(s, dict)},
        }
        action = self.decide(verdict)
        self.log(LOGINFO, f"score {score:.2f}/{required:.2f}, rspamd: {verdict['action']}, ours: {action}")
        messages = verdict.get("messages") if isinstance(verdict.get("messages"), dict) else {}
        smtp_message = str(messages.get("smtp_message") or "").replace("\r", " ").replace("\n", " ")
        if action == "reject":
            return self.get_reject_type(), smtp_message or "Detected as spam"
        if action == "soft reject":
            return DENYSOFT, smtp_message or "Deferred by policy"
        header = transaction.header
        if self.milter_headers:
            self._milter_changes(header, verdict.get("milter"))
        if action == "rewrite subject":
            old = (header.get("Subject") or "").strip()
            new = verdict.get("subject")
            new = str(new).replace("%s", old) if new else f"{self.subject_prefix} {old}".rstrip()
            header.delete("Subject")
            header.add("Subject", new)
        spam = STRENGTH[action] >= STRENGTH["add header"]
        if spam or self.thresholds["add_header"] == "always":
            self._add_headers(header, spam, action, score, required, symbols)
        return DECLINED

    def _add_headers(self, header, spam, action, score, required, symbols):
        values = {
            "status": f"{'Yes' if spam else 'No'}, score={score:.2f} required={required:.2f} action={action}",
            "score": f"{score:.2f}",
            "bar": spam_bar(score),
            "report": "\n\t".join(textwrap.wrap(" ".join(
                f"{name}({_score(s.get('score')):g})" for name, s in sorted(symbols.items())
                if isinstance(s, dict) and _score(s.get("score"))), 72)) or "none",
        }
        for key in self.headers:
            header.delete(HEADER_NAMES[key])
            header.add(HEADER_NAMES[key], values[key])

    def _milter_changes(self, header, changes):
        """rspamd's `milter` block: {remove_headers: {name: n}, add_headers: {name: value(s)}}."""
        if not isinstance(changes, dict):
            return
        for name, index in (changes.get("remove_headers") or {}).items():
            # n > 0: the n-th field of that name; 0 (or less): all of them
            header.delete(name, index - 1 if isinstance(index, int) and index > 0 else None)
        for name, value in (changes.get("add_headers") or {}).items():
            for item in value if isinstance(value, list) else [value]:
                text = item.get("value") if isinstance(item, dict) else item
                if text is None:
                    continue
                order = item.get("order") if isinstance(item, dict) else None
                header.add(name, str(text), order if isinstance(order, int) and order >= 0 else None)
                self.log(LOGDEBUG, f"rspamd added header {name}")


def _score(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def cancelled(exc):
    """The request failed because it was cancelled (twisted.web wraps the CancelledError)."""
    if isinstance(exc, defer.CancelledError):
        return True
    return any(cancelled(reason.value) for reason in getattr(exc, "reasons", None) or ())


def describe(exc):
    """A short reason for a failed request."""
    reasons = getattr(exc, "reasons", None)  # twisted.web's ResponseFailed & co.
    if reasons:
        return "; ".join(describe(reason.value) for reason in reasons)
    if isinstance(exc, error.ConnectionRefusedError):
        return "connection refused"
    if "No such file" in str(exc):
        return "no such socket"
    text = str(exc).strip()
    return text or type(exc).__name__
