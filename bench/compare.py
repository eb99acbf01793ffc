"""Side-by-side benchmark: qpsmtpd-py in chosen configs and any peer servers, same client, one table.

    .venv/bin/python bench/compare.py                       # our three configs
    .venv/bin/python bench/compare.py --peer haraka=2526:PID --peer qpsmtpd-perl=2525:PID

For each of our configs (`--configs`, default all three) it starts `qpsmtpd-py-prefork`
on a copy of config/ in a temp dir, on 127.0.0.1 from `--port` upwards:

- `discard`: plugins `relay`, `rcpt_ok`, `queue/discard` (the peers' benchmark set);
- `maildir`: plugins `relay`, `rcpt_ok`, `queue/maildir` (fsync of file and directory before 250);
- `default`: the embedded config/ unchanged, its `queue/maildir` pointed into the temp dir.

`relayclients` holds 127.0.0.1 and `rcpthosts` example.com in all three. Peers
(`--peer NAME=PORT[:PID]`, loopback only) are started by you beforehand; with a PID
their process tree's memory is reported too.

Then the loads (`--loads`: small = a new connection per message with a tiny body,
10k = the same with a 10,240-byte body, persist = many messages per connection) run
round-robin: for each load, `--repeat` rounds, each round every server in turn:
`--warmup` messages of that load, then the timed run of `--messages`. The rate is
the median of the rounds. The timed client is Postfix's `smtp-source -s SESSIONS -m
MESSAGES` when installed (it costs the least CPU per message, and the peers' figures
were taken with it), else bench/load.py. Latency (p50/p99 from MAIL FROM to the 250
after the final dot) comes from one further bench/load.py run of `--latency-messages`
per load and server: smtp-source reports none. Server CPU per message is the user + system
CPU time the server's process tree used during the timed runs divided by their messages
(with a PID for peers): less disturbed than msgs/s by other work on the same cores.

Memory: RSS and PSS summed over the daemon's process tree (/proc/PID/smaps_rollup;
needs root for other users' processes), and the largest private memory (USS =
Private_Clean + Private_Dirty) of one process below the master, idle right after start
(warm-up excluded) and idle after all loads. `--children 0` starts our daemons with the
daemon's default pool options instead of `--children 2 --idle-children 2`.

Exit status: 0 when every message of every run was accepted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DAEMON = Path(sys.executable).parent / "qpsmtpd-py-prefork"
CONFIGS = ("discard", "maildir", "default")
LOADS = {"small": {}, "10k": {"size": 10240}, "persist": {"persist": True}}


def _import_load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_load", Path(__file__).with_name("load.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the class is built
    spec.loader.exec_module(module)
    return module


load = _import_load()


def find_smtp_source() -> str | None:
    """Postfix's load client (Debian package postfix), if installed."""
    found = shutil.which("smtp-source")
    if found:
        return found
    return "/usr/sbin/smtp-source" if os.access("/usr/sbin/smtp-source", os.X_OK) else None


@dataclass
class Server:
    name: str
    port: int
    pid: int | None = None
    work: Path | None = None  # our daemon's temp dir
    process: subprocess.Popen | None = None
    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu_us: dict[str, list[float]] = field(default_factory=dict)  # server CPU per message
    latency: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: int = 0


def write_config(kind: str, work: Path) -> Path:
    """A copy of config/ for one of CONFIGS in `work`; returns its path."""
    config = work / "config"
    shutil.copytree(ROOT / "config", config)
    if kind == "default":
        plugins = [f"queue/maildir {work}/Maildir" if line.startswith("queue/maildir ") else line
                   for line in (config / "plugins").read_text().splitlines()]
    else:
        queue = "queue/discard" if kind == "discard" else f"queue/maildir {work}/Maildir"
        plugins = ["relay", "rcpt_ok", queue]
    (config / "plugins").write_text("\n".join(plugins) + "\n")
    (config / "spool_dir").write_text(f"{work}/spool\n")
    (config / "relayclients").write_text("127.0.0.1\n")
    rcpthosts = (config / "rcpthosts").read_text().split() if (config / "rcpthosts").exists() else []
    if "example.com" not in rcpthosts:
        (config / "rcpthosts").write_text("\n".join(rcpthosts + ["example.com"]) + "\n")
    return config


def wait_greeting(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.settimeout(max(0.5, deadline - time.monotonic()))
                if sock.recv(512).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"qpsmtpd-py on port {port} did not greet within {timeout} s")


def start_ours(kind: str, port: int, children: int, extra: list[str]) -> Server:
    work = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    config = write_config(kind, work)
    log = open(work / "daemon.log", "wb")  # noqa: SIM115  # open for the daemon's whole life
    pool = ["--children", str(children), "--idle-children", str(children), "--child-lifetime", "1000000"]
    process = subprocess.Popen(
        [str(DAEMON), "--config-dir", str(config), "--listen-address", "127.0.0.1", "--port", str(port),
         *(pool if children else []), *extra],
        stdout=log, stderr=subprocess.STDOUT, cwd=work)
    log.close()
    server = Server(f"qpsmtpd-py {kind}", port, process.pid, work, process)
    try:
        wait_greeting(port, process)
    except SystemExit:
        stop_ours(server)
        raise
    return server


def stop_ours(server: Server) -> None:
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    if server.work is not None:
        shutil.rmtree(server.work, ignore_errors=True)


def run_smtp_source(source: str, port: int, messages: int, sessions: int, options: dict) -> tuple[float, bool]:
    args = [source, "-s", str(sessions), "-m", str(messages), "-f", "a@example.com", "-t", "b@example.com",
            "-M", "bench.client"]
    if "size" in options:
        args += ["-l", str(options["size"])]
    if options.get("persist"):
        args.append("-d")
    start = time.monotonic()
    done = subprocess.run([*args, f"127.0.0.1:{port}"], capture_output=True, text=True)
    elapsed = time.monotonic() - start
    ok = done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip()
    if not ok:
        print(f"  smtp-source on port {port}: exit {done.returncode} {(done.stdout + done.stderr)[:300]}",
              file=sys.stderr)
    return messages / elapsed, ok


def run_load_py(port: int, messages: int, sessions: int, options: dict) -> Any:
    cfg = load.LoadConfig(port=port, messages=messages, sessions=min(sessions, messages), **options)
    result = asyncio.run(load.run_load(cfg))
    return load.summarize(cfg, result, None)


def one_run(server: Server, source: str | None, messages: int, sessions: int, options: dict) -> tuple[float, bool]:
    if source is not None:
        return run_smtp_source(source, server.port, messages, sessions, options)
    summary = run_load_py(server.port, messages, sessions, options)
    return summary["msgs_per_s"], summary["failed"] == 0


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of `root` and its live descendants, plus what its reaped children used."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in load._proc_tree(root):
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[-1].split()
        except OSError:
            continue  # exited meanwhile; its parent's cutime/cstime has it once reaped
        # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17.
        total += int(fields[11]) + int(fields[12])
        if pid == root:
            total += int(fields[13]) + int(fields[14])
    return total / tick


def memory_of(server: Server) -> dict[str, Any] | None:
    """load.py's tree RSS/PSS, and the largest private memory (USS) of one process below the root."""
    if server.pid is None:
        return None
    memory = load.tree_memory(server.pid)
    uss = []
    for pid in load._proc_tree(server.pid)[1:]:
        try:
            fields = load._read_kb(f"/proc/{pid}/smaps_rollup", ("Private_Clean", "Private_Dirty"))
        except OSError:
            continue
        uss.append(sum(fields.values()) / 1024)
    memory["child_uss_max_mib"] = round(max(uss), 1) if uss else None
    return memory


def format_table(servers: list[Server], loads: list[str], client: str, repeat: int) -> str:
    rows = [f"client: {client}; msgs/s = median of {repeat} runs (all runs in brackets); "
            "p50/p99 ms from bench/load.py; server CPU = the daemon's user+system CPU per message (median)",
            "| server | load | msgs/s | p50 / p99 ms | server CPU µs/msg |", "|---|---|---|---|---|"]
    for load_name in loads:
        for server in servers:
            runs = server.rates.get(load_name, [])
            rate = f"**{statistics.median(runs):,.0f}** ({' '.join(f'{r:.0f}' for r in runs)})" if runs else "-"
            p50, p99 = server.latency.get(load_name, (None, None))
            lat = f"{p50:.1f} / {p99:.1f}" if p50 is not None and p99 is not None else "-"
            cpu = server.cpu_us.get(load_name)
            cpu_text = f"{statistics.median(cpu):.0f}" if cpu else "-"
            rows.append(f"| {server.name} | {load_name} | {rate} | {lat} | {cpu_text} |")
    rows += ["", "| server | idle after start: RSS / PSS MiB (procs), largest child USS | "
             "idle after the loads: RSS / PSS MiB (procs), largest child USS |", "|---|---|---|"]
    for server in servers:
        cells = []
        for when in ("start", "end"):
            m = server.memory.get(when)
            uss = m and m["child_uss_max_mib"]
            cells.append(f"{m['rss_mib']:.1f} / {m['pss_mib']:.1f} ({m['procs']}), {uss if uss is not None else '-'}"
                         if m else "-")
        rows.append(f"| {server.name} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def peer(text: str) -> tuple[str, int, int | None]:
    try:
        name, _, where = text.partition("=")
        port, _, pid = where.partition(":")
        if not name:
            raise ValueError
        return name, int(port), int(pid) if pid else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"--peer takes NAME=PORT or NAME=PORT:PID, not {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help="ours to run, comma-separated; '' for none")
    p.add_argument("--peer", action="append", type=peer, default=[], help="NAME=PORT[:PID] on 127.0.0.1")
    p.add_argument("--loads", default=",".join(LOADS))
    p.add_argument("--port", type=int, default=2600, help="first port for our daemons")
    p.add_argument("--children", type=int, default=2,
                   help="--children and --idle-children of our daemons; 0: the daemon's defaults")
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1000, help="messages of the same load before each timed run")
    p.add_argument("--latency-messages", type=int, default=1000)
    p.add_argument("--client", choices=("auto", "smtp-source", "load.py"), default="auto")
    p.add_argument("--daemon-args", default="", help="extra qpsmtpd-py-prefork options, space-separated")
    p.add_argument("--json", action="store_true", help="print the results as JSON, not a table")
    args = p.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    args.loads = [name for name in args.loads.split(",") if name]
    for name in args.configs:
        if name not in CONFIGS:
            p.error(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    for name in args.loads:
        if name not in LOADS:
            p.error(f"unknown load {name!r}; choose from {', '.join(LOADS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = None if args.client == "load.py" else find_smtp_source()
    if args.client == "smtp-source" and source is None:
        raise SystemExit("smtp-source is not installed (Debian package postfix)")
    servers: list[Server] = []
    try:
        for n, kind in enumerate(args.configs):
            servers.append(start_ours(kind, args.port + n, args.children, args.daemon_args.split()))
        servers += [Server(name, port, pid) for name, port, pid in args.peer]
        time.sleep(1)  # let the children settle before the idle memory is read
        for server in servers:
            server.memory["start"] = memory_of(server)
        for load_name in args.loads:
            options = LOADS[load_name]
            for _ in range(args.repeat):
                for server in servers:
                    if args.warmup:
                        one_run(server, source, args.warmup, args.sessions, options)
                    cpu = tree_cpu_seconds(server.pid) if server.pid is not None else None
                    rate, ok = one_run(server, source, args.messages, args.sessions, options)
                    server.rates.setdefault(load_name, []).append(rate)
                    if cpu is not None:
                        used = tree_cpu_seconds(server.pid) - cpu
                        server.cpu_us.setdefault(load_name, []).append(used * 1e6 / args.messages)
                    server.failed += 0 if ok else 1
            for server in servers:
                summary = run_load_py(server.port, args.latency_messages, args.sessions, options)
                server.latency[load_name] = (summary["p50_ms"], summary["p99_ms"])
                server.failed += 1 if summary["failed"] else 0
        time.sleep(1)
        for server in servers:
            server.memory["end"] = memory_of(server)
    finally:
        for server in servers:
            stop_ours(server)
    client = source or "bench/load.py"
    if args.json:
        print(json.dumps([{"name": s.name, "port": s.port, "rates": s.rates, "cpu_us": s.cpu_us, "latency": s.latency,
                           "memory": s.memory, "failed_runs": s.failed} for s in servers]))
    else:
        print(format_table(servers, args.loads, client, args.repeat))
        for server in servers:
            if server.failed:
                print(f"{server.name}: {server.failed} run(s) with failed messages")
    return 1 if any(s.failed for s in servers) else 0


if __name__ == "__main__":
    sys.exit(main())
