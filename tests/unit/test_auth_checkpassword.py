"""auth/auth_checkpassword and auth/auth_vpopmail, running the test checkpassword program.

tests/programs/checkpassword implements the checkpassword interface against the
`user:password` file named by CHECKPASSWORD_USERS (inherited by the program
from the daemon's environment). Each test runs a fresh Twisted reactor.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from auth_smtp import auth_reply
from harness import make_qp
from reactor_helpers import run

from qpsmtpd_py.checkpassword import credentials
from qpsmtpd_py.plugin import PluginError

CHECKPASSWORD = str(Path(__file__).parent.parent / "programs" / "checkpassword")


@pytest.fixture
def users(tmp_path, monkeypatch):
    path = tmp_path / "users"
    path.write_text("good@example.com:good pass\nother@example.com:other\n")
    monkeypatch.setenv("CHECKPASSWORD_USERS", str(path))
    return path


def checkpassword_qp(tmp_path, line=None, files=None):
    line = line or f"auth/auth_checkpassword checkpw {CHECKPASSWORD} true /bin/true"
    return make_qp(tmp_path, files={"tls_before_auth": "0", **(files or {})}, plugins=[line, "rcpt_ok"])


def test_credentials_are_user_password_and_timestamp_each_ended_by_nul():
    assert credentials("u@example.com", "p w") == b"u@example.com\0p w\0Y123456\0"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_right_password_is_accepted(tmp_path, reactor, users, mechanism):
    qp = checkpassword_qp(tmp_path)
    reply = run(reactor, lambda: auth_reply(reactor, qp, mechanism, "good@example.com", "good pass"))
    assert reply == f"235 {mechanism} authentication successful for good@example.com - checkpassword"


@pytest.mark.parametrize("user, password", [("good@example.com", "bad"), ("nobody@example.com", "good pass")])
def test_wrong_password_or_unknown_user_gets_535(tmp_path, reactor, users, user, password):
    qp = checkpassword_qp(tmp_path)
    reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", user, password))
    # DECLINED (a later plugin may know the user); no later plugin decided, so its message stays
    assert reply == (f"535 PLAIN authentication failed for {user} from 127.0.0.1"
                     " - checkpassword - wrong user name or password")


def test_wrong_password_lets_a_later_plugin_decide(tmp_path, reactor, users):
    qp = make_qp(tmp_path, files={"tls_before_auth": "0", "flat_auth_pw": "good@example.com:flat\n"},
                 plugins=[f"auth/auth_checkpassword checkpw {CHECKPASSWORD} true /bin/true",
                          "auth/auth_flat_file", "rcpt_ok"])
    reply = run(reactor, lambda: auth_reply(reactor, qp, "LOGIN", "good@example.com", "flat"))
    assert reply == "235 LOGIN authentication successful for good@example.com - authflat"


def test_temporary_failure_of_the_program_gets_454(tmp_path, reactor, monkeypatch):
    monkeypatch.setenv("CHECKPASSWORD_USERS", str(tmp_path / "missing"))  # the program exits 111
    qp = checkpassword_qp(tmp_path)
    reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "good@example.com", "good pass"))
    assert reply == ("454 PLAIN authentication temporarily failed for good@example.com"
                     " - checkpassword - temporary failure (111)")


def test_program_that_does_not_exit_is_killed_and_gets_454(tmp_path, reactor):
    hanging = tmp_path / "hanging"
    hanging.write_text("#!/bin/sh\nexec sleep 60\n")
    hanging.chmod(0o755)
    qp = checkpassword_qp(tmp_path, f"auth/auth_checkpassword checkpw {hanging} true /bin/true timeout 0.3")
    reply = run(reactor, lambda: auth_reply(reactor, qp, "LOGIN", "good@example.com", "x"))
    assert reply.endswith("checkpassword - the password check timed out")
    assert reply.startswith("454 ")


def test_programs_come_from_smtpauth_checkpassword_without_arguments(tmp_path, reactor, users):
    qp = checkpassword_qp(tmp_path, "auth/auth_checkpassword",
                          files={"smtpauth-checkpassword": f"{CHECKPASSWORD} /bin/true\n"})
    reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "other@example.com", "other"))
    assert reply.startswith("235 ")


def test_only_clear_text_mechanisms_are_offered(tmp_path):
    qp = checkpassword_qp(tmp_path)
    assert "auth-plain" in qp.hooks and "auth-login" in qp.hooks and "auth-cram-md5" not in qp.hooks


@pytest.mark.parametrize("line, message", [
    ("auth/auth_checkpassword", "smtpauth-checkpassword"),
    ("auth/auth_checkpassword checkpw relative/checkpw true /bin/true", "absolute path"),
    ("auth/auth_checkpassword checkpw /nonexistent/checkpw true /bin/true", "not an executable"),
    (f"auth/auth_checkpassword checkpw {CHECKPASSWORD} true /bin/true timeout -1", "more than 0 seconds"),
    ("auth/auth_vpopmail vchkpw /nonexistent/vchkpw", "not an executable"),
])
def test_bad_configuration_stops_start_up(tmp_path, line, message):
    with pytest.raises(AssertionError, match=message):
        checkpassword_qp(tmp_path, line)


def test_plugin_error_names_the_fix(tmp_path):
    from qpsmtpd_py.checkpassword import executable

    with pytest.raises(PluginError, match="install it or fix the path"):
        executable("/nonexistent/vchkpw", "vchkpw")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_vpopmail_runs_vchkpw_through_the_checkpassword_interface(tmp_path, reactor, users, mechanism):
    qp = checkpassword_qp(tmp_path, f"auth/auth_vpopmail vchkpw {CHECKPASSWORD}")
    good = run(reactor, lambda: auth_reply(reactor, qp, mechanism, "good@example.com", "good pass"))
    assert good == f"235 {mechanism} authentication successful for good@example.com - checkpassword"


def test_vpopmail_wrong_password_gets_535(tmp_path, reactor, users):
    qp = checkpassword_qp(tmp_path, f"auth/auth_vpopmail vchkpw {CHECKPASSWORD}")
    reply = run(reactor, lambda: auth_reply(reactor, qp, "PLAIN", "good@example.com", "nope"))
    assert reply.startswith("535 ")


def test_vpopmail_default_program_is_in_the_vpopmail_home(tmp_path):
    import sys

    from qpsmtpd_py.plugin import plugin_class

    module = sys.modules[plugin_class("auth/auth_vpopmail", [Path(__file__).parents[2] / "plugins"]).__module__]
    assert module.default_vchkpw().endswith("/bin/vchkpw")
