"""Logging plugins (config/logging) and the plugins/logging/* plugins."""

from __future__ import annotations

import base64
import os
import re
import socket
import sys
import time

import pytest
from harness import SessionDriver, make_qp, plugin_source, write_config
from twisted.internet.task import Clock

from qpsmtpd_py import log
from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import LOGDEBUG, LOGERROR, LOGNOTICE, LOGWARN
from qpsmtpd_py.log import current_session
from qpsmtpd_py.qp import Qpsmtpd

# `SAY <level> <text>` makes this plugin log <text> at <level> (then 500 as usual).
SPEAK = plugin_source("""
    class Speak(Plugin):
        def hook_unrecognized_command(self, transaction, command, line):
            if command == "say":
                level, text = line.split(" ", 1)
                self.log(int(level), text)
            return DECLINED
""")

# Answers the logging hook too: shows the order of config/logging and config/plugins.
LISTENER = plugin_source("""
    class Listener(Plugin):
        heard = []

        def hook_logging(self, transaction, level, hook, plugin, message):
            self.heard.append(message)
            return DECLINED
""")

HOST = socket.gethostname()


class Captured:
    """The lines written to standard error since the last clear()."""

    def __init__(self, path):
        self.path = path
        self.start = 0

    def __call__(self):
        return self.path.read_bytes()[self.start:].decode().splitlines()

    def clear(self):
        self.start = self.path.stat().st_size


@pytest.fixture
def stderr(tmp_path, monkeypatch):
    path = tmp_path / "stderr"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    monkeypatch.setattr(log, "_stderr_fd", fd)
    yield Captured(path)
    os.close(fd)


def logging_qp(tmp_path, logging, plugins=("speak", "rcpt_ok"), files=None):
    """A loaded qp with these config/logging lines (None: no config/logging file)."""
    files = dict(files or {})
    if logging is not None:
        files["logging"] = list(logging)
    return make_qp(tmp_path, files=files, plugins=plugins, plugin_files={"speak": SPEAK, "listener": LISTENER})


def plugin(qp, name):
    return next(p for p in qp.plugins if p.name == name)


def outside_session(qp, level, message):
    """A line logged by the daemon itself, not by a session."""
    token = current_session.set(None)
    try:
        qp.logger.log(level, message)
    finally:
        current_session.reset(token)


def in_session(driver, level, message, plugin=None):
    """A line logged by the driver's session."""
    token = current_session.set(driver.session)
    try:
        driver.session.qp.logger.log(level, message, plugin=plugin)
    finally:
        current_session.reset(token)


def started(qp, **kwargs):
    driver = SessionDriver(qp, **kwargs)
    driver.take()
    return driver


def session_id(driver):
    return driver.session.connection.id


def load_errors(tmp_path, files):
    files = {"me": "test.example.org", "spool_dir": str(tmp_path / "spool"), **files}
    qp = Qpsmtpd(ConfigReader([write_config(tmp_path / "config", files)]))
    return [str(error) for error in qp.load()]


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
    return value


# -- config/logging in the core ------------------------------------------------------------

def test_config_logging_loads_before_config_plugins(tmp_path):
    qp = logging_qp(tmp_path, ["logging/devnull"], plugins=["listener", "rcpt_ok"])
    assert [p.name for p in qp.plugins] == ["logging::devnull", "listener", "rcpt_ok"]
    assert [entry.name for entry in qp.hooks.entries("logging")] == ["logging::devnull", "listener"]
    assert qp.logger.hook_runner is not None
    outside_session(qp, LOGDEBUG, "heard by every logging plugin")
    assert plugin(qp, "listener").heard == ["heard by every logging plugin"]


def test_every_line_of_config_logging_is_loaded(tmp_path, stderr):
    qp = logging_qp(tmp_path, ["# comment", "logging/warn LOGINFO", "", "logging/connection_id LOGINFO"])
    assert [p.name for p in qp.plugins][:2] == ["logging::warn", "logging::connection_id"]
    started(qp).command("SAY 6 twice")
    assert sum(line.endswith("speak: twice") for line in stderr()) == 2


def test_without_config_logging_the_builtin_writer_logs(tmp_path, stderr):
    qp = logging_qp(tmp_path, None, files={"loglevel": "6"})
    assert qp.logger.hook_runner is None
    driver = started(qp)
    driver.command("SAY 6 plain")
    assert f"{session_id(driver)} (unrecognized_command) speak: plain" in stderr()


def test_config_logging_errors_name_file_and_line(tmp_path):
    errors = load_errors(tmp_path, {"logging": ["# loggers", "logging/warn LOGNONSENSE", "logging/nonesuch"],
                                    "plugins": ["rcpt_ok"]})
    where = tmp_path / "config" / "logging"
    assert len(errors) == 2
    assert errors[0].startswith(f"{where}:2: plugin logging/warn: the log level must be a number")
    assert errors[1].startswith(f"{where}:3: plugin logging/nonesuch: plugin 'logging/nonesuch' not found")


def test_errors_of_both_files_are_reported(tmp_path):
    errors = load_errors(tmp_path, {"logging": ["logging/devnull extra"], "plugins": ["nonesuch"]})
    assert [e.split(": plugin ")[0].rsplit("/", 1)[1] for e in errors] == ["logging:1", "plugins:1"]


# -- logging/warn ---------------------------------------------------------------------------

def test_warn_writes_the_builtin_format_up_to_logwarn(tmp_path, stderr):
    qp = logging_qp(tmp_path, ["logging/warn"], files={"loglevel": "7"})
    stderr.clear()  # the built-in writer logged the loading of the plugins
    driver = started(qp)
    driver.command(f"SAY {LOGWARN} warned")
    driver.command(f"SAY {LOGNOTICE} noticed")
    outside_session(qp, LOGERROR, "the daemon speaks")
    # config/loglevel 7 no longer matters: the plugin took every line.
    assert stderr() == [f"{session_id(driver)} (unrecognized_command) speak: warned",
                        f"{os.getpid()} the daemon speaks"]


@pytest.mark.parametrize("level", ["6", "LOGINFO", "info", "LogInfo"])
def test_warn_level_argument(tmp_path, stderr, level):
    qp = logging_qp(tmp_path, [f"logging/warn {level}"])
    driver = started(qp)
    driver.command("EHLO client.example")
    driver.command(f"SAY {LOGDEBUG} debug")
    lines = stderr()
    assert f"{session_id(driver)} dispatching EHLO client.example" in lines
    assert not [line for line in lines if "speak: debug" in line]


@pytest.mark.parametrize("line, message", [
    ("logging/warn LOGLOUD", "the log level must be a number from 0 to 7 or a name such as LOGINFO"),
    ("logging/warn 6 7", "one argument at most"),
])
def test_warn_bad_arguments_stop_start_up(tmp_path, line, message):
    errors = load_errors(tmp_path, {"logging": [line]})
    assert len(errors) == 1 and message in errors[0]


def test_warn_writes_each_line_with_one_write(tmp_path, stderr, monkeypatch):
    qp = logging_qp(tmp_path, ["logging/warn 6"])
    driver = started(qp)
    writes = []
    monkeypatch.setattr(log.os, "write", lambda fd, data: writes.append(data) or len(data))
    in_session(driver, LOGWARN, "two\nlines", plugin="speak")
    assert writes == [f"{session_id(driver)} speak: two lines\n".encode()]


# -- logging/devnull ----------------------------------------------------------------------

def test_devnull_silences_everything(tmp_path, stderr):
    qp = logging_qp(tmp_path, ["logging/devnull"], files={"loglevel": "7"})
    stderr.clear()
    driver = started(qp)
    driver.command("SAY 0 emergency")
    outside_session(qp, 0, "the daemon speaks")
    assert stderr() == []


def test_devnull_leaves_lines_to_later_logging_plugins(tmp_path, stderr):
    qp = logging_qp(tmp_path, ["logging/devnull", "logging/warn"])
    started(qp).command("SAY 1 alert")
    assert [line.split(" ", 1)[1] for line in stderr()] == ["(unrecognized_command) speak: alert"]


def test_devnull_takes_no_arguments(tmp_path):
    errors = load_errors(tmp_path, {"logging": ["logging/devnull 7"]})
    assert len(errors) == 1 and "takes no arguments" in errors[0]


# -- logging/connection_id and logging/transaction_id --------------------------------------

def test_connection_id_starts_lines_with_the_connection_id(tmp_path, stderr):
    qp = logging_qp(tmp_path, ["logging/connection_id LOGINFO"])
    first, second = started(qp), started(qp)
    first.command("SAY 6 one")
    second.command("SAY 7 not logged")
    second.command("SAY 4 two")
    outside_session(qp, LOGWARN, "daemon")
    assert f"{session_id(second)} dispatching SAY 7 not logged" in stderr()
    assert [line for line in stderr() if "speak:" in line or "daemon" in line] == [
                             f"{session_id(first)} (unrecognized_command) speak: one",
                             f"{session_id(second)} (unrecognized_command) speak: two",
                             f"{os.getpid()} daemon"]
    assert session_id(first) != session_id(second)


def test_connection_id_default_level_is_logwarn(tmp_path, stderr):
    qp = logging_qp(tmp_path, ["logging/connection_id"])
    started(qp).command("SAY 5 notice")
    assert stderr() == []


def test_transaction_id_counts_transactions_of_a_session(tmp_path, stderr):
    qp = logging_qp(tmp_path, ["logging/transaction_id 6"])
    driver = started(qp)
    sid = session_id(driver)
    driver.command("EHLO client.example")
    driver.command("MAIL FROM:<a@example.com>")
    driver.command("RSET")
    driver.command("MAIL FROM:<b@example.com>")
    outside_session(qp, LOGWARN, "daemon")
    lines = stderr()
    # The connection stage is the first transaction; MAIL starts a new one (after its own
    # `dispatching` line), and so does RSET.
    assert lines[:3] == [f"{sid}.1 Connection from [127.0.0.1] [127.0.0.1]",
                         f"{sid}.1 220 test.example.org ESMTP qpsmtpd-py {qp.version} ready; "
                         "send us your mail, but not your spam.",
                         f"{sid}.1 dispatching EHLO client.example"]
    assert f"{sid}.1 dispatching MAIL FROM:<a@example.com>" in lines
    assert f"{sid}.2 250 <a@example.com>, sender OK - how exciting to get mail from you!" in lines
    assert f"{sid}.2 dispatching RSET" in lines
    assert f"{sid}.3 250 OK" in lines
    assert f"{sid}.4 250 <b@example.com>, sender OK - how exciting to get mail from you!" in lines
    assert lines[-1] == f"{os.getpid()} daemon"
    other = started(qp)
    other.command("NOOP")
    assert f"{session_id(other)}.1 dispatching NOOP" in stderr()


def test_transaction_id_default_level_and_bad_level(tmp_path, stderr):
    qp = logging_qp(tmp_path, ["logging/transaction_id"])
    driver = started(qp)
    driver.command("SAY 6 info")
    driver.command("SAY 3 error")
    assert stderr() == [f"{session_id(driver)}.1 (unrecognized_command) speak: error"]
    assert "must be a number" in load_errors(tmp_path / "bad", {"logging": ["logging/transaction_id x"]})[0]


# -- logging/adaptive --------------------------------------------------------------------------

def adaptive_session(tmp_path, arguments=""):
    qp = logging_qp(tmp_path, [f"logging/adaptive {arguments}".strip()])
    driver = started(qp)
    driver.command("EHLO client.example")
    return qp, driver


def test_adaptive_accepted_transaction_is_repeated_with_the_prefix(tmp_path, stderr):
    qp, driver = adaptive_session(tmp_path)
    sid = session_id(driver)
    driver.command("MAIL FROM:<a@example.com>")
    driver.command("SAY 3 an error")  # up to accept (LOGERROR): kept and written at once
    driver.command("SAY 4 a warning")  # up to reject (LOGWARN): written at once only
    driver.command("SAY 5 a notice")  # above both: nowhere
    assert stderr() == [f"{sid} (unrecognized_command) speak: an error",
                        f"{sid} (unrecognized_command) speak: a warning"]
    driver.command("RSET")
    assert stderr()[2:] == [f"{sid} ` (unrecognized_command) speak: an error"]


def test_adaptive_refused_transaction_is_not_repeated(tmp_path, stderr):
    qp, driver = adaptive_session(tmp_path, "accept LOGINFO reject LOGINFO")
    sid = session_id(driver)
    driver.command("MAIL FROM:<a@example.com>")  # ends the connection stage: repeated
    stderr.clear()
    assert driver.command("RCPT TO:<someone@elsewhere.example>")[0].startswith("550")
    driver.command("RSET")
    lines = stderr()
    assert [line for line in lines if line.startswith(f"{sid} (rcpt) rcpt_ok: fail")]  # written at once
    assert not [line for line in lines if line.startswith(f"{sid} ` ")]
    # The refusal marked only its own transaction: the next one is repeated.
    driver.command("MAIL FROM:<b@example.com>")
    driver.command("RCPT TO:<postmaster@test.example.org>")
    driver.command("QUIT")
    repeated = [line for line in stderr() if line.startswith(f"{sid} ` ")]
    assert f"{sid} ` dispatching MAIL FROM:<b@example.com>" in repeated
    assert f"{sid} ` dispatching RCPT TO:<postmaster@test.example.org>" in repeated
    assert not [line for line in repeated if "a@example.com" in line or "elsewhere" in line]


def test_adaptive_connection_stage_is_a_transaction_of_its_own(tmp_path, stderr):
    qp, driver = adaptive_session(tmp_path, "accept 6 reject 6 prefix +")
    sid = session_id(driver)
    driver.command("MAIL FROM:<a@example.com>")
    repeated = [line for line in stderr() if line.startswith(f"{sid} + ")]
    assert repeated == [f"{sid} + Connection from [127.0.0.1] [127.0.0.1]",
                        f"{sid} + 220 test.example.org ESMTP qpsmtpd-py {qp.version} ready; "
                        "send us your mail, but not your spam.",
                        f"{sid} + dispatching EHLO client.example",
                        f"{sid} + 250-test.example.org Hi [127.0.0.1] [127.0.0.1] / 250-PIPELINING / 250 8BITMIME",
                        f"{sid} + dispatching MAIL FROM:<a@example.com>"]


def test_adaptive_refusal_at_connect_is_not_repeated(tmp_path, stderr):
    qp = logging_qp(tmp_path, ["logging/adaptive accept 6 reject 6"], files={"hosts_allow": "127.0.0.1 DENY"},
                    plugins=["hosts_allow", "rcpt_ok"])
    driver = SessionDriver(qp)
    assert driver.take() == ["550 Sorry, service not available to you"]
    driver.close()
    lines = stderr()
    assert f"{session_id(driver)} (pre-connection) hosts_allow: fail, DENY by rule 127.0.0.1/32" in lines
    assert not [line for line in lines if " ` " in line]


def test_adaptive_accept_above_reject_acts_as_reject(tmp_path, stderr):
    qp, driver = adaptive_session(tmp_path, "accept LOGDEBUG reject LOGERROR")
    sid = session_id(driver)
    driver.command("SAY 6 info")
    driver.command("SAY 2 critical")
    driver.command("RSET")
    assert stderr() == [f"{sid} (unrecognized_command) speak: critical",
                        f"{sid} ` (unrecognized_command) speak: critical"]


def test_adaptive_keeps_at_most_1000_lines(tmp_path, stderr):
    qp, driver = adaptive_session(tmp_path)
    sid = session_id(driver)
    for n in range(1003):
        driver.command(f"SAY 1 line {n}")
    driver.command("RSET")
    repeated = [line for line in stderr() if line.startswith(f"{sid} ` ")]
    assert len(repeated) == 1001
    assert repeated[-1] == f"{sid} ` logging::adaptive: 3 more line(s) of this transaction not kept"


@pytest.mark.parametrize("arguments, message", [
    ("accept", "key/value pairs"),
    ("reject LOGLOUD", "the log level must be a number"),
    ("mode 1", "unknown argument 'mode'"),
])
def test_adaptive_bad_arguments_stop_start_up(tmp_path, arguments, message):
    errors = load_errors(tmp_path, {"logging": [f"logging/adaptive {arguments}"]})
    assert len(errors) == 1 and message in errors[0]


# -- logging/file -------------------------------------------------------------------------------

class FakeTime:
    """Stands in for the file plugin's `time` module: wall-clock time set by the test."""

    def __init__(self, now):
        self.now = now

    def time(self):
        return self.now

    def strftime(self, fmt, t=None):
        return time.strftime(fmt, time.localtime(self.now) if t is None else t)

    def monotonic(self):
        return time.monotonic()

    def localtime(self, when=None):
        return time.localtime(self.now if when is None else when)


def file_qp(tmp_path, target, options="", **kwargs):
    qp = logging_qp(tmp_path, [f"logging/file {options} {target}".replace("  ", " ")], **kwargs)
    file_plugin = plugin(qp, "logging::file")
    file_plugin.clock = Clock()
    return qp, file_plugin


def set_time(monkeypatch, file_plugin, when):
    fake = FakeTime(when)
    monkeypatch.setattr(sys.modules[type(file_plugin).__module__], "time", fake)
    return fake


def end(driver, file_plugin):
    driver.close()
    file_plugin.clock.advance(0)


def test_file_writes_timestamped_lines_up_to_logwarn(tmp_path, stderr):
    target = tmp_path / "qpsmtpd.log"
    qp, file_plugin = file_qp(tmp_path, target)
    driver = started(qp)
    driver.command("SAY 4 warned")
    driver.command("SAY 5 noticed")
    outside_session(qp, LOGERROR, "the daemon speaks")
    lines = target.read_text().splitlines()
    stamp = r"\w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}"
    assert len(lines) == 2
    assert re.fullmatch(rf"{stamp} {re.escape(HOST)}\[{os.getpid()}\]: "
                        rf"{re.escape(session_id(driver))} \(unrecognized_command\) speak: warned", lines[0])
    assert re.fullmatch(rf"{stamp} {re.escape(HOST)}\[{os.getpid()}\]: {os.getpid()} the daemon speaks", lines[1])
    assert stderr() == []
    assert target.stat().st_mode & 0o777 == 0o640 & ~current_umask()


def current_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


@pytest.mark.parametrize("level", ["LOGINFO", "6", "info"])
def test_file_loglevel_option(tmp_path, level):
    target = tmp_path / "log"
    qp, _ = file_qp(tmp_path, target, f"loglevel {level}")
    driver = started(qp)
    driver.command("EHLO client.example")
    driver.command("SAY 7 debug")
    text = target.read_text()
    assert f"{session_id(driver)} dispatching EHLO client.example" in text and "speak: debug" not in text


def test_file_tsformat_option(tmp_path, monkeypatch):
    target = tmp_path / "log"
    qp, file_plugin = file_qp(tmp_path, target, "tsformat %Y-%m-%dT%H:%M:%S")
    set_time(monkeypatch, file_plugin, time.mktime((2025, 3, 4, 10, 15, 2, 0, 0, -1)))
    started(qp).command("SAY 1 alert")
    assert target.read_text().startswith(f"2025-03-04T10:15:02 {HOST}[")


def test_file_path_with_spaces_and_options_in_any_case(tmp_path):
    target = tmp_path / "my logs" / "mail log"
    target.parent.mkdir()
    qp, file_plugin = file_qp(tmp_path, target, "NoSplit LOGLEVEL 6 REOPEN")
    assert (file_plugin.level, file_plugin.nosplit, file_plugin.reopen) == (6, True, True)
    started(qp).command("SAY 6 spaced")
    assert "speak: spaced" in target.read_text()


def test_file_strftime_target_changes_files_when_the_expansion_changes(tmp_path, monkeypatch):
    qp, file_plugin = file_qp(tmp_path, tmp_path / "log-%Y%m%d-%H", "loglevel 6")
    clock = set_time(monkeypatch, file_plugin, time.mktime((2025, 3, 4, 10, 59, 0, 0, 0, -1)))
    driver = started(qp)
    driver.command("SAY 6 before")
    clock.now += 120
    driver.command("SAY 6 after")
    assert "before" in (tmp_path / "log-20250304-10").read_text()
    assert "after" in (tmp_path / "log-20250304-11").read_text()
    assert "after" not in (tmp_path / "log-20250304-10").read_text()
    assert list(file_plugin._targets) == [(str(tmp_path / "log-20250304-11"), None)]  # the old one is closed


def test_file_nosplit_keeps_a_session_in_its_first_file(tmp_path, monkeypatch):
    qp, file_plugin = file_qp(tmp_path, tmp_path / "log-%H", "nosplit loglevel 6")
    clock = set_time(monkeypatch, file_plugin, time.mktime((2025, 3, 4, 10, 59, 0, 0, 0, -1)))
    first = started(qp)
    first.command("SAY 6 first-before")
    clock.now += 120
    first.command("SAY 6 first-after")
    second = started(qp)
    second.command("SAY 6 second")
    assert "first-after" in (tmp_path / "log-10").read_text()
    assert "second" in (tmp_path / "log-11").read_text() and "first" not in (tmp_path / "log-11").read_text()
    end(first, file_plugin)
    assert list(file_plugin._targets) == [(str(tmp_path / "log-11"), None)]


def test_file_session_id_in_the_target_gives_a_file_per_session(tmp_path):
    qp, file_plugin = file_qp(tmp_path, tmp_path / "session-%i.log", "loglevel 6")
    first, second = started(qp), started(qp)
    first.command("SAY 6 one")
    second.command("SAY 6 two")
    outside_session(qp, LOGWARN, "daemon")
    assert "speak: one" in (tmp_path / f"session-{session_id(first)}.log").read_text()
    assert "speak: two" in (tmp_path / f"session-{session_id(second)}.log").read_text()
    assert "daemon" in (tmp_path / "session-parent.log").read_text()
    assert len(file_plugin._targets) == 3
    end(first, file_plugin)
    end(second, file_plugin)
    assert list(file_plugin._targets) == [(str(tmp_path / "session-parent.log"), None)]


def test_file_percent_percent_is_a_percent_sign(tmp_path):
    qp, file_plugin = file_qp(tmp_path, tmp_path / "100%%i")
    assert file_plugin.expand("1.2") == str(tmp_path / "100%i")


def test_file_reopen_opens_the_file_anew_for_each_session(tmp_path):
    target = tmp_path / "log"
    qp, file_plugin = file_qp(tmp_path, target, "reopen loglevel 6")
    first = started(qp)
    first.command("SAY 6 one")
    target.rename(tmp_path / "log.1")  # log rotation
    first.command("SAY 6 one-again")  # the session keeps its opening
    second = started(qp)
    second.command("SAY 6 two")
    assert "one-again" in (tmp_path / "log.1").read_text()
    assert "two" in target.read_text() and "one" not in target.read_text()
    end(first, file_plugin)
    end(second, file_plugin)
    assert file_plugin._targets == {}


def test_file_without_reopen_keeps_writing_to_the_open_file(tmp_path):
    target = tmp_path / "log"
    qp, _ = file_qp(tmp_path, target, "loglevel 6")
    started(qp).command("SAY 6 one")
    target.rename(tmp_path / "log.1")
    started(qp).command("SAY 6 two")
    assert "two" in (tmp_path / "log.1").read_text() and not target.exists()


def test_file_each_line_is_one_write(tmp_path, monkeypatch):
    qp, file_plugin = file_qp(tmp_path, tmp_path / "log", "loglevel 6")
    driver = started(qp)
    driver.command("SAY 6 warm up")
    module = sys.modules[type(file_plugin).__module__]
    writes = []
    real_write = os.write
    monkeypatch.setattr(module.os, "write", lambda fd, data: writes.append(bytes(data)) or real_write(fd, data))
    in_session(driver, LOGWARN, "one\nline", plugin="speak")
    assert len(writes) == 1 and writes[0].endswith(b"speak: one line\n") and writes[0].count(b"\n") == 1


def test_file_target_that_cannot_be_opened_goes_to_stderr(tmp_path, stderr):
    directory = tmp_path / "logs"
    directory.mkdir()
    qp, file_plugin = file_qp(tmp_path, directory / "log-%i")
    directory.rmdir()  # the directory vanished after start-up
    driver = started(qp)
    driver.command("SAY 4 one")
    driver.command("SAY 4 two")
    sid = session_id(driver)
    assert stderr() == [
        f"{sid} logging::file: {directory}/log-{sid}: cannot open: No such file or directory; "
        "lines go to standard error, next try in 10s",
        f"{sid} (unrecognized_command) speak: one",
        f"{sid} (unrecognized_command) speak: two",
    ]
    directory.mkdir()
    file_plugin._broken.clear()  # as if 10 s had passed
    driver.command("SAY 4 three")
    assert "speak: three" in (directory / f"log-{sid}").read_text()


@pytest.mark.parametrize("line, message", [
    ("logging/file", "give the file to write to, or |command"),
    ("logging/file loglevel 6", "give the file to write to"),
    ("logging/file loglevel", "loglevel needs a value"),
    ("logging/file |", "give the file to write to"),
    ("logging/file loglevel LOGLOUD /tmp/x", "the log level must be a number"),
    ("logging/file /nonexistent-dir/log", "the directory /nonexistent-dir of the log file does not exist"),
])
def test_file_bad_arguments_stop_start_up(tmp_path, line, message):
    errors = load_errors(tmp_path, {"logging": [line]})
    assert len(errors) == 1 and message in errors[0], errors


def test_file_unwritable_directory_stops_start_up(tmp_path, monkeypatch):
    directory = tmp_path / "ro"
    directory.mkdir(mode=0o500)
    real_access = os.access
    # The tests run as root, who may write anywhere: answer as the daemon's user would.
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(directory) else
                        real_access(path, mode))
    errors = load_errors(tmp_path, {"logging": [f"logging/file {directory}/log"]})
    assert len(errors) == 1 and "make the directory writable" in errors[0]


def test_file_conversions_in_the_directory_are_not_checked(tmp_path):
    assert load_errors(tmp_path, {"logging": [f"logging/file {tmp_path}/%Y/log"]}) == []


# -- logging/file with a command --------------------------------------------------------------

def test_file_command_is_started_once_for_all_sessions(tmp_path, stderr):
    out = tmp_path / "out"
    qp, file_plugin = file_qp(tmp_path, f"|{{ echo START; cat; }} >> {out}", "loglevel 6")
    first, second = started(qp), started(qp)
    first.command("SAY 6 one")
    second.command("SAY 6 two")
    end(first, file_plugin)
    end(second, file_plugin)
    file_plugin.close()
    text = wait_for(lambda: out.exists() and "speak: two" in out.read_text() and out.read_text())
    assert text.count("START") == 1 and "speak: one" in text
    assert stderr() == []


def test_file_command_with_reopen_runs_once_per_session(tmp_path):
    out = tmp_path / "out"
    qp, file_plugin = file_qp(tmp_path, f"|{{ echo START; cat; echo END; }} >> {out}", "reopen loglevel 6")
    first, second = started(qp), started(qp)
    first.command("SAY 6 one")
    second.command("SAY 6 two")
    end(first, file_plugin)
    # The first session's command got end-of-file when its session ended.
    wait_for(lambda: out.exists() and out.read_text().count("END") == 1)
    end(second, file_plugin)
    text = wait_for(lambda: out.read_text().count("END") == 2 and out.read_text())
    assert text.count("START") == 2 and "speak: one" in text and "speak: two" in text


def test_file_command_that_does_not_read_never_blocks(tmp_path, monkeypatch):
    qp, file_plugin = file_qp(tmp_path, "|exec sleep 60", "loglevel 6")
    monkeypatch.setattr(sys.modules[type(file_plugin).__module__], "PIPE_BACKLOG", 200_000)
    driver = started(qp)
    began = time.monotonic()
    try:
        for n in range(3000):  # ~300 KB: more than the pipe and the backlog hold
            driver.command(f"SAY 6 {n:04d} " + "x" * 60)
        assert time.monotonic() - began < 10
        (target,) = file_plugin._targets.values()
        assert target.dropped > 0 and 0 < len(target.pending) <= 200_000
    finally:
        for target in file_plugin._targets.values():
            target.process.kill()
            target.process.wait(5)


def test_file_command_that_exits_is_reported_and_lines_go_to_stderr(tmp_path, stderr):
    qp, file_plugin = file_qp(tmp_path, "|read line; exit 0")
    driver = started(qp)
    sid = session_id(driver)
    driver.command("SAY 4 first")  # starts the command, which reads this line and exits
    (target,) = file_plugin._targets.values()
    target.process.wait(5)
    driver.command("SAY 4 second")
    assert stderr() == [f"{sid} logging::file: |read line; exit 0: cannot write: the command exited; "
                        "lines go to standard error, next try in 10s",
                        f"{sid} (unrecognized_command) speak: second"]
    assert file_plugin._targets == {}
    driver.command("SAY 4 third")  # not tried again for 10 s
    assert stderr()[-1] == f"{sid} (unrecognized_command) speak: third" and len(stderr()) == 3


# -- logging/syslog ---------------------------------------------------------------------------

@pytest.fixture
def syslogd(tmp_path):
    """A unix datagram socket standing in for /dev/log; returns (path, receive())."""
    path = tmp_path / "log.sock"
    assert len(str(path)) < 100
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)

    def received():
        messages = []
        while True:
            try:
                messages.append(sock.recv(65536).decode())
            except BlockingIOError:
                return messages

    yield path, received, sock
    sock.close()


SYSLOG_LINE = re.compile(r"^<(\d+)>(\w{3} [ \d]\d \d\d:\d\d:\d\d) ([\w.-]+)\[(\d+)\]: (.*)$")


def parsed(messages):
    return [SYSLOG_LINE.match(message).groups() for message in messages]


def test_syslog_sends_the_builtin_line_with_the_level_as_severity(tmp_path, syslogd):
    path, received, _ = syslogd
    qp = logging_qp(tmp_path, [f"logging/syslog logsock {path}"])
    driver = started(qp)
    sid = session_id(driver)
    driver.command("SAY 4 warned")
    driver.command("SAY 5 noticed")
    driver.command("SAY 3 failed")
    messages = parsed(received())
    mail = 2 << 3
    assert [(m[0], m[2], m[3], m[4]) for m in messages] == [
        (str(mail | 4), "qpsmtpd", str(os.getpid()), f"{sid} (unrecognized_command) speak: warned"),
        (str(mail | 3), "qpsmtpd", str(os.getpid()), f"{sid} (unrecognized_command) speak: failed"),
    ]


def test_syslog_arguments(tmp_path, syslogd):
    path, received, _ = syslogd
    qp = logging_qp(tmp_path, [f"logging/syslog loglevel LOGINFO priority LOG_NOTICE ident qp-test.1 "
                               f"facility local3 logsock {path}"])
    driver = started(qp)
    driver.command("SAY 6 info")
    driver.command("SAY 7 debug")
    messages = parsed(received())
    local3 = 19 << 3
    assert {(m[0], m[2]) for m in messages} == {(str(local3 | 5), "qp-test.1")}
    assert [m[4].split(" ", 1)[1] for m in messages if "speak:" in m[4]] == ["(unrecognized_command) speak: info"]
    assert not [m for m in messages if "speak: debug" in m[4]]


def test_syslog_numeric_priority_and_timestamp(tmp_path, syslogd, monkeypatch):
    path, received, _ = syslogd
    qp = logging_qp(tmp_path, [f"logging/syslog priority 2 logsock {path}"])
    syslog_plugin = plugin(qp, "logging::syslog")
    monkeypatch.setattr(sys.modules[type(syslog_plugin).__module__], "time", FakeTime(
        time.mktime((2025, 3, 4, 10, 15, 2, 0, 0, -1))))
    started(qp).command("SAY 1 alert")
    assert parsed(received())[0][:2] == (str(16 | 2), "Mar  4 10:15:02")


def test_syslog_unreachable_goes_to_stderr_then_retries(tmp_path, stderr, syslogd, monkeypatch):
    path, received, _ = syslogd
    missing = tmp_path / "missing.sock"
    qp = logging_qp(tmp_path, [f"logging/syslog logsock {missing},{tmp_path}/other.sock"])
    syslog_plugin = plugin(qp, "logging::syslog")
    driver = started(qp)
    sid = session_id(driver)
    driver.command("SAY 4 one")
    driver.command("SAY 4 two")
    assert stderr() == [
        f"{sid} logging::syslog: cannot send to syslog ({missing}, {tmp_path}/other.sock): No such file or "
        "directory; lines go to standard error, next try in 10s",
        f"{sid} (unrecognized_command) speak: one",
        f"{sid} (unrecognized_command) speak: two",
    ]
    # The syslog daemon comes up: the next try (after 10 s) reaches it.
    os.symlink(path, missing)
    syslog_plugin.retry_at = 0.0
    driver.command("SAY 4 three")
    assert [m[4] for m in parsed(received())] == [f"{sid} (unrecognized_command) speak: three"]


def test_syslog_reconnects_when_the_syslog_daemon_restarts(tmp_path, syslogd):
    path, received, sock = syslogd
    qp = logging_qp(tmp_path, [f"logging/syslog logsock {path}"])
    driver = started(qp)
    driver.command("SAY 4 before")
    sock.close()
    path.unlink()
    again = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    again.bind(str(path))
    try:
        driver.command("SAY 4 after")
        assert again.recv(65536).decode().endswith("speak: after")
    finally:
        again.close()


def test_syslog_never_waits_for_a_full_socket(tmp_path, syslogd):
    path, received, sock = syslogd
    qp = logging_qp(tmp_path, [f"logging/syslog logsock {path}"])
    syslog_plugin = plugin(qp, "logging::syslog")
    driver = started(qp)
    began = time.monotonic()
    for n in range(3000):
        driver.command(f"SAY 4 line {n}")
    assert time.monotonic() - began < 10
    assert syslog_plugin.dropped > 0
    dropped = syslog_plugin.dropped
    received()
    driver.command("SAY 4 last")
    assert [m[4].split(" ", 1)[1] for m in parsed(received())] == [
        f"logging::syslog: {dropped} log line(s) dropped: syslog did not keep up",
        "(unrecognized_command) speak: last"]


@pytest.mark.parametrize("arguments, message", [
    ("loglevel", "key/value pairs"),
    ("level 6", "unknown argument 'level'"),
    ("loglevel LOGLOUD", "the log level must be a number"),
    ("priority LOG_LOUD", "priority must be one of LOG_EMERG"),
    ("priority 8", "priority must be one of"),
    ("facility LOG_NONE", "facility must be one of LOG_KERN"),
    ("ident qp/smtpd", "ident may have letters, digits"),
    ("logsock tcp", "logsock 'tcp' is not available"),
    ("logsock unix,stream", "logsock 'stream' is not available"),
])
def test_syslog_bad_arguments_stop_start_up(tmp_path, arguments, message):
    errors = load_errors(tmp_path, {"logging": [f"logging/syslog {arguments}"]})
    assert len(errors) == 1 and message in errors[0], errors


def test_syslog_native_and_udp_are_accepted(tmp_path):
    # Loaded only: nothing is sent, so nothing reaches the real syslog.
    assert load_errors(tmp_path, {"logging": ["logging/syslog logsock native,udp,unix facility mail"]}) == []


# -- credentials never reach a logging plugin --------------------------------------------------

def test_auth_credentials_are_in_no_logging_plugin_output_at_the_default_level(tmp_path, stderr, syslogd):
    path, received, _ = syslogd
    credentials = base64.b64encode(b"\0user@example.com\0s3cret-Passw0rd").decode()
    logfile = tmp_path / "file.log"
    loggers = [f"logging/file loglevel LOGDEBUG {logfile}", "logging/warn LOGDEBUG",
               f"logging/syslog loglevel LOGDEBUG logsock {path}", "logging/adaptive accept 7 reject 7",
               "logging/connection_id LOGDEBUG", "logging/transaction_id LOGDEBUG"]
    qp = logging_qp(tmp_path / "default", loggers)  # no config/loglevel: LOGWARN
    driver = started(qp)
    driver.command("EHLO client.example")
    driver.command(f"AUTH PLAIN {credentials}")
    driver.command("QUIT")
    outputs = {"file": logfile.read_text(), "stderr": "\n".join(stderr()), "syslog": "\n".join(received())}
    for name, text in outputs.items():
        assert f"{session_id(driver)} dispatching AUTH PLAIN" in text, name  # the line itself is logged
        assert credentials not in text and "s3cret" not in text, name

    # Only config/loglevel 7 shows them (to debug an AUTH problem): the test above can fail.
    debug_log = tmp_path / "debug.log"
    qp = logging_qp(tmp_path / "debug", [f"logging/file loglevel 7 {debug_log}"], files={"loglevel": "7"})
    started(qp).command(f"AUTH PLAIN {credentials}")
    assert credentials in debug_log.read_text()
