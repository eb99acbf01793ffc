"""The naughty plugin: deferred rejections carried out at the configured hook."""

import pytest
from harness import SessionDriver, make_qp, plugin_source

from qpsmtpd_py.constants import LOGDEBUG, LOGINFO

# `mark TEXT [REJECT_TYPE]` stores a deferred rejection at connect, as a plugin
# given `reject naughty` does (REJECT_TYPE becomes the note naughty_reject_type).
MARK = plugin_source("""
    class Mark(Plugin):
        def register(self, qp, *args):
            self.text = args[0].replace("_", " ") if args else None
            self.args = {"reject_type": args[1]} if len(args) > 1 else {}

        def hook_connect(self, transaction):
            if self.text == "FLAG":
                self.is_naughty(True)
            elif self.text:
                self.store_deferred_reject(self.text)
            return DECLINED
""")
QUEUE = plugin_source("""
    class Queue(Plugin):
        def hook_queue(self, transaction):
            return OK, "Queued"
""")
PLUGINS = {"mark": MARK, "mark2": MARK.replace("class Mark", "class Mark2"), "queue": QUEUE}


def naughty_qp(tmp_path, args="", mark="bad_client", mark_type=None, before=(), after=("rcpt_ok",)):
    mark_line = f"mark {mark} {mark_type}" if mark_type else f"mark {mark}" if mark else "mark"
    return make_qp(tmp_path, plugins=[mark_line, *before, f"naughty {args}".strip(), *after, "queue"],
                   plugin_files=PLUGINS)


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def connect(qp):
    driver = SessionDriver(qp, remote_ip="192.0.2.50")
    return driver, driver.take()


def through_rcpt(qp):
    driver, greeting = connect(qp)
    assert greeting[0].startswith("220 ")
    assert driver.command("HELO client.example")[0].startswith("250 ")
    assert driver.command("MAIL FROM:<a@example.com>")[0].startswith("250 ")
    return driver


def whole_message(qp):
    driver = through_rcpt(qp)
    replies = [driver.command("RCPT TO:<user@test.example.org>")]
    if driver.closed or not replies[0][0].startswith("250"):
        return driver, replies
    replies.append(driver.command("DATA"))
    if replies[-1] != ["354 go ahead"]:
        return driver, replies
    replies.append(driver.command(b"Subject: x\r\n\r\nbody\r\n."))
    return driver, replies


# -- the default: rcpt, disconnect -----------------------------------------------------

def test_default_refuses_at_rcpt_and_disconnects(tmp_path):
    qp = naughty_qp(tmp_path)
    log = capture_log(qp)
    driver = through_rcpt(qp)
    assert driver.command("RCPT TO:<user@test.example.org>") == ["550 bad client"]
    assert driver.closed
    assert (LOGINFO, "naughty", "disconnecting") in log


def test_default_hooks_are_rcpt_and_data_post(tmp_path):
    qp = naughty_qp(tmp_path)
    hooks = [hook for hook in ("connect", "mail", "rcpt", "data", "data_post")
             if any(entry.name == "naughty" for entry in qp.hooks.entries(hook))]
    assert hooks == ["rcpt", "data_post"]
    assert next(p for p in qp.plugins if p.name == "naughty").args["reject"] == "rcpt"


def test_clean_connection_passes(tmp_path):
    qp = naughty_qp(tmp_path, mark=None)
    log = capture_log(qp)
    driver, replies = whole_message(qp)
    assert replies[-1] == ["250 Queued"]
    assert (LOGINFO, "naughty", "pass") in log


# -- reject: the hook -------------------------------------------------------------------

def test_reject_connect(tmp_path):
    qp = naughty_qp(tmp_path, "reject connect")
    driver, greeting = connect(qp)
    assert greeting == ["550 bad client"]
    assert driver.closed


def test_reject_mail(tmp_path):
    qp = naughty_qp(tmp_path, "reject MAIL")
    driver, _ = connect(qp)
    driver.command("HELO client.example")
    assert driver.command("MAIL FROM:<a@example.com>") == ["550 bad client"]
    assert driver.closed


def test_reject_data(tmp_path):
    qp = naughty_qp(tmp_path, "reject data")
    driver, replies = whole_message(qp)
    assert replies == [["250 <user@test.example.org>, recipient ok"], ["554 bad client"]]
    assert driver.closed


def test_reject_data_post(tmp_path):
    qp = naughty_qp(tmp_path, "reject data_post")
    assert [entry.name for entry in qp.hooks.entries("data_post")] == ["naughty"]  # registered once
    driver, replies = whole_message(qp)
    assert replies[-1] == ["552 bad client"]
    assert driver.closed


def test_data_post_catches_what_the_chosen_hook_missed(tmp_path):
    # rcpt_ok answers OK before naughty's rcpt hook runs: the message is refused at its end.
    qp = naughty_qp(tmp_path, before=["rcpt_ok"], after=())
    driver, replies = whole_message(qp)
    assert replies[0] == ["250 <user@test.example.org>, recipient ok"]
    assert replies[-1] == ["552 bad client"]
    assert driver.closed


# -- reject_type ------------------------------------------------------------------------

@pytest.mark.parametrize(("reject_type", "reply", "closed"), [
    ("perm", "550 bad client", False),
    ("hard", "550 bad client", False),
    ("temp", "450 bad client", False),
    ("soft", "450 bad client", False),
    ("disconnect", "550 bad client", True),
    ("temp_disconnect", "421 bad client", True),
])
def test_own_reject_type(tmp_path, reject_type, reply, closed):
    qp = naughty_qp(tmp_path, f"reject_type {reject_type}")
    driver = through_rcpt(qp)
    assert driver.command("RCPT TO:<user@test.example.org>") == [reply]
    assert driver.closed == closed


def test_reject_type_of_the_storing_plugin_wins(tmp_path):
    qp = naughty_qp(tmp_path, "reject_type disconnect", mark_type="temp")
    driver = through_rcpt(qp)
    assert driver.command("RCPT TO:<user@test.example.org>") == ["450 bad client"]
    assert not driver.closed
    assert driver.command("RCPT TO:<other@test.example.org>") == ["450 bad client"]


def test_first_storing_plugin_decides_the_type(tmp_path):
    qp = make_qp(tmp_path, plugins=["mark first perm", "mark2 second temp", "naughty", "rcpt_ok", "queue"],
                 plugin_files=PLUGINS)
    driver = through_rcpt(qp)
    assert driver.command("RCPT TO:<user@test.example.org>") == ["550-first", "550 second"]


def test_flag_without_text_gets_the_core_text(tmp_path):
    qp = naughty_qp(tmp_path, "reject data", mark="FLAG")
    driver, replies = whole_message(qp)
    assert replies[-1] == ["554 Message denied"]


def test_rcpt_deny_disconnect_text_when_no_message(tmp_path):
    qp = naughty_qp(tmp_path, mark="FLAG")
    driver = through_rcpt(qp)
    assert driver.command("RCPT TO:<user@test.example.org>") == ["550 delivery denied"]


# -- with real plugins --------------------------------------------------------------------

def test_headers_reject_naughty_is_carried_out_on_the_next_message(tmp_path):
    qp = make_qp(tmp_path, plugins=["naughty reject rcpt reject_type temp", "headers reject naughty",
                                    "rcpt_ok", "queue"], plugin_files=PLUGINS)
    driver, _ = connect(qp)
    driver.command("HELO client.example")
    for line, reply in [("MAIL FROM:<a@example.com>", "250"), ("RCPT TO:<u@test.example.org>", "250"),
                        ("DATA", "354")]:
        assert driver.command(line)[0].startswith(reply)
    # naughty's data_post ran before headers stored anything: this message is queued.
    assert driver.command(b"Subject: x\r\n\r\nbody\r\n.") == ["250 Queued"]
    driver.command("MAIL FROM:<a@example.com>")
    # headers stored `perm`, which wins over naughty's own temp.
    assert driver.command("RCPT TO:<u@test.example.org>") == ["550 (headers) We require a valid From header"]


# -- arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", ["reject queue", "reject 1", "reject naughty", "reject hook_queue_post",
                                  "reject_type never", "reject"])
def test_bad_arguments_stop_start_up(tmp_path, args):
    with pytest.raises(AssertionError, match="naughty"):
        make_qp(tmp_path, plugins=[f"naughty {args}", "rcpt_ok"])


def test_registration_is_logged(tmp_path, monkeypatch):
    from qpsmtpd_py.log import Logger

    logged = []
    monkeypatch.setattr(Logger, "log", lambda self, level, message, hook=None, plugin=None:
                        logged.append((level, plugin, message)))
    make_qp(tmp_path, plugins=["naughty reject data", "rcpt_ok"])
    assert (LOGDEBUG, "naughty", "registering hook data") in logged
