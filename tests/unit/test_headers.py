"""The headers plugin: required and single-instance fields, the Date window, reject settings."""

import time

import pytest
from harness import SessionDriver, make_qp, plugin_source

from qpsmtpd_py.constants import LOGINFO, LOGWARN

# Accepts every message, so a message that headers lets through gets `250 Queued`.
QUEUE = plugin_source("""
    class Queue(Plugin):
        def hook_queue(self, transaction):
            return OK, "Queued"
""")
QUEUED = ["250 Queued"]
NOW = 1_800_000_000.0  # a fixed "now" for the Date window
DAY = 86400
GOOD = "From: <matt@example.com>\r\nDate: {date}\r\nSubject: hi\r\n\r\nbody\r\n"


def rfc_date(stamp):
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(stamp))


def ctime_date(stamp):
    # The form qpsmtpd's own test used (local time, no zone).
    return time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(stamp))


def headers_qp(tmp_path, args="", before=(), after=(), files=None):
    qp = make_qp(tmp_path, files=files, plugins=[*before, f"headers {args}".strip(), *after, "rcpt_ok", "queue"],
                 plugin_files={"queue": QUEUE})
    plugin(qp).now = lambda: NOW
    return qp


def plugin(qp, name="headers"):
    return next(p for p in qp.plugins if p.name == name)


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def session(qp, ip="192.0.2.9"):
    driver = SessionDriver(qp, remote_ip=ip)
    assert driver.take()[0].startswith("220 ")
    assert driver.command("HELO client.example")[0].startswith("250 ")
    return driver


def send(qp, message, driver=None):
    """The replies to one message (MAIL to the end of DATA)."""
    driver = driver or session(qp)
    assert driver.command("MAIL FROM:<matt@example.com>")[0].startswith("250 ")
    assert driver.command("RCPT TO:<user@test.example.org>")[0].startswith("250 ")
    assert driver.command("DATA") == ["354 go ahead"]
    driver.send(message.encode() + b".\r\n")
    return driver.take()


def good(date=None):
    return GOOD.format(date=rfc_date(NOW if date is None else date))


# -- defaults --------------------------------------------------------------------------

def test_good_message_passes(tmp_path):
    qp = headers_qp(tmp_path)
    log = capture_log(qp)
    assert send(qp, good()) == QUEUED
    assert (LOGINFO, "headers", "pass") in log


def test_defaults(tmp_path):
    p = plugin(headers_qp(tmp_path))
    assert (p.required, p.past, p.future) == (["From"], 0.0, 0.0)
    assert p.args["reject"] == "1" and p.args["reject_type"] == "perm"


def test_empty_message(tmp_path):
    qp = headers_qp(tmp_path)
    log = capture_log(qp)
    assert send(qp, "") == ["552 You must send some data first"]
    assert (LOGINFO, "headers", "fail, no data") in log


def test_headers_missing_when_there_is_no_header_object(tmp_path):
    # The core always parses a header; a plugin that removes it shows the check.
    drop = plugin_source("""
        class Drop(Plugin):
            def hook_data_post(self, transaction):
                transaction.header = None
                return DECLINED
    """)
    qp = make_qp(tmp_path, plugins=["drop", "headers", "rcpt_ok", "queue"],
                 plugin_files={"queue": QUEUE, "drop": drop})
    assert send(qp, good()) == ["552 Headers are missing"]


def test_missing_from(tmp_path):
    qp = headers_qp(tmp_path)
    log = capture_log(qp)
    assert send(qp, "Subject: x\r\n\r\nbody\r\n") == ["552 We require a valid From header"]
    assert (LOGINFO, "headers", "fail, no From header") in log
    assert (LOGINFO, "headers", "fail, RFC 5322 validation errors") in log


def test_blank_from_counts_as_missing(tmp_path):
    qp = headers_qp(tmp_path)
    assert send(qp, "From:   \r\nSubject: x\r\n\r\nbody\r\n") == ["552 We require a valid From header"]


def test_message_without_header_at_all(tmp_path):
    qp = headers_qp(tmp_path)
    assert send(qp, "\r\njust a body\r\n") == ["552 We require a valid From header"]


def test_date_not_required_by_default(tmp_path):
    qp = headers_qp(tmp_path)
    assert send(qp, "From: a@example.com\r\n\r\nbody\r\n") == QUEUED


def test_field_names_are_case_insensitive(tmp_path):
    qp = headers_qp(tmp_path, "require from,DATE")
    assert send(qp, f"FROM: a@example.com\r\ndate: {rfc_date(NOW)}\r\n\r\nbody\r\n") == QUEUED


# -- require ----------------------------------------------------------------------------

def test_require_several_fields_gives_one_line_each(tmp_path):
    qp = headers_qp(tmp_path, "require From,Date,Subject")
    assert send(qp, "To: x@example.com\r\n\r\nbody\r\n") == [
        "552-We require a valid From header",
        "552-We require a valid Date header",
        "552 We require a valid Subject header",
    ]


def test_require_replaces_the_default(tmp_path):
    qp = headers_qp(tmp_path, "require Subject")
    assert send(qp, "Subject: hi\r\n\r\nno from\r\n") == QUEUED


def test_require_is_per_plugin_line(tmp_path):
    # qpsmtpd kept one list for every instance; each line has its own here.
    qp = make_qp(tmp_path, plugins=["headers require Subject", "headers:1 require From", "rcpt_ok", "queue"],
                 plugin_files={"queue": QUEUE})
    assert plugin(qp).required == ["Subject"] and plugin(qp, "headers_3a1").required == ["From"]


# -- single-instance fields -------------------------------------------------------------

@pytest.mark.parametrize("name", ["Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc",
                                  "Message-Id", "In-Reply-To", "References", "Subject"])
def test_single_instance_fields(tmp_path, name):
    qp = headers_qp(tmp_path)
    log = capture_log(qp)
    value = rfc_date(NOW) if name == "Date" else "x@example.com"
    message = f"From: a@example.com\r\n{name}: {value}\r\n{name.lower()}: {value}\r\n\r\nbody\r\n"
    if name == "From":
        message = "From: a@example.com\r\nfrom: b@example.com\r\n\r\nbody\r\n"
    assert send(qp, message) == [f"552 Only one {name} header allowed. See RFC 5322, Section 3.6"]
    assert (LOGINFO, "headers", f"fail, too many {name} headers") in log


def test_repeatable_fields_may_repeat(tmp_path):
    qp = headers_qp(tmp_path)
    message = ("From: a@example.com\r\nReceived: one\r\nReceived: two\r\nComments: a\r\nComments: b\r\n"
               "Keywords: a\r\nKeywords: b\r\n\r\nbody\r\n")
    assert send(qp, message) == QUEUED


def test_blank_first_instance_is_not_counted(tmp_path):
    qp = headers_qp(tmp_path)
    assert send(qp, "From: a@example.com\r\nSubject:\r\nSubject: x\r\n\r\nbody\r\n") == QUEUED


def test_missing_and_repeated_together(tmp_path):
    qp = headers_qp(tmp_path)
    assert send(qp, "To: a@example.com\r\nTo: b@example.com\r\n\r\nbody\r\n") == [
        "552-We require a valid From header",
        "552 Only one To header allowed. See RFC 5322, Section 3.6",
    ]


def test_each_failure_costs_one_karma(tmp_path):
    qp = headers_qp(tmp_path, "past 1")
    driver = session(qp)
    send(qp, f"To: a@example.com\r\nTo: b@example.com\r\nDate: {rfc_date(NOW - 3 * DAY)}\r\n\r\nbody\r\n",
         driver)
    assert driver.session.connection.notes["karma"] == -3


# -- the Date window --------------------------------------------------------------------

def test_date_too_far_in_the_past(tmp_path):
    qp = headers_qp(tmp_path, "past 2")
    log = capture_log(qp)
    date = rfc_date(NOW - 3 * DAY)
    assert send(qp, good(NOW - 3 * DAY)) == ["552 The Date header is too far in the past"]
    assert (LOGINFO, "headers", f"fail, date too old ({date})") in log
    assert (LOGINFO, "headers", "fail, The Date header is too far in the past") in log


def test_date_too_far_in_the_future(tmp_path):
    qp = headers_qp(tmp_path, "future 2")
    log = capture_log(qp)
    date = rfc_date(NOW + 3 * DAY)
    assert send(qp, good(NOW + 3 * DAY)) == ["552 The Date header is too far in the future"]
    assert (LOGINFO, "headers", f"fail, date in future ({date})") in log


@pytest.mark.parametrize(("offset", "refused"), [
    (6 * DAY, True), (3 * DAY, True), (1 * DAY, False), (0, False),
    (-1 * DAY, False), (-3 * DAY, True), (-6 * DAY, True),
])
def test_date_window_as_qpsmtpd_tests_it(tmp_path, offset, refused):
    # qpsmtpd's test_invalid_date_range: future 2 / past 2, ctime-style dates in local time.
    qp = headers_qp(tmp_path, "future 2 past 2")
    message = f"From: <matt@example.com>\r\nDate: {ctime_date(NOW + offset)}\r\n\r\nbody\r\n"
    reply = send(qp, message)
    assert (reply != QUEUED) == refused, reply


def test_date_window_edges_and_fractions(tmp_path):
    qp = headers_qp(tmp_path, "past 0.5 future 0.5")
    assert send(qp, good(NOW - DAY / 2)) == QUEUED
    assert send(qp, good(NOW - DAY / 2 - 1)) == ["552 The Date header is too far in the past"]
    assert send(qp, good(NOW + DAY / 2)) == QUEUED
    assert send(qp, good(NOW + DAY / 2 + 1)) == ["552 The Date header is too far in the future"]


def test_dates_are_not_checked_without_past_or_future(tmp_path):
    qp = headers_qp(tmp_path)
    assert send(qp, good(NOW - 400 * DAY)) == QUEUED
    assert send(qp, good(NOW + 400 * DAY)) == QUEUED


def test_zero_means_not_checked(tmp_path):
    qp = headers_qp(tmp_path, "past 0 future 0")
    assert send(qp, good(NOW - 400 * DAY)) == QUEUED


def test_unparseable_date_is_skipped(tmp_path):
    qp = headers_qp(tmp_path, "past 1 future 1")
    log = capture_log(qp)
    assert send(qp, "From: a@example.com\r\nDate: next tuesday\r\n\r\nbody\r\n") == QUEUED
    assert (LOGINFO, "headers", "skip, date not parseable (next tuesday)") in log


def test_date_with_another_zone(tmp_path):
    qp = headers_qp(tmp_path, "future 1")
    # 23:00 -0500 is 04:00 the next day UTC: compared as an instant, not as wall time.
    stamp = NOW + DAY - 3600
    local = time.strftime("%a, %d %b %Y %H:%M:%S -0500", time.gmtime(stamp - 5 * 3600))
    assert send(qp, f"From: a@example.com\r\nDate: {local}\r\n\r\nbody\r\n") == QUEUED
    later = time.strftime("%a, %d %b %Y %H:%M:%S -0500", time.gmtime(stamp + 7200 - 5 * 3600))
    assert send(qp, f"From: a@example.com\r\nDate: {later}\r\n\r\nbody\r\n") == [
        "552 The Date header is too far in the future"]


def test_date_error_wins_over_field_errors(tmp_path):
    qp = headers_qp(tmp_path, "past 1")
    message = f"Date: {rfc_date(NOW - 5 * DAY)}\r\nSubject: a\r\nSubject: b\r\n\r\nbody\r\n"
    assert send(qp, message) == ["552 The Date header is too far in the past"]


def test_first_date_field_is_the_one_checked(tmp_path):
    qp = headers_qp(tmp_path, "past 1")
    message = f"From: a@example.com\r\nDate: {rfc_date(NOW)}\r\nDate: {rfc_date(NOW - 9 * DAY)}\r\n\r\nbody\r\n"
    assert send(qp, message) == ["552 Only one Date header allowed. See RFC 5322, Section 3.6"]


# -- reject and reject_type -------------------------------------------------------------

@pytest.mark.parametrize("reject_type", ["temp", "soft"])
def test_reject_type_temp_defers(tmp_path, reject_type):
    qp = headers_qp(tmp_path, f"reject_type {reject_type} future 5 past 5")
    assert send(qp, "Subject: x\r\n\r\nbody\r\n") == ["452 We require a valid From header"]
    assert send(qp, good(NOW - 6 * DAY)) == ["452 The Date header is too far in the past"]


def test_reject_type_disconnect(tmp_path):
    qp = headers_qp(tmp_path, "reject_type disconnect")
    driver = session(qp)
    assert send(qp, "Subject: x\r\n\r\nbody\r\n", driver) == ["552 We require a valid From header"]
    assert driver.closed


def test_reject_type_perm_is_the_default(tmp_path):
    qp = headers_qp(tmp_path, "reject_type perm")
    assert send(qp, "Subject: x\r\n\r\nbody\r\n") == ["552 We require a valid From header"]


def test_reject_0_only_logs(tmp_path):
    qp = headers_qp(tmp_path, "reject 0 past 1")
    log = capture_log(qp)
    driver = session(qp)
    assert send(qp, "Subject: x\r\n\r\nbody\r\n", driver) == QUEUED
    assert (LOGINFO, "headers", "fail, tolerated, RFC 5322 validation errors") in log
    assert send(qp, good(NOW - 3 * DAY), driver) == QUEUED
    assert send(qp, "", driver) == QUEUED
    assert (LOGINFO, "headers", "fail, tolerated, no data") in log
    # Nothing is left for a naughty plugin (qpsmtpd stored the texts anyway).
    assert "naughty" not in driver.session.connection.notes


def test_reject_1_leaves_no_deferred_rejection(tmp_path):
    qp = headers_qp(tmp_path, after=["naughty"])
    driver = session(qp)
    assert send(qp, "Subject: x\r\n\r\nbody\r\n", driver) == ["552 We require a valid From header"]
    assert send(qp, good(), driver) == QUEUED  # the next message of the session is not refused


def test_reject_naughty_stores_each_text(tmp_path):
    qp = headers_qp(tmp_path, "reject naughty reject_type temp")
    log = capture_log(qp)
    driver = session(qp)
    assert send(qp, "To: a@example.com\r\nTo: b@example.com\r\n\r\nbody\r\n", driver) == QUEUED
    notes = driver.session.connection.notes
    assert notes["naughty"] == ("(headers) We require a valid From header\r\n"
                                "(headers) Only one To header allowed. See RFC 5322, Section 3.6")
    assert notes["naughty_reject_type"] == "temp"
    assert (LOGINFO, "headers", "fail, NAUGHTY, RFC 5322 validation errors") in log


def test_reject_naughty_records_perm_by_default(tmp_path):
    qp = headers_qp(tmp_path, "reject naughty")
    driver = session(qp)
    send(qp, "", driver)
    assert driver.session.connection.notes["naughty"] == "(headers) You must send some data first"
    assert driver.session.connection.notes["naughty_reject_type"] == "perm"


def test_reject_naughty_with_the_naughty_plugin_after_it(tmp_path):
    qp = headers_qp(tmp_path, "reject naughty", after=["naughty reject data_post"])
    assert send(qp, "Subject: x\r\n\r\nbody\r\n") == ["552 (headers) We require a valid From header"]


# -- immunity ---------------------------------------------------------------------------

def test_relay_client_is_immune(tmp_path):
    qp = headers_qp(tmp_path, before=["relay"], files={"relayclients": "192.0.2.9\n"})
    log = capture_log(qp)
    assert send(qp, "Subject: x\r\nSubject: y\r\n\r\nbody\r\n") == QUEUED
    assert (LOGINFO, "headers", "skip, relay client") in log


def test_whitelisted_host_is_immune_but_must_send_data(tmp_path):
    qp = headers_qp(tmp_path, before=["whitelist"], files={"whitelisthosts": "192.0.2.9\n"})
    assert send(qp, "Subject: x\r\n\r\nbody\r\n") == QUEUED
    assert send(qp, "") == ["552 You must send some data first"]


# -- arguments --------------------------------------------------------------------------

@pytest.mark.parametrize("args", ["require", "past soon", "future 1d", "require ,", "reject 2",
                                  "reject_type never"])
def test_bad_arguments_stop_start_up(tmp_path, args):
    with pytest.raises(AssertionError, match="headers"):
        make_qp(tmp_path, plugins=[f"headers {args}", "rcpt_ok"])


def test_unknown_argument_is_logged(tmp_path, monkeypatch):
    logged = []
    from qpsmtpd_py.log import Logger

    original = Logger.log
    monkeypatch.setattr(Logger, "log", lambda self, level, message, hook=None, plugin=None:
                        (logged.append((level, plugin, message)), original(self, level, message, hook, plugin)))
    make_qp(tmp_path, plugins=["headers days 5", "rcpt_ok"])
    assert (LOGWARN, "headers", "ignoring unknown argument 'days'") in logged
