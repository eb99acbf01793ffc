"""dont_require_anglebrackets - accept MAIL FROM/RCPT TO addresses without <>.

Hooks: mail_pre, rcpt_pre. RFC 5321 requires `MAIL FROM:<a@b>`, but some
broken clients send `MAIL FROM:a@b`; this plugin wraps such an address in angle
brackets before it is parsed. `MAIL FROM:` with nothing is already `<>`.

Arguments: none.

Example config/plugins line:
    dont_require_anglebrackets
"""

from qpsmtpd_py.constants import DECLINED, OK
from qpsmtpd_py.plugin import Plugin


class DontRequireAnglebrackets(Plugin):
    def hook_mail_pre(self, transaction, address, params):
        return self.wrap(address)

    def hook_rcpt_pre(self, transaction, address, params):
        return self.wrap(address)

    def wrap(self, address):
        if address.startswith("<") and address.endswith(">"):
            return DECLINED
        return OK, f"<{address}>"
