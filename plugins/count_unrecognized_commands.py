"""count_unrecognized_commands - disconnect clients that send junk commands.

Hook: unrecognized_command. Counts unknown commands per connection (note
`unrec_cmd_count`); the Nth one gets
`521 Closing connection, N unrecognized commands. Perhaps you should read RFC 2821?`
and the connection is closed. Earlier ones get the usual `500 Unrecognized command`.

Arguments:
    count_unrecognized_commands [N]    N defaults to 4.

Example config/plugins line:
    count_unrecognized_commands 4
"""

from qpsmtpd_py.constants import DECLINED, DENY_DISCONNECT, LOGINFO, LOGWARN
from qpsmtpd_py.plugin import Plugin, PluginError, standard_args


class CountUnrecognizedCommands(Plugin):
    def register(self, qp, *args):
        self.args = standard_args(args)  # a positional argument, then loglevel etc.
        self.limit = 4
        if args:
            if not args[0].isdigit() or int(args[0]) < 1:
                raise PluginError(f"the limit must be a positive number, not {args[0]!r}")
            self.limit = int(args[0])
        if len(args) > 1:
            self.log(LOGWARN, "Ignoring additional arguments.")

    def hook_unrecognized_command(self, transaction, command, rest):
        notes = self.connection.notes
        count = notes.get("unrec_cmd_count", 0) + 1
        notes["unrec_cmd_count"] = count
        if count < self.limit:
            self.log(LOGINFO, f"'{command}', ({count})")
            return DECLINED
        self.log(LOGINFO, f"fail, '{command}' ({count})")
        return (DENY_DISCONNECT,
                f"Closing connection, {count} unrecognized commands. Perhaps you should read RFC 2821?")
