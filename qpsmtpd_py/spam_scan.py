"""What the spam filter plugins (spamassassin, dspam) share, on top of virus_scan.

Their base class is `SpamFilterPlugin`, a `virus_scan.ScannerPlugin` (at most
`max_scans` scans at once per child, a `timeout` for the wait plus the scan,
`defer_on_error`), with two differences: a scan that gives no verdict defers
the message by default (451: qpsmtpd either hung on a stuck spamd or let the
message through unscanned), and the reply says what could not be checked.

Both filters read the message as qpsmtpd hands it to them: an
`X-Envelope-From: <sender>` line, the header, a blank line, then the body
streamed from the spool (`message_head`). Both ask for a scan on behalf of a
user name, by default the user the daemon runs as (`process_user`).
"""

from __future__ import annotations

import os
import pwd
from typing import Any

from .constants import DECLINED, DENYSOFT, LOGERROR, LOGWARN
from .virus_scan import ScannerPlugin


class SpamFilterPlugin(ScannerPlugin):
    """Base of spamassassin and dspam: call `setup_limits(self.args, defer_default=True)`."""

    def scan_failed(self, reason: str) -> int | tuple[int, str]:
        if self.defer_on_error:
            self.log(LOGERROR, f"no verdict, deferring: {reason}")
            return DENYSOFT, f"Unable to check the message for spam ({reason}), try again later"
        self.log(LOGWARN, f"no verdict, message passes unchecked: {reason}")
        return DECLINED


def message_head(transaction: Any) -> bytes:
    """`X-Envelope-From: <sender>`, the header and the blank line, LF line ends."""
    sender = transaction.sender.format() if transaction.sender is not None else "<>"
    return (f"X-Envelope-From: {sender}\n".encode("utf-8", "surrogateescape")
            + transaction.header_bytes() + b"\n")


_user_names: dict[int, str] = {}


def process_user() -> str:
    """The effective user's name (looked up once per uid: a name service may be slow)."""
    uid = os.geteuid()
    if uid not in _user_names:
        try:
            _user_names[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _user_names[uid] = str(uid)
    return _user_names[uid]
