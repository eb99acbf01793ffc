"""auth/auth_ldap_bind - check AUTH PLAIN/LOGIN passwords by binding to an LDAP directory.

Hooks: auth-plain, auth-login. For each attempt the plugin searches the
directory anonymously, under `ldap_base`, for an entry whose
`ldap_auth_filter_attr` equals the user name's local part (before `@`,
lower-cased, as qpsmtpd), then binds as that entry's DN with the password
the client gave: a successful bind means the password is right. The LDAP
library (ldap3, pure Python) blocks, so each check runs in a thread of the
reactor's pool; the daemon keeps serving other sessions meanwhile.

Settings, from config/ldap (`key value` lines), each overridden by the same
key/value pair as plugin arguments:
- ldap_base: the search base, e.g. `dc=example,dc=com`. Required.
- ldap_host: default 127.0.0.1; ldap_port: default 389.
- ldap_timeout: seconds for connecting and for each answer (default 5).
- ldap_auth_filter_attr: the attribute holding the user name (default uid).

Answers: a successful bind -> OK (235). No such entry, or a bind refused
for bad credentials -> DECLINED, as qpsmtpd, so a later auth plugin may still
accept the user (535 if none does). An empty password is refused without
asking (an LDAP bind with an empty password is an anonymous bind, which
succeeds). The directory unreachable, an error in the search, or no answer
within ldap_timeout -> DENYSOFT (454); qpsmtpd declined then, and the client
was told its password was wrong. A missing ldap_base stops start-up (qpsmtpd
declined every attempt).

Example config/plugins line:
    auth/auth_ldap_bind ldap_base dc=example,dc=com ldap_host ldap.example.com
"""

import math
import re

from twisted.internet import defer, threads

from qpsmtpd_py.constants import DECLINED, DENYSOFT, LOGERROR, LOGINFO, OK
from qpsmtpd_py.plugin import Plugin, PluginError, host_argument, port_argument

SETTINGS = ("ldap_host", "ldap_port", "ldap_base", "ldap_timeout", "ldap_auth_filter_attr")
_ATTRIBUTE = re.compile(r"^[A-Za-z][-A-Za-z0-9;]*$")
INVALID_CREDENTIALS = "invalidCredentials"


class DirectoryUnavailable(Exception):
    """The directory could not be asked: unreachable, timed out, or an error answer."""


class AuthLdapBind(Plugin):

    def register(self, qp, *args):
        settings = {}
        for line in qp.config_list("ldap"):
            key, _, value = line.partition(" ")
            settings[key.strip()] = value.strip()
        settings.update({key: value for key, value in self.args.items() if key in SETTINGS})
        self.warn_unknown_arguments((*SETTINGS, "loglevel"))
        self.base = settings.get("ldap_base")
        if not self.base:
            raise PluginError("ldap_base is required: add `ldap_base dc=example,dc=com` to config/ldap "
                              "or to the plugin's arguments")
        self.host = host_argument("ldap_host", settings.get("ldap_host") or "127.0.0.1")
        self.port = port_argument("ldap_port", settings.get("ldap_port") or "389")
        self.attribute = settings.get("ldap_auth_filter_attr") or "uid"
        if not _ATTRIBUTE.match(self.attribute):
            raise PluginError(f"ldap_auth_filter_attr must be an attribute name, not {self.attribute!r}")
        self.args = {**self.args, "ldap_timeout": settings.get("ldap_timeout") or "5"}
        self.timeout = self.seconds_argument("ldap_timeout", 5.0, non_positive="error")
        self.register_auth_hooks()


    async def check(self, transaction, mechanism, user, clear, digest, ticket):
        if not clear:
            self.log(LOGINFO, "fail: empty password")
            return DECLINED, "authldap - wrong username or password"
        name = user.lower().split("@")[0]
        reactor = self.get_reactor()
        try:
            # The library's own time-outs end the thread; this one stops the wait if they do not.
            verdict = await threads.deferToThreadPool(reactor, reactor.getThreadPool(), self.bind_as, name,
                                                      clear).addTimeout(self.timeout * 3, reactor)
        except (DirectoryUnavailable, defer.TimeoutError) as exc:
            self.log(LOGERROR, f"skip: LDAP {self.host}:{self.port}: {exc or 'timed out'}")
            return DENYSOFT, "authldap - temporary auth error"
        if verdict:
            self.log(LOGINFO, f"pass: {user} auth success")
            return OK, "authldap"
        self.log(LOGINFO, f"fail: {verdict.reason} for {user}")
        return DECLINED, "authldap - wrong username or password"

    def bind_as(self, name: str, password: str) -> "Verdict":
        """In a thread: search the user's DN anonymously, then bind as it. Raises DirectoryUnavailable."""
        import ldap3
        from ldap3.core.exceptions import LDAPException
        from ldap3.utils.conv import escape_filter_chars

        server = ldap3.Server(self.host, port=self.port, connect_timeout=self.timeout)
        receive_timeout = math.ceil(self.timeout)  # ldap3 packs it into a socket option: whole seconds
        try:
            with ldap3.Connection(server, receive_timeout=receive_timeout, raise_exceptions=False) as search:
                found = search.search(self.base, f"({self.attribute}={escape_filter_chars(name)})",
                                      search_scope=ldap3.SUBTREE, attributes=[], size_limit=1,
                                      time_limit=receive_timeout)
                if not found and search.result.get("description") not in ("success", "sizeLimitExceeded"):
                    raise DirectoryUnavailable(f"search failed: {search.result.get('description')}")
                if not search.entries:
                    return Verdict(False, "user not found")
                dn = search.entries[0].entry_dn
            bind = ldap3.Connection(server, user=dn, password=password, receive_timeout=receive_timeout,
                                    raise_exceptions=False)
            try:
                if bind.bind():
                    return Verdict(True, "bound")
                if bind.result.get("description") == INVALID_CREDENTIALS:
                    return Verdict(False, "bind refused")
                raise DirectoryUnavailable(f"bind failed: {bind.result.get('description')}")
            finally:
                bind.unbind()
        except LDAPException as exc:
            raise DirectoryUnavailable(f"{exc.__class__.__name__}: {exc}") from None


class Verdict:
    """A bind's outcome: true when the password is right; `reason` for the log."""

    def __init__(self, ok: bool, reason: str) -> None:
        self.ok, self.reason = ok, reason

    def __bool__(self) -> bool:
        return self.ok
