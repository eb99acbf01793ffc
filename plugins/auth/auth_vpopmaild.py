"""auth/auth_vpopmaild - check AUTH PLAIN/LOGIN passwords by logging in to vpopmaild.

Hooks: auth-plain, auth-login (vpopmaild checks a clear-text password, so
CRAM-MD5 is not offered by this plugin). For each attempt the plugin connects
to vpopmaild (vpopmail's administration daemon), reads its `+OK` greeting,
sends `login <user> <password>` and reads the answer: `+OK` (or the
multi-line `+OK+`) means the password is right.

Arguments (key/value, as qpsmtpd):
    auth/auth_vpopmaild [host <name or address>] [port <number>] [timeout <seconds>]
- host: default localhost; port: default 89.
- timeout: seconds for the whole exchange, connecting included (default 10).

Answers: `+OK` -> OK (235); `-ERR` (wrong password, unknown user) ->
DECLINED, as qpsmtpd, so a later auth plugin may still accept the user (535
if none does). vpopmaild unreachable, closing the connection, a greeting that
is not `+OK`, or no answer within `timeout` -> DENYSOFT (454, "try again
later"); qpsmtpd declined then, and the client was told its password was wrong.
A user name or password with a space or a control character cannot be sent
in vpopmaild's one-line command: DECLINED without asking it.

Example config/plugins line:
    auth/auth_vpopmaild host 127.0.0.1 port 89
"""

import re

from qpsmtpd_py.constants import DECLINED, DENYSOFT, LOGERROR, LOGINFO, LOGNOTICE, OK
from qpsmtpd_py.line_client import ServerUnavailable, converse
from qpsmtpd_py.plugin import Plugin, port_argument

_UNSENDABLE = re.compile(r"[\s\x00-\x1f\x7f]")


class AuthVpopmaild(Plugin):

    def register(self, qp, *args):
        self.warn_unknown_arguments(("host", "port", "timeout", "loglevel"))
        self.host = self.args.get("host") or "localhost"
        self.port = port_argument("port", self.args.get("port") or "89")
        self.timeout = self.seconds_argument("timeout", 10.0, non_positive="error")
        self.register_auth_hooks()


    async def check(self, transaction, mechanism, user, clear, digest, ticket):
        if not clear or _UNSENDABLE.search(user + clear):
            self.log(LOGINFO, "skip: empty, or a space or control character in user name or password")
            return DECLINED, "auth_vpopmaild - invalid user name or password"
        try:
            answer = await converse(self.get_reactor(), self.host, self.port, self.timeout,
                                    lambda client: self.login(client, user, clear))
        except ServerUnavailable as exc:
            self.log(LOGERROR, f"skip: vpopmaild {exc}")
            return DENYSOFT, "auth_vpopmaild - the password server is unavailable"
        if answer.startswith("+OK"):
            self.log(LOGINFO, f"pass: {user} with {mechanism}")
            return OK, "auth_vpopmaild"
        self.log(LOGNOTICE, f"fail: {answer[:200]}")
        return DECLINED, "auth_vpopmaild - wrong user name or password"

    async def login(self, client, user, password):
        greeting = await client.read_line()
        if not greeting.startswith("+OK"):
            raise ServerUnavailable(f"greeted with {greeting[:100]!r}, not +OK")
        client.send_line(f"login {user} {password}")
        return await client.read_line()
