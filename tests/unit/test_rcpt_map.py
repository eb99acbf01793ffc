"""The rcpt_map plugin: the recipients of one domain answered from a map file."""

import os

import pytest
from harness import SessionDriver, make_qp, write_config

from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import LOGERROR, LOGWARN
from qpsmtpd_py.qp import Qpsmtpd

# qpsmtpd's documented example, aligned columns and lines without a message included.
MAP = """\
# example_org_map - config for rcpt_map plugin
me@example.org           OK\x20
you@example.org          OK
info@example.org         DENY     User not found.

   Sales@Example.ORG     DENYSOFT try  again later
"""


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def write_map(tmp_path, text=MAP, name="map_example_org"):
    path = tmp_path / name
    path.write_text(text)
    return path


def map_qp(tmp_path, args="", text=MAP, plugins=("rcpt_ok",)):
    path = write_map(tmp_path, text)
    return make_qp(tmp_path, files={"rcpthosts": ["example.org", "example.com"]},
                   plugins=[f"rcpt_map domain example.org file {path} {args}".strip(), *plugins])


def session(qp):
    driver = SessionDriver(qp, remote_ip="192.0.2.9")
    assert driver.take()[0].startswith("220 ")
    assert driver.command("HELO client.example")[0].startswith("250 ")
    assert driver.command("MAIL FROM:<sender@example.net>")[0].startswith("250 ")
    return driver


def rcpt(qp, recipient):
    return session(qp).command(f"RCPT TO:{recipient}")


def ok(recipient):
    return [f"250 {recipient}, recipient ok"]


def load_errors(tmp_path, line):
    config = write_config(tmp_path / "config", {"me": "t.example", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": [line]})
    return [str(error) for error in Qpsmtpd(ConfigReader([config])).load()]


@pytest.mark.parametrize(("recipient", "reply"), [
    ("<me@example.org>", ok("<me@example.org>")),
    ("<You@EXAMPLE.org>", ok("<You@EXAMPLE.org>")),
    ("<info@example.org>", ["550 User not found."]),
    ("<sales@example.org>", ["450 try  again later"]),
    ("<nobody@example.org>", ["550 No such user."]),
])
def test_recipients_of_the_domain_get_the_map_answer(tmp_path, recipient, reply):
    assert rcpt(map_qp(tmp_path), recipient) == reply


def test_other_domains_are_left_to_the_next_plugin(tmp_path):
    qp = map_qp(tmp_path)
    assert rcpt(qp, "<nobody@example.com>") == ok("<nobody@example.com>")
    assert rcpt(qp, "<nobody@sub.example.org>") == ["550 Relaying denied (#5.7.1)"]


def test_domain_argument_ignores_case(tmp_path):
    path = write_map(tmp_path)
    qp = make_qp(tmp_path, plugins=[f"rcpt_map domain Example.ORG file {path}"])
    assert rcpt(qp, "<info@EXAMPLE.org>") == ["550 User not found."]


def test_recipient_without_host_is_not_checked(tmp_path):
    assert rcpt(map_qp(tmp_path), "<postmaster>") == ok("<postmaster>")


@pytest.mark.parametrize(("default", "reply"), [
    ("DENY=User_unknown_here", ["550 User unknown here"]),
    ("DENYSOFT", ["450 No such user."]),
    ("deny=a=b", ["550 a=b"]),
    ("OK", ok("<nobody@example.org>")),
    ("DECLINED", ["550 Relaying denied (#5.7.1)"]),  # rcpt_ok decides, and example.org is not in rcpthosts here
])
def test_default_answers_unlisted_recipients(tmp_path, default, reply):
    path = write_map(tmp_path)
    qp = make_qp(tmp_path, plugins=[f"rcpt_map domain example.org file {path} default {default}", "rcpt_ok"])
    assert rcpt(qp, "<nobody@example.org>") == reply


def test_declined_entry_leaves_the_recipient_to_the_next_plugin(tmp_path):
    qp = map_qp(tmp_path, text="list@example.org DECLINED\n")
    assert rcpt(qp, "<list@example.org>") == ok("<list@example.org>")


def test_disconnecting_entry_closes(tmp_path):
    qp = map_qp(tmp_path, text="trap@example.org DENY_DISCONNECT bye\n")
    driver = session(qp)
    assert driver.command("RCPT TO:<trap@example.org>") == ["550 bye"]
    assert driver.closed


def test_bad_lines_are_logged_and_skipped(tmp_path):
    path = write_map(tmp_path, "a@example.org\nb@example.org REFUSE x\nc@example.org DONE\nd@example.org OK\n")
    config = write_config(tmp_path / "config", {"me": "t.example", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": [f"rcpt_map domain example.org file {path}"]})
    qp = Qpsmtpd(ConfigReader([config]))
    log = capture_log(qp)
    assert qp.load() == []
    errors = [m for level, _, m in log if level == LOGERROR]
    assert errors == [f"No constant in line 1 in {path}",
                      f"Not a valid constant in line 2 in {path}: 'REFUSE'",
                      f"Not a valid constant in line 3 in {path}: 'DONE'"]
    assert rcpt(qp, "<a@example.org>") == ["550 No such user."]
    assert rcpt(qp, "<d@example.org>") == ok("<d@example.org>")


# -- re-reading -----------------------------------------------------------------------------

def test_changed_map_is_read_before_the_next_connection(tmp_path):
    qp = map_qp(tmp_path)
    driver = session(qp)
    path = tmp_path / "map_example_org"
    path.write_text("nobody@example.org OK\n")
    # The session in progress keeps the map it started with.
    assert driver.command("RCPT TO:<nobody@example.org>") == ["550 No such user."]
    assert rcpt(qp, "<nobody@example.org>") == ok("<nobody@example.org>")
    assert rcpt(qp, "<me@example.org>") == ["550 No such user."]


def test_change_within_the_same_second_is_noticed(tmp_path):
    qp = map_qp(tmp_path, text="a@example.org OK\n")
    path = tmp_path / "map_example_org"
    before = os.stat(path)
    path.write_text("a@example.org DENY now refused\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    assert rcpt(qp, "<a@example.org>") == ["550 now refused"]


def test_changed_map_that_is_empty_or_gone_keeps_the_previous_one(tmp_path):
    qp = map_qp(tmp_path)
    log = capture_log(qp)
    path = tmp_path / "map_example_org"
    path.write_text("# nothing left\n")
    assert rcpt(qp, "<info@example.org>") == ["550 User not found."]
    path.unlink()
    assert rcpt(qp, "<info@example.org>") == ["550 User not found."]
    assert rcpt(qp, "<info@example.org>") == ["550 User not found."]
    warnings = [m for level, _, m in log if level == LOGWARN]
    assert len(warnings) == 2, warnings  # once each, not at every connection
    assert warnings[0] == f"keeping the previous map: {path} is now empty"
    assert warnings[1].startswith(f"keeping the previous map: cannot read {path}: ")
    path.write_text("info@example.org OK\n")
    assert rcpt(qp, "<info@example.org>") == ok("<info@example.org>")


# -- arguments --------------------------------------------------------------------------------

def test_map_path_relative_to_the_working_directory(tmp_path, monkeypatch):
    write_map(tmp_path)
    monkeypatch.chdir(tmp_path)
    qp = make_qp(tmp_path, plugins=["rcpt_map domain example.org file map_example_org"])
    assert rcpt(qp, "<info@example.org>") == ["550 User not found."]


def test_two_instances_for_two_domains(tmp_path):
    org = write_map(tmp_path, "a@example.org OK\n", "org")
    com = write_map(tmp_path, "b@example.com OK\n", "com")
    qp = make_qp(tmp_path, plugins=[f"rcpt_map:1 domain example.org file {org}",
                                    f"rcpt_map:2 domain example.com file {com}"])
    assert rcpt(qp, "<a@example.org>") == ok("<a@example.org>")
    assert rcpt(qp, "<b@example.com>") == ok("<b@example.com>")
    assert rcpt(qp, "<b@example.org>") == ["550 No such user."]


@pytest.mark.parametrize(("args", "problem"), [
    ("domain example.org", "No map file given"),
    ("file {map}", "No domain name given"),
    ("domain example.org file {map} default NOPE", "Not a valid constant for 'default' arg: 'NOPE'"),
    ("domain example.org file {map} default DONE=x", "Not a valid constant for 'default' arg: 'DONE'"),
    ("domain example.org file {missing}", "ERROR opening map file"),
    ("domain example.org file {empty}", "Empty map file"),
    ("domain example.org file", "arguments come in pairs"),
])
def test_bad_arguments_stop_start_up(tmp_path, args, problem):
    paths = {"map": write_map(tmp_path), "missing": tmp_path / "missing",
             "empty": write_map(tmp_path, "# only a comment\n", "empty")}
    errors = load_errors(tmp_path, "rcpt_map " + args.format(**paths))
    assert len(errors) == 1 and problem in errors[0], errors
