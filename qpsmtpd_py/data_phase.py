"""The DATA phase of a session: receiving the message, trace headers, queueing.

A mixin of SMTPSession (smtp.py), split out so each file holds one part of the
data path: smtp.py the command dialogue, this file what happens from `DATA` to
the reply after the message (data -> data_headers_end -> data_post_headers ->
Received/Authentication-Results -> data_post -> queue_pre -> queue -> queue_post).
"""

from __future__ import annotations

import email.utils
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .constants import (
    DECLINED,
    DENY,
    DENY_DISCONNECT,
    DENYSOFT,
    DENYSOFT_DISCONNECT,
    DONE,
    LOGERROR,
    OK,
)
from .data_reader import DataReader
from .hooks import HookResult
from .trace_headers import authentication_results, clean_authentication_results, received_value

if TYPE_CHECKING:
    from .smtp import SMTPSession

# _feed_data's answer when the buffer holds no complete line yet.
NEED_MORE = object()


class DataPhase:
    """DATA, end of data and queueing, for SMTPSession."""

    def do_data(self: SMTPSession, line: str) -> Any:
        return self._then(self.run_hooks("data"), self._data_respond)

    def _data_respond(self: SMTPSession, result: HookResult) -> None:
        code = result.code
        if code == DONE:
            return
        if code in (DENY, DENY_DISCONNECT):
            self.respond_result(554, result, "Message denied")
        elif code in (DENYSOFT, DENYSOFT_DISCONNECT):
            self.respond_result(451, result, "Message denied temporarily")
        if code in (DENY, DENYSOFT):
            self.reset_transaction()
            return
        if code in (DENY_DISCONNECT, DENYSOFT_DISCONNECT):
            self.disconnect()
            return
        txn = self._transaction
        if txn is None or txn.sender is None:
            self.respond(503, "MAIL first")
            return
        if not txn.recipients:
            self.respond(503, "RCPT first")
            return
        self.respond(354, "go ahead")
        self._reader = DataReader(txn, self.server.data_line_limit, self.server.databytes)

    def _feed_data(self: SMTPSession, reader: DataReader) -> Any:
        consumed, headers_ended = reader.feed(self._buffer)
        del self._buffer[:consumed]
        if consumed == 0 and not reader.complete:
            return NEED_MORE
        outcome = self._then(self.run_hooks("data_headers_end"), self._headers_end_respond) \
            if headers_ended and reader.storing else None
        if reader.complete:
            self._reader = None
            return self._then(outcome, lambda _: None if self._closing else self._end_of_data(reader))
        return outcome

    def _headers_end_respond(self: SMTPSession, result: HookResult) -> None:
        if result.code == DENY_DISCONNECT:
            self.respond_result(554, result, "Message denied")
        elif result.code == DENYSOFT_DISCONNECT:
            self.respond_result(421, result, "Message denied temporarily")
        else:
            return
        self._reader = None
        self.disconnect()

    def _end_of_data(self: SMTPSession, reader: DataReader) -> Any:
        if reader.rejection is not None:
            self.respond(*reader.rejection)
            self.reset_transaction()
            return None
        if reader.too_big:
            self.log(LOGERROR, f"Message too big: size: {reader.size} (max size: {self.server.databytes})")
            self.respond(552, "Message too big!")
            self.reset_transaction()
            return None
        if reader.line_too_long:
            self.respond(552, f"Message has a line over {self.server.data_line_limit} bytes")
            self.reset_transaction()
            return None
        if reader.bare_newline and self.server.forbid_bare_newline:
            self.respond(554, "Message contains a bare CR or LF (RFC 5321 2.3.8); use CRLF line endings")
            self.reset_transaction()
            return None
        if reader.bare_newline:
            self.transaction.notes["bare_newline"] = 1
        return self._then(self.run_hooks("data_post_headers"), self._add_trace_headers)

    def _add_trace_headers(self: SMTPSession, _: Any) -> Any:
        txn = self.transaction
        assert txn.header is not None
        authserv_id = self.config("me-auth-results")
        if authserv_id != "none":
            clean_authentication_results(txn.header)
        proto = "ESMTP" if self.connection.hello == "ehlo" else "SMTP"
        ssl_info = ""
        if self.connection.tls_cipher:
            if proto == "ESMTP":
                proto += "S"  # RFC 3848
            ssl_info = f"({self.connection.tls_cipher} encrypted)"
        auth_user = self.connection.notes.get("auth_user")
        auth_text = ""
        if auth_user:
            mechanism = self.connection.notes.get("auth_mechanism", "")
            if proto.startswith("ESMTP"):
                proto += "A"
            auth_text = f"(smtp-auth username {auth_user}, mechanism {mechanism})\n"
        return self._then(self.run_hooks("received_line", proto, auth_text, ssl_info),
                          lambda result: self._add_received(result, proto, ssl_info, authserv_id))

    def _add_received(self: SMTPSession, result: HookResult, proto: str, ssl_info: str, authserv_id: str | None) -> Any:
        txn = self.transaction
        assert txn.header is not None
        if result.code == OK and result.messages:
            value = "\n".join(m for m in result.messages if isinstance(m, str))
        else:
            value = received_value(self.connection, self.config("me") or "", self.qp.software,
                                   self.qp.version, proto, ssl_info, rfc2822_now())
        txn.header.add("Received", value, 0)
        if authserv_id != "none":
            txn.header.add("Authentication-Results",
                           authentication_results(authserv_id or self.config("me") or "",
                                                  self.connection.notes, self.auth_results()), 0)
        return self._then(self.run_hooks("data_post"), self._data_post_respond)

    def _data_post_respond(self: SMTPSession, result: HookResult) -> Any:
        code = result.code
        if code == DONE:
            return None
        if code in (DENY, DENY_DISCONNECT):
            self.respond_result(552, result, "Message denied")
        elif code in (DENYSOFT, DENYSOFT_DISCONNECT):
            self.respond_result(452, result, "Message denied temporarily")
        else:
            return self._then(self.run_hooks("queue_pre"), self._queue_pre_respond)
        if code in (DENY_DISCONNECT, DENYSOFT_DISCONNECT):
            self.disconnect()
        else:
            self.reset_transaction()
        return None

    def _queue_pre_respond(self: SMTPSession, result: HookResult) -> Any:
        if result.code == DONE:
            return None
        if result.code not in (OK, DECLINED):
            # qpsmtpd stops here without a reply, and the client waits for its timeout.
            self.log(LOGERROR, "pre plugin returned illegal value")
            self.respond(451, "Queuing declined or disabled; try again later")
            self.reset_transaction()
            return None
        return self._then(self.run_hooks("queue"), self._queue_respond)

    def _queue_respond(self: SMTPSession, result: HookResult) -> Any:
        self.reset_transaction()
        code = result.code
        if code == DONE:
            return None
        if code == OK:
            self.respond_result(250, result, "Queued")
        elif code == DENY:
            self.respond_result(552, result, "Message denied")
        elif code == DENYSOFT:
            self.respond_result(452, result, "Message denied temporarily")
        else:
            self.respond_result(451, result, "Queuing declined or disabled; try again later")
        return self._then(self.run_hooks("queue_post"), self._queue_post_respond)

    def _queue_post_respond(self: SMTPSession, result: HookResult) -> None:
        if result.code not in (OK, DECLINED) and result.messages:
            self.log(LOGERROR, " ".join(str(m) for m in result.messages))


_date_cache: list = [0, ""]


def rfc2822_now() -> str:
    """`Thu, 26 Nov 2026 01:12:29 +0000`: English names whatever the locale; once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = email.utils.format_datetime(datetime.fromtimestamp(now).astimezone())
    return _date_cache[1]
