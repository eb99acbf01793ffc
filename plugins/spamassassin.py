"""spamassassin - score messages with SpamAssassin's daemon, spamd.

Hook: data_post. The message (an `X-Envelope-From: <sender>` line, the
header, the body streamed from the spool) goes to spamd with the HEADERS
request of its protocol, as spamc sends it; spamd answers with the header
it would give the message. Then, as in qpsmtpd:
- the X-Spam-* fields spamd added (X-Spam-Checker-Version, X-Spam-Flag,
  X-Spam-Level, X-Spam-Status, and any your SpamAssassin config adds, except
  X-Spam-Report and X-Spam-Prev-Subject) go on top of the message, unless
  `headers none`. Fields of those names already in the message are renamed
  to X-Old-Spam-* first (or dropped, or kept: leave_old_headers);
- a message for more than one recipient gets `X-Spam-User: <user>, <n>
  recipients`: spamd scored it without any one recipient's preferences;
- the transaction note `spamassassin` holds the verdict for later plugins
  (dspam's `autolearn spamassassin` reads it): a dict of the X-Spam-Status
  words, `is_spam` (Yes/No), `score`, `required`, `tests`, `autolearn`...;
- karma: -1 for spam, and -1/+1 when SpamAssassin auto-learned it as
  spam/ham;
- over munge_subject_threshold the Subject gets a prefix, and at or over
  the `reject` score the message gets `552 spam score exceeded threshold`.
Relay clients (see relay) and whitelisted hosts and senders are not scanned,
nor are messages larger than size_limit.

Arguments (key value pairs):
- reject <score>|userprefs: reject at this score or more. `userprefs`: at
  the `required` score spamd reports, the user's own threshold (with
  spamd_user vpopmail, see below). Default: never reject. `reject_threshold`
  is read as an older spelling of it.
- reject_type perm|temp|disconnect|temp_disconnect: how to reject (perm).
- munge_subject_threshold <score>: above this score, and above the score
  spamd requires, the Subject starts with the prefix. Default: never.
- subject_prefix <word>: the prefix. Default: the first line of
  config/subject_prefix, else `*** SPAM ***` (config/plugins arguments
  cannot hold spaces: use the config file for a prefix with spaces).
- spamd_socket <where>: `host:port` (an IPv6 address as `[addr]:port`),
  `host` for port 783, or the absolute path of spamd's unix socket.
  Default 127.0.0.1:783 (what qpsmtpd's `localhost` resolves to).
- headers none: add no header and leave the Subject alone (the note is set).
- leave_old_headers rename|drop|keep: what to do with X-Spam-* fields the
  message arrives with (rename, to X-Old-Spam-*).
- spamd_user <name>: the user spamd scans for. Default: the user the
  daemon runs as. `vpopmail` means per-recipient preferences: a message
  for a single recipient is scanned for that recipient's address.
- relayclient skip: do not scan relay clients (always the case, see below).
- size_limit <bytes>: larger messages are not scanned (500000).
- timeout <seconds>: for waiting for a free scan slot plus the scan (60).
- max_scans <n>: scans in flight at once per child; more wait (4).
- defer_on_error yes|no: when spamd is down, answers an error or not in
  time, answer `452 Unable to check the message for spam (<reason>), try
  again later` (yes, the default), or let the message pass unscanned with
  a warning in the log (no).

Example config/plugins lines:
    spamassassin reject 12 munge_subject_threshold 5
    spamassassin spamd_socket /run/spamd.sock reject userprefs spamd_user vpopmail

Where we differ from qpsmtpd, and why:
- qpsmtpd talks to spamd with blocking socket calls and no time-out: a
  stuck spamd hangs the process and every session in it, and a spamd that
  is down lets every message through unscanned. Here the request is
  asynchronous, at most max_scans run at once per child, and a spamd that
  is down or slow gets the client a 452 within `timeout` (its mail is
  retried later, not lost and not waved through); `defer_on_error no`
  restores the pass-through.
- qpsmtpd reads the whole message into memory and converts it to CRLF; we
  stream it from the spool with its stored LF line ends (as spamc passes on
  an mbox message), which SpamAssassin reads alike.
- When the answer has no X-Spam-Status (a SpamAssassin config that removes
  it), the verdict comes from spamd's `Spam:` response line instead of
  being lost.
- Incoming X-Spam-Flag, -Level, -Status, -Checker-Version and -Report
  fields are renamed (or dropped) even when this scan does not add the same
  field: qpsmtpd left a forged `X-Spam-Flag: YES` on a ham message.
- `relayclient skip` is accepted; relay clients are never scanned, which
  is what qpsmtpd's code does whatever this argument says.
- Bad arguments stop the daemon at start with a message (qpsmtpd logged
  and went on).
"""

import re

from qpsmtpd_py.constants import DECLINED, DENY, LOGDEBUG, LOGINFO
from qpsmtpd_py.plugin import PluginError
from qpsmtpd_py.spam_scan import SpamFilterPlugin, message_head, process_user
from qpsmtpd_py.spamd_client import SpamdError, parse_address, spamd_request
from qpsmtpd_py.virus_scan import ScanError, size_argument

_CHUNK = 1 << 16
_FOLDED_LIST = re.compile(r",\r?\n[ \t]+")
_SCORE = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$")
# Fields spamd adds by default: taken away from the incoming message whatever this scan adds.
STANDARD_FIELDS = ("X-Spam-Checker-Version", "X-Spam-Flag", "X-Spam-Level", "X-Spam-Status", "X-Spam-Report")
# Not copied (as qpsmtpd): the report comes pre-folded, and the old subject is the message's own.
NOT_COPIED = {"x-spam-report", "x-spam-prev-subject"}
KNOWN = ("reject", "reject_threshold", "reject_type", "munge_subject_threshold", "subject_prefix",
         "spamd_socket", "headers", "leave_old_headers", "spamd_user", "relayclient", "size_limit")


def parse_status(text: str) -> dict[str, str]:
    """`Yes, score=6.3 required=5.0 tests=A,B autolearn=no version=4.0.1` -> its words as a dict."""
    words = _FOLDED_LIST.sub(",", text).split()  # SpamAssassin folds the tests list after a comma
    if not words:
        return {}
    results = {"is_spam": words[0].rstrip(",")}
    for word in words[1:]:
        key, _, value = word.partition("=")
        results[key] = value
    if "hits" in results and "score" not in results:  # SpamAssassin before 3
        results["score"] = results.pop("hits")
    return results


def number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def old_name(name: str) -> str:
    """`X-Spam-Status` -> `X-Old-Spam-Status`."""
    return "X-Old-" + name[2:] if name[:2].lower() == "x-" else "Old-" + name


def message_chunks(transaction):
    """The message as spamd reads it, in chunks taken from the spool as the socket drains."""
    yield message_head(transaction)
    with transaction.body_file() as body:
        while chunk := body.read(_CHUNK):
            yield chunk


class SpamAssassin(SpamFilterPlugin):
    reject_values = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+|userprefs)$")
    reject_help = "a score (e.g. 12) or userprefs"
    default_timeout = 60.0

    def register(self, qp, *args):
        self.key_value_arguments(args, KNOWN)
        self.setup_limits(self.args, defer_default=True)
        reject = self.args.get("reject", self.args.get("reject_threshold"))
        if reject is not None and not self.reject_values.match(reject):
            raise PluginError(f"reject_threshold must be a score (e.g. 12), not {reject!r}")
        # qpsmtpd: `reject 0` (a false value in Perl) never rejects.
        self.reject = None if reject in (None, "0") else reject
        self.munge_threshold = self.score_argument("munge_subject_threshold")
        self.subject_prefix = self.args.get("subject_prefix")
        self.spamd = parse_address(self.args.get("spamd_socket") or "127.0.0.1:783")
        headers = self.args.get("headers")
        if headers not in (None, "none"):
            raise PluginError(f"headers takes only `none` (add no headers), not {headers!r}")
        self.add_headers = headers is None
        self.old_headers = (self.args.get("leave_old_headers") or "rename").lower()
        if self.old_headers not in ("rename", "drop", "keep"):
            raise PluginError(f"leave_old_headers must be rename, drop or keep, not {self.old_headers!r}")
        self.spamd_user = self.args.get("spamd_user")
        relayclient = self.args.get("relayclient")
        if relayclient not in (None, "skip"):
            raise PluginError(f"relayclient takes only `skip`, not {relayclient!r}")
        self.size_limit = size_argument("size_limit", self.args.get("size_limit"), 500_000)

    def score_argument(self, name):
        text = self.args.get(name)
        if text is None:
            return None
        if not _SCORE.match(text):
            raise PluginError(f"{name} must be a score (e.g. 5 or 7.5), not {text!r}")
        return float(text)

    # -- the hook ---------------------------------------------------------------------------------
    async def hook_data_post(self, transaction):
        if self.is_immune() or self.too_big(transaction, self.size_limit):
            return DECLINED
        user = self.spamd_username(transaction)
        try:
            response = await self.limited_scan(lambda: self.ask_spamd(transaction, user))
        except (ScanError, SpamdError) as exc:
            return self.scan_failed(str(exc))
        results = self.results(response)
        if number(results.get("score")) is None:
            return self.scan_failed("spamd gave no score")
        transaction.notes["spamassassin"] = results
        if self.add_headers:
            self.insert_headers(transaction, response.spam_fields(), user)
            self.munge_subject(transaction, results)
        return self.verdict(results)

    async def ask_spamd(self, transaction, user):
        length = len(message_head(transaction)) + transaction.body_size
        return await spamd_request(self.clock(), self.spamd, "HEADERS", user, length,
                                   message_chunks(transaction), self.timeout)

    def spamd_username(self, transaction):
        user = self.spamd_user or process_user()
        recipients = transaction.recipients
        if len(recipients) > 1:
            self.log(LOGDEBUG, f"{len(recipients)} recipients: scanning for {user}")
            return user
        if user == "vpopmail" and recipients:  # per-recipient SpamAssassin preferences
            return recipients[0].address()
        return user

    @staticmethod
    def results(response):
        """The verdict: X-Spam-Status's words, else spamd's `Spam:` line."""
        status = next((value for name, value in response.spam_fields() if name.lower() == "x-spam-status"), None)
        if status is not None:
            return parse_status(status)
        spam = response.spam_line()
        if spam is None:
            return {}
        return {"is_spam": "Yes" if spam[0] else "No", "score": f"{spam[1]:g}", "required": f"{spam[2]:g}"}

    # -- the message ------------------------------------------------------------------------------
    def insert_headers(self, transaction, fields, user):
        header = transaction.header
        self.retire(header, "X-Spam-User")
        count = len(transaction.recipients)
        if count > 1:
            header.add("X-Spam-User", f"{user}, {count} recipients", 0)
        fields = [(name, value) for name, value in fields if name.lower() not in NOT_COPIED]
        for name in {name.lower(): name for name in (*STANDARD_FIELDS, *(n for n, _ in fields))}.values():
            self.retire(header, name)
        for name, value in reversed(fields):  # each goes on top: keep spamd's order
            header.add(name, value.replace("\r", ""), 0)

    def retire(self, header, name):
        """Rename or drop the message's own `name` fields (leave_old_headers)."""
        if self.old_headers == "keep":
            return
        if self.old_headers == "rename":
            for value in header.get_all(name):
                header.add(old_name(name), value, 0)
        header.delete(name)

    def munge_subject(self, transaction, results):
        score, required = number(results.get("score")), number(results.get("required"))
        if self.munge_threshold is None or score is None or score <= self.munge_threshold:
            return
        if required and score <= required:
            return
        prefix = self.subject_prefix or self.qp.config("subject_prefix") or "*** SPAM ***"
        subject = transaction.header.get("Subject") or ""
        transaction.header.replace("Subject", f"{prefix} {subject}")

    # -- the verdict ------------------------------------------------------------------------------
    def verdict(self, results):
        score = number(results["score"])
        spam = results.get("is_spam") == "Yes"
        if spam:
            self.adjust_karma(-1)
        learned = results.get("autolearn")
        if learned in ("ham", "spam"):
            self.adjust_karma(1 if learned == "ham" else -1)
        status = f"{'Spam' if spam else 'Ham'}, {results['score']}" + (f", learn={learned}" if learned else "")
        threshold = number(results.get("required")) if self.reject == "userprefs" else number(self.reject)
        if not threshold:
            self.log(LOGINFO, f"{'fail' if spam else 'pass'}, reject disabled ({status})")
            return DECLINED
        if score < threshold:
            self.log(LOGINFO, f"{'fail, tolerated' if spam else 'pass'}, {status} < {threshold:g}")
            return DECLINED
        self.log(LOGINFO, f"fail, {status} >= {threshold:g}")
        return self.get_reject_type(DENY), "spam score exceeded threshold"
