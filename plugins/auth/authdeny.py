"""auth/authdeny - answer every AUTH attempt with a refusal (a demonstration, and a catch-all).

Hook: the generic `auth` hook, which runs when no mechanism-specific plugin
decided. Put it last among the auth plugins: a user no other plugin knows is
refused with `<user> is not free to abuse my relay`. Like every generic `auth`
hook, it makes EHLO offer all of PLAIN, LOGIN and CRAM-MD5.

No arguments. Example config/plugins line:
    auth/authdeny
"""

from qpsmtpd_py.constants import DECLINED, LOGWARN
from qpsmtpd_py.plugin import Plugin


class Authdeny(Plugin):
    def hook_auth(self, transaction, mechanism, user, clear, digest, ticket):
        self.log(LOGWARN, f"fail: cannot authenticate {user}")
        # DECLINED with a message: qpsmtpd's answer, which the AUTH engine takes as a failure.
        return DECLINED, f"{user} is not free to abuse my relay"
