"""SMTP AUTH (RFC 4954): the PLAIN, LOGIN and CRAM-MD5 exchanges, as qpsmtpd's Qpsmtpd::Auth.

Mixed into SMTPSession. The exchange reads its continuation lines through
`expect_line()`: the session hands the client's next line to the waiting step
instead of dispatching it as a command, and never logs it.

Checking a password is the plugins' job: hooks `auth-plain`, `auth-login`,
`auth-cram-md5` run first, then, if none decided (DECLINED), the generic
`auth` hook. Each gets `(transaction, mechanism, user, clear_password,
password_hash, ticket)`: CRAM-MD5 gives no clear password but the client's
HMAC-MD5 digest and the challenge it was made from (`validate_password()`
checks either). OK -> 235 and the client may relay; DENYSOFT -> 454 (the
backend is down: the client should not take it as a wrong password;
qpsmtpd says 535); anything else -> 535, and after `auth_max_failures`
failures (default 3) the session is closed.

AUTH is offered only after EHLO, only for mechanisms some plugin checks, and
only over TLS unless config/tls_before_auth is 0 (qpsmtpd offered it over
plaintext unless tls_before_auth was 1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .constants import DECLINED, DENYSOFT, LOGINFO, LOGNOTICE, OK
from .hooks import HookResult

if TYPE_CHECKING:
    from .connection import Connection

MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")  # the order EHLO lists them in
DEFAULT_MAX_FAILURES = 3
_LOGIN_USERNAME = "VXNlcm5hbWU6"  # base64 "Username:"
_LOGIN_PASSWORD = "UGFzc3dvcmQ6"  # base64 "Password:"


class AuthCanceled(Exception):
    """The client answered `*`, or sent something that is not base64."""


def decode_response(text: str) -> str:
    """One client response line: `*` cancels (RFC 4954 4); otherwise base64."""
    text = text.strip()
    if text == "*":
        raise AuthCanceled("Authentication canceled")
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "surrogateescape")
    except (binascii.Error, ValueError):
        raise AuthCanceled("Authentication failed: invalid base64") from None


def encode(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogateescape")).decode("ascii")


def cram_md5_digest(secret: str, ticket: str) -> str:
    return hmac.new(secret.encode("utf-8", "surrogateescape"), ticket.encode("utf-8", "surrogateescape"),
                    hashlib.md5).hexdigest()


def validate_password(*, stored_clear: str | None = None, stored_crypt: str | None = None,
                      attempt_clear: str | None = None, attempt_hash: str | None = None,
                      ticket: str | None = None) -> bool:
    """qpsmtpd's validate_password: the stored password against what the client gave.

    A clear password is compared with the stored clear one or crypt() hash; a
    CRAM-MD5 digest needs the stored clear password (HMAC-MD5 over `ticket`).
    Comparisons take constant time.
    """
    if attempt_hash is not None and ticket is not None:
        if stored_clear is None:
            return False
        return hmac.compare_digest(cram_md5_digest(stored_clear, ticket), attempt_hash.lower())
    if attempt_clear is None:
        return False
    if stored_clear is not None:
        return hmac.compare_digest(stored_clear.encode("utf-8", "surrogateescape"),
                                   attempt_clear.encode("utf-8", "surrogateescape"))
    if stored_crypt:
        return hmac.compare_digest(unix_crypt(attempt_clear, stored_crypt), stored_crypt)
    return False


def unix_crypt(word: str, salt: str) -> str:
    """crypt(3), for the $1$/$5$/$6$ hashes of vpopmail and /etc/shadow-style files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt  # gone in Python 3.13; legacycrypt is the same code
        except ImportError:  # pragma: no cover - depends on the Python version
            import legacycrypt as crypt
    return crypt.crypt(word, salt) or ""


def offered_mechanisms(hooks) -> list[str]:
    """Mechanisms some plugin checks: its `auth-<mech>` hook, or any generic `auth` hook."""
    if "auth" in hooks:
        return list(MECHANISMS)
    return [m for m in MECHANISMS if f"auth-{m.lower()}" in hooks]


class AuthCommand:
    """The AUTH verb for SMTPSession (which provides respond, run_hooks, _then, ...)."""

    connection: Connection
    _expect: Callable[[str], Any] | None = None
    auth_failures = 0

    def auth_allowed(self) -> bool:
        """May AUTH be used now? Over TLS always; over plaintext only if tls_before_auth is 0."""
        return self.tls_active or self.config("tls_before_auth") == "0"

    def auth_capability(self) -> str | None:
        """The `AUTH ...` EHLO line, or None when AUTH is not offered."""
        if self.connection.notes.get("auth_user") or not self.auth_allowed():
            return None
        mechanisms = offered_mechanisms(self.qp.hooks)
        return f"AUTH {' '.join(mechanisms)}" if mechanisms else None

    def expect_line(self, step: Callable[[str], Any]) -> None:
        """The client's next line goes to `step`, not to the command dispatcher."""
        self._expect = step

    def do_auth(self, line: str) -> Any:
        mechanisms = offered_mechanisms(self.qp.hooks)
        if not mechanisms:
            return self._then(self.run_hooks("unrecognized_command", "auth", line), self._unrecognized_respond)
        if self.connection.notes.get("auth_user"):
            self.respond(503, "but you already said AUTH ...")
            return None
        if self.connection.hello != "ehlo":
            self.respond(503, "AUTH not defined for HELO" if self.connection.hello else "please say hello first ...")
            return None
        if not self.auth_allowed():
            self.respond(503, "SSL/TLS required before AUTH")
            return None
        if self._transaction is not None and self._transaction.sender is not None:
            self.respond(503, "AUTH not permitted during a mail transaction")  # RFC 4954 4
            return None
        code, values = self._parse("auth", line)
        if code != OK or not values or not values[0]:
            self.respond(501, values[0] if code != OK and values else "Syntax error in AUTH command")
            return None
        mechanism = values[0].upper()
        initial = values[1] if len(values) > 1 else None
        if mechanism not in mechanisms:
            self.respond(504, f"Unimplemented authentication mechanism: {mechanism}")
            return None
        start = {"PLAIN": self._auth_plain, "LOGIN": self._auth_login, "CRAM-MD5": self._auth_cram_md5}
        return self._guarded(lambda: start[mechanism](initial))

    # -- the exchanges: each step returns None or a Deferred, like any command ----------
    def _guarded(self, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except AuthCanceled as exc:
            self.respond(501, str(exc))
            return None

    def _next_line(self, step: Callable[[str], Any]) -> None:
        self.expect_line(lambda line: self._guarded(lambda: step(line)))

    def _auth_plain(self, initial: str | None) -> Any:
        if initial is None or initial == "=":  # "=" is an empty initial response (RFC 4954 4)
            self.respond(334, "")
            self._next_line(self._plain_response)
            return None
        return self._plain_response(initial)

    def _plain_response(self, text: str) -> Any:
        authzid, _, rest = decode_response(text).partition("\0")
        user, _, password = rest.partition("\0")
        if not user:
            self.respond(535, f"Authentication invalid ({authzid})" if authzid else "Authentication invalid")
            return None
        if authzid and authzid != user:
            self.respond(535, f"Authentication invalid for {user}")  # no acting as someone else
            return None
        return self._check("PLAIN", user, password, None, None)

    def _auth_login(self, initial: str | None) -> Any:
        if initial is None:
            self.respond(334, _LOGIN_USERNAME)
            self._next_line(self._login_username)
            return None
        return self._login_username(initial)

    def _login_username(self, text: str) -> None:
        user = decode_response(text)
        self.respond(334, _LOGIN_PASSWORD)
        self._next_line(lambda line: self._check("LOGIN", user, decode_response(line), None, None))

    def _auth_cram_md5(self, initial: str | None) -> Any:
        if initial is not None:
            self.respond(501, "CRAM-MD5 takes no initial response")
            return None
        ticket = f"<{int.from_bytes(os.urandom(4), 'big')}.{int(time.time())}@{self.config('me')}>"
        self.respond(334, encode(ticket))
        self._next_line(lambda line: self._cram_md5_response(line, ticket))
        return None

    def _cram_md5_response(self, text: str, ticket: str) -> Any:
        user, _, digest = decode_response(text).rpartition(" ")
        if not user or len(digest) != 32:
            self.respond(504, "Invalid authentication string")
            return None
        return self._check("CRAM-MD5", user, None, digest, ticket)

    # -- asking the plugins -------------------------------------------------------------
    def _check(self, mechanism: str, user: str, password: str | None, digest: str | None,
               ticket: str | None) -> Any:
        args = (mechanism.lower(), user, password, digest, ticket)

        def specific_done(result: HookResult) -> Any:
            if result.code != DECLINED:
                return self._auth_respond(mechanism, user, result)
            # Nobody decided: the reply keeps the last message given (authdeny's, say).
            return self._then(self.run_hooks("auth", *args), lambda generic: self._auth_respond(
                mechanism, user, generic if generic.code != DECLINED or generic.messages else result))

        return self._then(self.run_hooks(f"auth-{mechanism.lower()}", *args), specific_done)

    def _auth_respond(self, mechanism: str, user: str, result: HookResult) -> None:
        message = f" - {result.message}" if result.message else ""
        if result.code == OK:
            notes = self.connection.notes
            notes["auth_user"], notes["auth_mechanism"] = user, mechanism
            notes.pop("naughty", None)
            self.connection.relay_client = True
            self.log(LOGINFO, f"authenticated {user} with {mechanism}")
            self.respond(235, f"{mechanism} authentication successful for {user}{message}")
            return
        self.auth_failures += 1
        self.connection.notes["karma"] = self.connection.notes.get("karma", 0) - 1
        self.log(LOGNOTICE, f"AUTH {mechanism} failed for {user} ({self.auth_failures} this session)")
        if result.code == DENYSOFT:
            self.respond(454, f"{mechanism} authentication temporarily failed for {user}{message}")
        else:
            self.respond(535, f"{mechanism} authentication failed for {user} from "
                              f"{self.connection.remote_ip}{message}")
        limit = self.config("auth_max_failures")
        limit_value = int(limit) if limit else DEFAULT_MAX_FAILURES
        if limit_value and self.auth_failures >= limit_value:
            self.respond(421, "Too many failed authentication attempts, closing connection")
            self.disconnect()
