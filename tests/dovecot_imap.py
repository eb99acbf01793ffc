"""A private Dovecot IMAP server for the auth/auth_imap tests (Debian package dovecot-imapd).

`dovecot_imap(users)` starts Dovecot (tests/dovecot_server.py) with its config,
state and sockets in a temporary directory, IMAP on a free loopback port, and a
passwd-file of `users` ({name: password}); it yields the port and stops
Dovecot afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dovecot_server import DovecotServer, dovecot_available

AVAILABLE = dovecot_available("imap")

# Plain-text logins without TLS, and no delay after a failed one (the tests fail logins on purpose).
SETTINGS = "disable_plaintext_auth = no\nauth_failure_delay = 0"


@contextlib.contextmanager
def dovecot_imap(users: dict[str, str]) -> Iterator[int]:
    server = DovecotServer("imap", users, "imap-auth", SETTINGS)
    try:
        yield server.start().port
    finally:
        server.stop()
