"""karma: sessions judged nice/naughty at disconnect, the penalty box at connect, limits, on a fake clock."""

from __future__ import annotations

import ipaddress
import time

import pytest
from harness import SessionDriver, make_qp, plugin_source, write_config
from reactor_helpers import capture_log, next_reply, reactor, run  # noqa: F401  (reactor is a fixture)
from twisted.internet import task

from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import LOGERROR
from qpsmtpd_py.qp import Qpsmtpd

CLIENT = "192.0.2.1"
KEY = str(0xC0000201)
DAY = 86400
# A stand-in for the plugins that judge a session: MAIL FROM:<karma-3@...> adjusts karma by -3;
# and for relay: clients x.x.x.99 are relay clients.
JUDGE = plugin_source("""
    class Judge(Plugin):
        def hook_connect(self, transaction):
            self.connection.relay_client = self.connection.remote_ip.endswith(".99")
            return DECLINED

        def hook_mail(self, transaction, sender, *args):
            if sender.user and sender.user.startswith("karma"):
                self.adjust_karma(int(sender.user[5:]))
            return DECLINED
""")




@pytest.fixture
def karma_qp(tmp_path, reactor, clock):  # noqa: F811
    def make(line="", files=None):
        qp = make_qp(tmp_path, files=files, plugins=["judge", f"karma db_dir {tmp_path / 'db'} {line}", "rcpt_ok"],
                     plugin_files={"judge": JUDGE})
        qp.runner.clock = reactor
        plugin = karma(qp)
        plugin.reactor = reactor
        plugin.clock = clock
        return qp

    return make


def karma(qp):
    return next(p for p in qp.plugins if p.name == "karma")


async def converse(reactor, qp, lines, remote_ip=CLIENT):  # noqa: F811
    """One session: (greeting, the last reply line to each of `lines`, the connection notes at the end)."""
    key = str(int(ipaddress.ip_address(remote_ip)))
    before = await stored(qp, key)
    driver = SessionDriver(qp, remote_ip=remote_ip)
    greeting = (await next_reply(reactor, driver))[-1]
    replies = []
    for line in lines:
        if driver.closed:
            break
        driver.send(line.encode() + b"\r\n")
        replies.append((await next_reply(reactor, driver))[-1])
    notes = dict(driver.session.connection.notes)
    driver.close()
    if notes.get("karma"):  # disconnect writes the verdict: wait for it
        await changed(reactor, qp, before, key)
    return greeting, replies, notes


async def stored(qp, key=KEY):
    return await karma(qp).store().get(key)


async def changed(reactor, qp, before, key, timeout=10.0):  # noqa: F811
    deadline = time.monotonic() + timeout
    while await stored(qp, key) == before:
        assert time.monotonic() < deadline, "karma did not record the session"
        await task.deferLater(reactor, 0.01, lambda: None)


def mail(score):
    return ["HELO client.example", f"MAIL FROM:<karma{score:+d}@example.com>"]


def test_nice_session_is_counted_nice(reactor, karma_qp):  # noqa: F811
    qp = karma_qp()

    async def go():
        await converse(reactor, qp, mail(3))
        return await stored(qp)

    assert run(reactor, go) == "0:0:1:1"


def test_neutral_session_changes_nothing_but_connects(reactor, karma_qp):  # noqa: F811
    qp = karma_qp()

    async def go():
        await converse(reactor, qp, mail(3))
        await converse(reactor, qp, mail(-2))
        return await stored(qp)

    assert run(reactor, go) == "0:0:1:2"


def test_naughty_client_is_refused_at_connect_until_the_penalty_ends(reactor, karma_qp, clock):  # noqa: F811
    qp = karma_qp("reject connect penalty_days 2")
    start = int(clock.now)

    async def go():
        await converse(reactor, qp, mail(-3))
        value = await stored(qp)
        clock.now += DAY / 2
        boxed, replies, _ = await converse(reactor, qp, ["HELO client.example"])
        clock.now += 2 * DAY
        released = (await converse(reactor, qp, ["HELO client.example"]))[0]
        return value, boxed, replies, released, await stored(qp)

    value, boxed, replies, released, after = run(reactor, go)
    assert value == f"{start}:1:0:1"
    assert boxed == "550 You were naughty. You cannot connect for 1.50 more days."
    assert replies == []  # reject_type disconnect: closed after the refusal
    assert released.startswith("220 ")
    assert after == f"{start}:1:0:2"  # the refused connection was counted


def test_reject_naughty_leaves_the_refusal_to_the_naughty_plugin(reactor, karma_qp):  # noqa: F811
    qp = karma_qp()

    async def go():
        await converse(reactor, qp, mail(-5))
        return await converse(reactor, qp, [])

    greeting, _, notes = run(reactor, go)
    assert greeting.startswith("220 ")
    assert notes["naughty"].startswith("(karma) You were naughty. You cannot connect for 1.00 more days.")
    assert notes["naughty_reject_type"] == "disconnect"


def test_negative_2_boxes_only_at_two_more_naughty_than_nice(reactor, karma_qp, clock):  # noqa: F811
    qp = karma_qp("negative 2 reject connect")

    async def go():
        await converse(reactor, qp, mail(3))
        await converse(reactor, qp, mail(-3))
        await converse(reactor, qp, mail(-3))
        tolerated = await stored(qp)
        await converse(reactor, qp, mail(-3))
        return tolerated, await stored(qp)

    tolerated, boxed = run(reactor, go)
    assert tolerated == "0:2:1:3"  # history -1: no penalty yet
    assert boxed == f"{int(clock.now)}:3:1:4"  # history -2


def test_persistent_offender_gets_a_day_per_naughty_session(reactor, karma_qp, clock):  # noqa: F811
    qp = karma_qp("reject 0")

    async def go():
        await karma(qp).store().set(KEY, "0:6:0:6")
        await converse(reactor, qp, mail(-3))
        return await stored(qp)

    assert run(reactor, go) == f"{int(clock.now) + 7 * DAY}:7:0:7"


def test_relay_client_is_never_boxed_nor_limited(reactor, karma_qp, clock):  # noqa: F811
    qp = karma_qp("reject connect")

    async def go():
        await karma(qp).store().set(str(0xC0000263), f"{int(clock.now)}:5:0:5")
        return await converse(reactor, qp, [*mail(0), "RCPT TO:<a@test.example.org>", "RCPT TO:<b@test.example.org>"],
                              remote_ip="192.0.2.99")

    greeting, replies, _ = run(reactor, go)
    assert greeting.startswith("220 ") and [r[:3] for r in replies] == ["250"] * 4


def test_history_note_and_bonus_point_for_a_long_good_history(reactor, karma_qp):  # noqa: F811
    qp = karma_qp()

    async def go():
        await karma(qp).store().set(KEY, "0:1:12:13")
        return await converse(reactor, qp, [])

    _, _, notes = run(reactor, go)
    assert notes["karma_history"] == 11 and notes["karma"] == 1


@pytest.mark.parametrize(("record", "score", "expected"), [
    (None, 0, "550 too many recipients for karma 0 (h: 0)"),
    ("0:0:2:2", 0, "250"),   # good history
    (None, 1, "250"),        # good session so far
])
def test_second_recipient_needs_good_karma(reactor, karma_qp, record, score, expected):  # noqa: F811
    qp = karma_qp()

    async def go():
        if record:
            await karma(qp).store().set(KEY, record)
        return await converse(reactor, qp, [*mail(score), "RCPT TO:<a@test.example.org>",
                                            "RCPT TO:<b@test.example.org>"])

    _, replies, _ = run(reactor, go)
    assert replies[2][:3] == "250"
    assert replies[3].startswith(expected)


def test_space_in_envelope_and_karma_tlds_lower_karma(reactor, karma_qp):  # noqa: F811
    qp = karma_qp(files={"karma_tlds": ["jp:-4", "org:+1"]})

    async def go():
        return await converse(reactor, qp, ["HELO c", "MAIL FROM: <someone@shop.example.jp>"])

    _, replies, notes = run(reactor, go)
    assert replies[1][:3] == "250" and notes["karma"] == -6


def test_very_bad_karma_is_refused_at_data(reactor, karma_qp):  # noqa: F811
    qp = karma_qp("reject 1 reject_type perm")

    async def go():
        return await converse(reactor, qp, [*mail(-5), "RCPT TO:<a@test.example.org>", "DATA"])

    _, replies, _ = run(reactor, go)
    assert replies[-1] == "554 very bad karma: -5"


def test_unreachable_store_treats_the_client_as_unknown(reactor, tmp_path):  # noqa: F811
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        qp = make_qp(tmp_path, plugins=[f"karma redis 127.0.0.1:{sock.getsockname()[1]} reject connect", "rcpt_ok"])
        qp.runner.clock = reactor
        karma(qp).reactor = reactor
        log = capture_log(qp)

        async def go():
            driver = SessionDriver(qp, remote_ip=CLIENT)
            return (await next_reply(reactor, driver))[-1]

        assert run(reactor, go).startswith("220 ")
    assert any(level == LOGERROR and "cannot read karma of 192.0.2.1" in message for level, message in log)


@pytest.mark.parametrize(("line", "files", "message"), [
    ("strikes many", {}, "strikes must be a positive whole number"),
    ("penalty_days -1", {}, "penalty_days must be a positive number"),
    ("reject sometimes", {}, "reject must be 0, 1, connect or naughty"),
    ("", {"karma_tlds": ["jp=-4"]}, "karma_tlds line 'jp=-4' is not `tld:N`"),
    ("strikes", {}, "arguments come in pairs"),
])
def test_bad_settings_stop_start_up(tmp_path, line, files, message):
    config = write_config(tmp_path / "config", {"me": "x", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": [f"karma db_dir {tmp_path} {line}"], **files})
    errors = Qpsmtpd(ConfigReader([config])).load()
    assert len(errors) == 1 and message in str(errors[0])
