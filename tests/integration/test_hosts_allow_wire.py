"""hosts_allow in the real daemon: --max-from-ip holds across child processes."""

import re

from conftest import wait_until

TOO_MANY = "too many connections from 127.0.0.1, try again later"
DURATION = re.compile(r"^\d+\.\d+ \(post-connection\) connection_time: \d+\.\d{3} s\.$", re.MULTILINE)
CONNECTION = re.compile(r"^(\d+)\.\d+ Connection from ", re.MULTILINE)


def test_max_from_ip_holds_across_children(daemon_factory):
    # One session per child: every session below is served by a different process.
    # Three children, as a fourth child-less session would wait unaccepted in the backlog.
    daemon = daemon_factory(files={"loglevel": "6"},
                            args=["--children", "3", "--idle-children", "3", "--sessions-per-child", "1",
                                  "--max-from-ip", "2", "--shutdown-timeout", "1"],
                            extra_plugins=["hosts_allow", "connection_time"])
    # The start-up probe of the fixture was a session from 127.0.0.1 too: wait until it is over.
    wait_until(lambda: len(DURATION.findall(daemon.log())) == 1, 5, message="start-up probe session ended")

    with daemon.connect(timeout=5) as first, daemon.connect(timeout=5) as second:
        first.expect(220)
        second.expect(220)
        with daemon.connect(timeout=5) as third:
            assert third.reply() == (451, [TOO_MANY])
            assert third.wait_eof(5) == b""

        log = wait_until(lambda: "fail: too many connections from 127.0.0.1 (3 > 2)" in daemon.log()
                         and daemon.log(), 5, message="refusal logged")
        # Probe, first, second, third: the last three in three different children.
        pids = CONNECTION.findall(log)
        assert len(pids) == 4 and len(set(pids[1:])) == 3, pids

        # A session that ends frees its place for the next one, whichever child takes it.
        first.expect(221, "QUIT")
        first.wait_eof(5)
        wait_until(lambda: len(DURATION.findall(daemon.log())) == 3, 5, message="first session ended")
        with daemon.connect(timeout=5) as fourth:
            fourth.expect(220)
            fourth.expect(221, "QUIT")
        second.expect(221, "QUIT")
