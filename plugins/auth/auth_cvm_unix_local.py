"""auth/auth_cvm_unix_local - check AUTH PLAIN/LOGIN passwords with a CVM module on a unix socket.

Hooks: auth-plain, auth-login. CVM (Bruce Guenter's Credential Validation
Modules: cvm-unix, cvm-pwfile, cvm-vmailmgr, cvm-mysql, ... run as
`cvm-unix cvm-local:<socket>`) answers one request per connection. The plugin
sends a CVM version 2 request: the protocol number 2, eight random bytes the
module must echo, then the credentials account (the part of the user name
before `@`), domain (the part after it; `localhost` when there is none, as
qpsmtpd) and password, each as tag, length, bytes; a NUL ends it, and the
plugin closes its writing half (a module reads until end of file).

Arguments (key/value, as qpsmtpd):
    auth/auth_cvm_unix_local cvm_socket <path> [enable_smtp yes|no] [enable_ssmtp yes|no] [timeout <seconds>]
- cvm_socket: the module's unix socket. Required.
- enable_smtp: check passwords on plain SMTP connections, which are port 25
  and 587 with STARTTLS (default no, as qpsmtpd: the plugin then declines).
- enable_ssmtp: check passwords on implicit-TLS connections (port 465 and
  `--tls-listen-address` listeners; default yes).
- timeout: seconds for the whole exchange (default 10).

Answers, from the module's result code: 0 -> OK (235); 100 (credentials
rejected) -> DENY (535; no later auth plugin is asked, as qpsmtpd); any other
code, which CVM defines as temporary, an echo that does not match, a socket
that cannot be reached or no answer within `timeout` -> DENYSOFT (454).
qpsmtpd spoke CVM version 1, decided enable_smtp/enable_ssmtp once from the
PORT environment variable (here it is per connection, as one daemon listens on
several ports), answered DENY when the socket was down and DECLINED for
temporary errors, and skipped loading when the socket did not exist at start;
here a missing socket is only warned about (the module may start later).
CRAM-MD5 is not offered: CVM modules check clear-text passwords.

Example config/plugins line:
    auth/auth_cvm_unix_local cvm_socket /var/lib/cvm/cvm-unix-local.socket enable_smtp yes
"""

import os
import stat

from twisted.internet import defer, endpoints, error, protocol

from qpsmtpd_py.constants import DECLINED, DENY, DENYSOFT, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN, OK
from qpsmtpd_py.plugin import Plugin, PluginError

PROTOCOL_VERSION = 2
CRED_ACCOUNT, CRED_DOMAIN, CRED_PASSWORD = 1, 2, 3
RESULT_OK, RESULT_PERMFAIL = 0, 100
MAX_PACKET = 512  # the protocol's limit for a request and for a response
RANDOM_BYTES = 8


def cvm_request(user: str, password: str, nonce: bytes) -> bytes:
    """A CVM v2 request for user@domain and password; ValueError if a part is over 255 bytes."""
    account, _, domain = user.partition("@")
    packet = bytearray([PROTOCOL_VERSION, len(nonce)]) + nonce
    for tag, text in ((CRED_ACCOUNT, account), (CRED_DOMAIN, domain or "localhost"), (CRED_PASSWORD, password)):
        data = text.encode("utf-8", "surrogateescape")
        if len(data) > 255:
            raise ValueError("a credential is longer than 255 bytes")
        packet += bytes([tag, len(data)]) + data
    packet.append(0)
    if len(packet) > MAX_PACKET:
        raise ValueError(f"the request is longer than {MAX_PACKET} bytes")
    return bytes(packet)


def result_code(response: bytes, nonce: bytes) -> int | None:
    """The module's result code; None for a response that is empty, or whose echo does not match on success."""
    if not response:
        return None
    code = response[0]
    if code == RESULT_OK and response[1:2 + len(nonce)] != bytes([len(nonce)]) + nonce:
        return None  # not an answer to our request
    return code


class CvmExchange(protocol.Protocol):
    """Sends the request, collects the response until the module closes the connection."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.response = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)
        self.transport.loseWriteConnection()  # cvm-local modules read the request until end of file

    def dataReceived(self, data: bytes) -> None:
        if len(self.response) + len(data) > MAX_PACKET:
            self.transport.abortConnection()
            return
        self.response += data

    def connectionLost(self, reason=None) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.response))


class AuthCvmUnixLocal(Plugin):

    def register(self, qp, *args):
        self.warn_unknown_arguments(("cvm_socket", "enable_smtp", "enable_ssmtp", "timeout", "loglevel"))
        self.socket_path = self.args.get("cvm_socket")
        if not self.socket_path:
            raise PluginError("cvm_socket <path> is required: the unix socket of the CVM module")
        self.enabled = {}
        for name, default in (("enable_smtp", "no"), ("enable_ssmtp", "yes")):
            value = (self.args.get(name) or default).lower()
            if value not in ("yes", "no"):
                raise PluginError(f"{name} must be yes or no, not {value!r}")
            self.enabled[name] = value == "yes"
        try:
            if not stat.S_ISSOCK(os.stat(self.socket_path).st_mode):
                raise PluginError(f"cvm_socket {self.socket_path} is not a unix socket")
        except FileNotFoundError:
            self.log(LOGWARN, f"cvm_socket {self.socket_path} does not exist (yet): AUTH will get 454")
        self.timeout = self.seconds_argument("timeout", 10.0, non_positive="error")
        self.register_auth_hooks()


    def enabled_here(self) -> bool:
        session = self.session
        implicit = session.tls_active and self.connection.local_port in session.server.implicit_tls_ports
        return self.enabled["enable_ssmtp" if implicit else "enable_smtp"]

    async def check(self, transaction, mechanism, user, clear, digest, ticket):
        if not self.enabled_here():
            self.log(LOGDEBUG, "skip: not enabled for this kind of connection (enable_smtp, enable_ssmtp)")
            return DECLINED
        if "\0" in user:
            return DENY, "authcvm - invalid user name"
        nonce = os.urandom(RANDOM_BYTES)
        try:
            request = cvm_request(user, clear or "", nonce)
        except ValueError as exc:
            self.log(LOGINFO, f"fail: {exc}")
            return DENY, "authcvm - user name or password too long"
        reactor = self.get_reactor()
        exchange = CvmExchange(request)
        try:
            endpoint = endpoints.UNIXClientEndpoint(reactor, self.socket_path, timeout=self.timeout)
            await endpoints.connectProtocol(endpoint, exchange).addTimeout(self.timeout, reactor)
            response = await exchange.done.addTimeout(self.timeout, reactor)
        except (error.ConnectError, defer.TimeoutError) as exc:
            if exchange.transport is not None:
                exchange.transport.abortConnection()
            self.log(LOGERROR, f"skip: CVM module at {self.socket_path}: {exc.__class__.__name__}")
            return DENYSOFT, "authcvm - the password check is unavailable"
        return self.answer(result_code(response, nonce), user)

    def answer(self, code: int | None, user: str):
        if code == RESULT_OK:
            self.log(LOGINFO, f"pass: authentication for {user}")
            return OK, f"auth success for {user}"
        if code == RESULT_PERMFAIL:
            self.log(LOGINFO, f"fail: authentication failure for {user}")
            return DENY, "auth failure (100)"
        self.log(LOGERROR, f"skip: the CVM module answered {'nothing usable' if code is None else code}")
        return DENYSOFT, f"authcvm - temporary failure ({'no answer' if code is None else code})"
