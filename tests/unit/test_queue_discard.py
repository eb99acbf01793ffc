"""queue/discard: every message is answered 250 and thrown away."""

import pytest
from harness import SessionDriver, make_qp, plugin_source

from qpsmtpd_py.constants import LOGINFO, LOGWARN


def send(qp, message=b"Subject: trap\r\nMessage-Id: <trap1@example.com>\r\n\r\nspam\r\n.\r\n"):
    driver = SessionDriver(qp)
    driver.take()
    for command in ("HELO c.example", "MAIL FROM:<s@example.com>", "RCPT TO:<trap@test.example.org>",
                    "RCPT TO:<postmaster>", "DATA"):
        driver.command(command)
    driver.send(message)
    return driver.take()


def test_answers_queued_and_keeps_nothing(tmp_path):
    qp = make_qp(tmp_path, plugins=["rcpt_ok", "queue/discard"])
    qp.logger.level = LOGINFO
    log = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: log.append((level, plugin, message))
    assert send(qp) == ["250 Queued (discarded, not delivered)"]
    assert list((tmp_path / "spool").iterdir()) == []
    lines = [m for level, plugin, m in log if plugin == "queue::discard" and level == LOGINFO]
    assert len(lines) == 1 and lines[0].startswith("discarded: from <s@example.com>, 2 recipient(s), ")
    assert lines[0].endswith(" bytes <trap1@example.com>")


def test_below_loglevel_info_the_log_line_is_not_built(tmp_path):
    qp = make_qp(tmp_path, plugins=["rcpt_ok", "queue/discard"])
    qp.logger.level = LOGWARN
    log = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: log.append((level, plugin, message))
    built = []
    discard = next(p for p in qp.plugins if p.name == "queue::discard")
    discard._log_discarded = built.append
    assert send(qp) == ["250 Queued (discarded, not delivered)"]
    assert built == [] and [m for _, plugin, m in log if plugin == "queue::discard"] == []


def test_a_queue_plugin_before_it_wins(tmp_path):
    first = plugin_source("""
        class First(Plugin):
            def hook_queue(self, transaction):
                return OK, "Queued by the first"
    """)
    qp = make_qp(tmp_path, plugins=["rcpt_ok", "first", "queue/discard"], plugin_files={"first": first})
    assert send(qp) == ["250 Queued by the first"]


def test_loglevel_is_its_only_argument(tmp_path):
    make_qp(tmp_path / "a", plugins=["rcpt_ok", "queue/discard loglevel 7"])
    with pytest.raises(AssertionError, match="takes no arguments"):
        make_qp(tmp_path / "b", plugins=["rcpt_ok", "queue/discard /dev/null"])
