"""The noop_counter plugin: too many NOOPs in a row close the connection."""

import pytest
from harness import SessionDriver, make_qp, write_config

from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.qp import Qpsmtpd

TOO_MANY = ["500 Stop wasting my time, too many consecutive NOOPs"]


def nc_qp(tmp_path, args="", plugins=None):
    return make_qp(tmp_path, plugins=plugins or [f"noop_counter {args}".strip(), "rcpt_ok"])


def connect(qp):
    driver = SessionDriver(qp, remote_ip="192.0.2.9")
    assert driver.take()[0].startswith("220 ")
    return driver


def noops(driver, count):
    return [driver.command("NOOP") for _ in range(count)]


def test_third_noop_in_a_row_disconnects_by_default(tmp_path):
    driver = connect(nc_qp(tmp_path))
    assert noops(driver, 2) == [["250 OK"], ["250 OK"]]
    assert not driver.closed
    assert driver.command("NOOP") == TOO_MANY
    assert driver.closed


def test_limit_argument(tmp_path):
    driver = connect(nc_qp(tmp_path, "5"))
    assert noops(driver, 4) == [["250 OK"]] * 4
    assert driver.command("NOOP") == TOO_MANY


def test_limit_1_disconnects_at_the_first_noop(tmp_path):
    driver = connect(nc_qp(tmp_path, "1"))
    assert driver.command("NOOP") == TOO_MANY


@pytest.mark.parametrize("command", [
    "HELO client.example", "EHLO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@test.example.org>",
    "DATA", "RSET", "VRFY someone", "HELP",
])
def test_other_commands_start_the_count_again(tmp_path, command):
    driver = connect(nc_qp(tmp_path))
    if command.startswith(("RCPT", "DATA")):
        driver.command("HELO client.example")
        driver.command("MAIL FROM:<a@example.com>")
        if command == "DATA":
            driver.command("RCPT TO:<b@test.example.org>")
    noops(driver, 2)
    driver.command(command)
    if command == "DATA":
        driver.command(".")
    assert noops(driver, 2) == [["250 OK"], ["250 OK"]]
    assert driver.command("NOOP") == TOO_MANY


def test_unknown_commands_do_not_start_the_count_again(tmp_path):
    # As in qpsmtpd: only the commands whose hooks the plugin listens to reset it.
    driver = connect(nc_qp(tmp_path))
    noops(driver, 2)
    assert driver.command("XYZZY") == ["500 Unrecognized command"]
    assert driver.command("NOOP") == TOO_MANY


def test_counting_hooks_run_whatever_the_order_of_the_plugins(tmp_path):
    # rcpt_ok accepts first; the counter still hears the RCPT.
    qp = nc_qp(tmp_path, plugins=["rcpt_ok", "noop_counter"])
    driver = connect(qp)
    driver.command("HELO client.example")
    driver.command("MAIL FROM:<a@example.com>")
    noops(driver, 2)
    assert driver.command("RCPT TO:<b@test.example.org>") == ["250 <b@test.example.org>, recipient ok"]
    assert noops(driver, 2) == [["250 OK"], ["250 OK"]]


def test_each_connection_counts_its_own_noops(tmp_path):
    qp = nc_qp(tmp_path)
    first, second = connect(qp), connect(qp)
    noops(first, 2)
    noops(second, 2)
    assert first.command("NOOP") == TOO_MANY
    third = connect(qp)
    assert noops(third, 2) == [["250 OK"], ["250 OK"]]
    assert third.session.connection.notes["noop_count"] == 2


@pytest.mark.parametrize("argument", ["0", "three", "-1"])
def test_limit_must_be_a_positive_number(tmp_path, argument):
    config = write_config(tmp_path / "config", {"me": "t.example", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": [f"noop_counter {argument}"]})
    errors = [str(e) for e in Qpsmtpd(ConfigReader([config])).load()]
    assert len(errors) == 1 and "the number of NOOPs must be a positive whole number" in errors[0]
