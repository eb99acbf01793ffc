"""rcpt_ok - accept recipients for our own domains; refuse relaying for others.

Hook: rcpt. Load it last among the rcpt plugins: it decides for every
recipient no earlier plugin decided for.

A recipient is accepted (OK) when:
- the client is immune: a relay client (see `relay`), a whitelisted host or sender;
- its domain is `config/me`, or listed in `config/rcpthosts` (a line starting
  with a dot matches every subdomain: `.example.com`), or a key of qmail's
  compiled `config/morercpthosts.cdb`;
- it is a bare `<postmaster>` (no domain; RFC 5321 4.5.1): it means `postmaster@me`.
Anything else gets `550 Relaying denied (#5.7.1)`.

Arguments: none (the standard `loglevel` is understood).

Example config/plugins line:
    rcpt_ok
"""

from qpsmtpd_py.constants import DENY, LOGINFO, OK
from qpsmtpd_py.plugin import Plugin


class RcptOk(Plugin):
    def hook_rcpt(self, transaction, recipient, params):
        if self.is_immune():
            return OK
        host = self.rcpt_host(recipient)
        if host is None:
            return OK
        if self.is_in_rcpthosts(host) or self.is_in_morercpthosts(host):
            return OK
        return DENY, "Relaying denied (#5.7.1)"

    def rcpt_host(self, recipient):
        if recipient.host:
            return recipient.host.lower()
        if recipient.user and recipient.user.lower() in ("postmaster", "abuse"):
            return (self.qp.config("me") or "").lower()
        return None

    def is_in_rcpthosts(self, host):
        for allowed in [self.qp.config("me") or ""] + self.qp.config_list("rcpthosts"):
            allowed = allowed.strip().lower()
            if host == allowed:
                self.log(LOGINFO, f"pass: {host} in rcpthosts")
                return True
            if allowed.startswith(".") and host.endswith(allowed):
                self.log(LOGINFO, f"pass: {host} in rcpthosts as {allowed}")
                return True
        return False

    def is_in_morercpthosts(self, host):
        if host.encode() in self.qp.config_reader.map("morercpthosts"):
            self.log(LOGINFO, f"pass: {host} found in morercpthosts")
            return True
        self.log(LOGINFO, f"fail: {host} not in morercpthosts")
        return False
