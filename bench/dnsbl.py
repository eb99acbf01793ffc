#!/usr/bin/env python3
"""bench/dnsbl.py: what the dnsbl plugin's DNS lookups cost a session.

    .venv/bin/python bench/dnsbl.py [--port 2700] [--messages 3000] [--sessions 20] [--repeat 3]

Starts the test DNS server (tests/dns_server.py, FakeDNS on 127.0.0.1, a free
port) and, for each case below, qpsmtpd-py-prefork (2 children) on a copy of
config/ whose config/dns_servers points at that server, with a `dnsbl ...`
line put first in config/plugins (before any plugin could end the session).

1. Greeting delay: 5 dnsbl zones, `dnsbl timeout 3`; the time from connect to
   the 220 greeting of a few sessions made one after another, when one zone's
   answer takes 2 s, and when every zone's answer takes 2 s. The zones are
   asked in parallel, so both should take ~2 s (not 2 s + the others, nor
   5 x 2 s). The answers have TTL 0 (nothing listed: 127.255.255.254, outside
   the zones' return-code filter), so no session is helped by the cache.
2. Throughput: msgs/s with Postfix's smtp-source, a new connection per message
   (`smtp-source -s 20 -m 3000 -f a@example.com -t b@example.com -M bench.client`),
   with no dnsbl, with dnsbl on 3 zones whose NXDOMAIN answers the resolver
   caches (negative TTL 60 s: what a client that comes back gets), and with
   dnsbl on 3 zones answered with TTL 0 (3 DNS queries per session, every
   session). Run in turns, `--repeat` times; the median is printed, with the
   DNS questions the server saw. Queue: config/'s queue/maildir (fsync), as the
   `default` config of bench/compare.py.

Everything listens on 127.0.0.1 only. The DNS server is Python threads in this
process, on the same cores as the daemon and smtp-source.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_daemon import BenchDaemon, find_smtp_source  # noqa: E402
from dns_server import FakeDNS  # noqa: E402

CLIENT = "1.0.0.127"  # 127.0.0.1 reversed
NOT_LISTED = "127.0.0.2-127.0.0.11:Blocked"  # return-code filter: A lookups, 127.255.255.254 is not listed
SLOW_ZONES = [f"s{n}.bench" for n in range(1, 6)]
FRESH_ZONES = [f"f{n}.bench" for n in range(1, 4)]  # answered with TTL 0: never cached
CACHED_ZONES = [f"c{n}.bench" for n in range(1, 4)]  # NXDOMAIN: cached for the SOA's 60 s
ZONE = "".join(f"{CLIENT}.{zone.removesuffix('.bench')} 0 IN A 127.255.255.254\n"
               for zone in SLOW_ZONES + FRESH_ZONES)


class Daemon(BenchDaemon):
    """The daemon with `dnsbl` (a config/plugins line, or None) on `zones`."""

    def __init__(self, port: int, dns_address: str, dnsbl: str | None, zones: list[str]) -> None:
        def add_zones(config: Path) -> None:
            (config / "dnsbl_zones").write_text("".join(f"{zone}={NOT_LISTED}\n" for zone in zones))

        super().__init__(port, dns_address, [dnsbl] if dnsbl else [], "dnsbl-bench-", add_zones)


def greeting_time(port: int) -> tuple[float, str]:
    """Seconds from connect to the greeting's last line, and that line."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        data = b""
        while not any(line[3:4] == b" " for line in data.split(b"\r\n")):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - started
        sock.sendall(b"QUIT\r\n")
    return elapsed, data.decode(errors="replace").strip().splitlines()[-1]


def greeting_delay(args, slow: dict[str, float], label: str) -> None:
    with FakeDNS(ZONE, origin="bench.", slow=slow) as server:
        daemon = Daemon(args.port, server.address, "dnsbl timeout 3", SLOW_ZONES)
        try:
            time.sleep(3.5)  # let the start-up probe's lookups finish: no session shares them
            times = []
            for _ in range(args.greetings):
                elapsed, line = greeting_time(args.port)
                if not line.startswith("220"):
                    raise SystemExit(f"unexpected greeting {line!r}")
                times.append(elapsed)
        finally:
            daemon.close()
    print(f"greeting, 5 zones, {label}: " + " ".join(f"{t:.3f}" for t in times)
          + f" s (median {statistics.median(times):.3f} s)")


def throughput(args, source: str, dns_address: str, dnsbl: str | None, zones: list[str]) -> tuple[float, int]:
    daemon = Daemon(args.port, dns_address, dnsbl, zones)
    try:
        command = [source, "-s", str(args.sessions), "-m", "300", "-f", "a@example.com", "-t", "b@example.com",
                   "-M", "bench.client", f"127.0.0.1:{args.port}"]
        subprocess.run(command, check=True, capture_output=True)  # warm-up
        before = daemon.delivered()
        command[4] = str(args.messages)
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        delivered = daemon.delivered() - before
        if result.returncode or delivered != args.messages:
            print(f"  warning: smtp-source exit {result.returncode}, {delivered} of {args.messages} delivered: "
                  f"{(result.stdout + result.stderr).strip()[:300]}", file=sys.stderr)
        return delivered / elapsed, delivered
    finally:
        daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=2700)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--greetings", type=int, default=3, help="sessions timed per greeting case")
    args = parser.parse_args()

    greeting_delay(args, {f"{CLIENT}.{SLOW_ZONES[2]}": 2.0}, "one answers after 2 s")
    greeting_delay(args, {f"{CLIENT}.{zone}": 2.0 for zone in SLOW_ZONES}, "all 5 answer after 2 s")

    source = find_smtp_source()
    if source is None:
        print("smtp-source (Debian package postfix) not found: no throughput runs")
        return
    cases = [("no dnsbl", None, []),
             ("dnsbl, 3 zones, NXDOMAIN cached", "dnsbl timeout 3", CACHED_ZONES),
             ("dnsbl, 3 zones, TTL 0 (not cached)", "dnsbl timeout 3", FRESH_ZONES)]
    rates: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    questions: dict[str, list[int]] = {name: [] for name, _, _ in cases}
    with FakeDNS(ZONE, origin="bench.") as server:
        for _ in range(args.repeat):
            for name, dnsbl, zones in cases:
                asked = server.total()
                rate, _ = throughput(args, source, server.address, dnsbl, zones)
                rates[name].append(rate)
                questions[name].append(server.total() - asked)
    print(f"smtp-source -s {args.sessions} -m {args.messages}, new connection per message, "
          f"median of {args.repeat} (each run)")
    for name, _, _ in cases:
        runs = " ".join(f"{r:.0f}" for r in rates[name])
        print(f"  {name}: {statistics.median(rates[name]):.0f} msgs/s ({runs}); "
              f"DNS questions per run incl. 300 warm-up messages: {statistics.median(questions[name]):.0f}")


if __name__ == "__main__":
    main()
