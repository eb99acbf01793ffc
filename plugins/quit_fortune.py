"""quit_fortune - say goodbye with a fortune cookie.

Hook: quit. When a client that greeted with HELO (not EHLO: such a client is
taken to be too sophisticated for the joke) sends QUIT, the reply is

    221-<me> closing connection.
    221-  / <first line of the fortune>
    221   / <last line of the fortune>

from the output of `fortune -s` (short fortunes), each line prefixed with
`  / `. Clients that sent EHLO, or no greeting at all, get the usual
`221 <me> closing connection. Have a wonderful day.`. The program runs in a
thread, so the child's other sessions are not held up; if it fails, writes
nothing or is still running after `timeout` seconds (it is then killed),
the reply is `221 <me> closing connection.` alone.

The hook is only registered when the program exists and is executable when
the plugin is loaded (checked again at each reload); otherwise the plugin
does nothing.

Arguments (key/value pairs):
    fortune PATH   the program to run, with the argument `-s`.
                   Default: /usr/games/fortune.
    timeout N      seconds to wait for it. Default: 5.
    loglevel N     the usual per-plugin log level adjustment.
qpsmtpd's plugin took no arguments. An odd number of arguments, or a timeout
that is not a positive number, stops start-up.

Example config/plugins line:
    quit_fortune
"""

import os
import signal
import subprocess

from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGERROR, OK
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_FORTUNE = "/usr/games/fortune"
_KNOWN_ARGUMENTS = ("fortune", "timeout", "loglevel")


class QuitFortune(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("arguments come in pairs (fortune /usr/games/fortune timeout 5), "
                              f"not `quit_fortune {' '.join(args)}`")
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)
        self.fortune = self.args.get("fortune", DEFAULT_FORTUNE)
        try:
            self.timeout = float(self.args.get("timeout", "5"))
        except ValueError:
            self.timeout = 0.0
        if not self.timeout > 0:
            raise PluginError(f"timeout must be a positive number of seconds, not {self.args['timeout']!r}")
        if not (os.path.isfile(self.fortune) and os.access(self.fortune, os.X_OK)):
            self.log(LOGDEBUG, f"{self.fortune} is not an executable file: not hooking quit")
            return
        self.register_hook("quit", self.quit_handler)

    async def quit_handler(self, transaction):
        if self.connection.hello != "helo":
            return DECLINED
        lines, error = await self.in_thread(self.run_fortune)
        if error:
            self.log(LOGERROR, error)
        return (OK, f"{self.qp.config('me')} closing connection.", *[f"  / {line}" for line in lines])

    def in_thread(self, function):
        """A Deferred of function() run in the reactor's thread pool (tests run it inline)."""
        from twisted.internet import threads

        return threads.deferToThread(function)

    def run_fortune(self):
        """(lines of `fortune -s`, error text or None); runs in a thread."""
        try:
            returncode, output = run_program([self.fortune, "-s"], self.timeout)
        except subprocess.TimeoutExpired:
            return [], f"{self.fortune} did not finish within {self.timeout:g}s"
        except (OSError, subprocess.SubprocessError) as exc:
            return [], f"cannot run {self.fortune}: {exc}"
        lines = output.decode("utf-8", "replace").replace("\r", "").splitlines()
        if returncode:
            return lines, f"{self.fortune} exited with {returncode}"
        return lines, None


def run_program(argv, timeout):
    """(exit code, standard output) of a program; on timeout its whole process group is killed."""
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          start_new_session=True) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.communicate()
            raise
        return process.returncode, output
