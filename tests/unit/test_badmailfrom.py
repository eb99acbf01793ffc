"""The badmailfrom plugin: senders refused by address, host or pattern, with reasons."""

import pytest
from harness import SessionDriver, make_qp, write_config

from qpsmtpd_py.address import Address
from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import LOGDEBUG, LOGERROR, LOGINFO, LOGWARN
from qpsmtpd_py.qp import Qpsmtpd

DEFAULT = "550 Your envelope sender is in my badmailfrom list"


def capture_log(qp):
    """Every (level, plugin, message) the daemon logs from now on."""
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def bmf_qp(tmp_path, lines, args=""):
    return make_qp(tmp_path, files={"badmailfrom": lines}, plugins=[f"badmailfrom {args}".strip(), "rcpt_ok"])


def session(qp, ip="192.0.2.9"):
    driver = SessionDriver(qp, remote_ip=ip)
    assert driver.take()[0].startswith("220 ")
    assert driver.command("HELO client.example")[0].startswith("250 ")
    return driver


def mail(qp, sender):
    return session(qp).command(f"MAIL FROM:{sender}")


def accepted(sender):
    return [f"250 {sender}, sender OK - how exciting to get mail from you!"]


def plugin(qp):
    return next(p for p in qp.plugins if p.name == "badmailfrom")


def load_errors(tmp_path, plugin_line):
    config = write_config(tmp_path / "config", {"me": "test.example.org", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": [plugin_line]})
    return [str(error) for error in Qpsmtpd(ConfigReader([config])).load()]


# -- entries -------------------------------------------------------------------------------------

def test_listed_address_is_refused_with_the_default_reason(tmp_path):
    qp = bmf_qp(tmp_path, ["matt@test.net", "matt@test.com"])
    assert mail(qp, "<matt@test.com>") == [DEFAULT]


def test_reason_after_the_address_is_the_reply(tmp_path):
    qp = bmf_qp(tmp_path, ["matt@test.net", "matt@test.com Yer a spammin bastert"])
    assert mail(qp, "<matt@test.com>") == ["550 Yer a spammin bastert"]


def test_address_compares_without_regard_to_case(tmp_path):
    qp = bmf_qp(tmp_path, ["Matt@Test.COM"])
    assert mail(qp, "<mATT@tEST.com>") == [DEFAULT]


def test_unlisted_sender_passes(tmp_path):
    qp = bmf_qp(tmp_path, ["matt@test.com"])
    log = capture_log(qp)
    assert mail(qp, "<other@test.com>") == accepted("<other@test.com>")
    assert (LOGINFO, "badmailfrom", "pass") in log


def test_host_entry_refuses_every_sender_of_that_host_not_subdomains(tmp_path):
    qp = bmf_qp(tmp_path, ["@www.yahoo.com  yahoo never sends from www"])
    assert mail(qp, "<anyone@WWW.Yahoo.com>") == ["550 yahoo never sends from www"]
    assert mail(qp, "<anyone@yahoo.com>") == accepted("<anyone@yahoo.com>")
    assert mail(qp, "<anyone@mail.www.yahoo.com>") == accepted("<anyone@mail.www.yahoo.com>")


def test_qpsmtpd_sample_config(tmp_path):
    qp = bmf_qp(tmp_path, "# This is a sample config file for badmailfrom\n# - single email address\n"
                          "badmailexample@microsoft.com\n# - block and entire host, and provide a custom reason\n"
                          "@www.yahoo.com  yahoo never sends from www")
    assert mail(qp, "<badmailexample@microsoft.com>") == [DEFAULT]
    assert mail(qp, "<x@www.yahoo.com>") == ["550 yahoo never sends from www"]


def test_entry_without_at_sign_is_logged_and_skipped(tmp_path):
    qp = bmf_qp(tmp_path, ["example.com", "@example.com listed"])
    log = capture_log(qp)
    assert mail(qp, "<a@example.com>") == ["550 listed"]
    assert (LOGWARN, "badmailfrom", "badmailfrom: bad config: no @ sign in example.com") in log


# -- patterns ---------------------------------------------------------------------------------

def test_pattern_is_searched_for_in_the_address(tmp_path):
    qp = bmf_qp(tmp_path, ["test.net$"])
    log = capture_log(qp)
    assert mail(qp, "<matt@test.net>") == [DEFAULT]
    assert (LOGDEBUG, "badmailfrom", "badmailfrom pattern (test.net$) match for matt@test.net") in log
    assert mail(qp, "<matt@test.net.example>") == accepted("<matt@test.net.example>")


def test_qpsmtpd_documented_patterns_with_reasons(tmp_path):
    qp = bmf_qp(tmp_path, [r"^streamsendbouncer@.*\.mailengine1\.com$    Your right-hand side VERP doesn't fool me",
                           r"^return.*@.*\.pidplate\.biz$                I don't want it regardless of subdomain",
                           r"^admin.*\.ppoonn400\.com$"])
    assert mail(qp, "<streamsendbouncer@x7.mailengine1.com>") == ["550 Your right-hand side VERP doesn't fool me"]
    assert mail(qp, "<return-path-99@a.b.pidplate.biz>") == ["550 I don't want it regardless of subdomain"]
    assert mail(qp, "<admin@mail.ppoonn400.com>") == [DEFAULT]
    assert mail(qp, "<user@mailengine1.com>") == accepted("<user@mailengine1.com>")


@pytest.mark.parametrize("entry", ["!", "%", "a+b@", "?", "x*@bad", "^a@", "\\@"])
def test_each_pattern_character_makes_an_entry_a_pattern(tmp_path, entry):
    qp = bmf_qp(tmp_path, [entry])
    log = capture_log(qp)
    mail(qp, "<nobody@example.com>")
    assert not [m for level, _, m in log if level == LOGWARN and "no @ sign" in m]


def test_pattern_with_a_percent_hack(tmp_path):
    qp = bmf_qp(tmp_path, ["% no percent hack"])
    assert mail(qp, "<a%b@example.com>") == ["550 no percent hack"]
    assert mail(qp, "<ab@example.com>") == accepted("<ab@example.com>")


def test_slash_is_a_plain_character_of_a_pattern(tmp_path):
    # Not a delimiter: `/^spam@/` wants a slash before the start, and never matches.
    qp = bmf_qp(tmp_path, ["/^spam@/", "^spam/x@ slash"])
    assert mail(qp, "<spam@example.com>") == accepted("<spam@example.com>")
    assert mail(qp, "<spam/x@example.com>") == ["550 slash"]


def test_pattern_is_case_sensitive_against_the_lower_cased_address(tmp_path):
    # qpsmtpd lower-cases the sender but not the pattern: capitals never match.
    qp = bmf_qp(tmp_path, ["^Spammer@", "^bulk@ bulk"])
    assert mail(qp, "<Spammer@example.com>") == accepted("<Spammer@example.com>")
    assert mail(qp, "<BULK@example.com>") == ["550 bulk"]


def test_perl_only_syntax_is_translated(tmp_path):
    qp = bmf_qp(tmp_path, [r"^[[:digit:]]+@ digits", r"\Qa.b\E@ quoted", r"\.example\.net\z end"])
    assert mail(qp, "<123@example.com>") == ["550 digits"]
    assert mail(qp, "<x123@example.com>") == accepted("<x123@example.com>")
    assert mail(qp, "<a.b@example.com>") == ["550 quoted"]
    assert mail(qp, "<axb@example.com>") == accepted("<axb@example.com>")
    assert mail(qp, "<u@mail.example.net>") == ["550 end"]


def test_pattern_python_cannot_compile_is_logged_once_and_the_rest_still_checked(tmp_path):
    qp = bmf_qp(tmp_path, ["^(unclosed", r"\Gx", "^later@ later line"])
    log = capture_log(qp)
    assert mail(qp, "<later@example.com>") == ["550 later line"]
    assert mail(qp, "<later@example.org>") == ["550 later line"]
    errors = [m for level, _, m in log if level == LOGERROR]
    assert len(errors) == 2, errors
    assert errors[0].startswith("ignoring a line of badmailfrom: pattern '^(unclosed' does not compile: ")


# -- who is not checked ------------------------------------------------------------------------

def test_null_sender_is_never_refused(tmp_path):
    qp = bmf_qp(tmp_path, ["@", "^", "! x"])
    log = capture_log(qp)
    assert mail(qp, "<>") == accepted("<>")
    assert (LOGDEBUG, "badmailfrom", "skip, null sender") in log


def test_bare_postmaster_sender_is_not_checked(tmp_path):
    qp = bmf_qp(tmp_path, ["^postmaster"])
    log = capture_log(qp)
    assert mail(qp, "<postmaster>") == accepted("<postmaster>")
    assert (LOGDEBUG, "badmailfrom", "skip, missing user or host") in log


def test_empty_list_skips(tmp_path):
    qp = make_qp(tmp_path, plugins=["badmailfrom", "rcpt_ok"])
    log = capture_log(qp)
    assert mail(qp, "<a@example.com>") == accepted("<a@example.com>")
    assert (LOGDEBUG, "badmailfrom", "skip, empty list") in log


def test_relay_client_is_immune(tmp_path):
    qp = bmf_qp(tmp_path, ["a@example.com"])
    log = capture_log(qp)
    driver = session(qp)
    driver.session.connection.relay_client = True
    assert driver.command("MAIL FROM:<a@example.com>") == accepted("<a@example.com>")
    assert (LOGINFO, "badmailfrom", "skip, relay client") in log


def test_whitelisted_host_is_immune(tmp_path):
    qp = bmf_qp(tmp_path, ["a@example.com"])
    driver = session(qp)
    driver.session.connection.notes["whitelisthost"] = 1
    assert driver.command("MAIL FROM:<a@example.com>") == accepted("<a@example.com>")


def test_is_immune_sender_as_qpsmtpd_tests_it(tmp_path):
    qp = bmf_qp(tmp_path, ["bad@example.com"])
    bad = plugin(qp).entries()
    check = plugin(qp).is_immune_sender
    assert check(Address("matt", "test.com"), [])  # empty list
    assert check(Address.null(), bad)
    assert check(Address("matt", None), bad)  # missing host
    assert check(Address("", "example.com"), bad)  # missing user
    assert not check(Address("matt", "example.com"), bad)


@pytest.mark.parametrize(("address", "entry", "host", "expected"), [
    ("matt@test.net", "matt@test.net", "test.net", True),
    ("matt@test.net", "matt@test.com", "tnpi.net", False),
    ("matt@test.net", "@test.net", "test.net", True),
    ("matt@test.net", "@test.not", "test.net", False),
    ("matt@test.net", "@test.net", "test.not", False),
    ("matt@test.net", "test.net$", "tnpi.net", True),
    ("matt@test.net", "test.not$", "tnpi.net", False),
])
def test_is_match_as_qpsmtpd_tests_it(tmp_path, address, entry, host, expected):
    qp = bmf_qp(tmp_path, [entry])
    assert plugin(qp).is_match(address, plugin(qp).entries()[0], host) is expected


# -- arguments ---------------------------------------------------------------------------------

def test_karma_goes_down_by_one(tmp_path):
    qp = bmf_qp(tmp_path, ["a@example.com"])
    driver = session(qp)
    driver.session.connection.notes["karma"] = 3
    driver.command("MAIL FROM:<a@example.com>")
    assert driver.session.connection.notes["karma"] == 2


def test_reject_0_only_logs(tmp_path):
    qp = bmf_qp(tmp_path, ["a@example.com"], "reject 0")
    log = capture_log(qp)
    assert mail(qp, "<a@example.com>") == accepted("<a@example.com>")
    assert (LOGINFO, "badmailfrom", "fail, tolerated") in log


def test_reject_naughty_stores_the_refusal_for_later(tmp_path):
    qp = bmf_qp(tmp_path, ["a@example.com go away"], "reject naughty reject_type temp")
    driver = session(qp)
    assert driver.command("MAIL FROM:<a@example.com>") == accepted("<a@example.com>")
    notes = driver.session.connection.notes
    assert notes["naughty"] == "(badmailfrom) go away"
    assert notes["naughty_reject_type"] == "temp"


@pytest.mark.parametrize(("reject_type", "reply", "closes"), [
    ("perm", "550", False), ("temp", "450", False), ("soft", "450", False),
    ("disconnect", "550", True), ("temp_disconnect", "421", True),
])
def test_reject_type_chooses_the_code(tmp_path, reject_type, reply, closes):
    qp = bmf_qp(tmp_path, ["a@example.com"], f"reject_type {reject_type}")
    driver = session(qp)
    assert driver.command("MAIL FROM:<a@example.com>") == [f"{reply} Your envelope sender is in my badmailfrom list"]
    assert driver.closed is closes


@pytest.mark.parametrize(("line", "problem"), [
    ("badmailfrom reject", "arguments come in pairs"),
    ("badmailfrom reject 2", "reject must be 0, 1 or naughty, not '2'"),
    ("badmailfrom reject_type sometimes", "reject_type must be one of"),
])
def test_bad_arguments_stop_start_up(tmp_path, line, problem):
    errors = load_errors(tmp_path, line)
    assert len(errors) == 1 and problem in errors[0], errors


def test_unknown_argument_is_logged(tmp_path, capfd):
    config = write_config(tmp_path / "config", {"me": "t.example", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": ["badmailfrom color red"]})
    qp = Qpsmtpd(ConfigReader([config]))
    assert qp.load() == []
    assert "ignoring unknown argument 'color'" in capfd.readouterr().err


def test_edited_file_applies_to_the_next_mail(tmp_path):
    qp = bmf_qp(tmp_path, ["a@example.com"])
    qp.config_reader.recheck_interval = 0
    assert mail(qp, "<a@example.com>") == [DEFAULT]
    (tmp_path / "config" / "badmailfrom").write_text("b@example.com\n")
    assert mail(qp, "<a@example.com>") == accepted("<a@example.com>")
    assert mail(qp, "<b@example.com>") == [DEFAULT]
