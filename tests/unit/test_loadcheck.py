"""The loadcheck plugin, with the load read from a test file, a fake getloadavg or a fake uptime."""

import os

import pytest
from harness import SessionDriver, make_qp
from twisted.internet import defer

from qpsmtpd_py.constants import LOGDEBUG, LOGERROR

TOO_HIGH = ["450 Server load too high, please try again later."]


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def write_load(path, load):
    path.write_text(f"{load} 0.40 0.30 1/123 4567\n")


def loadcheck_qp(tmp_path, args="", load=None):
    """A qp with loadcheck reading <tmp_path>/loadavg (written with `load` unless None)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    loadavg = tmp_path / "loadavg"
    if load is not None:
        write_load(loadavg, load)
    qp = make_qp(tmp_path, plugins=[f"loadcheck loadavg {loadavg} {args}".strip(), "rcpt_ok"])
    plugin = loaded(qp)
    plugin.now = Clock()
    plugin.in_thread = lambda function: defer.maybeDeferred(function)
    return qp, plugin, loadavg


def loaded(qp):
    return next(p for p in qp.plugins if p.name == "loadcheck")


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def greeting(qp):
    driver = SessionDriver(qp)
    reply = driver.take()
    return reply, driver.closed


def test_low_load_is_accepted(tmp_path):
    qp, _, _ = loadcheck_qp(tmp_path, load="0.52")
    log = capture_log(qp)
    reply, closed = greeting(qp)
    assert reply[0].startswith("220 ") and not closed
    assert any(level == LOGDEBUG and message.endswith("loadavg reported: 0.52") for level, _, message in log)


def test_high_load_is_refused(tmp_path):
    qp, _, _ = loadcheck_qp(tmp_path, load="8.50")
    log = capture_log(qp)
    assert greeting(qp) == (TOO_HIGH, True)
    assert (LOGERROR, "loadcheck", "local load too high: 8.5") in log


def test_load_equal_to_max_is_accepted(tmp_path):
    qp, _, _ = loadcheck_qp(tmp_path, load="7.00")
    assert greeting(qp)[0][0].startswith("220 ")


def test_max_load(tmp_path):
    qp, _, _ = loadcheck_qp(tmp_path, "max_load 2.5", load="3.10")
    assert greeting(qp) == (TOO_HIGH, True)
    qp, _, _ = loadcheck_qp(tmp_path / "other", "max_load 12", load="11.9")
    assert greeting(qp)[0][0].startswith("220 ")


def test_defaults_and_zero_means_default(tmp_path):
    for args in ("", "max_load 0 cache_time 0 uptime 0"):
        _, plugin, _ = loadcheck_qp(tmp_path, args, load="1")
        assert (plugin.max_load, plugin.cache_time) == (7, 10)
        assert plugin.uptime == "/usr/bin/uptime"


def test_load_is_cached(tmp_path):
    qp, plugin, loadavg = loadcheck_qp(tmp_path, "cache_time 30", load="9.0")
    assert greeting(qp) == (TOO_HIGH, True)
    write_load(loadavg, "0.1")
    plugin.now.now += 30  # not more than cache_time later: the old value holds
    assert greeting(qp) == (TOO_HIGH, True)
    plugin.now.now += 0.5
    assert greeting(qp)[0][0].startswith("220 ")
    write_load(loadavg, "9.0")
    plugin.now.now += 10
    assert greeting(qp)[0][0].startswith("220 ")


def test_unreadable_value_keeps_the_last_one(tmp_path):
    qp, plugin, loadavg = loadcheck_qp(tmp_path, load="9.0")
    log = capture_log(qp)
    greeting(qp)
    loadavg.write_text("garbage\n")
    plugin.now.now += 60
    assert greeting(qp) == (TOO_HIGH, True)
    assert any(level == LOGERROR and message.startswith("cannot read ") for level, _, message in log)


def test_getloadavg_when_there_is_no_loadavg_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (9.25, 1.0, 1.0))
    qp, plugin, _ = loadcheck_qp(tmp_path)
    assert plugin.method == plugin.system_loadavg
    assert greeting(qp) == (TOO_HIGH, True)


def fake_uptime(tmp_path, output):
    path = tmp_path / "uptime"
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(("output", "refused"), [
    ("10:33AM  up  2:06, 1 user, load averages: 9.55, 3.76, 2.48", True),
    ("12:29am  2 users,  load average: 0.05, 0.05, 0.06", False),
    ("12:30am  up 5 days, 12:43,  1 user,  load average: 7.01, 0.00, 0.00", True),
])
def test_uptime_when_nothing_else_works(tmp_path, monkeypatch, output, refused):
    monkeypatch.delattr(os, "getloadavg")
    program = fake_uptime(tmp_path, output)
    qp, plugin, _ = loadcheck_qp(tmp_path, f"uptime {program}")
    assert plugin.method == plugin.run_uptime
    reply, closed = greeting(qp)
    assert (reply == TOO_HIGH) == refused and closed == refused


def test_uptime_output_without_a_load(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "getloadavg")
    qp, plugin, _ = loadcheck_qp(tmp_path, f"uptime {fake_uptime(tmp_path, 'no idea')}")
    log = capture_log(qp)
    assert greeting(qp)[0][0].startswith("220 ")
    assert plugin.load == -1
    assert any(level == LOGERROR and message.startswith("cannot read the load from ") for level, _, message in log)


def test_no_way_to_measure_no_hook(tmp_path, monkeypatch):
    from qpsmtpd_py.log import Logger

    monkeypatch.delattr(os, "getloadavg")
    logged = []
    monkeypatch.setattr(Logger, "log", lambda self, level, message, hook=None, plugin=None:
                        logged.append((level, plugin, message)))
    qp = make_qp(tmp_path, plugins=[f"loadcheck loadavg {tmp_path}/none uptime {tmp_path}/none", "rcpt_ok"])
    monkeypatch.undo()
    assert "connect" not in qp.hooks
    assert (LOGERROR, "loadcheck", "unable to acquire system load") in logged


def test_proc_loadavg_is_the_default(tmp_path):
    qp = make_qp(tmp_path, plugins=["loadcheck", "rcpt_ok"])
    plugin = loaded(qp)
    assert plugin.loadavg == "/proc/loadavg"
    if os.access("/proc/loadavg", os.R_OK):
        assert plugin.method == plugin.read_loadavg


@pytest.mark.parametrize("args", ["max_load", "max_load high", "cache_time 1m"])
def test_bad_arguments_stop_start_up(tmp_path, args):
    with pytest.raises(AssertionError, match="loadcheck"):
        make_qp(tmp_path, plugins=[f"loadcheck {args}", "rcpt_ok"])
