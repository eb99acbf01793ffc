"""auth/auth_imap - check AUTH PLAIN/LOGIN passwords by logging in to an IMAP server.

Hooks: auth-plain, auth-login (the IMAP server needs the clear-text password,
so CRAM-MD5 is not offered by this plugin). For each attempt the plugin
connects, reads the `* OK` greeting, sends `a1 LOGIN "<user>" "<password>"`
(RFC 3501 quoted strings) and `a2 LOGOUT`.

Arguments (positional, as qpsmtpd):
    auth/auth_imap [<host> [<port>]] [timeout <seconds>]
- host: name or address of the IMAP server, default 127.0.0.1.
- port: default 143.
- timeout: seconds for the whole exchange, connecting included (default 10).
The connection is plain IMAP: run the server on the same host or a trusted
network (the password crosses it). qpsmtpd required the host argument and
spoke IMAPS through Net::IMAP::Simple::SSL when it was installed; IMAPS is not
done here.

Answers: `a1 OK` -> OK (235); `a1 NO` (wrong password, unknown user) -> DENY
(535; no later auth plugin is asked, as qpsmtpd). A server that cannot be
reached, closes the connection, greets with anything but `* OK`, answers
`BAD`, or does not answer within `timeout` -> DENYSOFT (454); qpsmtpd answered
DENY then. A user name or password holding CR, LF or NUL cannot be sent as a
quoted string: DENY without asking the server.

Example config/plugins line:
    auth/auth_imap 127.0.0.1 143
"""

import re

from qpsmtpd_py.constants import DENY, DENYSOFT, LOGERROR, LOGINFO, LOGWARN, OK
from qpsmtpd_py.line_client import ServerUnavailable, converse
from qpsmtpd_py.plugin import Plugin, host_argument, port_argument

_UNQUOTABLE = re.compile(r"[\r\n\0]")


def quoted(text: str) -> str:
    """An IMAP quoted string (RFC 3501 4.3): backslash and double quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AuthImap(Plugin):

    def register(self, qp, *args):
        positional = list(args)
        timeout = None
        if "timeout" in positional[:-1]:
            at = positional.index("timeout")
            timeout = positional[at + 1]
            del positional[at:at + 2]
        if "loglevel" in positional[:-1]:
            at = positional.index("loglevel")
            del positional[at:at + 2]
        if len(positional) > 2:
            self.log(LOGWARN, "Ignoring additional arguments.")
        self.host = host_argument("the IMAP server", positional[0] if positional else "127.0.0.1")
        self.port = port_argument("the IMAP port", positional[1] if len(positional) > 1 else "143")
        self.args = {**self.args, "timeout": timeout} if timeout else self.args
        self.timeout = self.seconds_argument("timeout", 10.0, non_positive="error")
        self.register_auth_hooks()


    async def check(self, transaction, mechanism, user, clear, digest, ticket):
        if clear is None or _UNQUOTABLE.search(user + clear):
            self.log(LOGINFO, "fail: CR, LF or NUL in user name or password")
            return DENY, "auth_imap - invalid user name or password"
        server = f"{self.host}:{self.port}"
        try:
            status = await converse(self.get_reactor(), self.host, self.port, self.timeout,
                                    lambda client: self.login(client, user, clear))
        except ServerUnavailable as exc:
            self.log(LOGERROR, f"skip: IMAP server {exc}")
            return DENYSOFT, f"auth_imap - could not check the password at {server}"
        if status == "OK":
            self.log(LOGINFO, f"pass: {user} with {mechanism} at {server}")
            return OK, f"auth_imap/{mechanism.lower()}"
        self.log(LOGINFO, f"fail: {user} at {server}")
        return DENY, f"auth_imap - invalid password for {user} at {server}"

    async def login(self, client, user, password):
        """The status word of the LOGIN command (OK or NO); ServerUnavailable for anything else."""
        greeting = await client.read_line()
        if not greeting.upper().startswith("* OK"):
            raise ServerUnavailable(f"greeted with {greeting[:100]!r}")
        client.send_line(f"a1 LOGIN {quoted(user)} {quoted(password)}")
        while True:
            line = await client.read_line()
            tag, _, rest = line.partition(" ")
            if tag == "a1":
                break
        status = rest.split(" ", 1)[0].upper()
        if status not in ("OK", "NO"):
            raise ServerUnavailable(f"answered LOGIN with {line[:100]!r}")
        client.send_line("a2 LOGOUT")
        return status
