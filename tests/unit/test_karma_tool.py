"""karma_tool: list, search, capture, release, prune, and importing qpsmtpd's DBM files (written by Perl)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis_server import redis_server  # noqa: F401  (a fixture)

from qpsmtpd_py.karma_tool import plugin_store_args

NOW = int(time.time())
DAY = 86400


def karma_tool(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "qpsmtpd_py.karma_tool", *args], capture_output=True, text=True,
                          timeout=60)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def rows(db: Path, name: str = "karma") -> dict[str, str]:
    with sqlite3.connect(db / f"{name}.sqlite") as connection:
        return dict(connection.execute("SELECT key, value FROM state"))


def write_dbm(path: Path, module: str, entries: dict[str, str]) -> None:
    """A DBM file as qpsmtpd's Perl wrote it."""
    if not shutil.which("perl"):
        pytest.skip("perl is not installed")
    script = (f"use {module}; use Fcntl; my %db; tie(%db, '{module}', shift @ARGV, O_CREAT|O_RDWR, 0640) or die $!;"
              " while (@ARGV) { my $k = shift @ARGV; $db{$k} = shift @ARGV } untie %db;")
    done = subprocess.run(["perl", "-e", script, str(path), *[x for kv in entries.items() for x in kv]],
                          capture_output=True, text=True)
    if done.returncode and "Can't locate" in done.stderr:
        pytest.skip(f"Perl's {module} is not installed")
    assert done.returncode == 0, done.stderr


def test_capture_list_search_and_release(tmp_path):
    db = str(tmp_path / "db")
    karma_tool("--db-dir", db, "capture", "192.0.2.1")
    karma_tool("--db-dir", db, "capture", "2001:db8::1")
    captured = rows(tmp_path / "db")[str(0xC0000201)]
    listing = karma_tool("--db-dir", db, "list").stdout
    naughty = karma_tool("--db-dir", db, "search", "naughty").stdout
    karma_tool("--db-dir", db, "release", "192.0.2.1")
    one = karma_tool("--db-dir", db, "search", "192.0.2.1").stdout
    nice = karma_tool("--db-dir", db, "search", "nice").stdout

    assert abs(int(captured.split(":")[0]) - time.time()) < 600 and captured.endswith(":1:0:0")
    assert "192.0.2.1 " in listing and "2001:db8::1 " in listing
    assert "192.0.2.1 " in naughty
    assert rows(tmp_path / "db")[str(0xC0000201)] == "0:0:0:0"
    assert "192.0.2.1 " in one and "2001:db8::1" not in one
    assert "192.0.2.1" not in nice


def test_prune_deletes_old_penalties_and_keeps_recent_ones(tmp_path):
    db = tmp_path / "db"
    karma_tool("--db-dir", str(db), "capture", "192.0.2.1")
    with sqlite3.connect(db / "karma.sqlite") as connection:
        connection.execute("INSERT INTO state VALUES (?, ?, NULL)", (str(0xC0000202), f"{NOW - 10 * DAY}:3:0:3"))
    done = karma_tool("--db-dir", str(db), "prune", "7")
    assert "pruned 1 of 2 DB entries" in done.stdout
    assert list(rows(db)) == [str(0xC0000201)]


def test_bad_ip_is_refused(tmp_path):
    done = karma_tool("--db-dir", str(tmp_path), "capture", "not-an-ip", check=False)
    assert done.returncode == 2 and "not an IP address: not-an-ip" in done.stderr


def test_import_karma_db_file(tmp_path):
    write_dbm(tmp_path / "karma.dbm", "DB_File", {str(0xC0000201): f"{NOW}:2:0:2", str(0xC0000202): "0:0:5:5"})
    done = karma_tool("--db-dir", str(tmp_path / "db"), "import", str(tmp_path / "karma.dbm"))
    assert "imported 2 entries, skipped 0" in done.stdout
    assert rows(tmp_path / "db") == {str(0xC0000201): f"{NOW}:2:0:2", str(0xC0000202): "0:0:5:5"}


def test_import_old_gdbm_greylist_converts_dotted_keys_and_skips_stale(tmp_path):
    write_dbm(tmp_path / "denysoft_greylist.dbm", "GDBM_File", {
        "192.0.2.1:a@example.com": f"{NOW - 60}:1:0:0",
        str(0xC0000202): f"{NOW - DAY}:1:2:7",
        str(0xC0000203): f"{NOW - 40 * DAY}:1:0:3",  # older than white_timeout
    })
    done = karma_tool("--db-dir", str(tmp_path / "db"), "import", str(tmp_path / "denysoft_greylist.dbm"))
    assert "imported 2 entries, skipped 1" in done.stdout
    assert rows(tmp_path / "db", "greylist") == {f"{0xC0000201}:a@example.com": f"{NOW - 60}:1:0:0",
                                                 str(0xC0000202): f"{NOW - DAY}:1:2:7"}


def test_import_into_redis_with_a_ttl_from_white_timeout(tmp_path, redis_server):  # noqa: F811
    write_dbm(tmp_path / "greylist.dbm", "DB_File", {str(0xC0000201): f"{NOW - DAY}:1:0:2"})
    karma_tool("--redis", redis_server.url, "import", str(tmp_path / "greylist.dbm"), "--white-timeout", str(2 * DAY))
    cli = [shutil.which("redis-cli") or "redis-cli", "-p", str(redis_server.port)]
    value = subprocess.run([*cli, "GET", "greylist:3221225985"], capture_output=True, text=True).stdout.strip()
    ttl = int(subprocess.run([*cli, "TTL", "greylist:3221225985"], capture_output=True, text=True).stdout)
    assert value == f"{NOW - DAY}:1:0:2" and DAY - 600 < ttl <= DAY


def test_unreadable_file_is_reported(tmp_path):
    (tmp_path / "karma.dbm").write_text("not a database")
    done = karma_tool("--db-dir", str(tmp_path / "db"), "import", str(tmp_path / "karma.dbm"), check=False)
    assert done.returncode == 1 and "cannot read" in done.stderr


def test_store_is_found_from_the_plugins_line():
    lines = ["relay", "karma penalty_days 2 db_dir /srv/karma", "greylisting redis 10.0.0.5"]
    assert plugin_store_args(lines, "karma") == {"db_dir": "/srv/karma"}
    assert plugin_store_args(lines, "greylisting") == {"redis": "10.0.0.5"}
    assert plugin_store_args(lines, "dnsbl") == {}
