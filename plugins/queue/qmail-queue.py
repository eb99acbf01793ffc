"""queue/qmail-queue - hand accepted mail to qmail's qmail-queue (or a compatible program).

Hook: queue. Runs the program once per message, without a shell, in its own
process (the child serving the session keeps serving its other sessions
meanwhile), and talks to it as qmail-smtpd does (qmail-queue(8)):
- file descriptor 0: the message, header and body, with LF line endings;
- file descriptor 1: the envelope, `F<sender>` NUL, one `T<recipient>` NUL
  per recipient, then one more NUL;
- file descriptor 2: anything the program prints there is logged at LOGWARN.
The environment of the daemon is passed on (qmail-queue wrappers such as
simscan or qmail-qfilter read settings from it).

Arguments (positional, as qpsmtpd):
    queue/qmail-queue [<path>]
- <path>: the program, an absolute path. Default `$QMAIL/bin/qmail-queue`,
  that is /var/qmail/bin/qmail-queue when QMAIL is not set. When the
  environment variable QMAILQUEUE is set, it wins over both, as in qpsmtpd.
  Only `/`, `-`, `_`, `.`, letters and digits may appear in it. A program that
  is missing at start-up is only warned about (it may be installed later).

Replies, from the program's exit status:
- 0: `250 Queued! <epoch> qp <pid of the program> <Message-Id>`;
- 11 to 40, which qmail-queue(8) defines as permanent (11 address too long,
  31 the mail server permanently refuses the message): `552 Unable to queue
  message (<status>)` - the client bounces the message instead of retrying;
- any other status (51 to 91 are qmail's temporary failures: out of memory,
  timeout, write error, ... 81 internal bug), death by a signal, or a program
  that cannot be run: `451 Unable to queue message (<status>)`, and the client
  retries. A following queue plugin may still take the message (DECLINED).
qpsmtpd answers 451 for every failure (even permanent ones, which are then
retried for days), and 250 when the program was killed by a signal.

Example config/plugins line:
    queue/qmail-queue /var/qmail/bin/qmail-queue
"""

import os
import re
import time

from qpsmtpd_py.constants import DECLINED, DENY, LOGERROR, LOGINFO, LOGWARN, OK
from qpsmtpd_py.plugin import Plugin, PluginError
from qpsmtpd_py.spawn import ProgramProcess

_SAFE_PATH = re.compile(r"^/[-/_.A-Za-z0-9]*$")
_STDERR_LIMIT = 4096


def exit_answer(status):
    """The hook's answer for an exit status other than 0 (an int, or a text for a signal)."""
    if isinstance(status, int) and 11 <= status <= 40:
        return DENY, f"Unable to queue message ({status})"
    return DECLINED, f"Unable to queue message ({status})"


class QmailQueue(Plugin):

    def register(self, qp, *args):
        args = list(args)
        if len(args) >= 2 and args[-2] == "loglevel":  # `queue/qmail-queue <path> loglevel N`
            if not re.fullmatch(r"[0-7]|[+-]\d", args[-1]):
                raise PluginError(f"loglevel must be 0-7, +N or -N, not {args[-1]!r}")
            self.args = {"loglevel": args[-1]}
            del args[-2:]
        if len(args) > 1:
            self.log(LOGWARN, "Ignoring additional arguments.")
        path = args[0] if args else os.environ.get("QMAIL", "/var/qmail") + "/bin/qmail-queue"
        path = os.environ.get("QMAILQUEUE") or path
        if not _SAFE_PATH.match(path):
            raise PluginError(f"the qmail-queue program must be an absolute path of -/_.A-Za-z0-9 "
                              f"characters, not {path!r}")
        if not os.access(path, os.X_OK):
            self.log(LOGWARN, f"{path} is not an executable file (yet): messages will get 451")
        self.queue_exec = path


    def hook_queue(self, transaction):
        self.log(LOGINFO, f"Queuing to {self.queue_exec}")
        envelope = b"F" + transaction.sender.address().encode("utf-8", "surrogateescape") + b"\0"
        envelope += b"".join(b"T" + r.address().encode("utf-8", "surrogateescape") + b"\0"
                             for r in transaction.recipients) + b"\0"
        child = QueueProcess(self, transaction, envelope, self.get_reactor())
        try:
            process = child.start(self.get_reactor(), [self.queue_exec], {0: "w", 1: "w", 2: "r"})
        except OSError as exc:
            self.log(LOGERROR, f"cannot run {self.queue_exec}: {exc.strerror}")
            return DECLINED, f"Unable to queue message ({exc.strerror})"
        d = child.ended
        d.addCallback(self.answer, transaction, process.pid)
        return d

    def answer(self, status, transaction, pid):
        if status == 0:
            message_id = (transaction.header.get("Message-Id") or "").split("\n")[0].strip()
            if not (message_id.startswith("<") and message_id.endswith(">")):
                message_id = f"<{message_id}>"
            return OK, f"Queued! {int(time.time())} qp {pid} {message_id}"
        code, text = exit_answer(status)
        self.log(LOGERROR, f"{self.queue_exec} failed: {status}"
                           f"{', permanent' if code == DENY else ''}")
        return code, text


class QueueProcess(ProgramProcess):
    """One run of qmail-queue: feeds fd 0 and fd 1, collects fd 2 and the exit status."""

    collected_fds = (2,)
    output_limit = _STDERR_LIMIT

    def __init__(self, plugin, transaction, envelope, clock):
        super().__init__(plugin, transaction, clock)
        self.envelope = envelope

    def connectionMade(self):
        message_pipe = self.transport.pipes[0]
        message_pipe.write(self.transaction.header_bytes() + b"\n")
        self.stream_body(message_pipe, self._body_done)

    def _body_done(self, sent):
        self.transport.closeChildFD(0)
        # Not sent: the program closed its input early (it failed, or it is not
        # qmail-queue), and its exit status says what happened.
        if sent and 1 in self.transport.pipes:  # not if the program closed it already
            self.transport.writeToChild(1, self.envelope)
        self.transport.closeChildFD(1)

    def outcome(self, status):
        if self.output:
            text = self.output.decode("utf-8", "replace").strip()
            self.plugin.log(LOGWARN, f"{self.plugin.queue_exec} said: {text}")
        return status
