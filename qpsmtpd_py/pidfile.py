"""The master's pid file, locked with flock(2) for as long as the master lives.

The lock is taken before detaching, so a second daemon fails at once with a
clear message instead of after the fork where nobody sees it (python-daemon's
lockfile-based pid files fail that way). A pid file left by a crashed master
is stale: its lock died with the process, so it is simply taken over.
"""

from __future__ import annotations

import fcntl
import os


class PidFileError(Exception):
    pass


class PidFile:
    def __init__(self, path: str) -> None:
        if not os.path.isabs(path):
            raise PidFileError(f"--pid-file must be an absolute path, not {path!r}")
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(self.fd, 32).decode(errors="replace").strip()
            os.close(self.fd)
            raise PidFileError(f"Found an already running qpsmtpd-py with pid {other} ({path}); "
                               "stop it first, or use another --pid-file") from None

    def write(self) -> None:
        """Write our pid (again after detaching: the pid changed)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def close_in_child(self) -> None:
        """A child must not hold the lock: it would outlive a killed master."""
        os.close(self.fd)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
