"""The random_error plugin, with scripted and seeded random numbers."""

import random

import pytest
from harness import SessionDriver, make_qp, plugin_source

from qpsmtpd_py.constants import LOGINFO

QUEUE = plugin_source("""
    class Queue(Plugin):
        def hook_queue(self, transaction):
            return OK, "Queued"
""")
# Sets the connection note random_fail_% from its argument, after random_error's connect hook.
SET_RATE = plugin_source("""
    class SetRate(Plugin):
        def hook_connect(self, transaction):
            self.connection.notes["random_fail_%"] = float(self.arguments[0])
            return DECLINED
""")
PASS = 0.0  # a draw below the threshold: no failure
FAIL = 0.9999999  # a draw above it (for the default 1%)
DISCONNECT = 0.3  # second draw: 0.3 * 5 < 2
SOFT = 0.5  # second draw: 0.5 * 5 >= 2


class Scripted:
    """random() returns the given numbers, then PASS forever."""

    def __init__(self, *numbers):
        self.numbers = list(numbers)

    def random(self):
        return self.numbers.pop(0) if self.numbers else PASS


def error_qp(tmp_path, args="", after=()):
    return make_qp(tmp_path, plugins=[f"random_error {args}".strip(), *after, "rcpt_ok", "queue"],
                   plugin_files={"queue": QUEUE, "set_rate": SET_RATE})


def plugin(qp):
    return next(p for p in qp.plugins if p.name == "random_error")


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def session_steps(driver):
    yield "HELO client.example"
    yield "MAIL FROM:<a@example.com>"
    yield "RCPT TO:<user@test.example.org>"
    yield "DATA"
    yield b"Subject: x\r\n\r\nbody\r\n."


def run(qp, *numbers):
    """Every reply of a whole session, until it is closed or the message is queued."""
    plugin(qp).random = Scripted(*numbers)
    driver = SessionDriver(qp)
    replies = [driver.take()]
    for line in session_steps(driver):
        if driver.closed:
            break
        replies.append(driver.command(line))
    return replies, driver.closed


def test_no_failure(tmp_path):
    qp = error_qp(tmp_path)
    log = capture_log(qp)
    replies, closed = run(qp)
    assert replies[-1] == ["250 Queued"] and not closed
    threshold = 0.99 ** (1 / 6)
    assert (LOGINFO, "random_error", f"to fail, rand(1) must be more than {threshold:.15g}") in log
    assert sum(1 for _, name, _ in log if name == "random_error") == 6  # connect, helo, mail, rcpt, data, data_post


@pytest.mark.parametrize(("second", "closed"), [(DISCONNECT, True), (SOFT, True)])
def test_connect(tmp_path, second, closed):
    replies, is_closed = run(error_qp(tmp_path), FAIL, second)
    assert replies == [["450 random failure"]] and is_closed == closed


# (draws before the failing one, reply, closed) for each later hook.
@pytest.mark.parametrize(("step", "second", "reply", "closed"), [
    (1, SOFT, "450 random failure", False),  # helo
    (1, DISCONNECT, "450 random failure", True),
    (2, SOFT, "450 random failure", False),  # mail
    (2, DISCONNECT, "421 random failure", True),
    (3, SOFT, "450 random failure", False),  # rcpt
    (3, DISCONNECT, "421 random failure", True),
    (4, SOFT, "451 random failure", False),  # data
    (4, DISCONNECT, "451 random failure", True),
    (5, SOFT, "452 random failure", False),  # data_post
    (5, DISCONNECT, "452 random failure", True),
])
def test_later_hooks(tmp_path, step, second, reply, closed):
    replies, is_closed = run(error_qp(tmp_path), *([PASS] * step), FAIL, second)
    assert replies[step] == [reply]
    assert is_closed == closed


def test_ehlo_too(tmp_path):
    qp = error_qp(tmp_path)
    plugin(qp).random = Scripted(PASS, FAIL, SOFT)
    driver = SessionDriver(qp)
    driver.take()
    assert driver.command("EHLO client.example") == ["450 random failure"]


def test_percentage_is_noted_and_may_be_changed(tmp_path):
    qp = error_qp(tmp_path, "30", after=["set_rate 100"])
    log = capture_log(qp)
    replies, closed = run(qp, PASS, 0.0, SOFT)
    # 100%: the threshold is 0, so even a draw of 0.0 fails at HELO.
    assert replies[1] == ["450 random failure"]
    assert (LOGINFO, "random_error", "to fail, rand(1) must be more than 0") in log


def test_note_holds_the_argument(tmp_path):
    qp = error_qp(tmp_path, "2.5")
    plugin(qp).random = Scripted()
    driver = SessionDriver(qp)
    assert driver.session.connection.notes["random_fail_%"] == 2.5


@pytest.mark.parametrize(("args", "percent"), [("", 1.0), ("0", 1.0), ("10", 10.0), ("-5", -5.0)])
def test_argument(tmp_path, args, percent):
    assert plugin(error_qp(tmp_path, args)).percent == percent


def test_negative_never_fails(tmp_path):
    replies, closed = run(error_qp(tmp_path, "-1"), *([FAIL] * 12))
    assert replies[-1] == ["250 Queued"]


def test_seeded_failure_rate(tmp_path):
    # 60% per message means 1 - 0.4 ** (1/6), about 14.2%, per hook.
    qp = error_qp(tmp_path, "60")
    plugin(qp).random = random.Random(42)
    refused = 0
    for _ in range(300):
        driver = SessionDriver(qp)
        refused += driver.take()[0].startswith("450")
    assert 25 <= refused <= 60, refused


@pytest.mark.parametrize("args", ["1 2", "often"])
def test_bad_arguments_stop_start_up(tmp_path, args):
    with pytest.raises(AssertionError, match="random_error"):
        make_qp(tmp_path, plugins=[f"random_error {args}", "rcpt_ok"])
