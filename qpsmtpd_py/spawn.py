"""Running a program once per message, for the queue plugins that hand mail to one.

Used by queue/qmail-queue (qmail-queue: the message on fd 0, the envelope on
fd 1) and queue/exim-bsmtp (`exim -bS`: a BSMTP dialogue on fd 0). What they
share is `ProgramProcess`: the program is started without a shell with the
daemon's environment, the message is streamed to it with flow control (never
read into memory whole), what it prints is collected up to a limit, its exit
status comes out of a Deferred, and a hook that times out kills it.

No reactor is imported here: plugin modules are loaded in the master before a
child installs its reactor; the plugin hands its reactor in.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet import defer, protocol
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure


def exit_status(reason) -> int | str:
    """The program's exit status, or `killed by signal N`, from processEnded's reason."""
    value = reason.value
    signal = getattr(value, "signal", None)
    if signal is not None:
        return f"killed by signal {signal}"
    status = getattr(value, "exitCode", None)
    return 0 if status is None else status


class ProgramProcess(protocol.ProcessProtocol):
    """One run of a program for one message; `ended` fires with `outcome(status)`.

    Subclasses say what to write (`connectionMade`, usually with
    `stream_body`), which descriptors' output to keep (`collected_fds`, up to
    `output_limit` bytes in `output`) and what the result is (`outcome`).
    """

    collected_fds: tuple[int, ...] = (1, 2)
    output_limit = 16384

    def __init__(self, plugin, transaction, clock):
        self.plugin = plugin
        self.transaction = transaction
        self.clock = clock
        self.output = bytearray()
        self.ended = defer.Deferred(self._cancel)
        self._poll_delay = 0.005

    def start(self, reactor, argv: list[str], child_fds: dict[int, str]):
        """Run argv[0] (no shell) with the daemon's environment: the process; raises OSError."""
        return reactor.spawnProcess(self, argv[0], argv, env=dict(os.environ), childFDs=child_fds)

    def stream_body(self, consumer, after: Callable[[bool], None]) -> None:
        """Stream the body file into `consumer`, then `after(sent)`.

        FileSender stops reading the file while the pipe is full, so a large
        message is never held in memory. `sent` is False when the program
        stopped reading early (it failed): its exit status then says why.
        """
        body = self.transaction.body_file()

        def done(result):
            body.close()
            after(not isinstance(result, Failure))

        FileSender().beginFileTransfer(body, consumer).addBoth(done)

    def childDataReceived(self, fd, data):
        if fd in self.collected_fds and len(self.output) < self.output_limit:
            self.output += data[:self.output_limit - len(self.output)]

    def childConnectionLost(self, childFD):
        if not self.transport.pipes:
            # Every pipe is closed. Twisted learns that the program exited from SIGCHLD,
            # which a reactor run without signal handlers never gets, or from one
            # waitpid() right now, which misses a program that closes its descriptors
            # a moment before it exits: poll waitpid() until it has exited.
            self.clock.callLater(self._poll_delay, self._reap)

    def _reap(self):
        if self.transport.pid is None:  # reaped
            return
        self.transport.reapProcess()
        if self.transport.pid is not None:
            self._poll_delay = min(self._poll_delay * 2, 0.5)
            self.clock.callLater(self._poll_delay, self._reap)

    def processEnded(self, reason):
        result = self.outcome(exit_status(reason))
        if not self.ended.called:
            self.ended.callback(result)

    def outcome(self, status: int | str):
        """What `ended` fires with; the status by default."""
        return status

    def _cancel(self, d):
        # The hook timed out (plugin_timeout): do not leave the program running.
        try:
            self.transport.signalProcess("KILL")
        except Exception:  # it has already ended
            self.already_ended()

    def already_ended(self) -> None:
        """Called when the program to kill at a timeout had exited already."""
