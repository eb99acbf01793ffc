"""Processes: the master binds and supervises, children serve SMTP.

Master (plain Python, no reactor): binds every listen socket, drops privileges,
loads config and plugins once (so children share them copy-on-write and
`pre-connection` plugins are live from a child's first session, qpsmtpd Q1),
then forks children before any reactor exists and supervises them with
sigtimedwait() on blocked signals, so no signal can be lost between checks.

Child: installs its own reactor, adopts the listening sockets, serves up to
`--sessions-per-child` sessions at once and `--child-lifetime` in all, then
exits; TERM, INT and HUP make it stop accepting and finish its sessions.
"""

from __future__ import annotations

import errno
import gc
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .constants import LOGINFO
from .log import write_line
from .scoreboard import Scoreboard

if TYPE_CHECKING:
    from .pidfile import PidFile
    from .qp import Qpsmtpd
    from .settings import ListenAddress, Settings

# USR1: a child filled up and the master should check whether to add one.
CONTROL_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1}
QUICK_DEATH = 2.0  # seconds: a child dying sooner than this failed to start


class StartupError(Exception):
    """A problem that stops the daemon before it serves (message says what to do)."""


def bind_sockets(addresses: list[ListenAddress]) -> list[socket.socket]:
    sockets = []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # `[::]` serves IPv4 clients too, as IPv4-mapped addresses.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind((address.host, address.port))
        except OSError as exc:
            sock.close()
            hint = " (another daemon listens there?)" if exc.errno == errno.EADDRINUSE else ""
            raise StartupError(f"FATAL: Failed to open socket on {address}: {exc.strerror}{hint}") from exc
        sock.listen(1024)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard limit, for the master and its children.

    A child holds one socket per session plus its spool files, so a few thousand
    `--sessions-per-child` need more than the usual soft limit of 1024. The hard
    limit is the administrator's ceiling, and raising the soft one up to it needs
    no privilege. An unlimited hard limit is not a valid soft one for open files:
    then the soft limit stays as it is.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # a container may refuse; the daemon still runs with the old limit


def failed_at_start(status: int) -> bool:
    """A child that exits with an error, or crashes; not one an operator or the OOM killer stopped."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status) != 0
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) not in (
        signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def renice_master(levels: int, explicit: bool) -> int | None:
    """qpsmtpd-prefork's --renice-parent: the master runs `levels` nicer than before.

    Returns the nice level children must go back to, or None when nothing changed.
    """
    if levels == 0:
        return None
    current = os.getpriority(os.PRIO_PROCESS, 0)
    new = current - levels
    if not -20 < new < 20:
        raise StartupError(f"FATAL: new nice level: {new} is not between -19 and 19 (--renice-parent {levels})")
    try:
        os.setpriority(os.PRIO_PROCESS, 0, new)
    except PermissionError:
        if explicit:
            write_line(f"{os.getpid()} warning: --renice-parent {levels} needs root; the master keeps nice {current}")
        return None
    return current


class Master:
    """Forks and supervises the children; reacts to TERM, INT, HUP and CHLD."""

    def __init__(self, settings: Settings, sockets: list[socket.socket], make_qp: Callable[[], Qpsmtpd],
                 qp: Qpsmtpd, pid_file: PidFile | None = None, child_nice: int | None = None) -> None:
        self.settings = settings
        self.pid_file = pid_file
        self.child_nice = child_nice  # children go back to the nice level the master had
        self.sockets = sockets
        self.make_qp = make_qp
        self.qp = qp
        self.children: dict[int, float] = {}  # pid -> start time
        self.slot_region: dict[int, int] = {}  # pid -> its region of the scoreboard
        self.retiring: set[int] = set()  # told to exit: never respawned
        # Old children finish their sessions while new ones start (HUP), so two
        # generations may share the scoreboard.
        self.scoreboard = Scoreboard(2 * settings.children, settings.sessions_per_child)
        self.stopping = False
        self.crash_streak = 0  # children in a row that died right after start
        self.respawn_after = 0.0

    def info(self, message: str) -> None:
        if self.settings.debug:
            write_line(f"{time.strftime('%d/%m/%Y %H:%M:%S')}:{os.getpid()}: {message}")

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, CONTROL_SIGNALS)
        raise_open_files_limit()  # before the first fork: children inherit it
        self.spawn_missing()
        deadline: float | None = None
        while True:
            info = signal.sigtimedwait(CONTROL_SIGNALS, 1.0)
            self.reap()
            if info is not None:
                if info.si_signo in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                    deadline = self.begin_shutdown(info.si_signo)
                elif info.si_signo == signal.SIGHUP and not self.stopping:
                    self.reload()
            if self.stopping:
                if not self.children:
                    self.info("shutdown of daemon")
                    return 0
                if deadline is not None and time.monotonic() > deadline:
                    for pid in list(self.children):
                        _kill(pid, signal.SIGKILL)
                    deadline = None
            else:
                self.spawn_missing()

    def spawn_missing(self) -> None:
        """Keep --idle-children children's worth of free session slots, within --children.

        With --sessions-per-child 1 this is qpsmtpd-prefork's rule: keep that
        many idle children. Surplus children are not killed; they leave at the
        end of their lifetime.
        """
        if time.monotonic() < self.respawn_after:
            return
        settings, board = self.settings, self.scoreboard
        live = [pid for pid in self.children if pid not in self.retiring]
        free = sum(settings.sessions_per_child - board.busy(self.slot_region[pid]) for pid in live)
        count = len(live)
        while count < settings.children and (
                count < settings.idle_children or free < settings.idle_children * settings.sessions_per_child):
            if not self.spawn():
                return
            count += 1
            free += settings.sessions_per_child

    def spawn(self) -> bool:
        used = set(self.slot_region.values())
        region = next((i for i in range(self.scoreboard.regions) if i not in used), None)
        if region is None:
            return False  # old children still draining hold every region
        master_pid = os.getpid()
        # Keep the master's objects out of the children's garbage collections: a
        # full collection writes to every object it scans, and each page written
        # is copied, so a child's private memory grew from 5 to 19 MiB in its
        # first 20,000 sessions. Frozen, they stay shared.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                if self.pid_file is not None:
                    self.pid_file.close_in_child()
                if self.child_nice is not None:
                    os.setpriority(os.PRIO_PROCESS, 0, self.child_nice)
                code = child_main(self.qp, self.settings, self.sockets, master_pid, self.scoreboard, region)
            except BaseException as exc:  # a child must never return into the master's loop
                write_line(f"{os.getpid()} child failed: {type(exc).__name__}: {exc}")
                code = 1
            finally:
                os._exit(code)
        self.children[pid] = time.monotonic()
        self.slot_region[pid] = region
        self.info(f"new child {pid}")
        return True

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            started = self.children.pop(pid, None)
            self.retiring.discard(pid)
            region = self.slot_region.pop(pid, None)
            if region is not None:
                self.scoreboard.clear(region)  # it may have died holding slots
            self.info(f"child terminated, pid: {pid} (status {status})")
            if started is not None and failed_at_start(status) and time.monotonic() - started < QUICK_DEATH:
                self.crash_streak += 1
                if self.crash_streak >= 3:
                    # A child that dies at start (a plugin's post-fork, a full disk) would
                    # otherwise be forked again and again, as fast as the CPU allows.
                    delay = min(30.0, 2.0 ** (self.crash_streak - 3))
                    self.respawn_after = time.monotonic() + delay
                    write_line(f"{os.getpid()} children die at start ({self.crash_streak} in a row, "
                               f"last status {status}); next try in {delay:g}s")
            elif started is not None:
                self.crash_streak = 0

    def begin_shutdown(self, signo: int) -> float:
        self.info("shutting down")
        self.stopping = True
        for sock in self.sockets:
            sock.close()
        for pid in self.children:
            _kill(pid, signal.SIGTERM)
        # Children give their sessions --shutdown-timeout, then need a moment to close.
        return time.monotonic() + self.settings.shutdown_timeout + 5

    def reload(self) -> None:
        """HUP: new config and plugins for new children; old ones finish their sessions."""
        self.info("reload daemon requested")
        from .plugin import forget_loaded_plugins

        forget_loaded_plugins()
        gc.unfreeze()  # the old config's objects may be collected once no child needs them
        try:
            qp = self.make_qp()
        except Exception as exc:  # a broken config must not take the running daemon down
            write_line(f"{os.getpid()} reload failed, keeping the running config: {exc}")
            return
        self.qp = qp
        for pid in self.children:
            self.retiring.add(pid)
            _kill(pid, signal.SIGHUP)
        self.spawn_missing()


def _kill(pid: int, signo: int) -> None:
    try:
        os.kill(pid, signo)
    except ProcessLookupError:
        pass


def child_main(qp: Qpsmtpd, settings: Settings, sockets: list[socket.socket], master_pid: int,
               scoreboard: Scoreboard, region: int) -> int:
    """Serve SMTP in this freshly forked child until told to stop; returns the exit code."""
    from .eventloop import install_reactor

    reactor = install_reactor()
    from .child import Child

    # qpsmtpd declares `post-fork` but never runs it; here it runs once per child,
    # before anything (such as the session settings) asks plugins for config.
    qp.runner.run_sync(None, "post-fork")
    child = Child(reactor, qp, settings, sockets, scoreboard, region, master_pid)
    for signo in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signo, lambda *_: reactor.callFromThread(child.stop, settings.shutdown_timeout))
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(child.stop, None))
    # Programs plugins start (reactor.spawnProcess) are reaped when they exit, as
    # Twisted's own handler would do if the reactor installed its handlers.
    from twisted.internet import process

    signal.signal(signal.SIGCHLD, lambda *_: reactor.callFromThread(process.reapAllProcesses))
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # meant for the master only
    # Only now: a signal that arrived since fork() was held, and is handled here.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)
    child.watch_master()
    child.start()
    reactor.run(installSignalHandlers=False)
    qp.logger.log(LOGINFO, f"child {os.getpid()} exits after {child.served} sessions")
    return 0
