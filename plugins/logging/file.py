"""logging/file - write log lines to a file, or through a pipe to a command.

Hooks: logging, post-connection. Load it from `config/logging`, the file
qpsmtpd reads its logging plugins from (a line in `config/plugins` works too):

    logging/file [loglevel L] [reopen] [nosplit] [tsformat FORMAT] TARGET

TARGET is the path of a file, or `|` and a shell command (run with /bin/sh
-c) that gets the lines on its standard input. Everything after the options
is the target, spaces included. The file is created (mode 0640, less the
umask) when missing and appended to otherwise; its directory must exist.

Each line up to the chosen level is written as

    <timestamp> <host>[<pid>]: <session id> (<hook>) <plugin>: <message>

for example `Tue Mar 04 10:15:02 2025 mx[4711]: 4711.12 (rcpt) rcpt_ok:
pass`: after the prefix comes the line the built-in logger would write, so
`grep ' 4711.12 '` shows one session. Lines logged outside any session (a
child starting or exiting) have the process id where the session id would be.

The target may contain strftime(3) conversions, expanded in local time for
each line (`/var/log/qpsmtpd/%Y-%m-%d` starts a new file every day: the
target is reopened whenever its expansion changes), and `%i`, the session id
(`<pid>.<n>`): one file per session; lines outside any session use `parent`
for it. `%%` is a percent sign.

Options (before the target, in any order, case does not matter):
    loglevel L    the highest level written: a number (0-7) or a name such as
                  LOGINFO (`LOG` may be left out). Default LOGWARN (4).
    reopen        each session gets its own opening of the target, at its
                  first line, closed when the session ends: a file is opened
                  anew (so one that was moved away is created again), a
                  command is started for each session and gets end-of-file
                  when the session ends (with a high level, one mail per
                  troubled session to a paging script).
    nosplit       a session keeps the target it logged its first line to,
                  even when the expansion of the strftime conversions changes
                  during the session, so no session is split over two files.
    tsformat F    the strftime(3) format of the timestamp. Default
                  `%a %b %d %H:%M:%S %Y` (Perl's localtime).

Writing. Each line is a single write(2) to the file, opened for appending, so
lines of the children sharing a file never run into each other, and none is
kept in memory (a child that dies loses nothing). A write lands in the
kernel's page cache and returns at once; only when the disk is so slow that
the kernel makes writers wait (or a network file system stalls) does the child
wait in it, with its sessions: keep the log on a local disk. A command is
started once per child process (at its first line; with `reopen` once per
session; with conversions in the command, again whenever the expansion
changes) and keeps running until the child exits. Its pipe never makes the
child wait: what the command has not read yet is kept, up to 1 MB; beyond,
lines are dropped and a later line says how many.

A target that cannot be opened or written (its directory is gone, the disk is
full, the command exited) is reported on standard error, and its lines go to
standard error in the built-in format; it is tried again 10 seconds later.
At start-up a file whose directory does not exist or cannot be written to
(after --user took effect) stops the daemon with a message saying so; a
target with conversions in its directory part is not checked.

As with every logging plugin, the arguments of an `AUTH` command are logged
only when `config/loglevel` is 7, whatever `loglevel` is here.

Several instances (`logging/file:1 ...`) write to several targets, for
example every line of the day in one file and only the errors in another.

Differences from qpsmtpd: lines carry the session id, hook and plugin after
the prefix (qpsmtpd wrote the bare message text); `reopen` and `%i` give each
of a child's concurrent sessions its own file or command; a broken target is
reported and its lines kept on standard error (qpsmtpd dropped them); a bad
level or a missing target stops start-up.

Example config/logging lines:
    logging/file loglevel LOGINFO /var/log/qpsmtpd/qpsmtpd.log
    logging/file loglevel 6 /var/log/qpsmtpd/log-%Y%m%d
    logging/file:1 loglevel LOGCRIT reopen |/usr/local/sbin/page-sysadmin
    logging/file loglevel LOGDEBUG tsformat %FT%T /var/log/qpsmtpd/debug.log
"""

import os
import re
import socket
import subprocess
import time
import weakref

from qpsmtpd_py.constants import DECLINED, LOGWARN
from qpsmtpd_py.log import current_session, format_line, write_line
from qpsmtpd_py.log_plugins import parse_level
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_TSFORMAT = "%a %b %d %H:%M:%S %Y"
PIPE_BACKLOG = 1 << 20  # bytes kept for a command that is slow to read
RETRY_AFTER = 10.0  # seconds before a broken target is tried again
FILE_MODE = 0o640
_CONVERSION = re.compile(r"%%|%i")


class _Target:
    """One open file, or one running command and the pipe to it."""

    def __init__(self, name, pipe):
        self.name = name
        self.pipe = pipe
        self.fd = -1
        self.process = None
        self.pending = bytearray()  # for a command: what it has not read yet
        self.dropped = 0

    def open(self):
        if not self.pipe:
            self.fd = os.open(self.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            return
        self.process = subprocess.Popen(self.name, shell=True, stdin=subprocess.PIPE, close_fds=True)
        self.fd = self.process.stdin.fileno()
        os.set_blocking(self.fd, False)

    def write(self, data):
        if not self.pipe:
            view = memoryview(data)
            while view:  # a regular file takes it whole, unless the disk is full (OSError)
                view = view[os.write(self.fd, view):]
            return
        if len(self.pending) + len(data) > PIPE_BACKLOG:
            self.dropped += 1
        else:
            self.pending += data
        self.flush()

    def flush(self):
        while self.pending:
            try:
                written = os.write(self.fd, self.pending)
            except BlockingIOError:
                return
            del self.pending[:written]

    def close(self):
        if self.process is None:
            if self.fd >= 0:
                os.close(self.fd)
            self.fd = -1
            return
        try:
            self.flush()  # what does not fit now is lost
        except OSError:
            pass
        try:
            self.process.stdin.close()
        except OSError:
            pass


class _Session:
    __slots__ = ("name", "key", "ended")

    def __init__(self):
        self.name = None  # with nosplit: the target chosen at the first line
        self.key = None  # the target the session wrote to last
        self.ended = False


class File(Plugin):
    def __init__(self, qp, name, args):
        # `loglevel` here is this plugin's threshold and the words are not key/value
        # pairs: no generic argument checks.
        super().__init__(qp, name, [])
        self.arguments = list(args)
        self.clock = None  # the reactor; tests set a task.Clock

    def register(self, qp, *args):
        self.level = LOGWARN
        self.tsformat = DEFAULT_TSFORMAT
        self.reopen = self.nosplit = False
        words = list(args)
        while words:
            option = words[0].lower()
            if option in ("loglevel", "tsformat"):
                if len(words) < 2:
                    raise PluginError(f"{option} needs a value, then the target")
                if option == "loglevel":
                    self.level = parse_level(words[1])
                else:
                    self.tsformat = words[1]
                del words[:2]
            elif option in ("reopen", "nosplit"):
                setattr(self, option, True)
                del words[0]
            else:
                break
        target = " ".join(words).strip()
        if not target or target == "|":
            raise PluginError("give the file to write to, or |command: "
                              "logging/file [loglevel L] [reopen] [nosplit] [tsformat F] <path|command>")
        self.pipe = target.startswith("|")
        self.format = target[1:].strip() if self.pipe else target
        self.per_session = any(match.group() == "%i" for match in _CONVERSION.finditer(self.format))
        if not self.pipe:
            check_directory(self.format)
        self.host = socket.gethostname()
        self._targets = {}  # (name, session id or None) -> _Target
        self._shared = None  # the key lines outside sessions (or shared by them) went to last
        self._sessions = weakref.WeakKeyDictionary()  # session -> _Session
        self._broken = {}  # name -> when to try it again
        self._exited = []  # commands whose pipe was closed, to reap

    # -- the hooks --------------------------------------------------------------------
    def hook_logging(self, transaction, level, hook, plugin, message):
        if level > self.level or plugin == self.name:
            return DECLINED
        line = format_line(message, hook, plugin).replace("\n", " ")
        stamp = time.strftime(self.tsformat)
        data = f"{stamp} {self.host}[{os.getpid()}]: {line}\n".encode("utf-8", "backslashreplace")
        if not self._write(self._key(current_session.get()), data):
            write_line(line)
        return DECLINED

    def hook_post_connection(self, transaction):
        state = self._sessions.get(self.session)
        if state is not None:
            state.ended = True
            # The session's own target is closed once the other plugins' post-connection
            # hooks (which may log) have run.
            self._clock().callLater(0, self.close_unused)
        return DECLINED

    # -- targets ----------------------------------------------------------------------
    def expand(self, session_id):
        """The target for a line logged now by session `session_id` (None: no session)."""
        if "%" not in self.format:
            return self.format
        text = _CONVERSION.sub(lambda m: "%%" if m.group() == "%%" else (session_id or "parent"), self.format)
        return time.strftime(text)

    def _key(self, session):
        state = None
        session_id = None
        if session is not None and session.connection is not None:
            session_id = session.connection.id
            state = self._sessions.get(session)
            if state is None:
                state = self._sessions[session] = _Session()
        if state is not None and self.nosplit and state.name is not None:
            name = state.name
        else:
            name = self.expand(session_id)
        key = (name, session_id if self.reopen else None)
        if state is not None:
            state.name = name
            state.key = key
        if key[1] is None and (session_id is None or not self.per_session):
            self._shared = key  # with %i, a session's own file is not shared
        return key

    def _write(self, key, data):
        """Write `data` to the target of `key`; False when it cannot be written."""
        target = self._targets.get(key)
        if target is None:
            name = key[0]
            if self._broken.get(name, 0.0) > time.monotonic():
                return False
            target = _Target(name, self.pipe)
            try:
                target.open()
            except OSError as exc:
                self._fail(name, f"cannot open: {exc.strerror or exc}")
                return False
            self._targets[key] = target
            self.close_unused(keep=key)
        try:
            target.write(data)
            if target.dropped and not target.pending:
                dropped, target.dropped = target.dropped, 0
                notice = format_line(f"{dropped} log line(s) dropped: the command did not read them in time",
                                     None, self.name)
                target.write(f"{time.strftime(self.tsformat)} {self.host}[{os.getpid()}]: {notice}\n".encode())
        except OSError as exc:
            del self._targets[key]
            self._retire(target)
            what = "the command exited" if isinstance(exc, BrokenPipeError) else exc.strerror or str(exc)
            self._fail(key[0], f"cannot write: {what}")
            return False
        return True

    def _fail(self, name, reason):
        self._broken[name] = time.monotonic() + RETRY_AFTER
        shown = f"|{name}" if self.pipe else name
        write_line(format_line(f"{shown}: {reason}; lines go to standard error, next try in {RETRY_AFTER:g}s",
                               None, self.name))

    def close_unused(self, keep=None):
        """Close the targets no running session and no line outside sessions needs now."""
        wanted = {self._shared, keep}
        wanted.update(state.key for state in self._sessions.values() if not state.ended)
        for key in [key for key in self._targets if key not in wanted]:
            self._retire(self._targets.pop(key))
        now = time.monotonic()
        for name in [name for name, when in self._broken.items() if when <= now]:
            del self._broken[name]

    def _retire(self, target):
        target.close()
        if target.process is not None:
            self._exited.append(target.process)
        # Reap the commands that have exited since (each got end-of-file when its pipe closed).
        self._exited = [process for process in self._exited if process.poll() is None]

    def close(self):
        """Close every target (tests; a child exiting closes them anyway)."""
        for target in self._targets.values():
            self._retire(target)
        self._targets.clear()

    def _clock(self):
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        return self.clock


def check_directory(path_format):
    """Start-up check of a file target: its directory must exist and be writable."""
    directory = os.path.dirname(os.path.abspath(path_format))
    if "%" in directory:
        return
    if not os.path.isdir(directory):
        raise PluginError(f"the directory {directory} of the log file does not exist: create it, "
                          "writable by the daemon's user")
    if "%" not in path_format and os.path.exists(path_format):
        if not os.access(path_format, os.W_OK):
            raise PluginError(f"the log file {path_format} is not writable: chown it to the daemon's user")
    elif not os.access(directory, os.W_OK | os.X_OK):
        raise PluginError(f"the log file cannot be created in {directory}: make the directory writable "
                          "by the daemon's user")
