"""auth/auth_checkpassword and auth/auth_vpopmail in the real daemon: smtplib, STARTTLS, AUTH.

The test checkpassword program (tests/programs/checkpassword) stands in for
qmail's checkpassword and vpopmail's vchkpw; it reads the users file named by
CHECKPASSWORD_USERS from the environment the daemon passes on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from auth_smtp import CLEAR_TEXT_MECHANISMS, login, tls_config

CHECKPASSWORD = str(Path(__file__).parent.parent / "programs" / "checkpassword")


@pytest.fixture
def users(tmp_path, monkeypatch):
    path = tmp_path / "users"
    path.write_text("good@example.com:good pass\n")
    monkeypatch.setenv("CHECKPASSWORD_USERS", str(path))  # the daemon inherits it
    return path


@pytest.mark.parametrize("line", [f"auth/auth_checkpassword checkpw {CHECKPASSWORD} true /bin/true",
                                  f"auth/auth_vpopmail vchkpw {CHECKPASSWORD}"], ids=["checkpassword", "vpopmail"])
def test_login_with_each_mechanism_after_starttls(daemon_factory, tmp_path, users, line):
    daemon = daemon_factory(tls_config(tmp_path / "certs", [line]))
    for mechanism in CLEAR_TEXT_MECHANISMS:
        code, text, offered = login(daemon, "good@example.com", "good pass", mechanism)
        assert offered == ["PLAIN", "LOGIN"]
        assert (code, text) == (235, f"{mechanism} authentication successful for good@example.com - checkpassword")
        code, text, _ = login(daemon, "good@example.com", "wrong", mechanism)
        assert code == 535, text


def test_unusable_users_file_gets_454(daemon_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("CHECKPASSWORD_USERS", str(tmp_path / "missing"))
    daemon = daemon_factory(tls_config(tmp_path / "certs",
                                       [f"auth/auth_checkpassword checkpw {CHECKPASSWORD} true /bin/true"]))
    code, text, _ = login(daemon, "good@example.com", "good pass", "PLAIN")
    assert (code, text) == (454, "PLAIN authentication temporarily failed for good@example.com"
                                 " - checkpassword - temporary failure (111)")
