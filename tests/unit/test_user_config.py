"""The user_config plugin: per-user setting directories, and no way out of them."""

import sys

import pytest
from harness import SessionDriver, make_qp, plugin_source, write_config

from qpsmtpd_py.address import Address
from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import DECLINED, LOGINFO, LOGNOTICE, OK
from qpsmtpd_py.qp import Qpsmtpd

JANE = Address("jane", "example.org")


def load(tmp_path, pattern="", files=None, **options):
    line = f"user_config {pattern}".strip()
    qp = make_qp(tmp_path, files=files, plugins=[line, *options.pop("more", ["rcpt_ok"])], **options)
    plugin = next(p for p in qp.plugins if p.name == "user_config")
    return qp, plugin


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def user_dir(tmp_path, *parts, files):
    return write_config(tmp_path.joinpath("users", *parts), files)


def load_errors(tmp_path, line):
    config = write_config(tmp_path / "config", {"me": "test.example.org", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": [line]})
    return [str(error) for error in Qpsmtpd(ConfigReader([config])).load()]


# -- qpsmtpd's own test, ported ------------------------------------------------------------

def test_qpsmtpd_test_hook_user_config(tmp_path):
    # t/plugin_tests/user_config: pattern <dir>/%u_%h_%a, a file `testfield` holding `testdata`.
    qp, plugin = load(tmp_path, f"{tmp_path}/%u_%h_%a")
    address = Address("testuser", "testhost")
    write_config(tmp_path / "testuser_testhost_testuser@testhost", {"testfield": "testdata"})
    assert plugin.hook_user_config(None, address, "testfield") == (OK, "testdata")
    assert plugin.hook_user_config(None, address, "noconfig") == DECLINED


def test_default_pattern_is_qpsmtpds(tmp_path):
    _, plugin = load(tmp_path)
    assert plugin.pattern == "/home/%u/.qpsmtpd"


# -- lookups ---------------------------------------------------------------------------

def test_values_come_from_the_users_file_others_get_the_global_setting(tmp_path):
    qp, _ = load(tmp_path, f"{tmp_path}/users/%h/%u", files={"spam_level": "5"})
    user_dir(tmp_path, "example.org", "jane", files={"spam_level": "8\n"})
    assert qp.user_config(JANE, "spam_level") == ["8"]
    assert qp.user_config(Address("bob", "example.org"), "spam_level") == ["5"]  # no directory
    assert qp.user_config(JANE, "other") == []  # directory, but no such file
    assert qp.config("spam_level") == "5"


def test_files_are_read_like_global_config_files(tmp_path):
    qp, _ = load(tmp_path, f"{tmp_path}/users/%u")
    user_dir(tmp_path, "jane", files={
        "whitelist": "# my friends\n\n  friend@example.net  \n$include more_friends\n",
        "more_friends": "pal@example.com\n",
    })
    assert qp.user_config(JANE, "whitelist") == ["friend@example.net", "pal@example.com"]


def test_a_file_without_values_counts_as_absent(tmp_path):
    qp, plugin = load(tmp_path, f"{tmp_path}/users/%u", files={"whitelist": "global@example.org"})
    user_dir(tmp_path, "jane", files={"whitelist": "# nothing yet\n"})
    assert plugin.hook_user_config(None, JANE, "whitelist") == DECLINED
    assert qp.user_config(JANE, "whitelist") == ["global@example.org"]


def test_a_directory_named_like_the_setting_is_not_a_file(tmp_path):
    _, plugin = load(tmp_path, f"{tmp_path}/users/%u")
    (tmp_path / "users" / "jane" / "whitelist").mkdir(parents=True)
    assert plugin.hook_user_config(None, JANE, "whitelist") == DECLINED


def test_the_three_placeholders_and_a_lower_cased_domain(tmp_path):
    _, plugin = load(tmp_path, f"{tmp_path}/users/%h/%u/%a")
    user_dir(tmp_path, "example.org", "Jane", "Jane@example.org", files={"x": "found"})
    assert plugin.hook_user_config(None, Address("Jane", "Example.ORG"), "x") == (OK, "found")


def test_placeholders_are_replaced_in_one_pass(tmp_path):
    # qpsmtpd replaced %u, then %h in the result: a local part `%h` became the domain.
    _, plugin = load(tmp_path, f"{tmp_path}/users/%u")
    user_dir(tmp_path, "%h", files={"x": "literal"})
    user_dir(tmp_path, "example.org", files={"x": "expanded twice"})
    assert plugin.hook_user_config(None, Address("%h", "example.org"), "x") == (OK, "literal")


def test_addresses_may_be_given_as_strings(tmp_path):
    _, plugin = load(tmp_path, f"{tmp_path}/users/%h/%u")
    user_dir(tmp_path, "example.org", "jane", files={"x": "1"})
    assert plugin.hook_user_config(None, "<jane@Example.org>", "x") == (OK, "1")
    assert plugin.hook_user_config(None, "jane@example.org", "x") == (OK, "1")


def test_the_null_sender_and_a_missing_domain_are_declined(tmp_path):
    qp, plugin = load(tmp_path, f"{tmp_path}/users/%h/%u")
    log = capture_log(qp)
    user_dir(tmp_path, "postmaster", files={"x": "1"})
    assert plugin.hook_user_config(None, Address.null(), "x") == DECLINED
    assert plugin.hook_user_config(None, Address("postmaster", None), "x") == DECLINED
    assert (LOGINFO, "user_config", "skip, the address has no domain for %h") in log


def test_without_a_domain_a_is_the_local_part(tmp_path):
    _, plugin = load(tmp_path, f"{tmp_path}/users/%a")
    user_dir(tmp_path, "postmaster", files={"x": "1"})
    assert plugin.hook_user_config(None, Address.parse("<postmaster>"), "x") == (OK, "1")


def test_edits_apply_to_the_next_lookup_and_readers_are_cached(tmp_path):
    qp, plugin = load(tmp_path, f"{tmp_path}/users/%u")
    directory = user_dir(tmp_path, "jane", files={"x": "old"})
    assert qp.user_config(JANE, "x") == ["old"]
    reader = plugin.reader(str(directory))
    assert plugin.reader(str(directory)) is reader
    reader.recheck_interval = 0  # rather than waiting a second
    (directory / "x").write_text("newer value\n")
    assert qp.user_config(JANE, "x") == ["newer value"]
    (directory / "x").unlink()
    assert qp.user_config(JANE, "x") == []


def test_the_reader_cache_is_bounded(tmp_path, monkeypatch):
    _, plugin = load(tmp_path, f"{tmp_path}/users/%u")
    monkeypatch.setattr(sys.modules[type(plugin).__module__], "CACHED_DIRECTORIES", 3)
    for number in range(6):
        user_dir(tmp_path, f"u{number}", files={"x": str(number)})
        assert plugin.hook_user_config(None, Address(f"u{number}", "example.org"), "x") == (OK, str(number))
    assert [name.rsplit("/", 1)[1] for name in plugin._readers] == ["u3", "u4", "u5"]


def test_an_error_in_a_users_file_is_logged_and_declined(tmp_path):
    qp, plugin = load(tmp_path, f"{tmp_path}/users/%u")
    log = capture_log(qp)
    user_dir(tmp_path, "jane", files={"x": "$include missing\n"})
    assert plugin.hook_user_config(None, JANE, "x") == DECLINED
    assert any(level == LOGNOTICE and "cannot use" in message and "missing" in message
               for level, _, message in log)


# -- path tricks ---------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "<\"..\"@example.org>",                     # /home/../.qpsmtpd
    "<\".\"@example.org>",                      # /home/./.qpsmtpd
    "<a/../../secret@example.org>",            # a slash in the local part
    "<\"../secret\"@example.org>",
    "<\"\"@example.org>",                       # empty local part: /home//.qpsmtpd
])
def test_a_local_part_cannot_leave_the_patterns_directory(tmp_path, address):
    qp, plugin = load(tmp_path, f"{tmp_path}/home/%u/.qpsmtpd")
    log = capture_log(qp)
    # Where each trick would lead: tmp/.qpsmtpd, tmp/home/.qpsmtpd, tmp/secret/.qpsmtpd.
    for target in (tmp_path, tmp_path / "home", tmp_path / "secret", tmp_path / "home" / "a"):
        write_config(target / ".qpsmtpd", {"x": "stolen"})
    assert plugin.hook_user_config(None, address, "x") == DECLINED
    assert qp.user_config(address, "x") == []
    assert any(level == LOGINFO and message.startswith("skip, ") for level, _, message in log)


def test_a_domain_cannot_leave_the_patterns_directory(tmp_path):
    _, plugin = load(tmp_path, f"{tmp_path}/users/%h/%u")
    write_config(tmp_path / "jane", {"x": "stolen"})
    assert plugin.hook_user_config(None, Address("jane", ".."), "x") == DECLINED
    assert plugin.hook_user_config(None, Address("jane", "a/../.."), "x") == DECLINED


def test_a_control_character_is_refused(tmp_path):
    _, plugin = load(tmp_path, f"{tmp_path}/users/%u")
    assert plugin.hook_user_config(None, Address("ja\x00ne", "example.org"), "x") == DECLINED
    assert plugin.hook_user_config(None, Address("ja\nne", "example.org"), "x") == DECLINED


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", ".", ""])
def test_a_setting_name_cannot_leave_the_users_directory(tmp_path, name):
    _, plugin = load(tmp_path, f"{tmp_path}/users/%h/%u")
    user_dir(tmp_path, "example.org", "jane", files={"a/b": "1"})
    write_config(tmp_path / "users" / "example.org", {"x": "stolen"})
    assert plugin.hook_user_config(None, JANE, name) == DECLINED


def test_a_name_in_a_subdirectory_of_the_users_directory_is_fine(tmp_path):
    _, plugin = load(tmp_path, f"{tmp_path}/users/%u")
    user_dir(tmp_path, "jane", files={"spamassassin/prefs": "required_score 8"})
    assert plugin.hook_user_config(None, JANE, "spamassassin/prefs") == (OK, "required_score 8")


def test_dots_inside_a_name_are_not_a_trick(tmp_path):
    _, plugin = load(tmp_path, f"{tmp_path}/users/%u_%h")
    user_dir(tmp_path, "j..ane_example.org", files={"x": "1"})
    assert plugin.hook_user_config(None, Address("j..ane", "example.org"), "x") == (OK, "1")


# -- arguments ---------------------------------------------------------------------------

def test_loglevel_after_the_pattern(tmp_path):
    _, plugin = load(tmp_path, f"{tmp_path}/users/%u loglevel -1")
    assert plugin.pattern == f"{tmp_path}/users/%u"
    assert plugin.args == {"loglevel": "-1"}


def test_loglevel_without_a_pattern(tmp_path):
    _, plugin = load(tmp_path, "loglevel 6")
    assert plugin.pattern == "/home/%u/.qpsmtpd"


@pytest.mark.parametrize("args, problem", [
    ("/x/%u extra", "unknown argument"),
    ("/x/%u colour blue", "unknown argument"),
    ("/x/%u loglevel 9", "loglevel must be"),
])
def test_bad_arguments_stop_start_up(tmp_path, args, problem):
    errors = load_errors(tmp_path, f"user_config {args}")
    assert len(errors) == 1 and problem in errors[0], errors


def test_a_pattern_without_placeholders_is_warned_about(tmp_path):
    config = write_config(tmp_path / "config", {"me": "test.example.org", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": ["user_config /etc/qpsmtpd-users"]})
    qp = Qpsmtpd(ConfigReader([config]))
    log = capture_log(qp)
    assert qp.load() == []
    assert any("every user shares one directory" in message for _, _, message in log)


# -- in a session -----------------------------------------------------------------------

PER_USER_LIMIT = plugin_source("""
    class PerUserLimit(Plugin):
        def hook_rcpt(self, transaction, recipient, params):
            limit = self.qp.user_config(recipient, "max_size")
            if limit and limit[0] == "0":
                return DENY, f"{recipient.user} takes no mail"
            return DECLINED
""")


def test_a_plugin_reads_per_recipient_settings_during_a_session(tmp_path):
    qp, _ = load(tmp_path, f"{tmp_path}/users/%h/%u", more=["per_user_limit", "rcpt_ok"],
                 files={"max_size": "1000", "rcpthosts": "example.org"},
                 plugin_files={"per_user_limit": PER_USER_LIMIT})
    user_dir(tmp_path, "example.org", "closed", files={"max_size": "0"})
    driver = SessionDriver(qp)
    driver.take()
    driver.command("HELO client.example")
    driver.command("MAIL FROM:<someone@example.net>")
    assert driver.command("RCPT TO:<closed@example.org>") == ["550 closed takes no mail"]
    assert driver.command("RCPT TO:<jane@example.org>")[0].startswith("250 ")
