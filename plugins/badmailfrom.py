r"""badmailfrom - refuse envelope senders listed in config/badmailfrom.

Hook: mail. Reads `config/badmailfrom` like qmail-smtpd does, with a reason per
line and regular expressions. Each line is

    entry [reason]

and `entry` is one of:

    spammer@example.com     that sender, compared without regard to case
    @example.net            every sender at that host (not its subdomains)
    ^bounce-.*@list\.example\.org$
                            a regular expression: an entry with any of the
                            characters / ^ $ * + ! % ? \ in it is one

A pattern is searched for (not anchored: write `^` and `$` yourself) in the
sender's address, lower-cased, as `user@host`, without angle brackets, and
case does count: write patterns in lower case. A `/` is an ordinary character
of the pattern, not a delimiter. Patterns are Perl's, as in qpsmtpd: the usual
syntax works the same in Python; `\z`, `\Z`, `\Q...\E`, named groups and
POSIX classes such as `[[:digit:]]` are translated; a pattern that still does
not compile is logged at LOGERROR (once per change of the file) and skipped.
An entry that is neither a pattern nor contains `@` is logged at LOGWARN and
skipped.

The first matching line decides: the connection's karma goes down by one and
the sender is refused with the line's reason, or with

    550 Your envelope sender is in my badmailfrom list

(the reply code follows `reject_type`). No check is made for relay clients and
whitelisted hosts or senders (see `is_immune` in qpsmtpd-py-plugins(7)), when
the file is empty, or for a sender without user or host: the null sender `<>`
and a bare `<postmaster>` are never refused.

Arguments (key/value pairs):
    reject 0|1|naughty  1 (default) refuses at MAIL; 0 only logs
                        `fail, tolerated`; naughty stores the refusal for the
                        naughty plugin, which refuses later.
    reject_type TYPE    perm (default), temp, disconnect, temp_disconnect...
    loglevel N          the usual per-plugin log level adjustment.

The file is read through the config cache: edits apply to the next MAIL
without a restart.

Example config/badmailfrom:
    badmailexample@microsoft.com
    @www.yahoo.com  yahoo never sends from www
    ^return.*@.*\.pidplate\.biz$  I don't want it regardless of subdomain

Differences from qpsmtpd:
- the sender is refused at MAIL, as in qpsmtpd since it dropped the rcpt hook
  (its early versions answered every RCPT instead);
- a pattern Python cannot compile is logged and skipped, and the later lines
  are still checked (in qpsmtpd the plugin died and the whole list was skipped);
- an odd number of arguments stops start-up; an unknown one is logged.

Example config/plugins lines:
    badmailfrom
    badmailfrom reject naughty
"""


from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGINFO
from qpsmtpd_py.perl_regex import parse_address_list
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_REASON = "Your envelope sender is in my badmailfrom list"
_KNOWN_ARGUMENTS = ("reject", "reject_type", "loglevel")


class Badmailfrom(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("arguments come in pairs, e.g. `badmailfrom reject naughty`, "
                              f"not `badmailfrom {' '.join(args)}`")
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)
        self.args.setdefault("reject", "1")
        self._entries = ((), [])

    def hook_mail(self, transaction, sender, params):
        if self.is_immune():
            return DECLINED
        entries = self.entries()
        if self.is_immune_sender(sender, entries):
            return DECLINED
        host = sender.host.lower()
        address = f"{sender.user.lower()}@{host}"
        for entry in entries:
            if self.is_match(address, entry, host):
                self.adjust_karma(-1)
                return self.get_reject(entry.reason or DEFAULT_REASON)
        self.log(LOGINFO, "pass")
        return DECLINED

    def entries(self):
        """The parsed file, parsed again only when its lines change."""
        lines = tuple(self.qp.config_list("badmailfrom"))
        if lines != self._entries[0]:
            entries, errors = parse_address_list(lines, "badmailfrom", lower=True)
            for level, error in errors:
                self.log(level, error)
            self._entries = (lines, entries)
        return self._entries[1]

    def is_immune_sender(self, sender, entries):
        if not entries:
            self.log(LOGDEBUG, "skip, empty list")
            return True
        if sender is None or sender.is_null:
            self.log(LOGDEBUG, "skip, null sender")
            return True
        if not sender.host or not sender.user:
            self.log(LOGDEBUG, "skip, missing user or host")
            return True
        return False

    def is_match(self, address, entry, host):
        if entry.pattern is not None:
            if entry.pattern.search(address):
                self.log(LOGDEBUG, f"badmailfrom pattern ({entry.bad}) match for {address}")
                return True
            return False
        if entry.bad.startswith("@"):
            return entry.bad == f"@{host}"
        return entry.bad == address
