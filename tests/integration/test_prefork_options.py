"""qpsmtpd-prefork's options that shape the processes: pid file, detach, titles, renice."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
import tempfile
from pathlib import Path

from conftest import DAEMON, process_state, wait_for_port, wait_until

RCPT = "postmaster@test.example.org"


def send_one(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("a@example.com", [RCPT], b"Subject: x\r\n\r\nbody\r\n")


def test_pid_file_holds_the_master_pid_and_is_removed_at_exit(daemon_factory, tmp_path):
    pid_file = tmp_path / "qp.pid"
    daemon = daemon_factory(args=["--children", "1", "--pid-file", str(pid_file)])
    assert int(pid_file.read_text()) == daemon.process.pid
    assert daemon.stop() == 0
    assert not pid_file.exists()


def test_a_second_daemon_with_the_same_pid_file_is_refused(daemon_factory, tmp_path):
    pid_file = tmp_path / "qp.pid"
    first = daemon_factory(args=["--children", "1", "--pid-file", str(pid_file)])
    second = daemon_factory(args=["--children", "1", "--pid-file", str(pid_file)], start=False)
    result = subprocess.run([str(DAEMON), *second.args], capture_output=True, text=True, timeout=30,
                            cwd=second.base)
    assert result.returncode == 1
    assert f"already running qpsmtpd-py with pid {first.process.pid}" in result.stderr
    assert int(pid_file.read_text()) == first.process.pid  # untouched


def test_a_stale_pid_file_is_taken_over(daemon_factory, tmp_path):
    pid_file = tmp_path / "qp.pid"
    pid_file.write_text("999999\n")  # left by a master that was killed
    daemon = daemon_factory(args=["--children", "1", "--pid-file", str(pid_file)])
    assert int(pid_file.read_text()) == daemon.process.pid


def test_relative_pid_file_is_refused(daemon_factory):
    daemon = daemon_factory(args=["--children", "1", "--pid-file", "qp.pid"], start=False)
    result = subprocess.run([str(DAEMON), *daemon.args], capture_output=True, text=True, timeout=30,
                            cwd=daemon.base)
    assert result.returncode == 1
    assert "--pid-file must be an absolute path" in result.stderr


def test_detach_runs_in_the_background_and_term_stops_it(daemon_factory, tmp_path):
    pid_file = tmp_path / "qp.pid"
    daemon = daemon_factory(args=["--children", "1", "--detach", "--pid-file", str(pid_file)], start=False)
    launcher = subprocess.run([str(DAEMON), *daemon.args], capture_output=True, text=True, timeout=30,
                              cwd=daemon.base)
    assert launcher.returncode == 0, launcher.stderr  # the launcher returns once detached
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 10, message="pid file"))
    try:
        assert os.getsid(pid) != os.getsid(0)  # a session of its own: no terminal can signal it
        wait_for_port(daemon.port, None)
        send_one(daemon.port)
        assert len(daemon.messages()) == 1  # relative paths still mean the start directory
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: process_state(pid) in (None, "Z"), 20, message="detached master exits")
    wait_until(lambda: not pid_file.exists(), 5, message="pid file removed")


def test_pretty_child_shows_the_client_in_the_process_title(daemon_factory):
    daemon = daemon_factory(args=["--children", "1", "--idle-children", "1", "--sessions-per-child", "1",
                                  "--pretty-child"])

    def titles() -> list[str]:
        return [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                for pid in daemon.live_children()]

    assert "qpsmtpd-py child" in wait_until(lambda: titles(), 10, message="a child")
    with daemon.connect() as client:
        client.expect(220)
        busy = wait_until(lambda: [t for t in titles() if "[127.0.0.1 : [127.0.0.1] : " in t], 10,
                          message="the client in the title")
        assert busy[0].startswith("qpsmtpd-py child [127.0.0.1")
        client.expect(221, "QUIT")


def test_renice_parent_makes_the_master_nicer_than_its_children(daemon_factory):
    if os.geteuid() != 0:
        # Raising a priority needs root; the option is then a logged no-op.
        daemon = daemon_factory(args=["--children", "1", "--renice-parent", "5"])
        wait_until(lambda: "needs root" in daemon.log(), 10, message="the warning")
        return
    base = os.getpriority(os.PRIO_PROCESS, 0)
    daemon = daemon_factory(args=["--children", "1", "--renice-parent", "5"])
    [child] = wait_until(lambda: daemon.live_children(), 10, message="a child")
    assert os.getpriority(os.PRIO_PROCESS, daemon.process.pid) == base - 5
    assert os.getpriority(os.PRIO_PROCESS, child) == base


def test_renice_parent_out_of_range_is_fatal(daemon_factory):
    daemon = daemon_factory(args=["--children", "1", "--renice-parent", "40"], start=False)
    result = subprocess.run([str(DAEMON), *daemon.args], capture_output=True, text=True, timeout=30,
                            cwd=daemon.base)
    assert result.returncode == 1
    assert "is not between -19 and 19" in result.stderr


RECORDS_UID = """
import os

from qpsmtpd_py.plugin import Plugin


class RecordsUid(Plugin):
    def register(self, qp, path):
        with open(path, "w") as out:
            out.write(f"{os.getuid()} {os.getgid()} {sorted(os.getgroups())}")
"""


def test_user_drops_privileges_before_any_plugin_runs(daemon_factory, tmp_path):
    import pwd

    if os.geteuid() != 0:
        return  # only root can switch users; nothing to check otherwise
    nobody = pwd.getpwnam("nobody")
    # pytest's tmp_path is private to root: the daemon user needs a directory it can reach.
    shared = Path(tempfile.mkdtemp(prefix="qpsmtpd-py-user-"))
    shared.chmod(0o777)
    record = shared / "uid"
    daemon = daemon_factory(
        {"spool_dir": str(shared / "spool"),
         "plugins": [f"records_uid {record}", "rcpt_ok", f"queue/maildir {shared / 'Maildir'}"]},
        args=["--children", "1", "--user", "nobody"], plugin_files={"records_uid": RECORDS_UID}, start=False)
    os.chmod(daemon.base, 0o755)
    for path in daemon.base.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    # The daemon user must reach the test's config and the checkout (its plugins/), as it
    # reaches an installed copy: open the directories on the way (the clone may sit in a
    # private temporary directory).
    checkout = Path(__file__).resolve().parents[2]
    for directory in {*daemon.base.parents, checkout, *checkout.parents} - {Path("/")}:
        directory.chmod(directory.stat().st_mode | 0o001)  # traverse only
    try:
        daemon.start()
        check_running_as(daemon, nobody, record, shared)
    finally:
        daemon.stop()
        shutil.rmtree(shared)


def check_running_as(daemon, nobody, record: Path, shared: Path) -> None:
    uid, gid, groups = record.read_text().split(" ", 2)
    assert (int(uid), int(gid)) == (nobody.pw_uid, nobody.pw_gid)
    assert 0 not in eval(groups)  # no supplementary group of root's is left
    [child] = wait_until(lambda: daemon.live_children(), 10, message="a child")
    status = Path(f"/proc/{child}/status").read_text()
    assert f"Uid:\t{nobody.pw_uid}\t" in status
    send_one(daemon.port)
    assert len(list((shared / "Maildir" / "new").iterdir())) == 1
