"""The http_config plugin without a network: arguments, the cache, and its answers.

The HTTP requests are replaced by FakeWeb, whose answers the tests give by
hand, and time by a clock the tests move; tests/integration/test_http_config_wire.py
runs the real HTTP client against a real server.
"""

import pytest
from harness import SessionDriver, make_qp, write_config
from twisted.internet import defer

from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGINFO, LOGWARN, OK
from qpsmtpd_py.qp import Qpsmtpd

WEB = "http://config.example.org/qp/"
BACKUP = "http://backup.example.org/cgi-bin/qp?config="


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeWeb:
    """Stands in for HttpConfig.http_get: records requests, answers when told."""

    def __init__(self):
        self.requests = []  # (url, timeout, Deferred)

    def __call__(self, url, timeout):
        d = defer.Deferred()
        self.requests.append((url, timeout, d))
        return d

    def urls(self):
        return [url for url, _, _ in self.requests]

    def pending(self):
        return [(url, d) for url, _, d in self.requests if not d.called]

    def answer(self, status, body=b"", url=None):
        """Answer the oldest pending request (for `url`, if given)."""
        for pending_url, d in self.pending():
            if url is None or pending_url == url:
                d.callback((status, body))
                return
        raise AssertionError(f"no pending request for {url}: {self.urls()}")

    def fail(self, exc, url=None):
        for pending_url, d in self.pending():
            if url is None or pending_url == url:
                d.errback(exc)
                return
        raise AssertionError(f"no pending request for {url}")


def load(tmp_path, args=WEB, files=None):
    files = {"smtpgreeting": "file greeting", **(files or {})}
    qp = make_qp(tmp_path, files=files, plugins=[f"http_config {args}", "rcpt_ok"])
    plugin = next(p for p in qp.plugins if p.name == "http_config")
    web = FakeWeb()
    plugin.fetch_url = web  # before any lookup: nothing may reach the real client
    plugin.clock = Clock()
    return qp, plugin, web


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, message))
    return lines


def load_errors(tmp_path, line):
    config = write_config(tmp_path / "config", {"me": "test.example.org", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": [line]})
    return [str(error) for error in Qpsmtpd(ConfigReader([config])).load()]


# -- arguments -------------------------------------------------------------------------

def test_qpsmtpds_example_line_still_works(tmp_path):
    # From qpsmtpd's manual: base URLs only, one of them with a query ending in `=`.
    _, plugin, _ = load(tmp_path, "http://localhost/~smtpd/config/ http://www.example.com/cgi-bin/qp?config=")
    assert plugin.urls == ["http://localhost/~smtpd/config/", "http://www.example.com/cgi-bin/qp?config="]
    assert (plugin.timeout, plugin.cache) == (5.0, 60.0)
    assert plugin.args == {}


def test_options_mix_with_urls(tmp_path):
    _, plugin, _ = load(tmp_path, f"timeout=2.5 {WEB} cache=0 {BACKUP} loglevel=-1")
    assert plugin.urls == [WEB, BACKUP]
    assert (plugin.timeout, plugin.cache) == (2.5, 0.0)
    assert plugin.args == {"loglevel": "-1"}


def test_the_standard_loglevel_pair(tmp_path):
    _, plugin, _ = load(tmp_path, f"{WEB} loglevel 6")
    assert plugin.urls == [WEB] and plugin.args == {"loglevel": "6"}


@pytest.mark.parametrize("args, problem", [
    ("", "at least one base URL"),
    ("timeout=3", "at least one base URL"),
    ("ftp://example.org/config/", "neither an http:// or https:// URL nor an option"),
    ("config.example.org/qp/", "neither an http:// or https:// URL nor an option"),
    (f"{WEB} retries=3", "unknown option 'retries'"),
    (f"{WEB} timeout=0", "timeout must be more than 0"),
    (f"{WEB} timeout=5s", "timeout must be a number of seconds"),
    (f"{WEB} cache=-1", "cache must be a number of seconds"),
    (f"{WEB} loglevel=9", "loglevel must be"),
    (f"{WEB} loglevel", "neither an http:// or https:// URL nor an option"),
])
def test_bad_arguments_stop_start_up(tmp_path, args, problem):
    errors = load_errors(tmp_path, f"http_config {args}".strip())
    assert len(errors) == 1 and problem in errors[0], errors


def test_https_needs_tls_support(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None)
    errors = load_errors(tmp_path, "http_config https://config.example.org/qp/")
    assert len(errors) == 1 and "pyOpenSSL" in errors[0], errors


def test_loading_fetches_nothing(tmp_path):
    _, plugin, web = load(tmp_path)
    assert web.requests == [] and plugin._agent is None


# -- the cache ---------------------------------------------------------------------------

def test_first_lookup_uses_the_files_and_fetches_then_the_web_value_is_used(tmp_path):
    qp, plugin, web = load(tmp_path)
    assert qp.config("smtpgreeting") == "file greeting"
    assert web.urls() == [WEB + "smtpgreeting"]
    assert web.requests[0][1] == 5.0
    assert qp.config("smtpgreeting") == "file greeting"  # still in flight: no second request
    assert len(web.requests) == 1
    web.answer(200, b"web greeting\n")
    assert qp.config("smtpgreeting") == "web greeting"
    assert plugin.hook_config(None, "smtpgreeting") == (OK, "web greeting")


def test_the_answer_is_cached_for_the_lifetime_then_refreshed_in_the_background(tmp_path):
    qp, plugin, web = load(tmp_path, f"{WEB} cache=60")
    qp.config("smtpgreeting")
    web.answer(200, b"first")
    plugin.clock.now += 59.9
    assert qp.config("smtpgreeting") == "first"
    assert len(web.requests) == 1
    plugin.clock.now += 0.1
    assert qp.config("smtpgreeting") == "first"  # expired: still served while it is fetched again
    assert len(web.requests) == 2
    web.answer(200, b"second")
    assert qp.config("smtpgreeting") == "second"


def test_cache_zero_fetches_at_every_lookup_but_answers_with_the_previous_value(tmp_path):
    qp, _, web = load(tmp_path, f"{WEB} cache=0")
    assert qp.config("smtpgreeting") == "file greeting"
    web.answer(200, b"one")
    assert qp.config("smtpgreeting") == "one"
    web.answer(200, b"two")
    assert qp.config("smtpgreeting") == "two"
    assert len(web.requests) == 3 and len(web.pending()) == 1


def test_every_setting_is_fetched_and_cached_on_its_own(tmp_path):
    qp, _, web = load(tmp_path, files={"me": "file.example.org"})
    qp.config("smtpgreeting")
    qp.config("me")
    assert web.urls() == [WEB + "smtpgreeting", WEB + "me"]
    web.answer(200, b"web.example.org", url=WEB + "me")
    assert qp.config("me") == "web.example.org"
    assert qp.config("smtpgreeting") == "file greeting"


def test_all_values_of_an_answer_read_like_a_config_file(tmp_path):
    qp, _, web = load(tmp_path)
    qp.config_list("relayclients")
    web.answer(200, b"# trusted\r\n  192.0.2.1  \r\n\r\n\t\n198.51.100.0/24\n$include other\n0\n")
    assert qp.config_list("relayclients") == ["192.0.2.1", "198.51.100.0/24", "$include other", "0"]


def test_a_fetch_that_answers_at_once_is_used_at_once(tmp_path):
    qp, plugin, _ = load(tmp_path)
    plugin.fetch_url = lambda url, timeout: defer.succeed((200, b"instant"))
    assert qp.config("smtpgreeting") == "instant"


def test_names_are_percent_encoded_where_needed(tmp_path):
    qp, _, web = load(tmp_path)
    qp.config("dkim/example.org/selector")
    qp.config("odd name?")
    assert web.urls() == [WEB + "dkim/example.org/selector", WEB + "odd%20name%3F"]


# -- several URLs ---------------------------------------------------------------------------

def test_404_means_not_here_and_the_files_decide(tmp_path):
    qp, plugin, web = load(tmp_path)
    qp.config("smtpgreeting")
    web.answer(404, b"<html>Not Found</html>")
    assert qp.config("smtpgreeting") == "file greeting"
    assert plugin.hook_config(None, "smtpgreeting") == DECLINED
    assert qp.config("databytes") is None  # in no file either
    web.answer(410)
    assert qp.config("databytes") is None


def test_a_404_after_a_value_withdraws_it(tmp_path):
    qp, plugin, web = load(tmp_path, f"{WEB} cache=10")
    qp.config("smtpgreeting")
    web.answer(200, b"web greeting")
    plugin.clock.now += 10
    qp.config("smtpgreeting")
    web.answer(404)
    assert qp.config("smtpgreeting") == "file greeting"


def test_urls_are_tried_in_order_until_one_has_a_value(tmp_path):
    qp, _, web = load(tmp_path, f"{WEB} {BACKUP}")
    qp.config("smtpgreeting")
    web.answer(404, url=WEB + "smtpgreeting")
    assert web.urls() == [WEB + "smtpgreeting", BACKUP + "smtpgreeting"]
    web.answer(200, b"from the backup")
    assert qp.config("smtpgreeting") == "from the backup"


def test_an_empty_answer_is_no_value_and_the_next_url_is_asked(tmp_path):
    qp, _, web = load(tmp_path, f"{WEB} {BACKUP}")
    qp.config("smtpgreeting")
    web.answer(200, b"# nothing here\n\n")
    web.answer(204)
    assert qp.config("smtpgreeting") == "file greeting"
    assert len(web.requests) == 2


def test_the_first_url_with_a_value_wins(tmp_path):
    qp, _, web = load(tmp_path, f"{WEB} {BACKUP}")
    qp.config("smtpgreeting")
    web.answer(200, b"primary")
    assert qp.config("smtpgreeting") == "primary"
    assert web.urls() == [WEB + "smtpgreeting"]


def test_a_failing_url_is_skipped_for_a_later_value(tmp_path):
    qp, _, web = load(tmp_path, f"{WEB} {BACKUP}")
    log = capture_log(qp)
    qp.config("smtpgreeting")
    web.answer(503)
    web.answer(200, b"from the backup")
    assert qp.config("smtpgreeting") == "from the backup"
    assert not [m for level, m in log if level <= LOGWARN]


# -- failures: stale-if-error ---------------------------------------------------------------

def test_a_failed_fetch_keeps_the_last_value_and_is_logged_once(tmp_path):
    qp, plugin, web = load(tmp_path, f"{WEB} cache=30")
    log = capture_log(qp)
    qp.config("smtpgreeting")
    web.answer(200, b"web greeting")
    for status in (500, 502, 500):
        plugin.clock.now += 30
        assert qp.config("smtpgreeting") == "web greeting"
        web.answer(status, b"oops")
        assert qp.config("smtpgreeting") == "web greeting"
    warnings = [m for level, m in log if level == LOGWARN]
    assert warnings == [f"smtpgreeting: fetch failed ({WEB}smtpgreeting: HTTP 500); keeping the last answer "
                        "and trying again every 30 s"]
    plugin.clock.now += 30
    qp.config("smtpgreeting")
    web.answer(200, b"back again")
    assert qp.config("smtpgreeting") == "back again"
    assert (LOGINFO, "smtpgreeting: the web servers answer again") in log
    # A later failure is news again.
    plugin.clock.now += 30
    qp.config("smtpgreeting")
    web.answer(500)
    assert len([m for level, m in log if level == LOGWARN]) == 2


def test_a_failure_is_retried_after_the_cache_lifetime_not_at_every_lookup(tmp_path):
    qp, plugin, web = load(tmp_path, f"{WEB} cache=30")
    qp.config("smtpgreeting")
    web.fail(ConnectionRefusedError("Connection refused"))
    for _ in range(5):
        assert qp.config("smtpgreeting") == "file greeting"
    assert len(web.requests) == 1
    plugin.clock.now += 30
    qp.config("smtpgreeting")
    assert len(web.requests) == 2


def test_a_never_fetched_setting_that_fails_uses_the_files(tmp_path):
    qp, _, web = load(tmp_path)
    log = capture_log(qp)
    qp.config("smtpgreeting")
    web.fail(defer.TimeoutError())
    assert qp.config("smtpgreeting") == "file greeting"
    assert [m for level, m in log if level == LOGWARN] == [
        f"smtpgreeting: fetch failed ({WEB}smtpgreeting: no answer within 5 s); using the config files "
        "and trying again every 60 s"]


def test_an_error_then_a_404_is_a_failure_not_a_missing_setting(tmp_path):
    # The first URL might have had it: keep what we had rather than fall back to the files.
    qp, plugin, web = load(tmp_path, f"{WEB} {BACKUP} cache=5")
    log = capture_log(qp)
    qp.config("smtpgreeting")
    web.answer(200, b"primary")
    plugin.clock.now += 5
    qp.config("smtpgreeting")
    web.fail(defer.CancelledError(), url=WEB + "smtpgreeting")
    web.answer(404, url=BACKUP + "smtpgreeting")
    assert qp.config("smtpgreeting") == "primary"
    assert [m for level, m in log if level == LOGWARN][0].startswith(
        f"smtpgreeting: fetch failed ({WEB}smtpgreeting: no answer within 5 s)")


def test_in_the_master_nothing_is_fetched_and_nothing_is_remembered(tmp_path):
    qp, plugin, web = load(tmp_path)
    module = __import__(type(plugin).__module__, fromlist=["NoReactor"])
    log = capture_log(qp)

    def no_reactor(url, timeout):
        raise module.NoReactor("the Twisted reactor was used in the master process")

    plugin.fetch_url = no_reactor
    assert qp.config("smtpgreeting") == "file greeting"
    assert plugin._fetching == set() and plugin._due == {}
    assert not [m for level, m in log if level < LOGDEBUG]
    plugin.fetch_url = web  # in a child, the first lookup fetches
    assert qp.config("smtpgreeting") == "file greeting"
    assert web.urls() == [WEB + "smtpgreeting"]


# -- in a session ---------------------------------------------------------------------------

def test_the_second_sessions_greeting_comes_from_the_web(tmp_path):
    qp, _, web = load(tmp_path)
    first = SessionDriver(qp)
    assert first.take()[0] == "220 file greeting ESMTP"
    # The session factory looked its settings up first (databytes, timeout, ...).
    assert WEB + "databytes" in web.urls()
    web.answer(200, b"web greeting ESMTP", url=WEB + "smtpgreeting")
    second = SessionDriver(qp)
    assert second.take()[0] == "220 web greeting ESMTP"


def test_answers_arriving_later_are_not_logged_under_the_session_that_asked(tmp_path, monkeypatch):
    import os

    from qpsmtpd_py import log as log_module

    qp, _, web = load(tmp_path)
    lines = []
    monkeypatch.setattr(log_module, "write_line", lines.append)
    session = SessionDriver(qp)
    session.take()
    session.close()
    web.answer(500, url=WEB + "smtpgreeting")
    assert [line for line in lines if "fetch failed" in line] == [
        f"{os.getpid()} http_config: smtpgreeting: fetch failed ({WEB}smtpgreeting: HTTP 500); "
        "using the config files and trying again every 60 s"]
