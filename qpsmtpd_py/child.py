"""One child process: adopt the listening sockets, serve, drain, exit.

Imported only after the child installed its reactor (see eventloop.py).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

import setproctitle
from twisted.internet import tcp

from .constants import LOGINFO
from .scoreboard import Scoreboard
from .session_factory import SessionFactory

if TYPE_CHECKING:
    from .qp import Qpsmtpd
    from .settings import Settings


class CappedPort(tcp.Port):
    """A listening port that never accepts more sessions than the child may take.

    Twisted accepts up to `numberAccepts` connections per wake-up (100 at
    first); stopReading() alone would overshoot the cap, so the count is
    clamped to the free capacity.
    """

    capacity = 1

    @property  # type: ignore[override]
    def numberAccepts(self) -> int:
        return max(1, self.capacity)

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass  # Twisted's adaptive resizing would defeat the cap


class Child:
    def __init__(self, reactor: Any, qp: Qpsmtpd, settings: Settings, sockets: list[socket.socket],
                 scoreboard: Scoreboard, region: int, master_pid: int) -> None:
        self.reactor = reactor
        self.qp = qp
        self.settings = settings
        self.sockets = sockets
        self.master_pid = master_pid
        self.factory = SessionFactory(qp, settings, scoreboard, region)
        self.factory.on_session_count = self._session_count_changed
        self.ports: list[CappedPort] = []
        self.served = 0
        self.draining = False
        self.exiting = False

    def watch_master(self) -> None:
        """Drain when the master dies, so orphans never hold the port.

        Linux's PR_SET_PDEATHSIG sends this child TERM when its parent exits,
        however it exits (kill -9 included).
        """
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != self.master_pid:
            os.kill(os.getpid(), signal.SIGTERM)  # it died before prctl took effect

    def start(self) -> None:
        for sock in self.sockets:
            port = CappedPort._fromListeningDescriptor(self.reactor, sock.fileno(), sock.family, self.factory)
            port.startListening()
            self.ports.append(port)
        for sock in self.sockets:
            sock.close()  # each port holds its own duplicate
        self._update_capacity()
        self.factory.start_sweeper()
        if self.settings.pretty_child:
            self.show_state()

    def _free(self) -> int:
        active = len(self.factory.sessions)
        return min(self.settings.sessions_per_child - active, self.settings.child_lifetime - self.served)

    def _update_capacity(self) -> None:
        free = self._free()
        for port in self.ports:
            port.capacity = free
            if self.draining or free <= 0:
                port.stopReading()
            else:
                port.startReading()

    def show_state(self) -> None:
        """--pretty-child: the process title says what this child does, as qpsmtpd's does."""
        sessions = list(self.factory.sessions)
        if not sessions:
            set_title("qpsmtpd-py child")
            return
        if len(sessions) == 1:
            connection = sessions[0].connection
            when = time.strftime("%H:%M:%S %Y-%m-%d")
            set_title(f"qpsmtpd-py child [{connection.remote_ip} : {connection.remote_host} : {when}]")
            return
        shown = ", ".join(s.connection.remote_ip for s in sessions[:5])
        more = ", ..." if len(sessions) > 5 else ""
        set_title(f"qpsmtpd-py child [{len(sessions)} sessions: {shown}{more}]")

    def _session_count_changed(self, active: int, started: bool) -> None:
        if self.settings.pretty_child:
            self.show_state()
        if started:
            self.served += 1
            if self.served >= self.settings.child_lifetime:
                self.stop(None)
            elif active >= self.settings.sessions_per_child:
                os.kill(self.master_pid, signal.SIGUSR1)  # full: the master may add a child
        if not self.draining:
            self._update_capacity()
        elif active == 0:
            self._exit()

    def stop(self, deadline: float | None) -> None:
        """Stop accepting; exit when sessions are done (or at the deadline, for TERM)."""
        if not self.draining:
            self.draining = True
            for port in self.ports:
                # Closes only this child's copy of the socket: siblings keep serving,
                # and once every old child is gone the port is free for a new master.
                port.stopListening()
            self.qp.logger.log(LOGINFO, f"child draining, {len(self.factory.sessions)} session(s) left")
        if not self.factory.sessions:
            self._exit()
        elif deadline is not None:
            self.reactor.callLater(deadline, self._close_sessions)

    def _close_sessions(self) -> None:
        """Past the deadline: 421 to every session between commands, again until none is left.

        A session whose command is still running (say, a queue plugin writing the
        message) finishes that command first, so its reply is never cut off.
        """
        for session in list(self.factory.sessions):
            session.shutdown()
        if self.factory.sessions:
            self.reactor.callLater(0.2, self._close_sessions)

    def _exit(self) -> None:
        if not self.exiting:
            self.exiting = True
            self.reactor.callLater(0, self.reactor.stop)


def set_title(title: str) -> None:
    """The process title shown by ps (the setproctitle package rewrites argv)."""
    setproctitle.setproctitle(title)
