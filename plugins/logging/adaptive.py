"""logging/adaptive - log rejected mail in detail, accepted mail in brief.

Hooks: logging, deny, reset_transaction. Load it from `config/logging` (or
`config/plugins`).

Two streams of lines go to standard error, one write per line:

1. Every line up to the `reject` level is written at once, in the built-in
   format (`<session id> (<hook>) <plugin>: <message>`). This is the detailed
   log: it shows why a message was refused.
2. Lines up to the `accept` level are also kept with the current transaction.
   When the transaction ends (the message was queued, RSET, the client left)
   and no plugin refused anything during it, they are written again with the
   prefix after the session id:

       4711.12 ` (rcpt) rcpt_ok: pass, ...

   This is the brief log of accepted mail. A transaction in which any plugin
   answered DENY, DENYSOFT, DENY_DISCONNECT or DENYSOFT_DISCONNECT (a refused
   recipient included) is not repeated.

A line is kept only if it is also written at once, so an `accept` level above
the `reject` level acts as the `reject` level. As in qpsmtpd, the connection
stage (connect, HELO/EHLO) is a transaction of its own, which ends at the
first MAIL command (each MAIL starts a new transaction): it is repeated then,
unless a plugin refused something in it (a refused connection is never
repeated). At most 1000 lines are kept per transaction; a last line says how
many more were not. Lines logged outside any session are only written at once.

A log service can split the streams; with daemontools' multilog:

    multilog t '-*` *' ./detailed '-*' '+*` *' ./accepted

Arguments (key/value pairs, all optional; a level is a number 0-7 or a name
such as LOGINFO, `LOG` may be left out):
    accept L    the level kept for accepted mail. Default LOGERROR (3).
    reject L    the level written at once. Default LOGWARN (4).
    prefix C    what marks the lines of accepted mail. Default ` (a backquote).

Differences from qpsmtpd, deliberate: a refusal marks only its own transaction
(qpsmtpd's flag stayed set, so once a process had refused anything it never
wrote an accepted message again); lines are in the built-in format (qpsmtpd
wrote `<pid> <plugin> plugin: <message>`), so the session id starts them too;
an odd number of arguments, an unknown key or a bad level stops start-up.

Example config/logging lines:
    logging/adaptive
    logging/adaptive accept LOGINFO reject LOGDEBUG prefix +
"""

import weakref

from qpsmtpd_py.constants import DECLINED, LOGERROR, LOGWARN
from qpsmtpd_py.log import format_line, write_line
from qpsmtpd_py.log_plugins import parse_level
from qpsmtpd_py.plugin import Plugin, PluginError

MAX_KEPT = 1000


class _Kept:
    __slots__ = ("lines", "more", "denied")

    def __init__(self):
        self.lines = []
        self.more = 0
        self.denied = False


class Adaptive(Plugin):
    def __init__(self, qp, name, args):
        # `reject` here is a level, not qpsmtpd's reject 0|1|naughty: no generic checks.
        super().__init__(qp, name, [])
        self.arguments = list(args)

    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"arguments are key/value pairs (accept L reject L prefix C), not {' '.join(args)!r}")
        settings = dict(zip(args[::2], args[1::2], strict=True))
        unknown = sorted(set(settings) - {"accept", "reject", "prefix"})
        if unknown:
            raise PluginError(f"unknown argument {unknown[0]!r}: use accept, reject or prefix")
        self.accept = parse_level(settings["accept"]) if "accept" in settings else LOGERROR
        self.reject = parse_level(settings["reject"]) if "reject" in settings else LOGWARN
        self.prefix = settings.get("prefix", "`")
        self._kept = weakref.WeakKeyDictionary()  # transaction -> _Kept

    def _state(self, transaction):
        state = self._kept.get(transaction)
        if state is None:
            state = self._kept[transaction] = _Kept()
        return state

    def hook_logging(self, transaction, level, hook, plugin, message):
        if plugin == self.name or level > self.reject:
            return DECLINED
        write_line(format_line(message, hook, plugin))
        if transaction is not None and level <= self.accept:
            state = self._state(transaction)
            if len(state.lines) < MAX_KEPT:
                state.lines.append((hook, plugin, message))
            else:
                state.more += 1
        return DECLINED

    def hook_deny(self, transaction, plugin, code, message):
        if transaction is not None:
            self._state(transaction).denied = True
        return DECLINED

    def hook_reset_transaction(self, transaction):
        state = self._kept.pop(transaction, None) if transaction is not None else None
        if state is None or state.denied:
            return DECLINED
        for hook, plugin, message in state.lines:
            self._write_accepted(format_line(message, hook, plugin))
        if state.more:
            self._write_accepted(format_line(f"{state.more} more line(s) of this transaction not kept",
                                             None, self.name))
        return DECLINED

    def _write_accepted(self, line):
        session_id, _, rest = line.partition(" ")
        write_line(f"{session_id} {self.prefix} {rest}")
