"""The parse_addr_withhelo plugin: no ESMTP parameters after HELO."""

import pytest
from harness import SessionDriver, make_qp, write_config

from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import DENY, OK
from qpsmtpd_py.qp import Qpsmtpd


def pawh_qp(tmp_path, plugins=("parse_addr_withhelo", "rcpt_ok")):
    return make_qp(tmp_path, plugins=list(plugins))


def greeted(qp, hello="HELO client.example"):
    driver = SessionDriver(qp, remote_ip="192.0.2.9")
    assert driver.take()[0].startswith("220 ")
    assert driver.command(hello)[0].startswith("250")
    return driver


def sender_ok(sender):
    return [f"250 {sender}, sender OK - how exciting to get mail from you!"]


def plugin(qp):
    return next(p for p in qp.plugins if p.name == "parse_addr_withhelo")


def test_parameters_after_helo_are_refused(tmp_path):
    driver = greeted(pawh_qp(tmp_path))
    assert driver.command("MAIL FROM:<a@example.com> SIZE=100") == ["501 No parameters allowed in MAIL"]
    assert driver.command("MAIL FROM:<a@example.com>") == sender_ok("<a@example.com>")
    assert driver.command("RCPT TO:<b@test.example.org> NOTIFY=NEVER") == ["501 No parameters allowed in RCPT"]
    assert driver.command("RCPT TO:<b@test.example.org>") == ["250 <b@test.example.org>, recipient ok"]


def test_parameters_after_ehlo_are_parsed_as_usual(tmp_path):
    driver = greeted(pawh_qp(tmp_path), "EHLO client.example")
    assert driver.command("MAIL FROM:<a@example.com> BODY=8BITMIME") == sender_ok("<a@example.com>")
    assert driver.command("RCPT TO:<b@test.example.org> NOTIFY=NEVER") == ["250 <b@test.example.org>, recipient ok"]


def test_trailing_white_space_after_the_address_is_fine(tmp_path):
    driver = greeted(pawh_qp(tmp_path))
    assert driver.command("MAIL FROM: <a@example.com>   ") == sender_ok("<a@example.com>")


def test_empty_mail_from_is_the_null_sender(tmp_path):
    driver = greeted(pawh_qp(tmp_path))
    assert driver.command("MAIL FROM:") == sender_ok("<>")


@pytest.mark.parametrize(("line", "reply"), [
    ("MAIL <a@example.com>", "501 Syntax error in command"),
    ("MAIL FROM:nobody", "501 Could not parse your MAIL FROM command"),
    ("MAIL FROM:a@example.com SIZE=1", "501 No parameters allowed in MAIL"),
    ("MAIL FROM:a@example.com", "501 could not parse your mail from command"),  # the core wants <>
])
def test_mail_lines_the_parser_refuses(tmp_path, line, reply):
    assert greeted(pawh_qp(tmp_path)).command(line) == [reply]


@pytest.mark.parametrize(("line", "reply"), [
    ("RCPT <b@test.example.org>", "501 Syntax error in command"),
    ("RCPT TO:nobody", "501 Could not parse your RCPT TO command"),
    ("RCPT TO:b@test.example.org NOTIFY=NEVER", "501 No parameters allowed in RCPT"),
])
def test_rcpt_lines_the_parser_refuses(tmp_path, line, reply):
    driver = greeted(pawh_qp(tmp_path))
    driver.command("MAIL FROM:<a@example.com>")
    assert driver.command(line) == [reply]


def test_addresses_without_brackets_work_with_dont_require_anglebrackets(tmp_path):
    qp = pawh_qp(tmp_path, ("dont_require_anglebrackets", "parse_addr_withhelo", "rcpt_ok"))
    driver = greeted(qp)
    assert driver.command("MAIL FROM:a@example.com") == sender_ok("<a@example.com>")
    assert driver.command("RCPT TO:b@test.example.org") == ["250 <b@test.example.org>, recipient ok"]
    assert driver.command("RCPT TO:Postmaster") == ["250 <postmaster>, recipient ok"]


@pytest.mark.parametrize(("command", "line", "expected"), [
    ("mail", "FROM:<a@b.example>", (OK, "<a@b.example>")),
    ("mail", "from:<a@b.example>\t", (OK, "<a@b.example>")),
    ("mail", "FROM:<a@b.example>x", (DENY, "No parameters allowed in MAIL")),
    ("mail", "FROM:<a@b> <c@d>", (OK, "<a@b> <c@d>")),  # up to the last `>`, as qpsmtpd
    ("mail", "FROM:", (OK, "<>")),
    ("mail", "FROM:   ", (OK, "<>")),
    ("mail", "FROM:a@b.example   ", (OK, "a@b.example")),
    ("rcpt", "To:abuse", (OK, "abuse")),
    ("rcpt", "TO:", (DENY, "Could not parse your RCPT TO command")),
    ("rcpt", "FROM:<a@b.example>", (DENY, "Syntax error in command")),
])
def test_parser(tmp_path, command, line, expected):
    assert plugin(pawh_qp(tmp_path)).parse(None, command, line) == expected


def test_odd_arguments_stop_start_up(tmp_path):
    config = write_config(tmp_path / "config", {"me": "t.example", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": ["parse_addr_withhelo strict"]})
    errors = [str(e) for e in Qpsmtpd(ConfigReader([config])).load()]
    assert len(errors) == 1 and "parse_addr_withhelo takes no arguments" in errors[0]
