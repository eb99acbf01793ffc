"""Connection: what is known about one TCP session, from accept to close."""

from __future__ import annotations

import itertools
import os
from typing import Any

_session_counter = itertools.count(1)


def strip_mapped(ip: str) -> str:
    """`::ffff:192.0.2.1` -> `192.0.2.1`: IPv4 clients on a `[::]` listener look like IPv4."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


class Connection:
    """Per-connection state; plugins keep their own data in `notes`."""

    __slots__ = ("id", "remote_ip", "remote_port", "remote_host", "remote_info", "local_ip",
                 "local_port", "hello", "hello_host", "relay_client", "notes", "tls_cipher")

    def __init__(self, remote_ip: str = "", remote_port: int = 0, local_ip: str = "", local_port: int = 0,
                 remote_host: str | None = None) -> None:
        # `<pid>.<n>` starts every log line of this session (see log.py).
        self.id = f"{os.getpid()}.{next(_session_counter)}"
        self.remote_ip = strip_mapped(remote_ip)
        self.remote_port = remote_port
        self.local_ip = strip_mapped(local_ip)
        self.local_port = local_port
        # qpsmtpd shows `[ip]` when it knows no host name for the client.
        self.remote_host = remote_host or f"[{self.remote_ip}]"
        self.remote_info = self.remote_host
        self.hello: str | None = None  # "helo" or "ehlo" once the client greeted
        self.hello_host: str | None = None
        self.relay_client = False
        self.notes: dict[str, Any] = {}
        self.tls_cipher: str | None = None

    def reset_greeting(self) -> None:
        """Forget HELO/EHLO (after STARTTLS, RFC 3207 4.2)."""
        self.hello = None
        self.hello_host = None

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.remote_ip}:{self.remote_port}>"
