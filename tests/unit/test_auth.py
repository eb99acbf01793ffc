"""The AUTH engine (qpsmtpd_py/auth.py): exchanges, hook order, replies, limits."""

import base64
import hashlib
import hmac

import pytest
from harness import SessionDriver, make_qp, plugin_source

from qpsmtpd_py.auth import AuthCanceled, decode_response, offered_mechanisms, validate_password

USERS = ["good@example.com:good_pass", "hashed@example.com:$1$saltsalt$9xy1btjgzLYfb7hivXtC//"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# Records every auth hook call in qp.auth_trail, answers `code` for hook `hook`.
RECORDER = plugin_source("""
    from qpsmtpd_py.constants import return_code

    class Recorder(Plugin):
        def register(self, qp, hook, code, *message):
            qp.auth_trail = getattr(qp, "auth_trail", [])
            self.code, self.message = return_code(code), " ".join(message)
            self.register_hook(hook, self.answer)

        def answer(self, transaction, *args):
            self.qp.auth_trail.append((self.running_hook, args))
            return (self.code, self.message) if self.message else self.code
""")


def session(tmp_path, plugins=("auth/auth_flat_file", "rcpt_ok"), files=None, ehlo=True):
    config = {"flat_auth_pw": USERS, "tls_before_auth": "0"}
    config.update(files or {})
    qp = make_qp(tmp_path, config, plugins=plugins, plugin_files={"recorder": RECORDER})
    driver = SessionDriver(qp)
    driver.take()
    if ehlo:
        driver.command("EHLO client.example")
    return driver


def test_ehlo_offers_the_mechanisms_of_the_loaded_plugins(tmp_path):
    driver = session(tmp_path, ehlo=False)
    assert driver.command("EHLO client.example")[-1] == "250 AUTH PLAIN LOGIN CRAM-MD5"


def test_a_generic_auth_hook_offers_every_mechanism_and_one_specific_hook_only_its_own(tmp_path):
    assert offered_mechanisms({"auth": []}) == ["PLAIN", "LOGIN", "CRAM-MD5"]
    assert offered_mechanisms({"auth-login": []}) == ["LOGIN"]
    driver = session(tmp_path, plugins=("recorder auth-plain declined", "rcpt_ok"), ehlo=False)
    assert driver.command("EHLO client.example")[-1] == "250 AUTH PLAIN"


def test_without_auth_plugins_auth_is_neither_offered_nor_recognized(tmp_path):
    driver = session(tmp_path, plugins=("rcpt_ok",), ehlo=False)
    assert not any("AUTH" in line for line in driver.command("EHLO client.example"))
    assert driver.command("AUTH PLAIN " + b64("\0good@example.com\0good_pass")) == ["500 Unrecognized command"]


def test_plain_with_initial_response_authenticates_and_makes_a_relay_client(tmp_path):
    driver = session(tmp_path)
    reply = driver.command("AUTH PLAIN " + b64("\0good@example.com\0good_pass"))
    assert reply == ["235 PLAIN authentication successful for good@example.com - authflat"]
    connection = driver.session.connection
    assert connection.relay_client
    assert connection.notes["auth_user"] == "good@example.com"
    assert connection.notes["auth_mechanism"] == "PLAIN"


def test_plain_without_initial_response_asks_with_an_empty_334(tmp_path):
    driver = session(tmp_path)
    assert driver.command("AUTH PLAIN") == ["334 "]  # an empty challenge
    assert driver.command(b64("\0good@example.com\0good_pass"))[0].startswith("235 ")


def test_plain_refuses_an_authorization_identity_that_is_not_the_user(tmp_path):
    driver = session(tmp_path)
    reply = driver.command("AUTH PLAIN " + b64("boss@example.com\0good@example.com\0good_pass"))
    assert reply == ["535 Authentication invalid for good@example.com"]
    assert not driver.session.connection.relay_client


def test_plain_without_a_user_is_invalid(tmp_path):
    driver = session(tmp_path)
    assert driver.command("AUTH PLAIN " + b64("\0\0pw")) == ["535 Authentication invalid"]


def test_login_asks_for_username_then_password(tmp_path):
    driver = session(tmp_path)
    assert driver.command("AUTH LOGIN") == ["334 VXNlcm5hbWU6"]
    assert driver.command(b64("good@example.com")) == ["334 UGFzc3dvcmQ6"]
    assert driver.command(b64("good_pass")) == ["235 LOGIN authentication successful for good@example.com - authflat"]


def test_login_with_the_username_as_initial_response(tmp_path):
    driver = session(tmp_path)
    assert driver.command("AUTH LOGIN " + b64("good@example.com")) == ["334 UGFzc3dvcmQ6"]
    assert driver.command(b64("wrong"))[0].startswith(
        "535 LOGIN authentication failed for good@example.com from 127.0.0.1")


def test_cram_md5_answer_is_checked_against_the_clear_password(tmp_path):
    driver = session(tmp_path)
    [challenge] = driver.command("AUTH CRAM-MD5")
    assert challenge.startswith("334 ")
    ticket = base64.b64decode(challenge[4:]).decode()
    assert ticket.startswith("<") and ticket.endswith("@test.example.org>")
    digest = hmac.new(b"good_pass", ticket.encode(), hashlib.md5).hexdigest()
    assert driver.command(b64(f"good@example.com {digest}"))[0].startswith("235 CRAM-MD5 authentication successful")


def test_cram_md5_with_a_wrong_digest_fails(tmp_path):
    driver = session(tmp_path)
    driver.command("AUTH CRAM-MD5")
    assert driver.command(b64("good@example.com " + "0" * 32))[0].startswith("535 CRAM-MD5 authentication failed")


def test_cram_md5_answer_without_a_digest_is_an_invalid_string(tmp_path):
    driver = session(tmp_path)
    driver.command("AUTH CRAM-MD5")
    assert driver.command(b64("good@example.com")) == ["504 Invalid authentication string"]


def test_crypt_hash_in_flat_auth_pw_works_for_plain_but_not_cram_md5(tmp_path):
    driver = session(tmp_path)
    assert driver.command("AUTH PLAIN " + b64("\0hashed@example.com\0secret"))[0].startswith("235 ")
    driver = session(tmp_path / "2")
    [challenge] = driver.command("AUTH CRAM-MD5")
    ticket = base64.b64decode(challenge[4:]).decode()
    digest = hmac.new(b"secret", ticket.encode(), hashlib.md5).hexdigest()
    assert driver.command(b64(f"hashed@example.com {digest}"))[0].startswith("535 ")


@pytest.mark.parametrize("answer", ["*", "not base64!"])
def test_a_star_or_garbage_cancels_the_exchange_with_501(tmp_path, answer):
    driver = session(tmp_path)
    driver.command("AUTH LOGIN")
    reply = driver.command(answer)
    assert reply[0].startswith("501 ")
    # The session is back in command mode.
    assert driver.command("NOOP") == ["250 OK"]


def test_unknown_mechanism_gets_504(tmp_path):
    driver = session(tmp_path)
    assert driver.command("AUTH GSSAPI") == ["504 Unimplemented authentication mechanism: GSSAPI"]


def test_auth_after_helo_before_hello_twice_and_during_a_transaction_gets_503(tmp_path):
    driver = session(tmp_path, ehlo=False)
    assert driver.command("AUTH PLAIN") == ["503 please say hello first ..."]
    driver.command("HELO client.example")
    assert driver.command("AUTH PLAIN") == ["503 AUTH not defined for HELO"]
    driver.command("EHLO client.example")
    driver.command("MAIL FROM:<a@example.com>")
    assert driver.command("AUTH PLAIN") == ["503 AUTH not permitted during a mail transaction"]
    driver.command("RSET")
    driver.command("AUTH PLAIN " + b64("\0good@example.com\0good_pass"))
    assert driver.command("AUTH PLAIN") == ["503 but you already said AUTH ..."]


def test_after_authentication_ehlo_no_longer_offers_auth(tmp_path):
    driver = session(tmp_path)
    driver.command("AUTH PLAIN " + b64("\0good@example.com\0good_pass"))
    assert not any("AUTH" in line for line in driver.command("EHLO client.example"))


def test_over_plaintext_auth_is_not_offered_unless_tls_before_auth_is_0(tmp_path):
    driver = session(tmp_path, files={"tls_before_auth": "1"}, ehlo=False)
    assert not any("AUTH" in line for line in driver.command("EHLO client.example"))
    assert driver.command("AUTH PLAIN " + b64("\0good@example.com\0good_pass")) == ["503 SSL/TLS required before AUTH"]


def test_without_a_tls_before_auth_file_plaintext_auth_is_refused(tmp_path):
    qp = make_qp(tmp_path, {"flat_auth_pw": USERS}, plugins=("auth/auth_flat_file",))
    driver = SessionDriver(qp)
    driver.command("EHLO client.example")
    assert driver.command("AUTH LOGIN") == ["503 SSL/TLS required before AUTH"]


def test_mechanism_hook_runs_first_and_the_generic_hook_only_when_it_declines(tmp_path):
    plugins = ("recorder auth-plain declined", "recorder:1 auth ok generic says yes")
    driver = session(tmp_path, plugins=plugins)
    reply = driver.command("AUTH PLAIN " + b64("\0u@example.com\0pw"))
    assert reply == ["235 PLAIN authentication successful for u@example.com - generic says yes"]
    assert [hook for hook, _ in driver.session.qp.auth_trail] == ["auth-plain", "auth"]
    assert driver.session.qp.auth_trail[0][1] == ("plain", "u@example.com", "pw", None, None)


def test_a_decision_of_the_mechanism_hook_skips_the_generic_hook(tmp_path):
    driver = session(tmp_path, plugins=("recorder auth-plain deny nope", "recorder:1 auth ok"))
    reply = driver.command("AUTH PLAIN " + b64("\0u@example.com\0pw"))
    assert reply == ["535 PLAIN authentication failed for u@example.com from 127.0.0.1 - nope"]
    assert [hook for hook, _ in driver.session.qp.auth_trail] == ["auth-plain"]


def test_authdeny_refuses_what_no_other_plugin_decided(tmp_path):
    driver = session(tmp_path, plugins=("auth/authdeny",))
    reply = driver.command("AUTH PLAIN " + b64("\0u@example.com\0pw"))
    assert reply == ["535 PLAIN authentication failed for u@example.com from 127.0.0.1 - "
                     "u@example.com is not free to abuse my relay"]


def test_a_back_end_failure_is_a_temporary_454(tmp_path):
    driver = session(tmp_path, plugins=("recorder auth-plain denysoft ldap is down",))
    reply = driver.command("AUTH PLAIN " + b64("\0u@example.com\0pw"))
    assert reply == ["454 PLAIN authentication temporarily failed for u@example.com - ldap is down"]


def test_the_session_is_closed_after_auth_max_failures(tmp_path):
    driver = session(tmp_path, files={"auth_max_failures": "2"})
    assert driver.command("AUTH PLAIN " + b64("\0good@example.com\0bad1"))[0].startswith("535 ")
    assert not driver.closed
    reply = driver.command("AUTH PLAIN " + b64("\0good@example.com\0bad2"))
    assert reply[0].startswith("535 ")
    assert reply[1] == "421 Too many failed authentication attempts, closing connection"
    assert driver.closed
    assert driver.session.connection.notes["karma"] == -2


def test_credentials_are_never_logged(tmp_path):
    driver = session(tmp_path, files={"loglevel": "6"})
    lines = []
    driver.session.qp.logger.log = lambda level, message: lines.append(message)  # capture
    driver.command("AUTH PLAIN " + b64("\0good@example.com\0good_pass"))
    driver.command("AUTH LOGIN")
    logged = "\n".join(lines)
    assert "good_pass" not in logged and b64("\0good@example.com\0good_pass") not in logged


def test_pipelined_commands_after_a_challenge_are_not_taken_for_the_answer(tmp_path):
    driver = session(tmp_path)
    driver.send(b"AUTH LOGIN\r\n" + b64("good@example.com").encode() + b"\r\n" + b64("good_pass").encode()
                + b"\r\nNOOP\r\n")
    assert driver.take() == ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6",
                             "235 LOGIN authentication successful for good@example.com - authflat", "250 OK"]


def test_decode_response_and_validate_password():
    assert decode_response(b64("x\0y")) == "x\0y"
    with pytest.raises(AuthCanceled):
        decode_response("*")
    assert validate_password(stored_clear="pw", attempt_clear="pw")
    assert not validate_password(stored_clear="pw", attempt_clear="PW")
    assert validate_password(stored_crypt="$1$saltsalt$9xy1btjgzLYfb7hivXtC//", attempt_clear="secret")
    ticket = "<1.2@me>"
    digest = hmac.new(b"pw", ticket.encode(), hashlib.md5).hexdigest()
    assert validate_password(stored_clear="pw", attempt_hash=digest, ticket=ticket)
    assert not validate_password(stored_crypt="$1$x$y", attempt_hash=digest, ticket=ticket)


def test_a_declining_mechanism_hooks_message_is_kept_when_no_generic_hook_decides(tmp_path):
    driver = session(tmp_path, plugins=("recorder auth-login declined unknown user",))
    driver.command("AUTH LOGIN")
    driver.command(b64("u@example.com"))
    assert driver.command(b64("pw")) == ["535 LOGIN authentication failed for u@example.com from 127.0.0.1 - "
                                         "unknown user"]
