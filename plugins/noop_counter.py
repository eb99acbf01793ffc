"""noop_counter - disconnect a client after too many NOOPs in a row.

Hooks: noop, and helo, ehlo, mail, rcpt, data, vrfy, help and
reset_transaction to start counting again. The NOOPs of a connection are
counted (connection note `noop_count`); the Nth in a row gets

    500 Stop wasting my time, too many consecutive NOOPs

and the connection is closed. Earlier ones get the usual `250 OK`.

HELO, EHLO, MAIL, RCPT, DATA, VRFY, HELP and RSET set the count back to 0, as
does the end of each message (these commands' hooks, or the
reset_transaction hook, tell the plugin about them). Other commands do not:
an unknown command, AUTH or STARTTLS between NOOPs leaves the count as it
was, as in qpsmtpd, whose manual says that any other command resets it. The
core has no hook that runs for every command; the unrecognized_command hook
would cover unknown verbs only.

The counting hooks run before those of the plugins loaded earlier, so the
place of its line in config/plugins does not matter (qpsmtpd asked to load it
early, as a plugin that accepts first kept it from seeing the command).

Arguments:
    noop_counter [N]    N, the number of NOOPs in a row that disconnects;
                        default 3.

Differences from qpsmtpd:
- the count belongs to the connection (qpsmtpd kept one count per process,
  carried over from one connection to the next);
- N must be a positive whole number (qpsmtpd used 3 for anything else,
  silently).

Example config/plugins line:
    noop_counter 5
"""

from qpsmtpd_py.constants import DECLINED, DENY_DISCONNECT, LOGINFO, LOGWARN
from qpsmtpd_py.plugin import Plugin, PluginError, standard_args

DEFAULT_MAX = 3
_RESETTING_HOOKS = ("helo", "ehlo", "mail", "rcpt", "data", "vrfy", "help", "reset_transaction")


class NoopCounter(Plugin):
    def register(self, qp, *args):
        self.args = standard_args(args)  # a positional argument, then loglevel etc.
        self.max_noop = DEFAULT_MAX
        if args:
            if not args[0].isdigit() or int(args[0]) < 1:
                raise PluginError(f"the number of NOOPs must be a positive whole number, not {args[0]!r}")
            self.max_noop = int(args[0])
        if len(args) > 1:
            self.log(LOGWARN, "Ignoring additional arguments.")
        for hook in _RESETTING_HOOKS:
            self.register_hook(hook, self.reset_noop_counter, unshift=True)

    def hook_noop(self, transaction):
        notes = self.connection.notes
        count = notes.get("noop_count", 0) + 1
        notes["noop_count"] = count
        if count >= self.max_noop:
            self.log(LOGINFO, f"fail, {count} consecutive NOOPs")
            return DENY_DISCONNECT, "Stop wasting my time, too many consecutive NOOPs"
        return DECLINED

    def reset_noop_counter(self, transaction, *args):
        self.connection.notes["noop_count"] = 0
        return DECLINED
