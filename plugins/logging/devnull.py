"""logging/devnull - throw every log line away.

Hook: logging. Load it from `config/logging` (or `config/plugins`). It takes
every line and writes nothing, so the built-in writer to standard error stays
silent too: the daemon logs nothing at all, whatever `config/loglevel` says.
Other logging plugins listed before it still get every line; those listed
after it too (it answers DECLINED, as every logging plugin does).

Use it to silence a daemon whose standard error goes nowhere useful, or in
tests. To keep only serious lines, use `logging/warn LOGERROR` instead.

Arguments: none (any argument stops start-up).

Example config/logging line:
    logging/devnull
"""

from qpsmtpd_py.constants import DECLINED
from qpsmtpd_py.plugin import Plugin, PluginError


class Devnull(Plugin):
    def register(self, qp, *args):
        if args:
            raise PluginError(f"takes no arguments, not {' '.join(args)!r}")

    def hook_logging(self, transaction, level, hook, plugin, message):
        return DECLINED
