"""loadcheck - turn clients away while the system load is too high.

Hook: connect. When the 1-minute load average is above `max_load`, the
client gets `450 Server load too high, please try again later.` and is
disconnected (log `local load too high: <load>` at LOGERROR); otherwise the
session goes on. The load is measured at most once every `cache_time`
seconds per child process; clients connecting meanwhile are judged by the
last value.

The load is read, by the first of these that works when the plugin is
loaded:
1. the first number of the file given by `loadavg` (default /proc/loadavg,
   Linux);
2. the operating system's getloadavg() (the BSDs, macOS);
3. the output of the `uptime` program (`... load average: 0.52, ...`), run in
   a thread so the child's other sessions are not held up; a run that fails
   or that cannot be read keeps the previous value.
If none works, `unable to acquire system load` is logged at LOGERROR and the
hook is not registered: every client is accepted.

Arguments (key/value pairs):
    max_load N     the highest acceptable load (a number). Default: 7.
    cache_time N   seconds a measured load is reused. Default: 10.
    uptime PATH    the uptime program. Default: /usr/bin/uptime.
    loadavg PATH   the file in /proc/loadavg's format. Default: /proc/loadavg.
    loglevel N     the usual per-plugin log level adjustment.
As in qpsmtpd, 0 (or nothing) for max_load, cache_time or uptime means the
default. An odd number of arguments, or a value that is not a number, stops
start-up; an unknown key is logged and ignored. `loadavg` is not in qpsmtpd.

Example config/plugins lines:
    loadcheck
    loadcheck max_load 12 cache_time 30
"""

import os
import re
import signal
import subprocess
import time

from qpsmtpd_py.constants import DECLINED, DENYSOFT, LOGDEBUG, LOGERROR
from qpsmtpd_py.plugin import Plugin, PluginError

_KNOWN_ARGUMENTS = ("max_load", "cache_time", "uptime", "loadavg", "loglevel")
_UPTIME_LOAD = re.compile(r"aver\S+: (\d+\.\d+)")
UPTIME_TIMEOUT = 10


class Loadcheck(Plugin):
    # The clock, seconds (tests replace it).
    now = staticmethod(time.time)

    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("arguments come in pairs (max_load 7 cache_time 10), "
                              f"not `loadcheck {' '.join(args)}`")
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)
        self.max_load = self.number("max_load", 7)
        self.cache_time = self.number("cache_time", 10)
        self.uptime = self.path("uptime", "/usr/bin/uptime")
        self.loadavg = self.path("loadavg", "/proc/loadavg")
        self.load = -1.0
        self.measured_at = 0.0
        self.method = self.load_method()
        if self.method is None:
            self.log(LOGERROR, "unable to acquire system load")
            return
        self.register_hook("connect", self.loadcheck)

    def number(self, key, default):
        text = self.args.get(key)
        try:
            value = float(text) if text else 0.0
        except ValueError:
            raise PluginError(f"{key} must be a number, not {text!r}") from None
        return value or default

    def path(self, key, default):
        value = self.args.get(key)
        return value if value not in (None, "", "0") else default

    def load_method(self):
        """The way to measure the load: a function returning a float (or a Deferred of one, or None)."""
        if os.access(self.loadavg, os.R_OK):
            return self.read_loadavg
        try:
            os.getloadavg()
        except (AttributeError, OSError):
            pass
        else:
            return self.system_loadavg
        if os.path.isfile(self.uptime) and os.access(self.uptime, os.X_OK):
            return self.run_uptime
        return None

    # -- measuring --------------------------------------------------------------------
    def read_loadavg(self):
        try:
            with open(self.loadavg) as handle:
                load = float(handle.read().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            self.log(LOGERROR, f"cannot read {self.loadavg}: {exc}")
            return None
        self.log(LOGDEBUG, f"{self.loadavg} reported: {load:g}")
        return load

    def system_loadavg(self):
        load = os.getloadavg()[0]
        self.log(LOGDEBUG, f"getloadavg reported: {load:g}")
        return load

    async def run_uptime(self):
        output = await self.in_thread(self.uptime_output)
        match = _UPTIME_LOAD.search(output)
        if match is None:
            self.log(LOGERROR, f"cannot read the load from {self.uptime}: {output.strip()!r}")
            return None
        load = float(match.group(1))
        self.log(LOGDEBUG, f"{self.uptime} reported: {load:g}")
        return load

    def in_thread(self, function):
        """A Deferred of function() run in the reactor's thread pool (tests run it inline)."""
        from twisted.internet import threads

        return threads.deferToThread(function)

    def uptime_output(self):
        """The output of the uptime program ('' if it fails); runs in a thread."""
        try:
            with subprocess.Popen([self.uptime], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, start_new_session=True) as process:
                try:
                    output, _ = process.communicate(timeout=UPTIME_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.communicate()
                    return ""
        except (OSError, subprocess.SubprocessError):
            return ""
        return output.decode("utf-8", "replace")

    # -- connect ------------------------------------------------------------------------
    def loadcheck(self, transaction):
        now = self.now()
        if now > self.measured_at + self.cache_time:
            self.measured_at = now
            measured = self.method()
            if hasattr(measured, "__await__"):
                from twisted.internet import defer

                return defer.ensureDeferred(self.judge_later(measured))
            return self.judge(measured)
        return self.judge(None)

    async def judge_later(self, measuring):
        return self.judge(await measuring)

    def judge(self, measured):
        if measured is not None:
            self.load = measured
        if self.load > self.max_load:
            self.log(LOGERROR, f"local load too high: {self.load:g}")
            return DENYSOFT, "Server load too high, please try again later."
        return DECLINED, f"continuing with load: {self.load:g}"
