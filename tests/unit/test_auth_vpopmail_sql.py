"""auth/auth_vpopmail_sql against a private MariaDB (tests/mariadb_server.py), on a fresh reactor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from auth_smtp import auth_reply
from harness import make_qp
from mariadb_server import AVAILABLE, DB_PASSWORD, DB_USER, mariadb_server
from reactor_helpers import free_port, run

from qpsmtpd_py.auth import unix_crypt
from qpsmtpd_py.plugin import plugin_class

PLUGINS = Path(__file__).parents[2] / "plugins"


@pytest.fixture(scope="module")
def database():
    if not AVAILABLE:
        pytest.skip("mariadb-server (Debian) is not installed")
    with mariadb_server() as server:
        server.add_user("clear", "example.com", unix_crypt("clear pw", "$1$saltsalt"), "clear pw")
        server.add_user("hashed", "example.com", unix_crypt("hashed pw", "$6$saltsalt"), None)
        server.add_user("empty", "example.com", "", "")
        yield server


def sql_qp(tmp_path, port, password=DB_PASSWORD):
    return make_qp(tmp_path, files={"tls_before_auth": "0",
                                    "vpopmail_mysql_dsn": f"dbi:mysql:dbname=vpopmail;host=127.0.0.1;port={port}",
                                    "vpopmail_mysql_user": DB_USER, "vpopmail_mysql_pass": password},
                   plugins=["auth/auth_vpopmail_sql", "rcpt_ok"])


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_clear_text_password_works_with_every_mechanism(tmp_path, reactor, database, mechanism):
    qp = sql_qp(tmp_path, database.port)
    reply = run(reactor, lambda: auth_reply(reactor, qp, mechanism, "Clear@Example.com", "clear pw"))
    assert reply == f"235 {mechanism} authentication successful for Clear@Example.com - auth_vmysql"


def test_crypt_hash_works_with_plain(tmp_path, reactor, database):
    qp = sql_qp(tmp_path, database.port)
    reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "hashed@example.com", "hashed pw"))
    assert reply.startswith("235 ")


def test_crypt_hash_cannot_check_cram_md5(tmp_path, reactor, database):
    qp = sql_qp(tmp_path, database.port)
    reply = run(reactor, lambda: auth_reply(reactor, qp, "CRAM-MD5", "hashed@example.com", "hashed pw"))
    assert reply.startswith("535 ") and reply.endswith("auth_vmysql - wrong username or password")


@pytest.mark.parametrize("user, password, ending", [
    ("clear@example.com", "wrong", "auth_vmysql - wrong username or password"),
    ("empty@example.com", "", "auth_vmysql - no such user"),
    ("ghost@example.com", "clear pw", "from 127.0.0.1"),
    ("clear", "clear pw", "from 127.0.0.1"),
])
def test_refusals_get_535(tmp_path, reactor, database, user, password, ending):
    qp = sql_qp(tmp_path, database.port)
    reply = run(reactor, lambda: auth_reply(reactor, qp, "LOGIN", user, password))
    assert reply.startswith(f"535 LOGIN authentication failed for {user}") and reply.endswith(ending)


@pytest.mark.parametrize("which", ["wrong database password", "no server"])
def test_database_unavailable_gets_454(tmp_path, reactor, database, which):
    port = database.port if which == "wrong database password" else free_port()
    qp = sql_qp(tmp_path, port, password="not it" if which == "wrong database password" else DB_PASSWORD)
    reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "clear@example.com", "clear pw"))
    assert reply == ("454 PLAIN authentication temporarily failed for clear@example.com"
                     " - auth_vmysql - the password database is unavailable")


def test_dsn_parsing():
    parse_dsn = sys.modules[plugin_class("auth/auth_vpopmail_sql", [PLUGINS]).__module__].parse_dsn
    assert parse_dsn("dbi:mysql:dbname=vpopmail;host=127.0.0.1") == {"database": "vpopmail", "host": "127.0.0.1"}
    assert parse_dsn("DBI:mysql:vp;mysql_socket=/run/m.sock;port=3307") == {
        "database": "vp", "unix_socket": "/run/m.sock", "port": 3307}
    with pytest.raises(ValueError):
        parse_dsn("dbi:Pg:dbname=x")


def test_bad_dsn_stops_start_up(tmp_path):
    with pytest.raises(AssertionError, match="vpopmail_mysql_dsn"):
        make_qp(tmp_path, files={"vpopmail_mysql_dsn": "dbi:mysql:dbname=x;sslmode=on"},
                plugins=["auth/auth_vpopmail_sql", "rcpt_ok"])
