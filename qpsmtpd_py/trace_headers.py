"""Trace headers added at end of DATA: Received and Authentication-Results.

Formats are qpsmtpd's (reference §6) so log tools and downstream filters that
parse them keep working; the software name says qpsmtpd-py.
"""

from __future__ import annotations

import re
from typing import Any

from .connection import Connection
from .header import MessageHeader

_DKIM_H_TAG = re.compile(r"(?:^|;)\s*h\s*=\s*([^;]*)", re.IGNORECASE)


def received_value(connection: Connection, me: str, software: str, version: str, proto: str,
                   ssl_info: str, date: str) -> str:
    return (f"from {connection.remote_info} (HELO {connection.hello_host}) ({connection.remote_ip})\n"
            f" by {me} ({software}/{version}) with {proto} {ssl_info}; {date}")


def authentication_results(authserv_id: str, connection_notes: dict[str, Any], results: list[str]) -> str:
    parts = [authserv_id]
    user = connection_notes.get("auth_user")
    if user:
        mechanism = str(connection_notes.get("auth_mechanism", "")).lower()
        parts.append(f"auth=pass ({mechanism}) smtp.auth={user}")
    else:
        parts.append("auth=none")
    parts.extend(results)
    return "; ".join(parts)


def clean_authentication_results(header: MessageHeader) -> None:
    """Rename foreign Authentication-Results so downstream trusts only ours (RFC 8601 5).

    Left alone when a DKIM signature covers them: renaming would break it.
    """
    if "Authentication-Results" not in header:
        return
    for signature in header.get_all("DKIM-Signature"):
        match = _DKIM_H_TAG.search(signature.replace("\n", " "))
        if match and "authentication-results" in match.group(1).lower():
            return
    for value in header.get_all("Authentication-Results"):
        header.add("Original-Authentication-Results", value)
    header.delete("Authentication-Results")
