#!/usr/bin/env python3
"""bench/content_filters.py: msgs/s through the daemon with and without a content scanner.

    .venv/bin/python bench/content_filters.py [--scanner spamassassin|clamdscan|all]
                                              [--messages 300] [--sessions 10] [--max-scans 4]

Plugins: relay, rcpt_ok, queue/discard (baseline), then the same with the
scanner in front: `spamassassin reject 20` asking a private spamd
(tests/spamd_server.py: the package's rules, local tests only, no Bayes, 2 spamd
children) over its unix socket, and `virus/clamdscan scan_all 1` asking a
private clamd (tests/clamd_server.py: a one-signature database) over its unix
socket and over TCP. The daemon runs 2 children; bench/load.py sends
`--messages` small clean messages from `--sessions` sessions, a new connection
per message. The scanners run on the same machine, so their figures are the
scanner's throughput on what is left of the CPU, not the plugin's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_daemon import BenchDaemon  # noqa: E402
from clamd_server import ClamdServer  # noqa: E402
from spamd_server import SpamdServer, free_port  # noqa: E402


def rate(plugins: list[str], args: argparse.Namespace) -> dict:
    port = free_port()
    daemon = BenchDaemon(port, "127.0.0.1", [*plugins, "queue/discard"], prefix="content-filter-bench-")
    try:
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--port", str(port),
                              "--sessions", str(args.sessions), "--messages", str(args.messages), "--json"],
                             capture_output=True, text=True, check=True, timeout=900).stdout
        return json.loads(out)
    finally:
        daemon.close()


def spamassassin_runs(args: argparse.Namespace) -> dict:
    spamd = SpamdServer().start()
    try:
        return {"+ spamassassin (unix socket)": rate([f"spamassassin spamd_socket {spamd.socket_path} reject 20 "
                                                      f"max_scans {args.max_scans}"], args)}
    finally:
        spamd.stop()


def clamdscan_runs(args: argparse.Namespace) -> dict:
    clamd = ClamdServer().start()
    try:
        common = f"scan_all 1 max_scans {args.max_scans}"
        return {"+ virus/clamdscan (unix socket)": rate([f"virus/clamdscan clamd_socket {clamd.socket_path} "
                                                         f"{common}"], args),
                "+ virus/clamdscan (TCP)": rate([f"virus/clamdscan clamd_host 127.0.0.1 clamd_port {clamd.port} "
                                                 f"{common}"], args)}
    finally:
        clamd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scanner", choices=("spamassassin", "clamdscan", "all"), default="all")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--max-scans", type=int, default=4, help="the scanner plugin's max_scans per child")
    args = parser.parse_args()
    runs = {"relay rcpt_ok queue/discard": rate([], args)}
    if args.scanner in ("spamassassin", "all"):
        runs.update(spamassassin_runs(args))
    if args.scanner in ("clamdscan", "all"):
        runs.update(clamdscan_runs(args))
    print(f"{args.messages} messages, {args.sessions} sessions, new connection per message")
    for name, result in runs.items():
        print(f"  {name}: {result['msgs_per_s']:.0f} msgs/s, ok={result['ok']} failed={result['failed']}, "
              f"latency p50={result['p50_ms']:.1f} ms p99={result['p99_ms']:.1f} ms")


if __name__ == "__main__":
    main()
