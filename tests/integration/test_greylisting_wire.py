"""greylisting in the real daemon (2 children): a first attempt gets 450, the retry after black_timeout 250.

Against both stores: the SQLite file under db_dir, and a real redis-server started for the test.
"""

from __future__ import annotations

import sqlite3

import pytest
from conftest import wait_until
from redis_server import redis_server  # noqa: F401  (a fixture)

SENDER = "MAIL FROM:<a@example.com>"


def attempt(daemon) -> int:
    """One session up to MAIL; the MAIL reply code."""
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, "HELO client.example.com")
        code, _ = client.command(SENDER)
        client.command("QUIT")
        return code


def greylisted_then_accepted(daemon) -> None:
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, "HELO client.example.com")
        code, text = client.command(SENDER)
        assert (code, text) == (450, ["This mail is temporarily denied"])
    # Retries land on either child; each sees the same store. After 1 s the triplet is white.
    wait_until(lambda: attempt(daemon) == 250, timeout=20, interval=0.2, message="retry accepted")
    with daemon.connect() as client:
        client.start_mail()
        client.send("Subject: hi\r\n\r\nhello\r\n.\r\n")
        assert client.reply()[0] == 250


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_first_attempt_deferred_retry_accepted(daemon_factory, tmp_path, store, request):
    if store == "redis":
        where = f"redis {request.getfixturevalue('redis_server').url}"
    else:
        where = f"db_dir {tmp_path / 'greydb'}"
    daemon = daemon_factory(extra_plugins=[f"greylisting black_timeout 1 {where}"])
    greylisted_then_accepted(daemon)
    assert len(daemon.maildir_files()) == 1
    if store == "sqlite":
        with sqlite3.connect(tmp_path / "greydb" / "greylist.sqlite") as db:
            (value,) = db.execute("SELECT value FROM state WHERE key = ?", (str(0x7F000001),)).fetchone()
        assert value.split(":")[3] == "2"  # white: two deliveries (the retry's MAIL and the message)


def test_deny_late_defers_at_data_with_451(daemon_factory, tmp_path):
    daemon = daemon_factory(extra_plugins=[f"greylisting deny_late 1 db_dir {tmp_path / 'greydb'}"])
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, "HELO client.example.com")
        client.expect(250, SENDER)
        client.expect(250, "RCPT TO:<postmaster@test.example.org>")
        assert client.command("DATA") == (451, ["This mail is temporarily denied"])
