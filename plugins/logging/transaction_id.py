"""logging/transaction_id - log lines to standard error, each starting with its transaction id.

Hook: logging. Load it from `config/logging` (or `config/plugins`).

qpsmtpd shipped this plugin as a demonstration of per-message ids, which it
never finished: the plugin refused to load. Here each line up to the chosen
level goes to standard error, one write per line, as

    <transaction id> (<hook>) <plugin>: <message>

where the transaction id is the connection id followed by the number of the
transaction within the connection: `4711.12.1`, `4711.12.2`, ...
Transactions are qpsmtpd's: the connection stage (connect, HELO/EHLO) is the
first, and each MAIL command, each RSET and the end of each message start a new one;
the `dispatching MAIL ...` line itself still carries the id of the transaction
it ends. `grep '^4711.12.2 '` shows one message, `grep '^4711.12\\.'` the
whole connection. Lines logged outside any session (start-up, a child's exit)
start with the process id, as in the built-in format.

Argument (optional, positional):
    level   the highest level written: a number (0-7) or a name such as
            LOGINFO (`LOG` may be left out, case does not matter).
            Default LOGWARN (4).

As with every logging plugin, the arguments of an `AUTH` command are logged
only when `config/loglevel` is 7, whatever this level is.

Example config/logging line:
    logging/transaction_id LOGINFO
"""

import weakref

from qpsmtpd_py.log import current_session
from qpsmtpd_py.log_plugins import StderrLogPlugin


class TransactionId(StderrLogPlugin):
    def register(self, qp, *args):
        super().register(qp, *args)
        # Forgotten with the session and the transaction: nothing to clean up.
        self._counts = weakref.WeakKeyDictionary()  # session -> transactions seen
        self._ids = weakref.WeakKeyDictionary()  # transaction -> its id

    def line(self, transaction, line):
        session = current_session.get()
        if transaction is not None and session is not None and session.connection is not None:
            _, _, rest = line.partition(" ")
            line = f"{self.transaction_id(session, transaction)} {rest}"
        return line

    def transaction_id(self, session, transaction):
        known = self._ids.get(transaction)
        if known is None:
            count = self._counts.get(session, 0) + 1
            self._counts[session] = count
            known = self._ids[transaction] = f"{session.connection.id}.{count}"
        return known
