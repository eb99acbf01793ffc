"""rcpt_map - answer the recipients of one domain from a map file.

Hooks: rcpt (and pre-connection, to notice a changed map). For recipients of
the domain `domain` (compared without regard to case; other domains, and
recipients without a host, are left to the next plugin: DECLINED) the map
file gives the answer. Each line of the file is

    address  RETURN_CODE  [message]

separated by white space; addresses are compared with the recipient's
`user@host` without regard to case. RETURN_CODE is the name of a return code:
OK, DENY, DENYSOFT, DENY_DISCONNECT (or DENYHARD), DENYSOFT_DISCONNECT,
DECLINED. The message, the rest of the line, is the text of the reply
(default `No such user.`). Blank lines and lines starting with `#` are
ignored; a line without a return code, or with an unknown one, is logged at
LOGERROR and skipped.

A listed recipient gets its line's answer: OK accepts it (`250`), DENY
refuses it with `550 <message>`, and so on. A recipient of the domain that is
not listed gets the `default` answer: `550 No such user.` unless set.

Arguments (key/value pairs):
    domain NAME         the domain this map is for. Required.
    file PATH           the map file: an absolute path, or relative to the
                        daemon's working directory. Required.
    default CODE[=MSG]  the answer for recipients not in the map; a `_` in MSG
                        stands for a space, as the line cannot hold one.
                        Default DENY=No_such_user. (MSG defaults to
                        `No such user.`)
    loglevel N          the usual per-plugin log level adjustment.

The map is read at start-up; a missing, unreadable or empty map, or a missing
or bad argument, stops start-up. It is read again before the greeting of the
first connection after the file changed; a changed map that is unreadable or
empty is logged and the previous one kept.

Example map file /etc/qpsmtpd/map_example_org:
    # rcpt_map for example.org
    me@example.org        OK
    you@example.org       OK
    info@example.org      DENY     User not found.

Load one instance per domain (`rcpt_map:1 ...` for a second one), before
rcpt_ok.

Differences from qpsmtpd:
- fields are separated by any white space, and a line without a message
  works (qpsmtpd split on single spaces and kept the line end, so aligned
  columns and lines without a message were rejected as having no constant);
- addresses in the map match without regard to case, as qpsmtpd documented
  (it lower-cased only the recipient, so an entry with capitals never matched);
- return code names may be written in any case; DONE is refused like an
  unknown code (it would leave the client without a reply); MSG of `default`
  keeps any `=` in it;
- a change is noticed by modification time (to the nanosecond), size and
  inode, not only by a later modification second;
- an odd number of arguments stops start-up; an unknown one is logged.

Example config/plugins line:
    rcpt_map domain example.org file /etc/qpsmtpd/map_example_org default DENY=User_unknown
"""

import os

from qpsmtpd_py.constants import (
    CODE_BY_NAME,
    DECLINED,
    DONE,
    LOGDEBUG,
    LOGERROR,
    LOGINFO,
    LOGWARN,
)
from qpsmtpd_py.plugin import Plugin, PluginError

CODES = {name: code for name, code in CODE_BY_NAME.items() if code != DONE}  # DONE: no reply
DEFAULT_MESSAGE = "No such user."
_KNOWN_ARGUMENTS = ("domain", "file", "default", "loglevel")


class RcptMap(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("arguments come in pairs: `rcpt_map domain example.org file /path/to/map`, "
                              f"not `rcpt_map {' '.join(args)}`")
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)
        self.file = self.args.get("file")
        if not self.file:
            raise PluginError("No map file given: add `file /path/to/map`")
        domain = self.args.get("domain")
        if not domain:
            raise PluginError("No domain name given: add `domain example.org`")
        self.domain = domain.lower()
        self.default = self.parse_default(self.args.get("default", "DENY"))
        self.log(LOGDEBUG, f"Using map {self.file} for domain {self.domain}")
        self._signature = None
        self._problem = None
        try:
            self.map = self.read_map()
        except OSError as exc:
            raise PluginError(f"ERROR opening map file {self.file}: {exc.strerror}") from exc
        if not self.map:
            raise PluginError(f"Empty map file {self.file}: it lists no address with a valid return code")

    @staticmethod
    def parse_default(setting):
        name, _, message = setting.partition("=")
        code = CODES.get(name.upper())
        if code is None:
            raise PluginError(f"Not a valid constant for 'default' arg: {name!r} "
                              f"(one of {', '.join(CODES)}, optionally followed by =Message_text)")
        return code, message.replace("_", " ") if message else DEFAULT_MESSAGE

    # -- the map file ------------------------------------------------------------------------
    def file_signature(self):
        status = os.stat(self.file)
        return status.st_mtime_ns, status.st_size, status.st_ino

    def read_map(self):
        """{address: (code, message)} from the file; raises OSError if it cannot be read."""
        with open(self.file, encoding="utf-8", errors="surrogateescape") as handle:
            signature = os.fstat(handle.fileno())
            text = handle.read()
        self._signature = (signature.st_mtime_ns, signature.st_size, signature.st_ino)
        entries = {}
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split(None, 2)
            if not words or words[0].startswith("#"):
                continue
            if len(words) < 2:
                self.log(LOGERROR, f"No constant in line {number} in {self.file}")
                continue
            code = CODES.get(words[1].upper())
            if code is None:
                self.log(LOGERROR, f"Not a valid constant in line {number} in {self.file}: {words[1]!r}")
                continue
            entries[words[0].lower()] = (code, words[2].strip() if len(words) > 2 else DEFAULT_MESSAGE)
        return entries

    def hook_pre_connection(self, transaction, info):
        try:
            if self.file_signature() == self._signature:
                return DECLINED
            entries = self.read_map()
        except OSError as exc:
            self.keep_previous_map(f"cannot read {self.file}: {exc.strerror}")
            return DECLINED
        if not entries:
            self.keep_previous_map(f"{self.file} is now empty")
            return DECLINED
        self.map = entries
        self._problem = None
        self.log(LOGINFO, f"read {self.file} again: {len(entries)} addresses")
        return DECLINED

    def keep_previous_map(self, problem):
        if problem != self._problem:  # once, not at every connection
            self.log(LOGWARN, f"keeping the previous map: {problem}")
            self._problem = problem

    # -- rcpt ------------------------------------------------------------------------------
    def hook_rcpt(self, transaction, recipient, params):
        if not recipient.host or not recipient.user:
            return DECLINED
        if recipient.host.lower() != self.domain:
            return DECLINED
        address = f"{recipient.user}@{recipient.host}".lower()
        answer = self.map.get(address)
        if answer is None:
            self.log(LOGDEBUG, f"{address} not in the map, default answer")
            return self.default
        return answer
