"""The connection_time plugin: one log line with each session's duration."""

import re
import time

import pytest
from harness import SessionDriver, make_qp, plugin_source, write_config

from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import LOGDEBUG, LOGERROR, LOGINFO, LOGNOTICE, LOGWARN
from qpsmtpd_py.qp import Qpsmtpd

REFUSE_ALL = plugin_source("""
    class RefuseAll(Plugin):
        def hook_pre_connection(self, transaction, info):
            return DENYSOFT
""")


class Clock:
    """Stands in for time.monotonic(); tests move it forward."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)
    return fake


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, hook, plugin, message))
    return lines


def timed_qp(tmp_path, line="connection_time", before=(), after=()):
    return make_qp(tmp_path, plugins=[*before, line, *after, "rcpt_ok"], plugin_files={"refuse_all": REFUSE_ALL})


def plugin_lines(log):
    return [(level, hook, message) for level, hook, plugin, message in log if plugin == "connection_time"]


def test_the_duration_is_logged_after_the_connection_closed(tmp_path, clock):
    qp = timed_qp(tmp_path)
    log = capture_log(qp)
    driver = SessionDriver(qp)
    assert driver.take()[0].startswith("220 ")
    clock.now += 2.3614
    assert driver.command("QUIT")[0].startswith("221 ")
    assert driver.closed
    assert (LOGINFO, "post-connection", "2.361 s.") not in plugin_lines(log)  # still open for the core
    driver.close()
    assert plugin_lines(log)[-1] == (LOGINFO, "post-connection", "2.361 s.")


def test_the_start_is_logged_and_kept_in_the_connection_notes(tmp_path, clock):
    qp = timed_qp(tmp_path)
    log = capture_log(qp)
    before = time.time()
    driver = SessionDriver(qp)
    assert driver.session.connection.notes["connection_start"] == 1000.0
    [(level, hook, message)] = plugin_lines(log)
    assert (level, hook) == (LOGDEBUG, "pre-connection")
    started = re.fullmatch(r"started at (\d+(?:\.\d+)?)", message)
    assert started and before - 1 <= float(started.group(1)) <= time.time() + 1


def test_each_session_has_its_own_clock(tmp_path, clock):
    qp = timed_qp(tmp_path)
    log = capture_log(qp)
    first = SessionDriver(qp)
    clock.now += 10
    second = SessionDriver(qp, remote_ip="192.0.2.7")
    clock.now += 0.5
    second.close()
    first.close()
    assert [message for level, hook, message in plugin_lines(log) if hook == "post-connection"] == [
        "0.500 s.", "10.500 s."]


def test_sessions_refused_before_the_greeting_are_timed_too(tmp_path, clock):
    # Listed after a plugin that refuses every client in pre-connection.
    qp = timed_qp(tmp_path, before=["refuse_all"])
    log = capture_log(qp)
    driver = SessionDriver(qp)
    assert driver.take() == ["451 Sorry, try again later"]
    assert driver.closed
    clock.now += 0.25
    driver.close()
    assert plugin_lines(log)[-1] == (LOGINFO, "post-connection", "0.250 s.")
    assert not [line for line in log if line[0] <= LOGERROR]


def test_a_missing_start_is_an_error(tmp_path, clock):
    qp = timed_qp(tmp_path)
    log = capture_log(qp)
    driver = SessionDriver(qp)
    del driver.session.connection.notes["connection_start"]
    driver.close()
    assert plugin_lines(log)[-1] == (LOGERROR, "post-connection", "Start time not set?!")


# -- arguments ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "level"), [
    ("connection_time loglevel +1", LOGDEBUG),
    ("connection_time loglevel -1", LOGNOTICE),
    ("connection_time loglevel 4", LOGWARN),
    ("connection_time 5", LOGNOTICE),
    ("connection_time LOGNOTICE", LOGNOTICE),
    ("connection_time warn", LOGWARN),
    ("connection_time 0", LOGINFO),  # qpsmtpd: 0 falls back to the default
])
def test_loglevel(tmp_path, clock, line, level):
    qp = timed_qp(tmp_path, line)
    log = capture_log(qp)
    driver = SessionDriver(qp)
    clock.now += 1
    driver.close()
    assert plugin_lines(log)[-1] == (level, "post-connection", "1.000 s.")


def test_a_single_level_applies_to_every_line(tmp_path, clock):
    qp = timed_qp(tmp_path, "connection_time 5")
    log = capture_log(qp)
    SessionDriver(qp).close()
    assert {level for level, _, _ in plugin_lines(log)} == {LOGNOTICE}


def load_errors(tmp_path, line):
    config = write_config(tmp_path / "config", {"me": "test.example.org", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": f"{line}\nrcpt_ok\n"})
    return [str(error) for error in Qpsmtpd(ConfigReader([config])).load()]


@pytest.mark.parametrize("line", ["connection_time +1", "connection_time 8", "connection_time LOGLOUD"])
def test_a_single_argument_that_is_no_level_stops_startup(tmp_path, line):
    [error] = load_errors(tmp_path, line)
    assert "plugin connection_time: a single argument is a log level, 0-7 or a name like LOGINFO" in error


def test_an_odd_number_of_arguments_stops_startup(tmp_path):
    [error] = load_errors(tmp_path, "connection_time loglevel 6 extra")
    assert "plugin connection_time: give `loglevel N`, a single level, or nothing" in error


def test_a_bad_loglevel_stops_startup(tmp_path):
    [error] = load_errors(tmp_path, "connection_time loglevel loud")
    assert "loglevel must be 0-7, +N or -N" in error


def test_an_unknown_argument_is_logged(tmp_path):
    config = write_config(tmp_path / "config", {"me": "test.example.org", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": "connection_time precision 6\n"})
    qp = Qpsmtpd(ConfigReader([config]))
    log = capture_log(qp)
    assert qp.load() == []
    warnings = [(plugin, message) for level, _, plugin, message in log if level == LOGWARN]
    assert warnings == [("connection_time", "ignoring unknown argument 'precision'")]
