"""The master and its children: config checks, signals, respawns, limits, reload.

Every wait is a poll with a deadline; no test sleeps longer than the behaviour
it checks needs.
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import threading
import time
from itertools import groupby

from conftest import DAEMON, process_state, wait_until
from harness import write_config

RCPT = "postmaster@test.example.org"

SLOW_DATA_POST = '''
from pathlib import Path

from qpsmtpd_py.constants import DECLINED
from qpsmtpd_py.plugin import Plugin


class SlowDataPost(Plugin):
    def register(self, qp, *args):
        self.marker = Path(args[0])

    async def hook_data_post(self, transaction):
        from twisted.internet import reactor, task

        self.marker.write_text("in data_post")
        await task.deferLater(reactor, 1.0, lambda: None)
        return DECLINED
'''

# The greeting names the serving child, so a test can tell children apart.
PID_GREETING = '''
import os

from qpsmtpd_py.constants import DONE
from qpsmtpd_py.plugin import Plugin


class PidGreeting(Plugin):
    def hook_connect(self, transaction):
        self.session.respond(220, f"pid {os.getpid()} ESMTP ready")
        return DONE
'''


class BannerSMTP(smtplib.SMTP):
    """smtplib.SMTP that keeps the greeting text."""

    banner = ""

    def getreply(self):
        code, text = super().getreply()
        if not self.banner:
            self.banner = text.decode()
        return code, text


def greeted_by(daemon) -> tuple[int, str]:
    """(pid of the child that served, tag) for one short session."""
    with BannerSMTP(daemon.host, daemon.port, timeout=10) as smtp:
        banner = smtp.banner
        smtp.noop()
    words = banner.split()
    return int(words[1]), words[3] if len(words) > 3 else ""


def check_config(config_dir) -> subprocess.CompletedProcess:
    return subprocess.run([str(DAEMON), "--check-config", "--config-dir", str(config_dir)],
                          capture_output=True, text=True, timeout=30, check=False)


# -- configuration errors --------------------------------------------------------------------------


def test_check_config_prints_every_error_with_file_and_line(tmp_path):
    config = write_config(tmp_path / "config", {
        "me": "test.example.org",
        "spool_dir": str(tmp_path / "spool"),
        "plugins": ["rcpt_ok", "no_such_plugin", "count_unrecognized_commands abc",
                    f"queue/maildir {tmp_path / 'Maildir'}"],
    })
    result = check_config(config)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    plugins = config / "plugins"
    assert f"{plugins}:2:" in output and "no_such_plugin" in output, output
    assert f"{plugins}:3:" in output and "'abc'" in output, output
    assert "config OK" not in output


def test_check_config_on_a_good_config(tmp_path):
    config = write_config(tmp_path / "config", {
        "me": "test.example.org",
        "spool_dir": str(tmp_path / "spool"),
        "plugins": ["count_unrecognized_commands 4", "rcpt_ok", f"queue/maildir {tmp_path / 'Maildir'}"],
    })
    result = check_config(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config OK" in result.stdout + result.stderr


def test_check_config_reports_malformed_core_numbers(tmp_path):
    config = write_config(tmp_path / "config", {
        "me": "test.example.org",
        "spool_dir": str(tmp_path / "spool"),
        "databytes": "10M",
        "timeoutsmtpd": "5m",
        "plugins": ["rcpt_ok", f"queue/maildir {tmp_path / 'Maildir'}"],
    })
    result = check_config(config)
    output = result.stdout + result.stderr
    assert "databytes" in output and "timeoutsmtpd" in output, output
    assert f"{config / 'databytes'}:1: databytes must be a size in bytes" in output
    assert result.returncode != 0


def test_start_with_unknown_plugin_exits_1_naming_file_and_line(daemon_factory):
    daemon = daemon_factory({"plugins": ["rcpt_ok", "no_such_plugin"]}, start=False)
    result = subprocess.run([str(DAEMON), *daemon.args], capture_output=True, text=True, timeout=30,
                            check=False, cwd=daemon.base)
    assert result.returncode == 1, result.stderr
    assert f"{daemon.config_dir / 'plugins'}:2:" in result.stderr
    assert "no_such_plugin" in result.stderr


def test_malformed_listen_address_is_a_usage_error(daemon_factory):
    daemon = daemon_factory(start=False)
    result = subprocess.run([str(DAEMON), "--config-dir", str(daemon.config_dir), "--listen-address", "::1",
                             "--port", str(daemon.port)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    assert "::1" in result.stderr and "bracket" in result.stderr.lower()


def test_start_on_a_port_in_use_exits_1(daemon_factory):
    first = daemon_factory()
    second = daemon_factory(start=False)
    second.args[second.args.index("--port") + 1] = str(first.port)
    result = subprocess.run([str(DAEMON), *second.args], capture_output=True, text=True, timeout=30,
                            check=False, cwd=second.base)
    assert result.returncode == 1
    assert str(first.port) in result.stderr


# -- TERM / INT --------------------------------------------------------------------------------------


def test_term_with_an_idle_session_sends_421_and_master_exits_0(daemon_factory):
    daemon = daemon_factory(args=["--children", "2", "--shutdown-timeout", "1"])
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, "EHLO c.example.com")
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code, text = client.reply(timeout=4)
        assert code == 421, text
        assert time.monotonic() - started < 3
        client.wait_eof(timeout=3)
    assert daemon.wait_exit(5) == 0
    assert daemon.stop() == 0


def test_int_stops_like_term(daemon_factory):
    daemon = daemon_factory(args=["--children", "2", "--shutdown-timeout", "1"])
    children = daemon.children()
    daemon.signal(signal.SIGINT)
    assert daemon.wait_exit(5) == 0
    assert not any(os.path.exists(f"/proc/{pid}") for pid in children)


def test_term_during_slow_data_post_still_delivers(daemon_factory, tmp_path):
    marker = tmp_path / "in-data-post"
    daemon = daemon_factory(args=["--children", "2", "--shutdown-timeout", "1"],
                            plugin_files={"slow_data_post": SLOW_DATA_POST},
                            extra_plugins=[f"slow_data_post {marker}"])
    with daemon.connect() as client:
        client.start_mail()
        client.send(b"Subject: slow\r\n\r\nworth waiting for\r\n.\r\n")
        wait_until(marker.exists, 5, message="data_post running")
        daemon.signal(signal.SIGTERM)
        code, text = client.reply(timeout=5)
        assert code == 250, text
        assert len(daemon.messages()) == 1
        code, _ = client.command("QUIT", timeout=5)
        assert code in (221, 421)  # the shutdown deadline may have passed meanwhile
        client.wait_eof(timeout=3)
    assert daemon.wait_exit(8) == 0
    [message] = daemon.messages()
    assert message.endswith(b"\n\nworth waiting for\n")


def test_term_with_a_client_stalled_in_data_discards_the_message(daemon_factory):
    daemon = daemon_factory(args=["--children", "2", "--shutdown-timeout", "1"])
    with daemon.connect() as client:
        client.start_mail()
        client.send(b"Subject: unfinished\r\n\r\n" + (b"u" * 998 + b"\r\n") * 200)
        wait_until(daemon.spool_files, 3, message="body spooled")
        daemon.signal(signal.SIGTERM)
        code, text = client.reply(timeout=4)
        assert code == 421, text
        client.wait_eof(timeout=3)
    assert daemon.wait_exit(5) == 0
    assert daemon.messages() == []
    assert daemon.spool_files() == []


def test_a_second_term_and_a_hup_during_shutdown_change_nothing(daemon_factory, tmp_path):
    marker = tmp_path / "in-data-post"
    daemon = daemon_factory(args=["--children", "2", "--shutdown-timeout", "3"],
                            plugin_files={"slow_data_post": SLOW_DATA_POST},
                            extra_plugins=[f"slow_data_post {marker}"])
    with daemon.connect() as client:
        client.start_mail()
        client.send(b"Subject: slow\r\n\r\nslow\r\n.\r\n")
        wait_until(marker.exists, 5, message="data_post running")
        daemon.signal(signal.SIGTERM)
        time.sleep(0.1)
        daemon.signal(signal.SIGHUP)
        daemon.signal(signal.SIGTERM)
        client.expect(250, timeout=5)
        client.expect(221, "QUIT")
    assert daemon.wait_exit(5) == 0
    assert len(daemon.messages()) == 1


def test_term_refuses_new_sessions_while_draining(daemon_factory):
    daemon = daemon_factory(args=["--children", "1", "--idle-children", "1", "--shutdown-timeout", "3"])

    def refused() -> bool:
        try:
            with daemon.connect(timeout=2) as late:
                late.poll_reply(0.2)  # accepted before the child saw TERM: fine, closed again
        except ConnectionRefusedError:
            return True
        return False

    with daemon.connect() as busy:
        busy.expect(220)
        daemon.signal(signal.SIGTERM)
        wait_until(refused, 3, message="new connections refused after TERM")
        busy.expect(250, "NOOP")  # the open session goes on
        busy.expect(221, "QUIT")
    assert daemon.wait_exit(8) == 0


# -- children ----------------------------------------------------------------------------------------


def test_killed_child_is_replaced_and_mail_still_flows(daemon_factory):
    daemon = daemon_factory(args=["--children", "2", "--idle-children", "2"])
    before = wait_until(lambda: len(daemon.live_children()) == 2 and daemon.live_children(), 5)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    after = wait_until(lambda: (len(kids := daemon.live_children()) == 2 and victim not in kids) and kids, 5,
                       message="a replacement child")
    assert set(after) != set(before)
    for n in range(4):
        with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as smtp:
            smtp.sendmail("a@example.com", [RCPT], f"Subject: {n}\r\n\r\nafter kill {n}\r\n".encode())
    assert len(daemon.messages()) == 4
    assert daemon.stop() == 0


def test_term_or_hup_to_one_child_replaces_it(daemon_factory):
    daemon = daemon_factory(args=["--children", "2", "--idle-children", "2"])
    for signo in (signal.SIGTERM, signal.SIGHUP):
        before = wait_until(lambda: len(daemon.live_children()) == 2 and daemon.live_children(), 5)
        os.kill(before[0], signo)
        wait_until(lambda b=before: len(kids := daemon.live_children()) == 2 and b[0] not in kids, 5,
                   message=f"child replaced after {signo!r}")
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as smtp:
        smtp.sendmail("a@example.com", [RCPT], b"Subject: x\r\n\r\nx\r\n")
    assert daemon.stop() == 0


def test_rapid_hups_keep_the_pool_size_and_the_open_session(daemon_factory):
    daemon = daemon_factory(args=["--children", "2", "--idle-children", "2"])
    with daemon.connect() as old:
        old.start_mail()
        for _ in range(5):
            daemon.signal(signal.SIGHUP)
            time.sleep(0.05)
        old.send(b"Subject: through five reloads\r\n\r\nstill here\r\n.\r\n")
        old.expect(250)
        old.expect(221, "QUIT")
    wait_until(lambda: len(daemon.live_children()) == 2, 5, message="pool back to two children")
    time.sleep(0.3)
    assert len(daemon.live_children()) == 2
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as smtp:
        smtp.sendmail("a@example.com", [RCPT], b"Subject: y\r\n\r\ny\r\n")
    assert len(daemon.messages()) == 2
    assert daemon.stop() == 0


def test_child_lifetime_replaces_children(daemon_factory):
    daemon = daemon_factory(args=["--children", "1", "--idle-children", "1", "--child-lifetime", "3"],
                            plugin_files={"pid_greeting": PID_GREETING}, extra_plugins=["pid_greeting"])
    [first] = daemon.live_children()
    pids = [greeted_by(daemon)[0] for _ in range(7)]
    runs = [(pid, len(list(group))) for pid, group in groupby(pids)]
    # one child at a time: each serves one run of sessions and never comes back
    assert len({pid for pid, _ in runs}) == len(runs), pids
    # the first child already served the start-up probe, the last one may not be done
    assert runs[0][0] == first and runs[0][1] <= 2, pids
    assert all(length == 3 for _, length in runs[1:-1]), pids
    assert runs[-1][1] <= 3 and len(runs) >= 3, pids
    wait_until(lambda: first not in daemon.live_children(), 5, message="first child gone")
    assert daemon.stop() == 0


def test_sessions_per_child_1_queues_the_third_session(daemon_factory):
    daemon = daemon_factory(args=["--children", "2", "--sessions-per-child", "1", "--shutdown-timeout", "1"])
    with daemon.connect() as one, daemon.connect() as two:
        one.expect(220, timeout=5)
        two.expect(220, timeout=5)
        with daemon.connect() as three:
            assert three.poll_reply(1.0) is None, "a third session was greeted with two children busy"
            one.expect(221, "QUIT")
            three.expect(220, timeout=5)
            three.expect(250, "NOOP")
            three.expect(221, "QUIT")
        two.expect(221, "QUIT")
    assert daemon.stop() == 0


def test_sessions_per_child_limits_concurrency_within_one_child(daemon_factory):
    daemon = daemon_factory(args=["--children", "1", "--idle-children", "1", "--sessions-per-child", "3",
                                  "--shutdown-timeout", "1"],
                            plugin_files={"pid_greeting": PID_GREETING}, extra_plugins=["pid_greeting"])
    clients = [daemon.connect() for _ in range(4)]
    try:
        pids = {int(clients[i].expect(220, timeout=5)[0].split()[1]) for i in range(3)}
        assert len(pids) == 1
        assert clients[3].poll_reply(1.0) is None
        clients[0].expect(221, "QUIT")
        clients[3].expect(220, timeout=5)
    finally:
        for client in clients:
            client.close()


def test_pid_file_is_written_and_removed(daemon_factory, tmp_path):
    pid_file = tmp_path / "qpsmtpd.pid"
    daemon = daemon_factory(args=["--children", "1", "--pid-file", str(pid_file)])
    assert pid_file.read_text().strip() == str(daemon.process.pid)
    assert daemon.stop() == 0
    assert not pid_file.exists()


# -- HUP ---------------------------------------------------------------------------------------------


def greeting_text(daemon) -> str:
    with daemon.connect(timeout=5) as client:
        [text] = client.expect(220, timeout=5)
        client.expect(221, "QUIT")
    return text


def ehlo_lines(daemon) -> list[str]:
    with daemon.connect(timeout=5) as client:
        client.expect(220, timeout=5)
        lines = client.expect(250, "EHLO c.example.com", timeout=5)
        client.expect(221, "QUIT")
    return lines


def test_hup_reloads_config_and_keeps_open_sessions(daemon_factory):
    # databytes is read once per child: only new children see a new value
    daemon = daemon_factory({"smtpgreeting": "before.example.org ESMTP", "databytes": "1000"},
                            args=["--children", "2"])
    master = daemon.process.pid
    old_children = set(daemon.live_children())
    with daemon.connect() as old:
        assert old.expect(220)[0].startswith("before.example.org")
        assert "SIZE 1000" in old.expect(250, "EHLO c.example.com")
        old.expect(250, "MAIL FROM:<a@example.com>")
        old.expect(250, f"RCPT TO:<{RCPT}>")
        (daemon.config_dir / "smtpgreeting").write_text("after.example.org ESMTP\n")
        (daemon.config_dir / "databytes").write_text("2000\n")
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: "SIZE 2000" in ehlo_lines(daemon), 5, message="a new child with the new config")
        assert greeting_text(daemon).startswith("after.example.org")
        old.expect(354, "DATA")
        old.send(b"Subject: across HUP\r\n\r\nstarted before the reload\r\n.\r\n")
        old.expect(250)
        old.expect(221, "QUIT")
    assert daemon.process.poll() is None and daemon.process.pid == master
    [message] = daemon.messages()
    assert message.endswith(b"\n\nstarted before the reload\n")
    wait_until(lambda: not old_children & set(daemon.live_children()), 5, message="old children gone")
    assert len(daemon.live_children()) == 2
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as smtp:
        smtp.sendmail("a@example.com", [RCPT], b"Subject: after\r\n\r\nafter the reload\r\n")
    assert len(daemon.messages()) == 2
    assert daemon.stop() == 0


def test_hup_with_a_broken_config_keeps_serving_the_old_one(daemon_factory):
    daemon = daemon_factory({"databytes": "1000"}, args=["--children", "2"])
    children = set(daemon.live_children())
    plugins = daemon.config_dir / "plugins"
    plugins.write_text(plugins.read_text() + "no_such_plugin\n")
    (daemon.config_dir / "databytes").write_text("2000\n")
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "no_such_plugin" in daemon.log(), 5, message="the reload error logged")
    assert daemon.process.poll() is None
    assert "SIZE 1000" in ehlo_lines(daemon)  # still the children started with the old config
    assert set(daemon.live_children()) == children
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as smtp:
        smtp.sendmail("a@example.com", [RCPT], b"Subject: still\r\n\r\nstill served\r\n")
    assert len(daemon.messages()) == 1
    assert daemon.stop() == 0


PLUGIN_V = '''
from qpsmtpd_py.constants import DONE
from qpsmtpd_py.plugin import Plugin


class Versioned(Plugin):
    def hook_connect(self, transaction):
        self.session.respond(220, "plugin {version} ESMTP")
        return DONE
'''


def test_hup_reloads_changed_plugin_code(daemon_factory):
    daemon = daemon_factory(args=["--children", "2"], plugin_files={"versioned": PLUGIN_V.format(version="v1")},
                            extra_plugins=["versioned"])
    assert greeting_text(daemon).startswith("plugin v1")
    (daemon.plugin_dir / "versioned.py").write_text(PLUGIN_V.format(version="v2"))
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    seen = ""
    while time.monotonic() < deadline:
        seen = greeting_text(daemon)
        if seen.startswith("plugin v2"):
            break
        time.sleep(0.1)
    assert seen.startswith("plugin v2"), seen
    assert daemon.stop() == 0


def test_stop_while_idle_exits_quickly(daemon_factory):
    daemon = daemon_factory(args=["--children", "3", "--idle-children", "3"])
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 3


def test_children_exit_when_the_master_is_killed(daemon_factory):
    daemon = daemon_factory(args=["--children", "2"])
    children = daemon.live_children()
    try:
        daemon.process.kill()
        daemon.process.wait(5)
        wait_until(lambda: all(process_state(pid) in (None, "Z") for pid in children), 3,
                   message="orphaned children gone")
    finally:
        for pid in children:  # the daemon's own children, left behind if the test failed
            if process_state(pid) not in (None, "Z"):
                os.kill(pid, signal.SIGKILL)


def test_master_killed_mid_session_the_session_finishes_and_the_port_is_freed(daemon_factory):
    daemon = daemon_factory(args=["--children", "2", "--shutdown-timeout", "5"])
    children = daemon.live_children()
    try:
        with daemon.connect() as client:
            client.start_mail()
            daemon.process.kill()
            daemon.process.wait(5)
            client.send(b"Subject: orphan\r\n\r\ndelivered by an orphan\r\n.\r\n")
            client.expect(250)
            client.expect(221, "QUIT")
        wait_until(lambda: all(process_state(pid) in (None, "Z") for pid in children), 3,
                   message="orphaned children gone")
        [message] = daemon.messages()
        assert message.endswith(b"\n\ndelivered by an orphan\n")
        # a supervisor restarting the daemon can bind the port again
        restarted = daemon_factory(start=False)
        restarted.args[restarted.args.index("--port") + 1] = str(daemon.port)
        restarted.port = daemon.port
        restarted.start()
        with smtplib.SMTP(restarted.host, restarted.port, timeout=10) as smtp:
            assert smtp.noop()[0] == 250
        assert restarted.stop() == 0
    finally:
        for pid in children:  # the daemon's own children, left behind if the test failed
            if process_state(pid) not in (None, "Z"):
                os.kill(pid, signal.SIGKILL)


# Puts into the greeting how many sessions from the client's IP the
# pre-connection hook was told about (child_addrs).
COUNT_IP = '''
from qpsmtpd_py.constants import DECLINED, DONE
from qpsmtpd_py.plugin import Plugin


class CountIp(Plugin):
    def hook_pre_connection(self, transaction, info):
        same = sum(1 for ip in info["child_addrs"] if ip == info["remote_ip"])
        self.connection.notes["same_ip"] = same
        return DECLINED

    def hook_connect(self, transaction):
        self.session.respond(220, f"same-ip {self.connection.notes['same_ip']} ESMTP")
        return DONE
'''


def test_pre_connection_sees_the_sessions_of_every_child(daemon_factory):
    """--max-from-ip needs one table for all children (a hosts_allow plugin counts child_addrs)."""
    daemon = daemon_factory(args=["--children", "2", "--sessions-per-child", "1", "--shutdown-timeout", "1"],
                            plugin_files={"count_ip": COUNT_IP}, extra_plugins=["count_ip"])
    # The start-up probe was a session too: wait until its child has let it go,
    # so that the first session below sees no other.
    deadline = time.monotonic() + 10
    while True:
        first = daemon.connect()
        [text] = first.expect(220, timeout=5)
        if int(text.split()[1]) == 0 or time.monotonic() > deadline:
            break
        first.expect(221, "QUIT")
        first.close()
        time.sleep(0.1)
    with first:
        assert int(text.split()[1]) == 0, "a session that ended is still counted"
        with daemon.connect() as second:  # served by the other child: one session each
            [text] = second.expect(220, timeout=5)
            assert int(text.split()[1]) == 1, "the other child's session from this IP is not counted"
            second.expect(221, "QUIT")
        first.expect(221, "QUIT")


def send_from_threads(daemon, threads_count: int, per_thread: int, during=None) -> list[bytes]:
    """Each thread sends `per_thread` messages, one connection each; `during()` runs meanwhile."""
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            for m in range(per_thread):
                with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as smtp:
                    smtp.sendmail("a@example.com", [RCPT], f"Subject: t\r\n\r\ntoken-{n}-{m}\r\n".encode())
        except BaseException as exc:  # collected and reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    if during is not None:
        during()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    return sorted(f"token-{n}-{m}\n".encode() for n in range(threads_count) for m in range(per_thread))


def bodies(daemon) -> list[bytes]:
    return sorted(message.split(b"\n\n", 1)[1] for message in daemon.messages())


def test_no_session_lost_across_reloads_under_load(daemon_factory):
    daemon = daemon_factory(args=["--children", "2", "--idle-children", "2"])

    def reloads() -> None:
        for _ in range(4):
            time.sleep(0.15)
            daemon.signal(signal.SIGHUP)

    expected = send_from_threads(daemon, 10, 15, during=reloads)
    assert bodies(daemon) == expected
    assert daemon.process.poll() is None
    wait_until(lambda: len(daemon.live_children()) == 2, 5, message="pool back to two children")
    assert daemon.stop() == 0


def test_no_session_lost_while_children_are_recycled_under_load(daemon_factory):
    daemon = daemon_factory(args=["--children", "2", "--idle-children", "2", "--child-lifetime", "4"])
    expected = send_from_threads(daemon, 10, 10)
    assert bodies(daemon) == expected
    assert daemon.stop() == 0


DIES_AT_START = """
import os

from qpsmtpd_py.plugin import Plugin


class DiesAtStart(Plugin):
    def hook_post_fork(self, transaction):
        os._exit(3)
"""


def test_children_that_die_at_start_are_respawned_with_a_growing_delay(daemon_factory):
    daemon = daemon_factory(args=["--children", "2", "--debug"], plugin_files={"dies": DIES_AT_START},
                            extra_plugins=["dies"], start=False)
    process = subprocess.Popen([str(DAEMON), *daemon.args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, cwd=daemon.base)
    time.sleep(3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    forks = stderr.count("new child")
    assert "children die at start" in stderr
    assert 3 <= forks <= 12, forks  # without the delay: hundreds in 3 s


SPAWNS = """
from twisted.internet import defer, protocol

from qpsmtpd_py.constants import DECLINED
from qpsmtpd_py.plugin import Plugin


class Ended(protocol.ProcessProtocol):
    def __init__(self):
        self.done = defer.Deferred()

    def processEnded(self, reason):
        self.done.callback(None)


class Spawns(Plugin):
    async def hook_data_post(self, transaction):
        from twisted.internet import reactor

        ended = Ended()
        # Closes its pipes first and exits later: only SIGCHLD tells the reactor it is gone.
        reactor.spawnProcess(ended, "/bin/sh", ["sh", "-c", "exec >&- 2>&- <&-; sleep 0.3"])
        await ended.done
        return DECLINED
"""


def test_programs_started_by_plugins_are_reaped_in_children(daemon_factory):
    daemon = daemon_factory({"plugin_timeout": "10"}, plugin_files={"spawns": SPAWNS}, extra_plugins=["spawns"])
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=15) as client:
        client.sendmail("a@example.com", [RCPT], b"Subject: s\r\n\r\nbody\r\n")
    assert time.monotonic() - started < 5  # not the 10 s plugin timeout
