"""auth/auth_imap, auth/auth_ldap_bind and auth/auth_vpopmail_sql in the real daemon, against real servers.

Dovecot (dovecot-imapd), OpenLDAP's slapd and MariaDB each run privately in a
temporary directory on a free loopback port; smtplib logs in after STARTTLS.
"""

from __future__ import annotations

import pytest
from auth_smtp import CLEAR_TEXT_MECHANISMS, MECHANISMS, login, tls_config
from dovecot_imap import AVAILABLE as DOVECOT_AVAILABLE
from dovecot_imap import dovecot_imap
from mariadb_server import AVAILABLE as MARIADB_AVAILABLE
from mariadb_server import DB_PASSWORD, DB_USER, mariadb_server
from slapd_server import AVAILABLE as SLAPD_AVAILABLE
from slapd_server import BASE, slapd_server

from qpsmtpd_py.auth import unix_crypt


@pytest.mark.skipif(not DOVECOT_AVAILABLE, reason="dovecot-imapd (Debian) is not installed")
def test_imap_login_with_each_mechanism(daemon_factory, tmp_path):
    with dovecot_imap({"good": "secret"}) as port:
        daemon = daemon_factory(tls_config(tmp_path / "certs", [f"auth/auth_imap 127.0.0.1 {port}"]))
        for mechanism in CLEAR_TEXT_MECHANISMS:
            code, text, offered = login(daemon, "good", "secret", mechanism)
            assert offered == ["PLAIN", "LOGIN"]
            assert (code, text) == (235, f"{mechanism} authentication successful for good"
                                         f" - auth_imap/{mechanism.lower()}")
            assert login(daemon, "good", "wrong", mechanism)[0] == 535


@pytest.mark.skipif(not SLAPD_AVAILABLE, reason="slapd (Debian) is not installed")
def test_ldap_bind_with_each_mechanism(daemon_factory, tmp_path):
    with slapd_server({"good": "secret"}) as port:
        files = tls_config(tmp_path / "certs", ["auth/auth_ldap_bind"],
                           {"ldap": [f"ldap_base {BASE}", f"ldap_port {port}"]})
        daemon = daemon_factory(files)
        for mechanism in CLEAR_TEXT_MECHANISMS:
            code, text, offered = login(daemon, "good@example.com", "secret", mechanism)
            assert offered == ["PLAIN", "LOGIN"]
            assert (code, text) == (235, f"{mechanism} authentication successful for good@example.com - authldap")
            assert login(daemon, "good@example.com", "wrong", mechanism)[0] == 535


@pytest.mark.skipif(not MARIADB_AVAILABLE, reason="mariadb-server (Debian) is not installed")
def test_vpopmail_sql_with_each_mechanism(daemon_factory, tmp_path):
    with mariadb_server() as database:
        database.add_user("good", "example.com", unix_crypt("secret", "$6$saltsalt"), "secret")
        files = tls_config(tmp_path / "certs", ["auth/auth_vpopmail_sql"], {
            "vpopmail_mysql_dsn": f"dbi:mysql:dbname=vpopmail;host=127.0.0.1;port={database.port}",
            "vpopmail_mysql_user": DB_USER, "vpopmail_mysql_pass": DB_PASSWORD})
        daemon = daemon_factory(files)
        for mechanism in MECHANISMS:
            code, text, offered = login(daemon, "good@example.com", "secret", mechanism)
            assert offered == ["PLAIN", "LOGIN", "CRAM-MD5"]
            assert (code, text) == (235, f"{mechanism} authentication successful for good@example.com"
                                         " - auth_vmysql")
            assert login(daemon, "good@example.com", "wrong", mechanism)[0] == 535
