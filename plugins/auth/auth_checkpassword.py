"""auth/auth_checkpassword - check AUTH PLAIN/LOGIN passwords with a checkpassword program.

Hooks: auth-plain, auth-login (CRAM-MD5 is not offered by this plugin: a
checkpassword program needs the clear-text password). The program is run as
`<checkpw> <true>` with `user NUL password NUL Y123456 NUL` on its file
descriptor 3 (the checkpassword interface, as qmail's checkpassword, vpopmail's
vchkpw or cvm-checkpassword implement it), without a shell.

Arguments (key/value, as qpsmtpd):
    auth/auth_checkpassword checkpw <path> true <path> [timeout <seconds>]
- checkpw: the checkpassword program, an absolute path. No default.
- true: the program it runs on success, usually /bin/true. No default.
- timeout: seconds before the program is killed and the client gets 454
  (default 10).
Without checkpw and true, the first line of config/smtpauth-checkpassword is
read: `<checkpw path> <true path>`. A missing or not executable program stops
start-up with a message (qpsmtpd logged it and quietly did not load).

Answers, from the program's exit status:
- 0: OK, the client is authenticated (235);
- 1 (wrong password, unknown user): DECLINED, so a later auth plugin may
  still accept the user; if none does, 535;
- anything else (111 is checkpassword's temporary failure), a signal, a
  program that cannot run or does not exit within `timeout`: DENYSOFT, which
  the client sees as 454 (qpsmtpd answered 535 for every failure).

Not as qpsmtpd: no `sudo -C4` is ever run (see qpsmtpd_py/checkpassword.py for
why): a checkpassword program that needs privileges must be setuid, as vchkpw
is installed, or the daemon must run as a user that may read the password store.

Example config/plugins line:
    auth/auth_checkpassword checkpw /usr/local/vpopmail/bin/vchkpw true /bin/true
"""

from qpsmtpd_py.checkpassword import CheckpasswordAuth, executable
from qpsmtpd_py.constants import LOGNOTICE
from qpsmtpd_py.plugin import PluginError


class AuthCheckpassword(CheckpasswordAuth):
    def register(self, qp, *args):
        self.warn_unknown_arguments(("checkpw", "true", "timeout", "loglevel"))
        checkpw, true_program = self.args.get("checkpw"), self.args.get("true")
        if not (checkpw and true_program):
            line = (qp.config("smtpauth-checkpassword") or "").split()
            if len(line) != 2:
                raise PluginError("give `checkpw <path> true <path>` arguments, or write `<checkpw path> "
                                  "<true path>` into config/smtpauth-checkpassword")
            self.log(LOGNOTICE, "reading config from smtpauth-checkpassword")
            checkpw, true_program = line
        self.checkpassword = executable(checkpw, "checkpw")
        self.true_program = executable(true_program, "true")
        self.timeout = self.seconds_argument("timeout", self.timeout, non_positive="error")
        self.register_auth_hooks()  # clear text only: the program gets the password, never a CRAM-MD5 digest
