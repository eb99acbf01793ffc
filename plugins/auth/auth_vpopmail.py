"""auth/auth_vpopmail - check AUTH PLAIN/LOGIN passwords with vpopmail's vchkpw.

Hooks: auth-plain, auth-login. vchkpw is vpopmail's checkpassword program:
it is run as `<vchkpw> <true>` with `user@domain NUL password NUL Y123456 NUL`
on its file descriptor 3, exactly as auth/auth_checkpassword runs its program
(the same code), so the answers are the same: exit 0 -> OK (235); exit 1
(wrong password or unknown user) -> DECLINED (a later auth plugin may still
accept the user, else 535); any other status, a signal, or no exit within
`timeout` -> DENYSOFT (454).

Arguments (key/value, all optional):
    auth/auth_vpopmail [vchkpw <path>] [true <path>] [timeout <seconds>]
- vchkpw: default `~vpopmail/bin/vchkpw` (the home directory of the system
  user vpopmail, else /home/vpopmail).
- true: default /bin/true.
- timeout: seconds before vchkpw is killed (default 10).
vchkpw must be able to read the vpopmail password store: it is installed
setuid (mode 4711) by vpopmail; otherwise run the daemon as the vpopmail user.

Not as qpsmtpd: qpsmtpd's auth_vpopmail called vpopmail's C library through
the p5-vpopmail Perl module, in the daemon's own process, which therefore had to
run as the vpopmail user; it could also check CRAM-MD5 against the clear-text
password vpopmail may keep. There is no such binding for Python, so this
plugin uses vpopmail's documented checkpassword interface instead: only PLAIN
and LOGIN. For CRAM-MD5 use auth/auth_vpopmail_sql (the same password store
read from MySQL/MariaDB) or auth/auth_vpopmaild.

Example config/plugins line:
    auth/auth_vpopmail
"""

import pwd

from qpsmtpd_py.checkpassword import CheckpasswordAuth, executable


def default_vchkpw() -> str:
    try:
        home = pwd.getpwnam("vpopmail").pw_dir
    except KeyError:
        home = "/home/vpopmail"
    return f"{home}/bin/vchkpw"


class AuthVpopmail(CheckpasswordAuth):
    def register(self, qp, *args):
        self.warn_unknown_arguments(("vchkpw", "true", "timeout", "loglevel"))
        self.checkpassword = executable(self.args.get("vchkpw") or default_vchkpw(), "vchkpw")
        self.true_program = executable(self.args.get("true") or "/bin/true", "true")
        self.timeout = self.seconds_argument("timeout", self.timeout, non_positive="error")
        self.register_auth_hooks()  # clear text only: the program gets the password, never a CRAM-MD5 digest
