r"""badrcptto - refuse recipients listed in config/badrcptto.

Hook: rcpt. Like badmailfrom, for the recipient. Each line of
`config/badrcptto` is

    entry [reason]

and `entry` is one of:

    bad@example.com     that recipient, compared without regard to case
    @bad.example.com    every recipient at that host (not its subdomains)
    @.*@                a regular expression: an entry with any of the
                        characters / ^ $ * + ! % ? \ in it is one

A pattern is searched for (not anchored: write `^` and `$` yourself) in the
recipient's address as `user@host`, without angle brackets, ignoring case. A
`/` is an ordinary character of the pattern, not a delimiter. Patterns are
Perl's, as in qpsmtpd: the usual syntax works the same in Python; `\z`, `\Z`,
`\Q...\E`, named groups and POSIX classes such as `[[:digit:]]` are
translated; a pattern that still does not compile is logged at LOGERROR (once
per change of the file) and skipped. An entry that is neither a pattern nor
contains `@` is logged at LOGERROR and skipped.

The first matching line decides: the connection's karma goes down by two and
the recipient is refused with `550 <reason>`, or without a reason with

    550 mail to <entry> not accepted here (#5.1.1)

(the entry as written in the file). Relay clients and whitelisted hosts and
senders are not checked (see `is_immune` in qpsmtpd-py-plugins(7)), nor is a
recipient without a host (a bare `<postmaster>`). No match: DECLINED (log
`pass`), the next rcpt plugin decides.

Arguments: none, except the standard `loglevel N`.

The file is read through the config cache: edits apply to the next RCPT
without a restart.

Example config/badrcptto:
    bad@example.com
    @bad.example.com
    !       Sorry, bang paths not accepted here
    @.*@    Sorry, multiple at signs not accepted here
    %       Sorry, percent hack not accepted here

Differences from qpsmtpd:
- patterns are used as written (qpsmtpd lower-cased them before matching
  without regard to case, which changed escapes: `\S` became `\s`, `\D` `\d`);
- a pattern Python cannot compile is logged and skipped, and the later lines
  are still checked (in qpsmtpd the plugin died and the whole list was skipped);
- an odd number of arguments stops start-up; an unknown one is logged.

Example config/plugins line (before rcpt_ok, which would accept first):
    badrcptto
"""

import re

from qpsmtpd_py.constants import DECLINED, DENY, LOGDEBUG, LOGERROR, LOGINFO
from qpsmtpd_py.perl_regex import parse_address_list
from qpsmtpd_py.plugin import Plugin, PluginError

_KNOWN_ARGUMENTS = ("loglevel",)


class Badrcptto(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("badrcptto takes no arguments but `loglevel N`, "
                              f"not `badrcptto {' '.join(args)}`")
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)
        self._entries = ((), [])

    def hook_rcpt(self, transaction, recipient, params):
        if self.is_immune():
            return DECLINED
        host_and_to = self.get_host_and_to(recipient)
        if host_and_to is None:
            return DECLINED
        host, to = host_and_to
        entries = self.entries()
        if not entries:
            self.log(LOGINFO, "skip, empty config")
            return DECLINED
        for entry in entries:
            if self.is_match(to, entry, host):
                self.adjust_karma(-2)
                return DENY, entry.reason or f"mail to {entry.bad} not accepted here (#5.1.1)"
        self.log(LOGINFO, "pass")
        return DECLINED

    def entries(self):
        """The parsed file, parsed again only when its lines change."""
        lines = tuple(self.qp.config_list("badrcptto"))
        if lines != self._entries[0]:
            entries, errors = parse_address_list(lines, "badrcptto", re.IGNORECASE, no_at_level=LOGERROR)
            for level, error in errors:
                self.log(level, error)
            self._entries = (lines, entries)
        return self._entries[1]

    def get_host_and_to(self, recipient):
        """(host, user@host), both lower-cased; None for a recipient without user or host."""
        if recipient is None:
            self.log(LOGERROR, "skip: no recipient!")
            return None
        if not recipient.host or not recipient.user:
            self.log(LOGINFO, "skip: missing host or user")
            return None
        host = recipient.host.lower()
        return host, f"{recipient.user.lower()}@{host}"

    def is_match(self, to, entry, host):
        if entry.pattern is not None:
            self.log(LOGDEBUG, f"pattern ({entry.bad}) check for {to}")
            if entry.pattern.search(to):
                self.log(LOGINFO, "fail: pattern match")
                return True
            return False
        bad, to = entry.bad.lower(), to.lower()
        if bad.startswith("@"):
            if bad == f"@{host}":
                self.log(LOGINFO, "fail: host match")
                return True
            return False
        if bad == to:
            self.log(LOGINFO, "fail: rcpt match")
            return True
        return False
