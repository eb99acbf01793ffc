"""The badrcptto plugin: recipients refused by address, host or pattern."""

import pytest
from harness import SessionDriver, make_qp, write_config

from qpsmtpd_py.address import Address
from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import DECLINED, DENY, LOGERROR, LOGINFO
from qpsmtpd_py.log import current_session
from qpsmtpd_py.qp import Qpsmtpd

# qpsmtpd's t/config/badrcptto, trailing blank included.
QPSMTPD_BADRCPTTO = """\
######## entries used for testing ###
bad@example.com
@bad.example.com
########    Example patterns   #######
# Format is pattern\\s+Response
# Don't forget to anchor the pattern if required
!       Sorry, bang paths not accepted here
@.*@    Sorry, multiple at signs not accepted here
%       Sorry, percent hack not accepted here\x20
"""


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def brt_qp(tmp_path, lines=QPSMTPD_BADRCPTTO, args=""):
    return make_qp(tmp_path, files={"badrcptto": lines, "rcpthosts": [".example.com", "example.com"]},
                   plugins=[f"badrcptto {args}".strip(), "rcpt_ok"])


def session(qp, ip="192.0.2.9"):
    driver = SessionDriver(qp, remote_ip=ip)
    assert driver.take()[0].startswith("220 ")
    assert driver.command("HELO client.example")[0].startswith("250 ")
    assert driver.command("MAIL FROM:<sender@example.net>")[0].startswith("250 ")
    return driver


def rcpt(qp, recipient):
    return session(qp).command(f"RCPT TO:{recipient}")


def ok(recipient):
    return [f"250 {recipient}, recipient ok"]


def plugin(qp):
    return next(p for p in qp.plugins if p.name == "badrcptto")


# -- qpsmtpd's own tests, through sessions ------------------------------------------------------

def test_unlisted_recipient_is_left_to_the_next_plugin(tmp_path):
    qp = brt_qp(tmp_path)
    log = capture_log(qp)
    assert rcpt(qp, "<user@example.com>") == ok("<user@example.com>")
    assert (LOGINFO, "badrcptto", "pass") in log


def test_listed_address_gets_the_no_such_user_reply(tmp_path):
    qp = brt_qp(tmp_path)
    log = capture_log(qp)
    assert rcpt(qp, "<bad@example.com>") == ["550 mail to bad@example.com not accepted here (#5.1.1)"]
    assert (LOGINFO, "badrcptto", "fail: rcpt match") in log


def test_listed_host_refuses_every_recipient_there(tmp_path):
    qp = brt_qp(tmp_path)
    log = capture_log(qp)
    assert rcpt(qp, "<any@bad.example.com>") == ["550 mail to @bad.example.com not accepted here (#5.1.1)"]
    assert (LOGINFO, "badrcptto", "fail: host match") in log
    assert rcpt(qp, "<any@sub.bad.example.com>") == ok("<any@sub.bad.example.com>")


def test_default_reply_names_the_entry_as_written(tmp_path):
    qp = brt_qp(tmp_path, ["Bad@Example.COM"])
    assert rcpt(qp, "<bAD@example.com>") == ["550 mail to Bad@Example.COM not accepted here (#5.1.1)"]


@pytest.mark.parametrize(("recipient", "reply"), [
    ('<"a!b"@example.com>', "550 Sorry, bang paths not accepted here"),
    ('<"a@b"@example.com>', "550 Sorry, multiple at signs not accepted here"),
    ("<a%b@example.com>", "550 Sorry, percent hack not accepted here"),
])
def test_sample_patterns_refuse_with_their_reason(tmp_path, recipient, reply):
    qp = brt_qp(tmp_path)
    log = capture_log(qp)
    assert rcpt(qp, recipient) == [reply]
    assert (LOGINFO, "badrcptto", "fail: pattern match") in log


@pytest.mark.parametrize(("to", "entry", "host", "expected"), [
    ("matt@example.com", "matt@example.com", "example.com", True),
    ("matt@exAmple.com", "matt@example.com", "tnpi.com", True),
    ("mAtt@example.com", "matt@example.com", "tnpi.com", True),
    ("matt@exmple.com", "matt@example.com", "tnpi.com", False),
    ("matt@example.com", "matt@exAple.com", "tnpi.com", False),
    ("matt@example.com", "@example.com", "example.com", True),
    ("matt@example.com", "@example.not", "example.com", False),
    ("matt@example.com", "@example.com", "example.not", False),
    ("matt@example.com", "example.com$", "tnpi.com", True),
    ("matt@example.com", "example.not$", "tnpi.com", False),
])
def test_is_match_as_qpsmtpd_tests_it(tmp_path, to, entry, host, expected):
    qp = brt_qp(tmp_path, [entry])
    assert plugin(qp).is_match(to, plugin(qp).entries()[0], host) is expected


def test_get_host_and_to_as_qpsmtpd_tests_it(tmp_path):
    get = plugin(brt_qp(tmp_path)).get_host_and_to
    assert get(Address.null()) is None
    assert get(Address("user", None)) is None
    assert get(Address("user", "example.com")) == ("example.com", "user@example.com")
    assert get(Address("uSer", "exaMple.com")) == ("example.com", "user@example.com")


def test_hook_answers_as_qpsmtpd_tests_it(tmp_path):
    qp = brt_qp(tmp_path)
    driver = session(qp)
    hook = plugin(qp).hook_rcpt
    txn = driver.session.transaction
    current_session.set(driver.session)  # as the hook engine does before calling a plugin
    assert hook(txn, Address("user", "example.com"), {}) == DECLINED
    assert hook(txn, Address("bad", "example.com"), {})[0] == DENY
    assert hook(txn, Address("any", "bad.example.com"), {})[0] == DENY


# -- patterns --------------------------------------------------------------------------------

def test_pattern_ignores_case(tmp_path):
    qp = brt_qp(tmp_path, ["^SALES@ no sales"])
    assert rcpt(qp, "<sales@example.com>") == ["550 no sales"]
    assert rcpt(qp, "<Sales@Example.com>") == ["550 no sales"]


def test_pattern_escapes_keep_their_case(tmp_path):
    # qpsmtpd lower-cased the pattern, so `\S` became `\s` and this never matched.
    qp = brt_qp(tmp_path, [r"^\S+-bounces@ no bounces"])
    assert rcpt(qp, "<list-bounces@example.com>") == ["550 no bounces"]


def test_perl_only_syntax_is_translated(tmp_path):
    qp = brt_qp(tmp_path, [r"^[[:digit:]]+@ digits", r"^\Qa+b\E@ quoted"])
    assert rcpt(qp, "<2024@example.com>") == ["550 digits"]
    assert rcpt(qp, "<a+b@example.com>") == ["550 quoted"]
    assert rcpt(qp, "<aab@example.com>") == ok("<aab@example.com>")


def test_pattern_python_cannot_compile_is_logged_once_and_skipped(tmp_path):
    qp = brt_qp(tmp_path, ["^(x", "^later@ later line"])
    log = capture_log(qp)
    assert rcpt(qp, "<later@example.com>") == ["550 later line"]
    assert rcpt(qp, "<x@example.com>") == ok("<x@example.com>")
    errors = [m for level, _, m in log if level == LOGERROR]
    assert len(errors) == 1 and errors[0].startswith("ignoring a line of badrcptto: pattern '^(x' does not compile")


def test_entry_without_at_sign_is_logged_and_skipped(tmp_path):
    qp = brt_qp(tmp_path, ["example.com", "@example.com listed"])
    log = capture_log(qp)
    assert rcpt(qp, "<a@example.com>") == ["550 listed"]
    assert (LOGERROR, "badrcptto", "badrcptto: bad config: no @ sign in example.com") in log


# -- who is not checked ----------------------------------------------------------------------

def test_empty_config_skips(tmp_path):
    qp = make_qp(tmp_path, plugins=["badrcptto", "rcpt_ok"])
    log = capture_log(qp)
    assert rcpt(qp, "<a@test.example.org>") == ok("<a@test.example.org>")
    assert (LOGINFO, "badrcptto", "skip, empty config") in log


def test_bare_postmaster_is_not_checked(tmp_path):
    qp = brt_qp(tmp_path, ["^postmaster"])
    log = capture_log(qp)
    assert rcpt(qp, "<postmaster>") == ok("<postmaster>")
    assert (LOGINFO, "badrcptto", "skip: missing host or user") in log


def test_relay_client_is_immune(tmp_path):
    qp = brt_qp(tmp_path)
    driver = session(qp)
    driver.session.connection.relay_client = True
    assert driver.command("RCPT TO:<bad@example.com>") == ok("<bad@example.com>")


def test_whitelisted_sender_is_immune(tmp_path):
    qp = brt_qp(tmp_path)
    driver = session(qp)
    driver.session.transaction.notes["whitelistsender"] = 1
    assert driver.command("RCPT TO:<bad@example.com>") == ok("<bad@example.com>")


def test_karma_goes_down_by_two(tmp_path):
    qp = brt_qp(tmp_path)
    driver = session(qp)
    driver.command("RCPT TO:<bad@example.com>")
    assert driver.session.connection.notes["karma"] == -2


def test_odd_arguments_stop_start_up(tmp_path):
    config = write_config(tmp_path / "config", {"me": "t.example", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": ["badrcptto strict"]})
    errors = [str(e) for e in Qpsmtpd(ConfigReader([config])).load()]
    assert len(errors) == 1 and "badrcptto takes no arguments but `loglevel N`" in errors[0]


def test_edited_file_applies_to_the_next_rcpt(tmp_path):
    qp = brt_qp(tmp_path, ["a@example.com"])
    qp.config_reader.recheck_interval = 0
    driver = session(qp)
    assert driver.command("RCPT TO:<a@example.com>")[0].startswith("550 ")
    (tmp_path / "config" / "badrcptto").write_text("b@example.com\n")
    assert driver.command("RCPT TO:<a@example.com>") == ok("<a@example.com>")
    assert driver.command("RCPT TO:<b@example.com>")[0].startswith("550 ")
