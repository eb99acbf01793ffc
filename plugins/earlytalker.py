"""earlytalker - refuse clients that talk before they are spoken to.

A well-behaved SMTP client waits for the greeting (and, after DATA, for the
354) before it sends anything; spam engines often do not. Hooks: connect (and
data, mail as configured). The wait uses the reactor, so a child keeps serving
its other sessions meanwhile (qpsmtpd blocks in select()).

Arguments (key/value pairs):
- `wait N`: seconds to wait before the greeting (default 1). A plugin may set
  the connection note `earlytalker_wait` to change it for one connection.
- `check-at CONNECT|DATA`: when to check; may be given twice (default CONNECT).
- `defer-reject 1`: do not refuse at once; greet normally and refuse the MAIL
  command instead (the mail hook is registered only then).
- `reject 0|1|naughty`: 0 only logs and notes, naughty defers to the `naughty`
  plugin (default 1).
- `reject_type perm|temp|disconnect|temp_disconnect`: default perm (the Perl
  documentation says temp; its code uses perm, which is kept here).
- `action deny|denysoft|log`: qpsmtpd's legacy form of `reject` (deny* means reject 1).

Clients that are immune (relay clients, whitelisted) and, at connect, clients
whose connection note `karma_history` is above 5 are not checked. A detected
talker gets the connection note `earlytalker` and -1 karma. The reply is
`Connecting host started transmitting before SMTP greeting`.

Example config/plugins line:
    earlytalker wait 2 check-at CONNECT check-at DATA reject_type temp
"""

from qpsmtpd_py.constants import DECLINED, LOGINFO
from qpsmtpd_py.plugin import Plugin, PluginError

MESSAGE = "Connecting host started transmitting before SMTP greeting"


class Earlytalker(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("arguments come in pairs: wait N, check-at CONNECT|DATA, defer-reject 1, ...")
        pairs = list(zip(args[::2], args[1::2], strict=True))
        self.check_at = {value.upper() for key, value in pairs if key.lower() == "check-at"} or {"CONNECT"}
        unknown = self.check_at - {"CONNECT", "DATA"}
        if unknown:
            raise PluginError(f"check-at must be CONNECT or DATA, not {', '.join(sorted(unknown))}")
        try:
            self.wait = float(self.args.get("wait", "1"))
        except ValueError:
            raise PluginError(f"wait must be a number of seconds, not {self.args['wait']!r}") from None
        action = self.args.get("action")
        if action is not None and "reject" not in self.args:
            self.args["reject"] = "1" if action.lower().startswith("deny") else "0"
        self.args.setdefault("reject", "1")
        self.args.setdefault("reject_type", "perm")
        self.defer_reject = self.args.get("defer-reject", "0") not in ("0", "")
        if self.defer_reject:
            self.register_hook("mail", self.mail_handler)

    def wait_length(self):
        return float(self.connection.notes.get("earlytalker_wait") or self.wait)

    async def hook_connect(self, transaction):
        if "CONNECT" not in self.check_at or self.is_immune():
            return DECLINED
        karma = self.connection.notes.get("karma_history")
        if karma is not None and float(karma) > 5:
            self.log(LOGINFO, f"skip, karma {karma}")
            return DECLINED
        if not await self.talked_within(self.wait_length()):
            return self.log_and_pass()
        if not self.defer_reject:
            return self.log_and_deny()
        self.connection.notes["earlytalker"] = 1
        self.adjust_karma(-1)
        return DECLINED

    async def hook_data(self, transaction):
        if "DATA" not in self.check_at or self.is_immune():
            return DECLINED
        if not await self.talked_within(self.wait_length()):
            return self.log_and_pass()
        return self.log_and_deny()

    def mail_handler(self, transaction, sender, params):
        if not self.connection.notes.get("earlytalker"):
            return DECLINED
        return self.log_and_deny()

    async def talked_within(self, seconds):
        """Wait `seconds` (on the reactor), then look whether the client sent anything."""
        from twisted.internet import reactor, task

        session = self.session
        if session.client_has_sent():
            return True
        await task.deferLater(reactor, seconds, lambda: None)
        return session.client_has_sent()

    def log_and_pass(self):
        self.log(LOGINFO, "pass, not spontaneous")
        return DECLINED

    def log_and_deny(self):
        self.connection.notes["earlytalker"] = 1
        self.adjust_karma(-1)
        return self.get_reject(MESSAGE, "remote started talking before we said hello")
