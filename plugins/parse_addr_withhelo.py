"""parse_addr_withhelo - no ESMTP parameters on MAIL and RCPT after HELO.

Hooks: mail_parse, rcpt_parse. A client that greeted with HELO speaks plain
SMTP (RFC 821), which has no parameters after the address; only EHLO opens
ESMTP. After HELO this plugin parses MAIL FROM and RCPT TO itself and refuses
parameters:

    MAIL FROM:<a@example.com> SIZE=100   ->  501 No parameters allowed in MAIL
    RCPT TO:<b@example.org> NOTIFY=NEVER ->  501 No parameters allowed in RCPT

After EHLO the core's usual parser runs, parameters and all.

Its parser, in detail: after `FROM:` (`TO:`) and any white space,
- an address in angle brackets (up to the last `>`) may only be followed by
  white space;
- without angle brackets, a word with `@` is the address (the core then wants
  angle brackets, see dont_require_anglebrackets), and anything after it
  after white space is a parameter;
- `MAIL FROM:` with nothing is the null sender `<>`; `RCPT TO:postmaster`
  and `RCPT TO:abuse` are taken as they are; any other text gets
  `501 Could not parse your MAIL FROM command` (`... RCPT TO command`);
- a line without `FROM:` (`TO:`) gets `501 Syntax error in command`.

Arguments: none, except the standard `loglevel N`.

Difference from qpsmtpd: `RCPT TO:postmaster` (or `abuse`) without angle
brackets is passed on as the address, as the plugin meant to; qpsmtpd's parser
returned nothing for it, which the core answered with
`501 Syntax error in command`.

Example config/plugins line:
    parse_addr_withhelo
"""

import re

from qpsmtpd_py.constants import DECLINED, DENY, LOGDEBUG, OK
from qpsmtpd_py.plugin import Plugin, PluginError

_PREFIX = {
    "mail": re.compile(r"from:\s*", re.IGNORECASE | re.ASCII),
    "rcpt": re.compile(r"to:\s*", re.IGNORECASE | re.ASCII),
}
_BRACKETED = re.compile(r"(<.*>)\s*", re.ASCII)
_PARAMETER_AFTER_ADDRESS = re.compile(r"@\S+\s+\S", re.ASCII)
_BARE_MAILBOX = re.compile(r"(?:postmaster|abuse)", re.IGNORECASE)
_KNOWN_ARGUMENTS = ("loglevel",)


class ParseAddrWithhelo(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("parse_addr_withhelo takes no arguments but `loglevel N`, "
                              f"not `parse_addr_withhelo {' '.join(args)}`")
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)

    def hook_mail_parse(self, transaction):
        return (OK, self.parse) if self.connection.hello == "helo" else DECLINED

    def hook_rcpt_parse(self, transaction):
        return (OK, self.parse) if self.connection.hello == "helo" else DECLINED

    def parse(self, session, command, line):
        """The parser the core calls: (OK, address) or (DENY, message for a 501)."""
        self.log(LOGDEBUG, f"parse cmd=[{command}], line=[{line}]")
        prefix = _PREFIX[command].match(line)
        if prefix is None:
            return DENY, "Syntax error in command"
        rest = line[prefix.end():]
        no_parameters = f"No parameters allowed in {command.upper()}"

        bracketed = _BRACKETED.match(rest)
        if bracketed is not None:
            if rest[bracketed.end():]:
                return DENY, no_parameters
            return OK, bracketed.group(1)

        rest = rest.rstrip(" \t\n\r\f\v")  # Perl's \s, not Unicode white space
        if "@" in rest:
            if _PARAMETER_AFTER_ADDRESS.search(rest):
                return DENY, no_parameters
            return OK, rest
        if command == "mail":
            if not rest:
                return OK, "<>"
            return DENY, "Could not parse your MAIL FROM command"
        if _BARE_MAILBOX.fullmatch(rest):
            return OK, rest
        return DENY, "Could not parse your RCPT TO command"
