"""The checkpassword interface, for auth/auth_checkpassword and auth/auth_vpopmail.

A checkpassword program (qmail's checkpassword, vpopmail's vchkpw, ...) is
run as `<checkpassword> <true>`: it reads `user NUL password NUL timestamp NUL`
from file descriptor 3, and if the password is right it runs `<true>` (which
exits 0); a wrong password exits 1, a temporary problem 111 (the interface's
convention; any status other than 0 and 1 is taken as temporary here).

`CheckpasswordAuth` is the base of both plugins: they only say which program
to run. The program is started without a shell through spawn.ProgramProcess,
the credentials are written on a pipe that is its fd 3, and it is killed if it
has not exited within `timeout` seconds.

No sudo: qpsmtpd prefixed the command with `sudo -C4` unless it ran as root,
as uid 89 with vchkpw, or the program was setuid (mode 4711). We never run
sudo: a program that needs privileges must be setuid (vchkpw is installed so),
or the daemon must run as a user that may read the password store. Running
sudo from a mail daemon needs a sudoers rule that lets that user run the
program as anyone, a larger hole than the setuid bit it replaces.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer

from .constants import DECLINED, DENYSOFT, LOGDEBUG, LOGERROR, LOGINFO, LOGNOTICE, OK
from .plugin import Plugin, PluginError
from .spawn import ProgramProcess

DEFAULT_TIMEOUT = 10.0
WRONG_PASSWORD = 1  # checkpassword's exit status for a wrong password or unknown user
_MAX_INPUT = 512  # checkpassword reads at most 512 bytes from fd 3


def credentials(user: str, password: str) -> bytes:
    """What a checkpassword program reads on fd 3 (the timestamp is unused, as qpsmtpd sends it)."""
    return (user.encode("utf-8", "surrogateescape") + b"\0" + password.encode("utf-8", "surrogateescape")
            + b"\0Y123456\0")


def executable(path: str, what: str) -> str:
    """`path` if it is an absolute path to an executable file; PluginError otherwise."""
    if not os.path.isabs(path):
        raise PluginError(f"the {what} program must be an absolute path, not {path!r}")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise PluginError(f"the {what} program {path} is not an executable file: install it or fix the path")
    return path


class CheckpasswordProcess(ProgramProcess):
    """One run of a checkpassword program: credentials on fd 3, stdout and stderr kept for the log."""

    collected_fds = (1, 2)
    output_limit = 2048

    def __init__(self, plugin: Plugin, data: bytes, clock: Any) -> None:
        super().__init__(plugin, None, clock)
        self.data = data

    def connectionMade(self) -> None:
        self.transport.closeChildFD(0)  # nothing on stdin: the interface uses fd 3
        self.transport.writeToChild(3, self.data)
        self.transport.closeChildFD(3)


class CheckpasswordAuth(Plugin):
    """Base of the plugins that check AUTH PLAIN/LOGIN passwords with a checkpassword program.

    A subclass's register() sets `checkpassword`, `true_program` and `timeout`.
    """

    checkpassword = ""
    true_program = ""
    timeout = DEFAULT_TIMEOUT


    async def check(self, transaction, mechanism, user, clear, digest, ticket):
        data = credentials(user, clear or "")
        if len(data) > _MAX_INPUT:
            self.log(LOGINFO, f"fail: user name and password longer than {_MAX_INPUT} bytes")
            return DECLINED, "checkpassword - user name or password too long"
        reactor = self.get_reactor()
        child = CheckpasswordProcess(self, data, reactor)
        argv = [self.checkpassword, self.true_program]
        self.log(LOGDEBUG, f"running {' '.join(argv)} 3<credentials")
        try:
            child.start(reactor, argv, {0: "w", 1: "r", 2: "r", 3: "w"})
        except OSError as exc:
            self.log(LOGERROR, f"cannot run {self.checkpassword}: {exc.strerror}")
            return DENYSOFT, f"checkpassword - cannot run the password check ({exc.strerror})"
        try:
            status = await child.ended.addTimeout(self.timeout, reactor)
        except defer.TimeoutError:
            self.log(LOGERROR, f"{self.checkpassword} did not answer within {self.timeout:g}s: killed")
            return DENYSOFT, "checkpassword - the password check timed out"
        output = child.output.decode("utf-8", "replace").strip()
        if output:
            self.log(LOGNOTICE, f"{self.checkpassword} said: {output[:200]}")
        return self.answer(status, user, mechanism)

    def answer(self, status: int | str, user: str, mechanism: str) -> tuple[int, str]:
        if status == 0:
            self.log(LOGINFO, f"pass: {user} authenticated with {mechanism}")
            return OK, "checkpassword"
        if status == WRONG_PASSWORD:
            self.log(LOGNOTICE, f"fail: wrong user name or password for {user}")
            # DECLINED, as qpsmtpd: a later auth plugin may still know the user.
            return DECLINED, "checkpassword - wrong user name or password"
        self.log(LOGERROR, f"{self.checkpassword} failed for {user}: {status}")
        return DENYSOFT, f"checkpassword - temporary failure ({status})"
