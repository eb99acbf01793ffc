"""connection_time - log how long each session lasted.

Hooks: pre-connection and post-connection. The clock starts when the
connection is accepted, before the greeting, and stops after it is closed;
the duration is logged at LOGINFO, in seconds with three decimals:

    4711.3 (post-connection) connection_time: 2.361 s.

The start is logged at LOGDEBUG as `started at <seconds since the epoch>`, and
kept in the connection note `connection_start` (a `time.monotonic()` value)
for other plugins. Its pre-connection hook runs before every other plugin's,
wherever its line is in config/plugins, so sessions refused in pre-connection
(by hosts_allow, say) are timed too. A session whose start is unknown (the
note was removed) logs `Start time not set?!` at LOGERROR.

Arguments:
    loglevel N   the standard per-plugin log level: `loglevel +1` logs one
                 level less verbose (the duration at LOGDEBUG), `loglevel 5`
                 logs every line of the plugin at LOGNOTICE.
    LEVEL        a single argument, as in old qpsmtpd configs: the level, a
                 number 0-7 or a name (LOGNOTICE or notice), at which every
                 line of the plugin is logged. As in qpsmtpd, 0 (LOGEMERG,
                 LOGRADAR) means the default, 6.
A single argument that is no level, or another odd number of arguments, stops
start-up (qpsmtpd logged `invalid arguments` and carried on). An unknown key
is logged and ignored.

Differences from qpsmtpd: the start time is kept per connection, not in the
plugin (one qpsmtpd-py child serves several sessions at once); the
pre-connection hook always runs first, so the `connect` hook qpsmtpd added for
its tcpserver mode is not needed.

Example config/plugins lines:
    connection_time
    connection_time loglevel +1
"""

import time

from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGERROR, LOGINFO, log_level
from qpsmtpd_py.plugin import Plugin, PluginError

NOTE = "connection_start"
_KNOWN_ARGUMENTS = ("loglevel",)


class ConnectionTime(Plugin):
    def init(self, qp, *args):
        if len(args) == 1:
            self.args = {"loglevel": str(self.legacy_level(args[0]))}
        elif len(args) % 2:
            raise PluginError("give `loglevel N`, a single level, or nothing, "
                              f"not `connection_time {' '.join(args)}`")

    @staticmethod
    def legacy_level(text):
        level = int(text) if text.isdigit() else log_level(text)
        if not isinstance(level, int) or not 0 <= level <= 7:
            raise PluginError(f"a single argument is a log level, 0-7 or a name like LOGINFO, not {text!r}")
        return level or LOGINFO

    def register(self, qp, *args):
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)
        # First of all pre-connection plugins: one that refuses would stop the clock from starting.
        self.register_hook("pre-connection", "start_clock", unshift=True)

    def start_clock(self, transaction, info=None):
        self.connection.notes[NOTE] = time.monotonic()
        self.log(LOGDEBUG, f"started at {time.time():.15g}")
        return DECLINED

    def hook_post_connection(self, transaction):
        start = self.connection.notes.get(NOTE)
        if start is None:
            self.log(LOGERROR, "Start time not set?!")
            return DECLINED
        self.log(LOGINFO, f"{time.monotonic() - start:.3f} s.")
        return DECLINED
