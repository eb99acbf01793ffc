"""The run/ service directories under real daemontools and runit.

Each test copies run/<kind> as it is in the repository, configures it only
through its env/ directory (read by envdir or `chpst -e`, as the run script's
header documents) and starts the supervisor the way a system does: svscan or
runsvdir on a directory holding the service, which also starts log/ and pipes
the daemon's output into multilog or svlogd. It then checks that mail is
served, that a SIGKILLed master is replaced by a new one that serves again,
that the log landed in log/main/current, and that TERM (svc -d, sv down)
stops the daemon cleanly. Every process started is gone after the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import DAEMON, RawClient, free_port, process_state, wait_until
from harness import write_config

REPO = Path(__file__).resolve().parents[2]
RCPT = "postmaster@test.example.org"
SCRIPTS = ("run", "log/run")


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def live_pids() -> Iterator[int]:
    """Every running process but this one (zombies excluded)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            fields = proc_stat(int(entry.name))
            if fields is not None and fields[0] != "Z":
                yield int(entry.name)


def processes_under(directory: Path) -> list[int]:
    """Processes started for one test: their command line names a path in `directory`, or they run in it."""
    found = []
    for pid in live_pids():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        if f"{directory}/" in cmdline(pid) or f"{cwd}/".startswith(f"{directory}/"):
            found.append(pid)
    return found


def group_members(pgid: int) -> list[int]:
    return [pid for pid in live_pids() if (fields := proc_stat(pid)) is not None and int(fields[2]) == pgid]


def children_of(pid: int) -> list[int]:
    return [child for child in live_pids() if (fields := proc_stat(child)) is not None and int(fields[1]) == pid]


def greeting(port: int, timeout: float) -> str:
    """The 220 greeting's first line once the port serves one; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    problem: object = "nothing tried"
    while time.monotonic() < deadline:
        try:
            with RawClient("127.0.0.1", port, timeout=max(0.5, deadline - time.monotonic())) as client:
                code, lines = client.reply()
                client.send("QUIT\r\n")
            if code == 220:
                return lines[0]
            problem = f"greeting {code} {lines}"
        except (OSError, AssertionError) as exc:
            problem = exc
        time.sleep(0.1)
    raise AssertionError(f"no 220 greeting on port {port} within {timeout}s (last: {problem})")


def send_message(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("sender@example.com", [RCPT], f"Subject: {subject}\r\n\r\nsupervised\r\n")


class Supervision:
    """One supervisor (svscan or runsvdir) on a scan directory holding the service `qpsmtpd`."""

    kind = ""
    programs: tuple[str, ...] = ()

    def __init__(self, base: Path) -> None:
        missing = [name for name in self.programs if shutil.which(name) is None]
        if missing:
            pytest.fail(f"{', '.join(missing)} not found in PATH: the {self.kind} test needs the Debian "
                        f"package {self.kind} (`make system-deps` installs it)", pytrace=False)
        self.base = base
        self.scan_dir = base / "services"
        self.service = self.scan_dir / "qpsmtpd"
        self.log_file = self.service / "log" / "main" / "current"
        self.maildir = base / "Maildir"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        source = REPO / "run" / self.kind
        shutil.copytree(source, self.service, ignore=shutil.ignore_patterns("supervise", "main"))
        for script in SCRIPTS:
            assert (self.service / script).read_bytes() == (source / script).read_bytes()
            assert os.access(self.service / script, os.X_OK), f"run/{self.kind}/{script} is not executable"
        config = write_config(base / "config", {
            "me": "test.example.org",
            "spool_dir": str(base / "spool"),
            "plugins": ["rcpt_ok", f"queue/maildir {self.maildir}"],
        })
        # One file per variable; a file holding only a newline sets the variable empty.
        write_config(self.service / "env", {
            "QPSMTPD_PY": f"{DAEMON}\n",
            "QPSMTPD_CONFIG": f"{config}\n",
            "QPSMTPD_LISTEN": "127.0.0.1\n",
            "QPSMTPD_PORT": f"{self.port}\n",
            "QPSMTPD_USER": "\n",
            "QPSMTPD_ARGS": "--debug --children 2 --idle-children 1 --shutdown-timeout 5\n",
        })

    # Each supervisor's commands.
    def scanner(self) -> list[str]:
        raise NotImplementedError

    def status(self) -> str:
        raise NotImplementedError

    def running_pid(self, status: str) -> int | None:
        raise NotImplementedError

    def is_down(self, status: str) -> bool:
        raise NotImplementedError

    def down(self) -> None:
        raise NotImplementedError

    def exit_services(self) -> None:
        raise NotImplementedError

    def command(self, *args: str | Path) -> str:
        result = subprocess.run([str(arg) for arg in args], capture_output=True, text=True, timeout=15, check=False)
        return result.stdout + result.stderr

    # Common.
    def start(self) -> None:
        self._output = open(self.base / "supervisor.out", "ab")  # noqa: SIM115  (closed by stop())
        self.process = subprocess.Popen(self.scanner(), stdin=subprocess.DEVNULL, stdout=self._output,
                                        stderr=subprocess.STDOUT, cwd=self.base, start_new_session=True)

    def master_pid(self) -> int | None:
        """The pid the supervisor reports for the service, when that process is the daemon itself."""
        pid = self.running_pid(self.status())
        return pid if pid is not None and str(DAEMON) in cmdline(pid) else None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def messages(self) -> list[bytes]:
        new = self.maildir / "new"
        return [path.read_bytes() for path in sorted(new.iterdir())] if new.is_dir() else []

    def diagnostics(self) -> str:
        output = (self.base / "supervisor.out").read_text(errors="replace")
        return (f"\n--- status\n{self.status()}\n--- {self.kind} supervisor output\n{output}"
                f"\n--- log/main/current\n{self.log()}")

    def wait(self, predicate: Callable[[], object], timeout: float, message: str) -> object:
        try:
            return wait_until(predicate, timeout, interval=0.1, message=message)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{self.diagnostics()}") from None

    def greeting(self, timeout: float) -> str:
        try:
            return greeting(self.port, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{self.diagnostics()}") from None

    def stop(self) -> list[int]:
        """Stop the supervisor, then the services; kill whatever is left. Returns what had to be killed."""
        if self.process is None:
            return []
        pgid = self.process.pid
        # The scanner first, or it would start a new supervisor for a service that exited.
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.exit_services()
        deadline = time.monotonic() + 10
        while (group_members(pgid) or processes_under(self.base)) and time.monotonic() < deadline:
            time.sleep(0.1)
        leftovers = sorted(set(group_members(pgid)) | set(processes_under(self.base)))
        described = [f"{pid} {cmdline(pid)}" for pid in leftovers]
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._output.close()
        self.process = None
        return described


class Daemontools(Supervision):
    kind = "daemontools"
    programs = ("svscan", "supervise", "svstat", "svc", "svok", "envdir", "multilog")

    def scanner(self) -> list[str]:
        return ["svscan", str(self.scan_dir)]

    def status(self) -> str:
        return self.command("svstat", self.service, self.service / "log")

    def running_pid(self, status: str) -> int | None:
        match = re.search(rf"^{re.escape(str(self.service))}: up \(pid (\d+)\)", status, re.M)
        return int(match.group(1)) if match else None

    def is_down(self, status: str) -> bool:
        return re.search(rf"^{re.escape(str(self.service))}: down ", status, re.M) is not None

    def down(self) -> None:
        self.command("svc", "-d", self.service)

    def exit_services(self) -> None:
        # supervise exits once its service is down; multilog sees end of input when the
        # daemon, its supervise and svscan are gone.
        self.command("svc", "-dx", self.service, self.service / "log")


class Runit(Supervision):
    kind = "runit"
    programs = ("runsvdir", "runsv", "sv", "chpst", "svlogd")

    def scanner(self) -> list[str]:
        return ["runsvdir", str(self.scan_dir)]

    def status(self) -> str:
        return self.command("sv", "status", self.service)

    def running_pid(self, status: str) -> int | None:
        match = re.match(rf"run: {re.escape(str(self.service))}: \(pid (\d+)\)", status)
        return int(match.group(1)) if match else None

    def is_down(self, status: str) -> bool:
        return status.startswith(f"down: {self.service}:")

    def down(self) -> None:
        self.command("sv", "down", self.service)

    def exit_services(self) -> None:
        # runsv stops the service, closes the log's input, waits for svlogd, then exits.
        self.command("sv", "exit", self.service)


@pytest.fixture
def supervision(tmp_path: Path) -> Iterator[Callable[[type[Supervision]], Supervision]]:
    started: list[Supervision] = []

    def make(kind: type[Supervision]) -> Supervision:
        supervised = kind(tmp_path)
        started.append(supervised)
        supervised.start()
        return supervised

    yield make
    leftovers = [line for supervised in started for line in supervised.stop()]
    assert not leftovers, f"processes left after the supervisor was stopped (killed now): {leftovers}"


def check_supervised_daemon(sup: Supervision) -> None:
    # Started by the supervisor through the unmodified run script: it serves and delivers.
    assert sup.greeting(15).split()[0] == "test.example.org"
    master = sup.wait(sup.master_pid, 10, "the supervisor reports the daemon's pid")
    send_message(sup.port, "first")
    assert [b"Subject: first" in message for message in sup.messages()] == [True]

    # SIGKILL the master: its children leave on their own, the supervisor starts a new master.
    old_children = sup.wait(lambda: children_of(master), 10, "the master has children")
    os.kill(master, signal.SIGKILL)
    sup.wait(lambda: all(process_state(pid) in (None, "Z") for pid in old_children), 15,
             "the children of the killed master exit")
    new_master = sup.wait(lambda: (pid := sup.master_pid()) not in (None, master) and pid, 15,
                          "a new master is started")
    sup.greeting(15)
    assert sup.master_pid() == new_master, sup.diagnostics()
    send_message(sup.port, "second")
    assert [b"Subject: second" in message for message in sup.messages()].count(True) == 1
    assert len(sup.messages()) == 2

    # The daemon's stderr went through log/run into log/main/current, for both masters.
    sup.wait(lambda: f":{master}: new child" in sup.log() and f":{new_master}: new child" in sup.log(), 10,
             "both masters' `new child` lines in log/main/current")

    # TERM (svc -d, sv down) reaches the daemon itself, which stops cleanly.
    sup.down()
    sup.wait(lambda: sup.is_down(sup.status()), 15, "the service is down")
    sup.wait(lambda: f":{new_master}: shutdown of daemon" in sup.log(), 10, "`shutdown of daemon` logged")
    assert process_state(new_master) in (None, "Z")


def test_daemontools_svscan_supervise_multilog(supervision) -> None:
    check_supervised_daemon(supervision(Daemontools))


def test_runit_runsvdir_runsv_svlogd(supervision) -> None:
    check_supervised_daemon(supervision(Runit))
