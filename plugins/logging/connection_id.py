"""logging/connection_id - log lines to standard error, each starting with its connection id.

Hook: logging. Load it from `config/logging` (or `config/plugins`).

qpsmtpd shipped this plugin as a demonstration of per-connection ids, which
it never finished: the plugin refused to load. In qpsmtpd-py every session has
an id, `<pid>.<n>` (the child's process id and the number of the session in
that child), so the plugin works: each line up to the chosen level goes to
standard error, one write per line, as

    <connection id> (<hook>) <plugin>: <message>

and `grep '^4711.12 '` shows one connection. Lines logged outside any
session (start-up, a child's exit) start with the process id.

This is the line format of the built-in logger and of logging/warn; use this
plugin where a `config/logging` written for qpsmtpd names it. For one id per
message, see logging/transaction_id.

Argument (optional, positional):
    level   the highest level written: a number (0-7) or a name such as
            LOGINFO (`LOG` may be left out, case does not matter).
            Default LOGWARN (4).

As with every logging plugin, the arguments of an `AUTH` command are logged
only when `config/loglevel` is 7, whatever this level is.

Example config/logging line:
    logging/connection_id LOGINFO
"""

from qpsmtpd_py.log_plugins import StderrLogPlugin


class ConnectionId(StderrLogPlugin):
    """The built-in format already starts with the connection id (log.session_prefix)."""
