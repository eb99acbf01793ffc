"""Logging front: qpsmtpd's levels and line format, one whole line per write.

A line looks like qpsmtpd's (`<pid> (<hook>) <plugin>: <message>`), except that
the first token is the session id `<pid>.<n>` when a session is known, because
one child serves many sessions and an admin must be able to follow one of them
(`grep '^4711.12 '`). Lines go to stderr with a single os.write() each, so lines
from several children never interleave under daemontools' multilog or runit's
svlogd. Logging plugins (the `logging` hook) replace this built-in writer.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from .constants import LOGWARN

# The session whose code is running now. The hook engine sets it before each
# plugin call, so plugin.log() and plugin.connection need no session argument.
current_session: ContextVar[Any] = ContextVar("qpsmtpd_session", default=None)
current_hook: ContextVar[str | None] = ContextVar("qpsmtpd_hook", default=None)

# Where log lines go; tests replace it to capture lines.
_stderr_fd = 2


class Logger:
    """Threshold, the `logging` hook, and the stderr fallback."""

    def __init__(self, level: int = LOGWARN) -> None:
        self.level = level
        # Set by the daemon once plugins are loaded: runs the `logging` hook and
        # returns True when a logging plugin took the line.
        self.hook_runner: Callable[[int, str | None, str | None, str], bool] | None = None
        self.in_hook = False

    def enabled(self, level: int) -> bool:
        """Would a line at `level` go anywhere? Lets callers skip formatting one that would not."""
        return level <= self.level or self.hook_runner is not None

    def log(self, level: int, message: str, hook: str | None = None, plugin: str | None = None) -> None:
        if self.hook_runner is not None and not self.in_hook:
            # A logging plugin that logs must not recurse into itself.
            self.in_hook = True
            try:
                if self.hook_runner(level, hook, plugin, message):
                    return
            finally:
                self.in_hook = False
        if level > self.level:
            return
        write_line(format_line(message, hook, plugin))


def session_prefix() -> str:
    session = current_session.get()
    if session is not None:
        return session.connection.id
    return str(os.getpid())


def format_line(message: str, hook: str | None = None, plugin: str | None = None) -> str:
    if plugin is not None and hook is not None:
        return f"{session_prefix()} ({hook}) {plugin}: {message}"
    if plugin is not None:
        return f"{session_prefix()} {plugin}: {message}"
    if hook is not None:
        return f"{session_prefix()} ({hook}) running plugin: {message}"
    return f"{session_prefix()} {message}"


def write_line(line: str) -> None:
    data = (line.replace("\n", " ") + "\n").encode("utf-8", "backslashreplace")
    try:
        os.write(_stderr_fd, data)
    except OSError:
        # stderr gone (supervisor's log service down): never let logging kill a session.
        pass


def startup_message(message: str) -> None:
    """A line for the admin before any logger exists (startup errors, usage)."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()
