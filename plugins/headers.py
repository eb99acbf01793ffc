"""headers - check the header of each message: required fields, duplicates, Date.

Hook: data_post. After the message has been received, and before it is
queued, the plugin checks, in this order:

1. that the client sent something: an empty message gets
   `You must send some data first` (log `fail, no data`);
2. that the message has a header at all: `Headers are missing`;
3. nothing more when the client is immune (a relay client, a whitelisted
   host or sender: see `relay` and `whitelist`);
4. that every required field (`require`, default `From`) is present with a
   value that is not blank; each one missing gives
   `We require a valid <name> header` (log `fail, no <name> header`);
5. that none of the fields RFC 5322 section 3.6 allows at most once appears
   twice: Date, From, Sender, Reply-To, To, Cc, Bcc, Message-Id, In-Reply-To,
   References, Subject (names compared without regard to case; a field whose
   first occurrence is blank is not counted). Each one repeated gives
   `Only one <name> header allowed. See RFC 5322, Section 3.6`
   (log `fail, too many <name> headers`);
6. with `past` or `future`, that the first Date field is not more than that
   many days before or after now: `The Date header is too far in the past`
   (log `fail, date too old (<date>)`) or `... too far in the future`
   (log `fail, date in future (<date>)`). A Date the plugin cannot read (any
   RFC 5322 date, and the ctime form `Thu Nov 26 01:12:29 2026`; a date
   without a zone is local time) is logged `skip, date not parseable (<date>)`
   and not checked further.

Every failure of steps 4 to 6 costs one point of karma (the connection note
`karma`). When the Date is out of range, that is the rejection; otherwise
the failures of steps 4 and 5 are rejected together, one line of the reply
each (log `fail, RFC 5322 validation errors`). What a rejection does
depends on `reject`: with 1 the message gets `552 <text>` (`452 <text>` with
reject_type temp or soft); with 0 the failure is only logged (`fail,
tolerated, ...`) and the message goes on; with naughty each text is stored,
prefixed with `(headers) `, for the `naughty` plugin to use. A message that
passes is logged `pass`.

Arguments (key/value pairs):
    require A[,B...]  the fields that must be present, comma separated,
                      e.g. `From,Date,Subject`. Default: From. Many legitimate
                      senders omit Date, which is why it is not required by
                      default even though RFC 5322 requires it.
    past N            reject a Date more than N days (a number, fractions
                      allowed) in the past. Default: not checked (0 also
                      means not checked).
    future N          the same for a Date more than N days in the future.
    reject 0|1|naughty  default 1 (see above).
    reject_type perm|temp|...  default perm: which code a rejection uses.
    loglevel N        the usual per-plugin log level adjustment.

An odd number of arguments, a `past` or `future` that is not a number, or an
empty `require` stops start-up (qpsmtpd logged `invalid arguments` and went
on). An unknown key is logged and ignored.

Differences from qpsmtpd, all deliberate:
- the reply to missing or repeated fields is their texts above; qpsmtpd
  passed its own reject code where the text belongs, so such a message got
  `552 901` (or `452 902`), and the texts only reached the client through
  the `naughty` plugin;
- qpsmtpd stored those texts in the connection note `naughty` whatever
  `reject` said, so with `reject 0`, or with `reject 1` for the next message
  of the connection, a loaded `naughty` plugin still rejected; here they are
  stored only with `reject naughty`;
- `require` belongs to the plugin line it is on (qpsmtpd kept one list for
  every instance of the plugin: the last line's);
- the date is read with Python's RFC 5322 date parser rather than Perl's
  Date::Parse, which also guessed at free-form dates.

Example config/plugins lines:
    headers
    headers require From,Date future 2 past 15 reject_type temp
"""

import time
from email.utils import parsedate_to_datetime

from qpsmtpd_py.constants import DECLINED, LOGINFO
from qpsmtpd_py.plugin import Plugin, PluginError

SINGULAR = ("Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc",
            "Message-Id", "In-Reply-To", "References", "Subject")
DAY = 24 * 3600
_KNOWN_ARGUMENTS = ("require", "past", "future", "reject", "reject_type", "loglevel")


def parse_date(text):
    """Seconds since the epoch of a Date value, or None if it cannot be read."""
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None


class Headers(Plugin):
    # The clock, a function returning seconds since the epoch (tests replace it).
    now = staticmethod(time.time)

    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("arguments come in pairs (require From,Date past 5 ...), "
                              f"not `headers {' '.join(args)}`")
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)
        self.args.setdefault("reject", "1")
        self.args["reject_type"] = self.args.get("reject_type") or "perm"
        required = self.args.get("require", "From")
        self.required = [name.strip() for name in required.split(",") if name.strip()]
        if not self.required:
            raise PluginError(f"require needs at least one header name, not {required!r}")
        self.past = self.days("past")
        self.future = self.days("future")

    def days(self, key):
        text = self.args.get(key)
        if text is None:
            return 0.0
        try:
            return float(text)
        except ValueError:
            raise PluginError(f"{key} must be a number of days, not {text!r}") from None

    def hook_data_post(self, transaction):
        if transaction.data_size == 0:
            return self.get_reject("You must send some data first", "no data")
        header = transaction.header
        if header is None:
            return self.get_reject("Headers are missing", "missing headers")
        if self.is_immune():
            return DECLINED

        errors = self.missing_required(header) + self.repeated_singular(header)
        date_error = self.invalid_date_range(header)
        if date_error:
            return self.reject([date_error], date_error)
        if errors:
            return self.reject(errors, "RFC 5322 validation errors")
        self.log(LOGINFO, "pass")
        return DECLINED

    def reject(self, messages, log_message):
        """get_reject() for one or more texts; with `reject naughty` each is stored."""
        if self.args.get("reject") == "naughty":
            self.log(LOGINFO, f"fail, NAUGHTY, {log_message}")
            for message in messages:
                self.store_deferred_reject(f"({self.name}) {message}")
            return DECLINED
        return self.get_reject("\n".join(messages), log_message)

    def missing_required(self, header):
        errors = []
        for name in self.required:
            if (header.get(name) or "").strip():
                continue
            self.adjust_karma(-1)
            self.log(LOGINFO, f"fail, no {name} header")
            errors.append(f"We require a valid {name} header")
        return errors

    def repeated_singular(self, header):
        errors = []
        for name in SINGULAR:
            if not (header.get(name) or "").strip() or header.count(name) == 1:
                continue
            self.adjust_karma(-1)
            self.log(LOGINFO, f"fail, too many {name} headers")
            errors.append(f"Only one {name} header allowed. See RFC 5322, Section 3.6")
        return errors

    def invalid_date_range(self, header):
        """The rejection text for a Date out of the allowed range, else None."""
        if not (self.past or self.future):
            return None
        date = " ".join((header.get("Date") or "").split())
        if not date:
            return None
        stamp = parse_date(date)
        if stamp is None:
            self.log(LOGINFO, f"skip, date not parseable ({date})")
            return None
        now = self.now()
        if self.past and stamp < now - self.past * DAY:
            self.log(LOGINFO, f"fail, date too old ({date})")
            self.adjust_karma(-1)
            return "The Date header is too far in the past"
        if self.future and stamp > now + self.future * DAY:
            self.log(LOGINFO, f"fail, date in future ({date})")
            self.adjust_karma(-1)
            return "The Date header is too far in the future"
        return None
