"""The benchmark scripts (bench/compare.py, bench/idle_sessions.py) on a few hundred messages, and
the daemon's open-files limit they rely on.

Smoke runs only: they keep the scripts working; the numbers are the benchmark's business and
no test here looks at a rate or a latency.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import free_port

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True, timeout=300)


def test_compare_runs_our_config_and_a_peer_with_the_same_client(daemon_factory):
    peer = daemon_factory(files={"rcpthosts": "example.com"})
    done = run_script("compare.py", "--configs", "discard", "--port", str(free_port()),
                      "--peer", f"peer={peer.port}:{peer.process.pid}", "--loads", "small,persist",
                      "--messages", "150", "--warmup", "20", "--repeat", "1", "--latency-messages", "50", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    ours, theirs = json.loads(done.stdout)
    assert ours["name"] == "qpsmtpd-py discard" and theirs["name"] == "peer"
    for server in (ours, theirs):
        assert set(server["rates"]) == {"small", "persist"} and server["failed_runs"] == 0
        assert all(server["latency"][load][1] is not None for load in ("small", "persist"))
        assert server["memory"]["end"]["procs"] >= 2  # the master and its children
    # The peer kept every message it was sent: 2 loads x (warm-up + timed + latency run).
    assert len(peer.messages()) == 2 * (20 + 150 + 50)


def test_compare_prints_one_table_for_all_three_configs():
    done = run_script("compare.py", "--port", str(free_port()), "--loads", "small", "--messages", "100",
                      "--warmup", "0", "--repeat", "1", "--latency-messages", "20", "--client", "load.py")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| qpsmtpd-py ")]
    assert [row.split(" | ")[0] for row in rows] == ["| qpsmtpd-py discard", "| qpsmtpd-py maildir",
                                                    "| qpsmtpd-py default"] * 2  # rates, then memory


def test_idle_sessions_holds_many_sessions_and_greets_a_newcomer():
    done = run_script("idle_sessions.py", "--sessions", "300", "--sources", "3", "--probes", "20",
                      "--daemon-port", str(free_port()), "--sessions-per-child", "200")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "idle sessions greeted: 300 of 300 from 3 source addresses" in done.stdout
    assert "second client, connect -> 220 over 20 connects" in done.stdout
    assert "failed 0" in done.stdout


def test_daemon_raises_its_open_files_soft_limit_to_the_hard_limit(daemon_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        daemon = daemon_factory(start=False)
        daemon.start()  # the daemon inherits the low soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    deadline = time.monotonic() + 10
    while not daemon.children() and time.monotonic() < deadline:
        time.sleep(0.05)
    # An unlimited hard limit is no valid soft one for open files: then the soft one stays.
    shown_hard = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    expected = [str(low), shown_hard] if hard == resource.RLIM_INFINITY else [shown_hard, shown_hard]
    for pid in [daemon.process.pid, *daemon.children()]:
        limits = Path(f"/proc/{pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == expected, line



def test_replies_stay_whole_and_in_order_when_the_client_reads_late(daemon_factory):
    """Replies written straight to the socket keep their order with a long pipelined batch."""
    daemon = daemon_factory()
    count = 20000
    with daemon.connect(timeout=60) as client:
        assert client.reply()[0] == 220
        client.send("HELO client.example\r\n")
        assert client.reply()[0] == 250
        # Pipelined, and nothing read until all is sent (or the server stops reading).
        commands = "".join(f"MAIL FROM:<s{n}@example.com>\r\n" for n in range(count)) + "QUIT\r\n"
        sender = threading.Thread(target=client.send, args=(commands,))
        sender.start()
        sender.join(1)  # a wait, not a check: if it still blocks, reading below frees it
        received = bytearray()
        while not received.endswith(b"\r\n") or not received.rstrip().split(b"\r\n")[-1].startswith(b"221"):
            chunk = client.sock.recv(65536)
            assert chunk, "connection closed before the QUIT reply"
            received += chunk
        sender.join()
    replies = bytes(received).split(b"\r\n")[:-2]
    assert replies == [f"250 <s{n}@example.com>, sender OK - how exciting to get mail from you!".encode()
                       for n in range(count)]
