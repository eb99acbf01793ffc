r"""rcpt_regexp - answer recipients by the rules of config/rcpt_regexp.

Hook: rcpt. Each line of `config/rcpt_regexp` is

    address-or-/pattern/  RETURN_CODE  [message]

separated by white space. The first word is either an address, compared with
the recipient without regard to case, or a regular expression between
slashes, searched for in the recipient (`user@host`, without angle brackets,
lower-cased), ignoring case. RETURN_CODE is the name of a return code: OK,
DENY, DENYSOFT, DENY_DISCONNECT (or DENYHARD), DENYSOFT_DISCONNECT, DECLINED.
The message, the rest of the line, is the text of the reply.

The first matching line decides: its code and message are the plugin's
answer for this recipient, so OK accepts it (`250`), DENY refuses it with
`550 <message>` (`550 relaying denied` without one), DENYSOFT `450`, and
DECLINED leaves it to the next rcpt plugin. No line matches: DECLINED. A
recipient without a host (a bare `<postmaster>`) is not checked.

Patterns are Perl's, as in qpsmtpd: the usual syntax works the same in
Python; `\z`, `\Z`, `\Q...\E`, named groups and POSIX classes such as
`[[:digit:]]` are translated. A line whose pattern does not compile, that has
no return code or an unknown one is logged at LOGWARN (once per change of the
file) and skipped.

Arguments: none, except the standard `loglevel N`.

The file is read through the config cache: edits apply to the next RCPT
without a restart.

Example config/rcpt_regexp:
    me@myhost.org           OK
    /^user\d+@doma\.in$/    OK
    info@myhost.com         DENY     User not found.
    /^unused@/              DENY     User not found.
    /^.*$/                  DECLINED

Differences from qpsmtpd:
- return code names may be written in any case; DONE is refused like an
  unknown code (it would leave the client without a reply until it times out);
- a line without a return code is logged and skipped (qpsmtpd died there, and
  the rules after it were not used);
- an odd number of arguments stops start-up; an unknown one is logged.

Example config/plugins line (before rcpt_ok, which would accept first):
    rcpt_regexp
"""

import re

from qpsmtpd_py.constants import (
    CODE_BY_NAME,
    DECLINED,
    DONE,
    LOGDEBUG,
    LOGWARN,
)
from qpsmtpd_py.perl_regex import perl_regex
from qpsmtpd_py.plugin import Plugin, PluginError

CODES = {name: code for name, code in CODE_BY_NAME.items() if code != DONE}  # DONE: no reply
_DELIMITED = re.compile(r"/(.*)/", re.DOTALL)
_KNOWN_ARGUMENTS = ("loglevel",)


# -- the plugin ------------------------------------------------------------------------------
class Rule:
    __slots__ = ("address", "code", "code_name", "message", "pattern", "word")

    def __init__(self, word, address, pattern, code_name, message):
        self.word = word  # as written in the file
        self.address = address  # lower-cased, or None for a pattern
        self.pattern = pattern
        self.code_name = code_name
        self.code = CODES[code_name]
        self.message = message


def parse_rules(lines):
    """The rules of config/rcpt_regexp, and a description of each line that is skipped."""
    rules, errors = [], []
    for line in lines:
        words = line.split(None, 2)
        if not words:
            continue
        word, pattern, address = words[0], None, None
        delimited = _DELIMITED.fullmatch(word)
        if delimited is not None:
            try:
                pattern = perl_regex(delimited.group(1), re.IGNORECASE)
            except re.error as exc:
                errors.append(f"REGEXP '{delimited.group(1)}' not valid: {exc}")
                continue
        else:
            address = word.lower()
        if len(words) < 2:
            errors.append(f"rcpt_regexp - no return code in {line.strip()!r}, ignoring this line")
            continue
        if words[1].upper() not in CODES:
            errors.append(f"rcpt_regexp - '{words[1]}' is not a valid constant, ignoring this line")
            continue
        rules.append(Rule(word, address, pattern, words[1].upper(), words[2] if len(words) > 2 else None))
    return rules, errors


class RcptRegexp(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("rcpt_regexp takes no arguments but `loglevel N`, "
                              f"not `rcpt_regexp {' '.join(args)}`")
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)
        self._rules = ((), [])

    def hook_rcpt(self, transaction, recipient, params):
        if not recipient.host or not recipient.user:
            return DECLINED
        rcpt = f"{recipient.user}@{recipient.host}".lower()
        for rule in self.rules():
            if rule.address is not None:
                if rule.address != rcpt:
                    continue
                self.log(LOGDEBUG, f"String {rule.address} matched {rcpt}, returning {rule.code_name}")
            else:
                if not rule.pattern.search(rcpt):
                    continue
                self.log(LOGDEBUG, f"RE {rule.word} matched {rcpt}, returning {rule.code_name}")
            return (rule.code, rule.message) if rule.message else rule.code
        return DECLINED

    def rules(self):
        """The parsed file, parsed again only when its lines change."""
        lines = tuple(self.qp.config_list("rcpt_regexp"))
        if lines != self._rules[0]:
            rules, errors = parse_rules(lines)
            for error in errors:
                self.log(LOGWARN, error)
            self._rules = (lines, rules)
        return self._rules[1]

