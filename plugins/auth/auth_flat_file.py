"""auth/auth_flat_file - check AUTH passwords against config/flat_auth_pw.

Each line of `flat_auth_pw` is `user@domain:password`, the password in clear
text (CRAM-MD5 needs it so) or as a crypt() hash (`$6$...`, `$1$...`; such a
user can use PLAIN and LOGIN only). The user name must be a full address and
is compared without regard to case. Hooks: auth-plain, auth-login, auth-cram-md5.

Answers: OK for a match; DENY for a wrong password, an unknown user, or a
user without a password (`authflat - missing password`), so no later auth
plugin is asked. The file is read again when it changes.

Example config/plugins line:
    auth/auth_flat_file
"""

from qpsmtpd_py.auth import validate_password
from qpsmtpd_py.constants import DENY, LOGDEBUG, LOGINFO, OK
from qpsmtpd_py.plugin import Plugin


class AuthFlatFile(Plugin):
    def register(self, qp, *args):
        self.register_auth_hooks("plain", "login", "cram-md5")

    def stored_password(self, user):
        for line in self.qp.config_list("flat_auth_pw"):
            name, sep, password = line.partition(":")
            if sep and name.strip().lower() == user:
                return password
        return None

    def check(self, transaction, mechanism, user, clear, digest, ticket):
        user = user.strip().lower()
        if "@" not in user:
            self.log(LOGINFO, f"invalid user name {user!r}: not user@domain")
            return DENY, "authflat - invalid user name"
        stored = self.stored_password(user)
        if stored is None:
            self.log(LOGINFO, f"no such user {user}")
            return DENY, "authflat - wrong username or password"
        if not stored:
            return DENY, "authflat - missing password"
        hashed = stored.startswith("$")
        if validate_password(stored_clear=None if hashed else stored, stored_crypt=stored if hashed else None,
                             attempt_clear=clear, attempt_hash=digest, ticket=ticket):
            self.log(LOGDEBUG, f"{mechanism} password ok for {user}")
            return OK, "authflat"
        return DENY, "authflat - wrong username or password"

