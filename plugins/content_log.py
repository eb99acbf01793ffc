"""content_log - keep a copy of every incoming message in a log file.

Hook: data_post. Each message that reaches the end of DATA is appended to the
file named by `config/content_log_file` after strftime() expansion with the
local time (default `mail/%Y%m%d`: one file per day, relative to the daemon's
working directory), as it will be queued: its header, with the Received and
Authentication-Results lines the daemon adds, a blank line and the body, with
LF line ends. Messages follow each other without a separator. Useful to
debug other plugins, or as a crude archive.

The file is written in a thread, so the child's other sessions are not held
up; the message goes on to the next plugins once it is written. The file's
directory must exist: the plugin creates files, not directories. A file that
cannot be written is logged at LOGERROR and the message goes on. The plugin
never rejects anything.

Config files:
    content_log_enabled   `true`, `1` or `yes` (any case; trailing blanks
                          ignored) enables it; any other value disables it.
                          Default (no file): enabled. Read when the plugin is
                          loaded: a change needs a reload (HUP).
    content_log_file      the strftime() pattern of the file name, read for
                          every message. Default: mail/%Y%m%d.

Subclasses may override `exclude(transaction)` to return True for messages
that must not be logged.

Arguments: none but the standard `loglevel N`.

Example config/plugins line (after the plugins that reject, so that only
messages that will be queued are logged, or first, to log them all):
    content_log
"""

import re
import time

from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGERROR
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_FILE = "mail/%Y%m%d"
_ENABLED = re.compile(r"^(?:true|1|yes)\s*$", re.IGNORECASE)


class ContentLog(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"content_log takes no arguments but `loglevel N`, not `{' '.join(args)}`")
        self.warn_unknown_arguments(("loglevel",))
        if not self.content_log_enabled():
            self.log(LOGDEBUG, "disabled by content_log_enabled")
            return
        self.register_hook("data_post", self.data_post_handler)

    def content_log_enabled(self):
        enabled = self.qp.config("content_log_enabled")
        if enabled is None:
            return True
        return _ENABLED.match(enabled) is not None

    def content_log_file(self, now=None):
        pattern = self.qp.config("content_log_file") or DEFAULT_FILE
        return time.strftime(pattern, time.localtime(now))

    def exclude(self, transaction):
        """Override to keep some messages out of the log."""
        return False

    async def data_post_handler(self, transaction):
        if self.exclude(transaction):
            return DECLINED, "excluded from content logging"
        path = self.content_log_file()
        # The header is taken now, in the reactor thread, as later plugins may change it.
        header = transaction.header_bytes()
        try:
            await self.in_thread(self.append, path, header, transaction)
        except OSError as exc:
            self.log(LOGERROR, f"cannot write {path}: {exc.strerror or exc}")
            return DECLINED, "Could not open log file.. continuing anyway"
        return DECLINED, "successfully saved message.. continuing"

    def in_thread(self, function, *args):
        """A Deferred of function(*args) run in the reactor's thread pool (tests run it inline)."""
        from twisted.internet import threads

        return threads.deferToThread(function, *args)

    @staticmethod
    def append(path, header, transaction):
        with open(path, "ab") as out:
            out.write(header)
            out.write(b"\n")
            for chunk in transaction.iter_body():
                out.write(chunk)
