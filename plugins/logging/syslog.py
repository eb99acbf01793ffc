"""logging/syslog - send log lines to syslog.

Hook: logging. Load it from `config/logging` (or `config/plugins`).

Every line up to the chosen level is sent to the system logger as one
message, in the format of syslog(3):

    <PRI>Mmm dd hh:mm:ss <ident>[<pid>]: <session id> (<hook>) <plugin>: <message>

so the syslog daemon stores it as `... qpsmtpd[4711]: 4711.12 (rcpt) rcpt_ok:
pass`, and `grep ' 4711.12 '` follows one session. The syslog severity is the
line's level (LOGDEBUG -> debug, LOGINFO -> info, LOGNOTICE -> notice, LOGWARN
-> warning, LOGERROR -> err, LOGCRIT -> crit, LOGALERT -> alert, LOGEMERG ->
emerg) unless `priority` fixes one for all lines.

Sending never holds up the sessions. Messages go through a non-blocking
datagram socket: when the syslog daemon does not keep up and its socket is
full, lines are dropped, and the next message that gets through is preceded by
one saying how many were lost. When the socket cannot be reached at all (no
syslog daemon), lines go to standard error in the built-in format, with one
line saying why, until it can be reached again (tried again after 10 seconds).
The socket is opened at the first line each child process logs and reopened
when the syslog daemon restarts.

Arguments (key/value pairs, all optional):
    loglevel L    the highest level sent: a number (0-7) or a name such as
                  LOGINFO (`LOG` may be left out, case does not matter).
                  Default LOGWARN (4).
    priority P    send every line with this severity: LOG_EMERG, LOG_ALERT,
                  LOG_CRIT, LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO,
                  LOG_DEBUG (or the name without LOG_, or its number 0-7).
                  Default: the line's own level.
    ident NAME    the program name in each message (letters, digits, `_`,
                  `-`, `.`). Default qpsmtpd.
    facility F    LOG_MAIL, LOG_DAEMON, LOG_USER, LOG_LOCAL0 ... LOG_LOCAL7,
                  or another syslog(3) facility (LOG_ may be left out).
                  Default LOG_MAIL.
    logsock S     where messages go; a comma-separated list is tried in order
                  at the first line and the first that works is used:
                  `unix`    the datagram socket /dev/log (the default);
                  `udp`     UDP to 127.0.0.1 port 514;
                  `native`  the C library's syslog(3), through Python's syslog
                            module: it waits when the syslog daemon is slow,
                            and its ident and facility are shared by the
                            whole process;
                  /a/path   the unix datagram socket at that path.

The arguments of an `AUTH` command are logged only when `config/loglevel` is
7, whatever `loglevel` is here.

Differences from qpsmtpd: messages carry the session id, hook and plugin
(qpsmtpd sent the bare message text); the `logsock` types tcp, stream and
console are not available; an odd number of arguments or a bad value stops
start-up (qpsmtpd skipped the plugin or the value).

Example config/logging lines:
    logging/syslog
    logging/syslog loglevel LOGINFO priority LOG_NOTICE facility LOG_LOCAL3
    logging/syslog loglevel LOGINFO logsock udp,unix
"""

import errno
import os
import re
import socket
import syslog
import time

from qpsmtpd_py.constants import DECLINED, LOGWARN
from qpsmtpd_py.log import format_line, write_line
from qpsmtpd_py.log_plugins import parse_level
from qpsmtpd_py.plugin import Plugin, PluginError

RETRY_AFTER = 10.0  # seconds before an unreachable syslog is tried again
DEV_LOG = "/dev/log"
UDP_ADDRESS = ("127.0.0.1", 514)
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
SEVERITIES = ("EMERG", "ALERT", "CRIT", "ERR", "WARNING", "NOTICE", "INFO", "DEBUG")
FACILITIES = ("KERN", "USER", "MAIL", "DAEMON", "AUTH", "SYSLOG", "LPR", "NEWS", "UUCP", "CRON", "AUTHPRIV",
              *(f"LOCAL{n}" for n in range(8)))
KEYS = ("loglevel", "priority", "ident", "facility", "logsock")
# The socket is gone or was replaced (syslog daemon restarted): reconnect once.
_RECONNECT = {errno.ECONNREFUSED, errno.ENOTCONN, errno.ENOENT, errno.EDESTADDRREQ, errno.EBADF}


def _syslog_name(text: str, names: tuple[str, ...], what: str) -> str:
    name = text.upper().removeprefix("LOG_")
    if name not in names:
        raise PluginError(f"{what} must be one of {', '.join('LOG_' + n for n in names)}, not {text!r}")
    return name


def timestamp(now: float) -> str:
    """syslog(3)'s `Mmm dd hh:mm:ss`, in English whatever the locale."""
    t = time.localtime(now)
    return f"{MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


class _Datagram:
    """A non-blocking datagram socket to a syslog daemon."""

    def __init__(self, family, address, shown):
        self.family = family
        self.address = address
        self.shown = shown
        self.sock = None

    def connect(self):
        self.close()
        sock = socket.socket(self.family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def send(self, data):
        """True when sent, False when the receiver is full (dropped); OSError when unreachable."""
        if self.sock is None:
            self.connect()
        try:
            self.sock.send(data)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                self.sock.send(data[:2048])  # a huge line: its start is better than nothing
                return True
            if exc.errno not in _RECONNECT:
                raise
            self.connect()  # the daemon restarted: its new socket
            try:
                self.sock.send(data)
            except BlockingIOError:
                return False
        return True

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _Native:
    """The C library's syslog(3) (Python's syslog module)."""

    shown = "syslog(3)"

    def __init__(self, ident, facility):
        self.ident = ident
        self.facility = facility
        self.pid = None

    def connect(self):
        syslog.openlog(self.ident, syslog.LOG_PID, self.facility)
        self.pid = os.getpid()

    def send_line(self, severity, line):
        if self.pid != os.getpid():
            self.connect()
        syslog.syslog(severity, line)
        return True

    def close(self):
        pass


class Syslog(Plugin):
    def __init__(self, qp, name, args):
        # `loglevel` here is this plugin's threshold (LOGINFO allowed), not the
        # generic per-plugin level adjustment: no generic checks.
        super().__init__(qp, name, [])
        self.arguments = list(args)

    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"arguments are key/value pairs (loglevel L priority P ident NAME facility F "
                              f"logsock S), not {' '.join(args)!r}")
        settings = dict(zip(args[::2], args[1::2], strict=True))
        unknown = sorted(set(settings) - set(KEYS))
        if unknown:
            raise PluginError(f"unknown argument {unknown[0]!r}: use {', '.join(KEYS)}")
        self.level = parse_level(settings["loglevel"]) if "loglevel" in settings else LOGWARN
        self.priority = None
        if "priority" in settings:
            value = settings["priority"]
            if value.isdigit() and int(value) < len(SEVERITIES):
                self.priority = int(value)
            else:
                self.priority = SEVERITIES.index(_syslog_name(value, SEVERITIES, "priority"))
        self.ident = settings.get("ident", "qpsmtpd")
        if not re.fullmatch(r"[\w.-]+", self.ident, re.ASCII):
            raise PluginError(f"ident may have letters, digits, _, - and . only, not {self.ident!r}")
        facility = _syslog_name(settings.get("facility", "LOG_MAIL"), FACILITIES, "facility")
        self.facility = getattr(syslog, "LOG_" + facility)
        self.candidates = [self._transport(word) for word in settings.get("logsock", "unix").split(",")]
        self.transport = None
        self.retry_at = 0.0
        self.dropped = 0

    def _transport(self, word):
        word = word.strip()
        if word == "unix":
            return _Datagram(socket.AF_UNIX, DEV_LOG, DEV_LOG)
        if word == "udp":
            return _Datagram(socket.AF_INET, UDP_ADDRESS, "udp 127.0.0.1:514")
        if word == "native":
            return _Native(self.ident, self.facility)
        if word.startswith("/"):
            return _Datagram(socket.AF_UNIX, word, word)
        raise PluginError(f"logsock {word!r} is not available: use unix, udp, native or the path of a "
                          "unix datagram socket, separated by commas")

    def hook_logging(self, transaction, level, hook, plugin, message):
        if level > self.level or plugin == self.name:
            return DECLINED
        line = format_line(message, hook, plugin)
        severity = self.priority if self.priority is not None else min(max(level, 0), 7)
        if self.transport is None and not self._connect():
            write_line(line)
            return DECLINED
        try:
            if self.dropped and self._send(severity, format_line(
                    f"{self.dropped} log line(s) dropped: syslog did not keep up", None, self.name)):
                self.dropped = 0
            if not self._send(severity, line):
                self.dropped += 1
        except OSError as exc:
            self.transport.close()
            self.transport = None
            self._unreachable(exc)
            write_line(line)
        return DECLINED

    def _connect(self):
        if time.monotonic() < self.retry_at:
            return False
        error = None
        for candidate in self.candidates:
            try:
                candidate.connect()
            except OSError as exc:
                error = exc
                continue
            self.transport = candidate
            return True
        self._unreachable(error)
        return False

    def _unreachable(self, exc):
        self.retry_at = time.monotonic() + RETRY_AFTER
        where = ", ".join(c.shown for c in self.candidates)
        reason = (exc.strerror or str(exc)) if exc is not None else "no transport"
        write_line(format_line(f"cannot send to syslog ({where}): {reason}; lines go to standard error, "
                               f"next try in {RETRY_AFTER:g}s", None, self.name))

    def _send(self, severity, line):
        transport = self.transport
        if isinstance(transport, _Native):
            return transport.send_line(severity, line)
        data = f"<{self.facility | severity}>{timestamp(time.time())} {self.ident}[{os.getpid()}]: {line}"
        return transport.send(data.encode("utf-8", "backslashreplace"))
