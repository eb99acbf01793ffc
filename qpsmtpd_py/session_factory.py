"""SessionFactory: what the sessions of one child share.

Settings read once per child, the idle-timeout sweep over all sessions, the
scoreboard slot of each session, and qpsmtpd's pre-connection arguments.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import protocol, task

from .smtp import DEFAULT_DATA_LINE_LIMIT, DEFAULT_TIMEOUT, SMTPSession

if TYPE_CHECKING:
    from .qp import Qpsmtpd
    from .scoreboard import Scoreboard
    from .settings import Settings


class SessionFactory(protocol.ServerFactory):
    """Builds sessions for one child; owns what all its sessions share."""

    def __init__(self, qp: Qpsmtpd, settings: Settings, scoreboard: Scoreboard | None = None,
                 region: int = 0) -> None:
        self.qp = qp
        self.settings = settings
        self.scoreboard = scoreboard  # shared with the other children (None in tests)
        self.region = region
        self.sessions: set[SMTPSession] = set()
        self.implicit_tls_ports = settings.implicit_tls_ports()
        self.on_session_count: Callable[[int, bool], None] | None = None
        self.reload_settings()
        self._sweeper: task.LoopingCall | None = None

    def reload_settings(self) -> None:
        """Per-message config read once per child (a HUP rolls the children)."""
        def number(name: str, default: int) -> int:
            value = self.qp.config(name)
            return int(value) if value and value.strip().isdigit() else default

        self.databytes = number("databytes", 0)
        self.command_timeout = number("timeoutsmtpd", number("timeout", DEFAULT_TIMEOUT))
        self.data_timeout = number("timeout", DEFAULT_TIMEOUT)
        self.data_line_limit = number("max_data_line_length", DEFAULT_DATA_LINE_LIMIT)
        self.forbid_bare_newline = number("forbid_bare_newline", 0) == 1

    def buildProtocol(self, addr: Any) -> SMTPSession:
        session = SMTPSession(self.qp, self)
        session.factory = self
        return session

    def start_sweeper(self) -> None:
        from twisted.internet import reactor

        interval = max(0.2, min(self.command_timeout, self.data_timeout, 20) / 4)
        self._sweeper = task.LoopingCall(self._sweep)
        self._sweeper.clock = reactor
        self._sweeper.start(interval, now=False)

    def _sweep(self) -> None:
        now = time.monotonic()
        for session in list(self.sessions):
            session.check_idle(now)

    def session_started(self, session: SMTPSession) -> None:
        self.sessions.add(session)
        if self.scoreboard is not None:
            session.scoreboard_slot = self.scoreboard.take(self.region, session.connection.remote_ip)
        if self.on_session_count is not None:
            self.on_session_count(len(self.sessions), True)

    def session_ended(self, session: SMTPSession) -> None:
        self.sessions.discard(session)
        if self.scoreboard is not None:
            self.scoreboard.release(session.scoreboard_slot)
        if self.on_session_count is not None:
            self.on_session_count(len(self.sessions), False)

    def client_moved(self, session: SMTPSession) -> None:
        """The session's client address changed (PROXY protocol): update the scoreboard."""
        if self.scoreboard is not None:
            self.scoreboard.release(session.scoreboard_slot)
            session.scoreboard_slot = self.scoreboard.take(self.region, session.connection.remote_ip)

    def other_sessions_ips(self, session: SMTPSession) -> list[str]:
        if self.scoreboard is not None:
            return self.scoreboard.addresses(skip_slot=session.scoreboard_slot)
        return [s.connection.remote_ip for s in self.sessions if s is not session]

    def pre_connection_info(self, session: SMTPSession) -> dict[str, Any]:
        """qpsmtpd's pre-connection arguments.

        `child_addrs` lists the client IP of every other session in all
        children; qpsmtpd listed the new session too and made up for it by
        adding 1 to max_conn_ip. Here both mean what they say.
        """
        connection = session.connection
        return {
            "remote_ip": connection.remote_ip,
            "remote_port": connection.remote_port,
            "local_ip": connection.local_ip,
            "local_port": connection.local_port,
            "max_conn_ip": self.settings.max_from_ip,
            "child_addrs": self.other_sessions_ips(session),
        }
