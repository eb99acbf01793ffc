"""What the logging/* plugins share: their level argument, and the plain writer to standard error.

Used by logging/warn, logging/connection_id and logging/transaction_id (all
three are `StderrLogPlugin`s: one optional argument, the highest level they
write, each line in the built-in format), and by logging/adaptive,
logging/file and logging/syslog for `parse_level`.
"""

from __future__ import annotations

from .constants import DECLINED, LOGWARN, log_level
from .log import format_line, write_line
from .plugin import Plugin, PluginError


def parse_level(text: str) -> int:
    """`6`, `LOGINFO` or `info` -> 6."""
    if text.isdigit():
        return int(text)
    level = log_level(text)
    if not isinstance(level, int):
        raise PluginError(f"the log level must be a number from 0 to 7 or a name such as LOGINFO, not {text!r}")
    return level


class StderrLogPlugin(Plugin):
    """A logging plugin that writes each line up to its level to standard error, one write per line.

    Its only argument, optional, is that level (default LOGWARN). Lines about
    the plugin itself are dropped: a logging plugin cannot log through itself.
    A subclass may rewrite each line (`line`).
    """

    usage = ""  # an example of the argument, for the error about too many

    def register(self, qp, *args):
        if len(args) > 1:
            raise PluginError(f"one argument at most, the highest level to log{self.usage}, "
                              f"not {' '.join(args)!r}")
        self.level = parse_level(args[0]) if args else LOGWARN

    def hook_logging(self, transaction, level, hook, plugin, message):
        if level > self.level or plugin == self.name:
            return DECLINED
        write_line(self.line(transaction, format_line(message, hook, plugin)))
        return DECLINED

    def line(self, transaction, line: str) -> str:
        """The line as written; the built-in format by default."""
        return line
