"""The help plugin: HELP answered from files."""

import pytest
from harness import SessionDriver, make_qp

from qpsmtpd_py.constants import LOGERROR, LOGWARN

TRY = ["214 Try 'HELP COMMAND' for getting help on COMMAND"]


def none_for(command):
    return [f"214 No help available for SMTP command: {command}"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The daemon's working directory, with a help/ directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "help").mkdir()
    (tmp_path / "help" / "mail").write_text("MAIL FROM:<sender>\n\nStarts a message.\n")
    (tmp_path / "help" / "empty").write_text("")
    return tmp_path


def help_qp(tmp_path, args=""):
    return make_qp(tmp_path, plugins=[f"help {args}".strip(), "rcpt_ok"])


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def load_log(tmp_path, args, monkeypatch):
    from qpsmtpd_py.log import Logger

    logged = []
    monkeypatch.setattr(Logger, "log", lambda self, level, message, hook=None, plugin=None:
                        logged.append((level, plugin, message)))
    qp = help_qp(tmp_path, args)
    monkeypatch.undo()
    return qp, logged


def ask(qp, line):
    driver = SessionDriver(qp)
    driver.take()
    return driver.command(line)


def test_help_alone(workdir):
    assert ask(help_qp(workdir), "HELP") == TRY


def test_default_help_dir(workdir):
    qp = help_qp(workdir)
    assert ask(qp, "HELP MAIL") == ["214-MAIL FROM:<sender>", "214 Starts a message."]
    assert ask(qp, "help mail") == ["214-MAIL FROM:<sender>", "214 Starts a message."]


def test_command_without_a_file(workdir):
    assert ask(help_qp(workdir), "HELP RCPT") == none_for("rcpt")


def test_empty_file(workdir):
    assert ask(help_qp(workdir), "HELP EMPTY") == none_for("empty")


@pytest.mark.parametrize("line", ["HELP ../etc/passwd", "HELP MAIL FROM", "HELP mail.", "HELP mail "])
def test_not_one_word(workdir, line):
    assert ask(help_qp(workdir), line) == ["502 Invalid command name"]


def test_unreadable_file_is_logged(workdir):
    (workdir / "help" / "data").mkdir()  # exists, but cannot be read as a file
    qp = help_qp(workdir)
    log = capture_log(qp)
    assert ask(qp, "HELP DATA") == none_for("data")
    assert any(level == LOGERROR and message.startswith("failed to open help file for data")
               for level, _, message in log)


def test_not_implemented(workdir):
    assert ask(help_qp(workdir, "not_implemented 1"), "HELP MAIL") == ["502 Not implemented."]
    assert ask(help_qp(workdir, "not_implemented 1"), "HELP") == ["502 Not implemented."]


def test_not_implemented_0(workdir):
    qp = help_qp(workdir, "not_implemented 0")
    assert ask(qp, "HELP") == TRY
    # Any argument at all means no default help directory, as in qpsmtpd.
    assert ask(qp, "HELP MAIL") == none_for("mail")


def test_loglevel_alone_keeps_the_default_help_dir(workdir):
    assert ask(help_qp(workdir, "loglevel 7"), "HELP MAIL")[0] == "214-MAIL FROM:<sender>"


def test_help_dir(workdir):
    other = workdir / "elsewhere"
    other.mkdir()
    (other / "rcpt").write_text("RCPT TO:<recipient>\n")
    qp = help_qp(workdir, f"help_dir {other}")
    assert ask(qp, "HELP RCPT") == ["214 RCPT TO:<recipient>"]
    assert ask(qp, "HELP MAIL") == none_for("mail")


def test_command_file_pairs(workdir):
    (workdir / "help" / "ehlo.txt").write_text("Say EHLO.\n")
    (workdir / "texts").mkdir()
    (workdir / "texts" / "vrfy").write_text("We do not tell.\n")
    qp = help_qp(workdir, "EHLO ehlo.txt vrfy texts/vrfy")
    assert ask(qp, "HELP ehlo") == ["214 Say EHLO."]
    assert ask(qp, "HELP VRFY") == ["214 We do not tell."]
    assert ask(qp, "HELP MAIL") == none_for("mail")  # no help_dir: pairs given


def test_command_file_in_the_help_dir(workdir):
    (workdir / "elsewhere").mkdir()
    (workdir / "elsewhere" / "noop.txt").write_text("Does nothing.\n")
    qp = help_qp(workdir, "help_dir elsewhere noop noop.txt")
    assert ask(qp, "HELP NOOP") == ["214 Does nothing."]


def test_configured_file_wins_over_the_help_dir(workdir):
    (workdir / "mine").write_text("My text.\n")
    qp = help_qp(workdir, "help_dir help mail ./mine")
    assert ask(qp, "HELP MAIL") == ["214 My text."]


def test_bad_pairs_are_logged_and_ignored(workdir, monkeypatch):
    qp, logged = load_log(workdir, "data missing.txt quit bad*name help_dir bad$dir x-y z", monkeypatch)
    assert (LOGWARN, "help", "No help file for command 'data'") in logged
    assert (LOGERROR, "help", "Invalid characters in filename for command quit") in logged
    assert (LOGERROR, "help", "Invalid characters in filename for command help_dir") in logged
    assert (LOGWARN, "help", "Invalid argument for the 'help' plugin x-y") in logged
    assert ask(qp, "HELP DATA") == none_for("data")
    assert ask(qp, "HELP MAIL") == none_for("mail")


def test_missing_file_with_a_path(workdir, monkeypatch):
    qp, logged = load_log(workdir, "mail /nonexistent/mail", monkeypatch)
    assert (LOGWARN, "help", "No help file for command 'mail'") in logged


def test_odd_arguments_stop_start_up(workdir):
    with pytest.raises(AssertionError, match="help"):
        help_qp(workdir, "not_implemented")


def test_without_the_plugin_the_core_answers(workdir):
    qp = make_qp(workdir, plugins=["rcpt_ok"])
    assert ask(qp, "HELP")[0].startswith("214-This is qpsmtpd-py")
