"""logging/warn - write log lines to standard error in the built-in format.

Hook: logging. Load it from `config/logging`, the file qpsmtpd reads its
logging plugins from (they are loaded before the lines of `config/plugins`);
a line in `config/plugins` works too.

Each line up to the chosen level is written to standard error exactly as the
built-in logger writes it,

    <session id> (<hook>) <plugin>: <message>

(`<pid>.<n>` first, so `grep '^4711.12 '` follows one session; lines logged
outside any session start with the process id), with one write per line, so
lines of several children never run into each other under multilog or svlogd.
What changes from running without a logging plugin is the threshold: this
plugin's argument, not `config/loglevel`. As with every logging plugin that
answers, the built-in writer stays silent once it is loaded.

`config/loglevel` still decides one thing: the arguments of an `AUTH` command
(the credentials) are logged only when it is 7 (LOGDEBUG), whatever the level
of the logging plugins.

Lines this plugin would log about itself are dropped (a logging plugin cannot
log through itself).

Argument (optional, positional):
    level   the highest level written: a number (0-7) or a name, LOGDEBUG,
            LOGINFO, LOGNOTICE, LOGWARN, LOGERROR, LOGCRIT, LOGALERT,
            LOGEMERG (the `LOG` may be left out, case does not matter).
            Default LOGWARN (4). A number above 7 means every line.

A level that is neither stops start-up with a message saying so (qpsmtpd
quietly logged only level 0 then).

Example config/logging lines:
    logging/warn
    logging/warn LOGINFO
    logging/warn 6
"""

from qpsmtpd_py.log_plugins import StderrLogPlugin


class Warn(StderrLogPlugin):
    usage = " (logging/warn LOGINFO)"
