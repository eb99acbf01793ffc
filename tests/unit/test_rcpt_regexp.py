"""The rcpt_regexp plugin: recipients answered by address or pattern rules."""

import pytest
from harness import SessionDriver, make_qp, write_config

from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import LOGDEBUG, LOGWARN
from qpsmtpd_py.qp import Qpsmtpd

# The example of qpsmtpd's manual, and the rules it shows for use with rcpt_map.
MANUAL_EXAMPLE = r"""# rcpt_regexp - config for rcpt_regexp plugin
me@myhost.org           OK       Accepting mail
/^user\d+\@doma\.in$/   OK       Accepting mail
info@myhost.com         DENY     User not found.
/^unused\@.*/           DENY     User not found.
/^.*$/                  DECLINED Fall through to next rcpt plugin
"""


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def rr_qp(tmp_path, rules=MANUAL_EXAMPLE, plugins=("rcpt_regexp",)):
    return make_qp(tmp_path, files={"rcpt_regexp": rules}, plugins=list(plugins))


def rcpt(qp, recipient):
    driver = SessionDriver(qp, remote_ip="192.0.2.9")
    assert driver.take()[0].startswith("220 ")
    assert driver.command("HELO client.example")[0].startswith("250 ")
    assert driver.command("MAIL FROM:<sender@example.net>")[0].startswith("250 ")
    return driver.command(f"RCPT TO:{recipient}")


def ok(recipient):
    return [f"250 {recipient}, recipient ok"]


UNDECIDED = ["450 No plugin decided if relaying is allowed"]


@pytest.mark.parametrize(("recipient", "reply"), [
    ("<me@myhost.org>", ok("<me@myhost.org>")),
    ("<ME@MyHost.ORG>", ok("<ME@MyHost.ORG>")),
    ("<user42@doma.in>", ok("<user42@doma.in>")),
    ("<USER42@Doma.IN>", ok("<USER42@Doma.IN>")),
    ("<info@myhost.com>", ["550 User not found."]),
    ("<unused@anywhere.example>", ["550 User not found."]),
    ("<someone@else.example>", UNDECIDED),  # DECLINED: no other rcpt plugin here
])
def test_manual_example(tmp_path, recipient, reply):
    assert rcpt(rr_qp(tmp_path), recipient) == reply


def test_first_matching_line_decides(tmp_path):
    qp = rr_qp(tmp_path, ["/^a/ DENY first", "abc@example.com OK second"])
    assert rcpt(qp, "<abc@example.com>") == ["550 first"]


def test_declined_line_ends_the_search_and_leaves_the_recipient_to_the_next_plugin(tmp_path):
    qp = make_qp(tmp_path, files={"rcpt_regexp": ["/@example\\.org$/ DECLINED", "/./ DENY No such user."],
                                  "rcpthosts": ["example.org", "example.com"]},
                 plugins=["rcpt_regexp", "rcpt_ok"])
    assert rcpt(qp, "<x@example.org>") == ok("<x@example.org>")
    assert rcpt(qp, "<x@example.com>") == ["550 No such user."]


def test_no_match_declines(tmp_path):
    qp = rr_qp(tmp_path, ["a@example.com DENY"], plugins=("rcpt_regexp", "rcpt_ok"))
    assert rcpt(qp, "<b@test.example.org>") == ok("<b@test.example.org>")


@pytest.mark.parametrize(("code", "reply", "closes"), [
    ("OK", ["250 <a@example.com>, recipient ok"], False),
    ("DENY", ["550 go away"], False),
    ("DENYSOFT", ["450 go away"], False),
    ("DENY_DISCONNECT", ["550 go away"], True),
    ("DENYHARD", ["550 go away"], True),
    ("DENYSOFT_DISCONNECT", ["421 go away"], True),
    ("deny", ["550 go away"], False),
])
def test_every_return_code(tmp_path, code, reply, closes):
    qp = rr_qp(tmp_path, [f"a@example.com {code} go away"])
    driver = SessionDriver(qp)
    driver.take()
    driver.command("HELO c.example")
    driver.command("MAIL FROM:<s@example.net>")
    assert driver.command("RCPT TO:<a@example.com>") == reply
    assert driver.closed is closes


def test_deny_without_message_gets_the_core_text(tmp_path):
    assert rcpt(rr_qp(tmp_path, ["a@example.com DENY"]), "<a@example.com>") == ["550 relaying denied"]


def test_message_keeps_its_spaces(tmp_path):
    qp = rr_qp(tmp_path, ["a@example.com   DENY   no  such   user"])
    assert rcpt(qp, "<a@example.com>") == ["550 no  such   user"]


def test_matches_are_logged(tmp_path):
    qp = rr_qp(tmp_path)
    log = capture_log(qp)
    rcpt(qp, "<info@myhost.com>")
    rcpt(qp, "<user7@doma.in>")
    assert (LOGDEBUG, "rcpt_regexp", "String info@myhost.com matched info@myhost.com, returning DENY") in log
    assert (LOGDEBUG, "rcpt_regexp", r"RE /^user\d+\@doma\.in$/ matched user7@doma.in, returning OK") in log


def test_perl_only_syntax_is_translated(tmp_path):
    qp = rr_qp(tmp_path, [r"/^[[:alpha:]]+@example\.com\z/ DENY letters", r"/^\Q$x\E@/ DENY dollar"])
    assert rcpt(qp, "<abc@example.com>") == ["550 letters"]
    assert rcpt(qp, "<ab1@example.com>") == UNDECIDED
    assert rcpt(qp, "<$x@example.com>") == ["550 dollar"]


@pytest.mark.parametrize(("line", "warning"), [
    ("/^(x/ DENY broken", "REGEXP '^(x' not valid: "),
    ("x@example.com", "rcpt_regexp - no return code in 'x@example.com', ignoring this line"),
    ("x@example.com REFUSE no", "rcpt_regexp - 'REFUSE' is not a valid constant, ignoring this line"),
    ("x@example.com DONE no", "rcpt_regexp - 'DONE' is not a valid constant, ignoring this line"),
    ("x@example.com 901 no", "rcpt_regexp - '901' is not a valid constant, ignoring this line"),
])
def test_bad_lines_are_logged_once_and_skipped(tmp_path, line, warning):
    qp = rr_qp(tmp_path, [line, "/^x@/ DENY later line"])
    log = capture_log(qp)
    assert rcpt(qp, "<x@example.com>") == ["550 later line"]
    assert rcpt(qp, "<x@example.com>") == ["550 later line"]
    warnings = [m for level, _, m in log if level == LOGWARN]
    assert len(warnings) == 1 and warnings[0].startswith(warning), warnings


def test_recipient_without_host_is_not_checked(tmp_path):
    qp = rr_qp(tmp_path, ["/./ DENY everything"], plugins=("rcpt_regexp", "rcpt_ok"))
    assert rcpt(qp, "<postmaster>") == ok("<postmaster>")


def test_empty_file_declines(tmp_path):
    qp = make_qp(tmp_path, plugins=["rcpt_regexp", "rcpt_ok"])
    assert rcpt(qp, "<a@test.example.org>") == ok("<a@test.example.org>")


def test_edited_file_applies_to_the_next_rcpt(tmp_path):
    qp = rr_qp(tmp_path, ["a@example.com DENY old"])
    qp.config_reader.recheck_interval = 0
    assert rcpt(qp, "<a@example.com>") == ["550 old"]
    (tmp_path / "config" / "rcpt_regexp").write_text("a@example.com DENY new\n")
    assert rcpt(qp, "<a@example.com>") == ["550 new"]


def test_odd_arguments_stop_start_up(tmp_path):
    config = write_config(tmp_path / "config", {"me": "t.example", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": ["rcpt_regexp strict"]})
    errors = [str(e) for e in Qpsmtpd(ConfigReader([config])).load()]
    assert len(errors) == 1 and "rcpt_regexp takes no arguments" in errors[0]
