"""queue/discard - accept every message and throw it away.

Hook: queue. Answers OK without storing or forwarding anything, so the client
gets `250 Queued (discarded, not delivered)` and forgets the message. Meant
for spam traps, test set-ups and benchmarks of the front end; never put it
where real mail arrives, because every message it answers is lost. Each one
is logged at LOGINFO with its sender, recipient count, size and Message-Id.

Put it after any other queue plugin that should get the mail first: the first
queue plugin that answers OK wins.

Arguments: none (`loglevel` as every plugin).

Example config/plugins line:
    queue/discard
"""

from qpsmtpd_py.constants import LOGINFO, OK
from qpsmtpd_py.plugin import Plugin, PluginError


class Discard(Plugin):
    def register(self, qp, *args):
        if args and set(self.args) != {"loglevel"}:
            raise PluginError(f"takes no arguments (but loglevel), not {' '.join(args)!r}")

    def hook_queue(self, transaction):
        if self.log_enabled(LOGINFO):
            self._log_discarded(transaction)
        return OK, "Queued (discarded, not delivered)"

    def _log_discarded(self, transaction):
        message_id = (transaction.header.get("Message-Id") or "").split("\n")[0].strip() \
            if transaction.header is not None else ""
        size = len(transaction.header_bytes()) + 1 + transaction.body_size
        self.log(LOGINFO, f"discarded: from {transaction.sender.format()}, "
                          f"{len(transaction.recipients)} recipient(s), {size} bytes {message_id}".rstrip())
