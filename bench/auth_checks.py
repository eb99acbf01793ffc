#!/usr/bin/env python3
"""bench/auth_checks.py: what SPF, DKIM and DMARC checks cost a session.

    .venv/bin/python bench/auth_checks.py [--port 2710] [--messages 2000] [--sessions 20] [--repeat 3]

Starts the test DNS server (tests/dns_server.py, FakeDNS on 127.0.0.1, a free
port) with, for the sender domain `sender.test`:

    sender.test          TXT "v=spf1 ip4:127.0.0.1 -all"
    _dmarc.sender.test   TXT "v=DMARC1; p=reject"   (no rua=: no report lines written)
    bench._domainkey.sender.test   TXT the DKIM public key (for the signing case)

and, for each case, qpsmtpd-py-prefork (2 children) on a copy of config/ whose
config/dns_servers points at that server, driven by Postfix's smtp-source
with a new connection per message:

    smtp-source -s 20 -m 2000 -f a@sender.test -t b@example.com -M bench.client 127.0.0.1:PORT

Cases:

1. no auth plugins: config/ as it is.
2. spf + dkim + dmarc: `sender_permitted_from`, `dkim`, `dmarc` put first in
   config/plugins. smtp-source cannot send a prepared message, so the mail is
   not DKIM-signed: dkim finds no signature (dkim=none, no key lookup), SPF
   passes (one TXT lookup, then from the resolver's cache: TTL 300) and
   DMARC passes through SPF alignment (the From header smtp-source writes is
   the envelope sender). Each message gets Received-SPF and
   Authentication-Results headers.
3. relay client, dkim signs: 127.0.0.1 in config/relayclients and an RSA
   2048-bit key in config/dkim/sender.test/: dkim signs every message
   (sender_permitted_from and dmarc, also loaded, skip relay clients).

Each run is preceded by 300 warm-up messages (not counted). The cases run in
turns, `--repeat` times; the median msgs/s is printed, with the DNS questions
the server saw per run (and by name, of the last run). Queue: config/'s queue/maildir (fsync), as the
`default` config of bench/compare.py. Everything listens on 127.0.0.1 only; the DNS server is Python
threads in this process, on the same cores as the daemon and smtp-source.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dns.rdatatype

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_daemon import BenchDaemon, find_smtp_source  # noqa: E402
from dns_server import FakeDNS  # noqa: E402

DOMAIN = "sender.test"
SELECTOR = "bench"
AUTH_PLUGINS = ["sender_permitted_from", "dkim", "dmarc"]


def txt(name: str, text: str) -> str:
    chunks = " ".join(f'"{text[i:i + 200]}"' for i in range(0, len(text), 200))
    return f"{name}. 300 IN TXT {chunks}\n"


def rsa_key() -> tuple[bytes, str]:
    private = subprocess.run(["openssl", "genrsa", "-traditional", "2048"], capture_output=True, check=True,
                             timeout=60).stdout
    public = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=private,
                            capture_output=True, check=True, timeout=60).stdout
    return private, base64.b64encode(public).decode()


class Daemon(BenchDaemon):
    """The daemon with `plugins_first`; with `relay_key`, 127.0.0.1 relays and its mail is DKIM-signed."""

    def __init__(self, port: int, dns_address: str, plugins_first: list[str], relay_key: bytes | None) -> None:
        def add_signing(config: Path) -> None:
            if relay_key is None:
                return
            (config / "relayclients").write_text("127.0.0.1\n")
            keydir = config / "dkim" / DOMAIN
            keydir.mkdir(parents=True)
            (keydir / "selector").write_text(SELECTOR + "\n")
            (keydir / "private").write_bytes(relay_key)

        super().__init__(port, dns_address, plugins_first, "auth-bench-", add_signing)


def header_of(path: Path) -> str:
    return path.read_bytes().split(b"\n\n", 1)[0].decode(errors="replace").replace("\n ", " ").replace("\n\t", " ")


def throughput(args, source: str, dns_address: str, plugins_first: list[str], relay_key: bytes | None,
               expect: list[str]) -> float:
    daemon = Daemon(args.port, dns_address, plugins_first, relay_key)
    try:
        command = [source, "-s", str(args.sessions), "-m", "300", "-f", f"a@{DOMAIN}", "-t", "b@example.com",
                   "-M", "bench.client", f"127.0.0.1:{args.port}"]
        subprocess.run(command, check=True, capture_output=True)  # warm-up
        messages = daemon.messages()
        header = header_of(messages[0]) if messages else ""
        missing = [text for text in expect if text not in header]
        if missing:  # the plugins must really have done their work
            raise SystemExit(f"expected {missing} in a delivered message's header:\n{header}")
        before = len(messages)
        command[4] = str(args.messages)
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        delivered = len(daemon.messages()) - before
        if result.returncode or delivered != args.messages:
            print(f"  warning: smtp-source exit {result.returncode}, {delivered} of {args.messages} delivered: "
                  f"{(result.stdout + result.stderr).strip()[:300]}", file=sys.stderr)
        return delivered / elapsed
    finally:
        daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=2710)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    source = find_smtp_source()
    if source is None:
        raise SystemExit("smtp-source (Debian package postfix) not found")
    private, public = rsa_key()
    zone = (txt(DOMAIN, "v=spf1 ip4:127.0.0.1 -all") + txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=reject")
            + txt(f"{SELECTOR}._domainkey.{DOMAIN}", f"v=DKIM1; k=rsa; p={public}"))
    cases = [("no auth plugins", [], None, []),
             ("spf + dkim + dmarc, unsigned mail", AUTH_PLUGINS, None,
              ["Received-SPF: Pass", "spf=pass", "dkim=none", "dmarc=pass"]),
             ("relay client, dkim signs (rsa 2048)", AUTH_PLUGINS, private,
              [f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d={DOMAIN};"])]
    rates: dict[str, list[float]] = {name: [] for name, *_ in cases}
    questions: dict[str, list[int]] = {name: [] for name, *_ in cases}
    asked_names: dict[str, Counter] = {name: Counter() for name, *_ in cases}
    with FakeDNS(zone) as server:
        for _ in range(args.repeat):
            for name, plugins, key, expect in cases:
                with server.lock:
                    before = Counter(server.counts)
                rates[name].append(throughput(args, source, server.address, plugins, key, expect))
                with server.lock:
                    asked = Counter(server.counts) - before
                questions[name].append(sum(asked.values()))
                asked_names[name] = asked
    print(f"smtp-source -s {args.sessions} -m {args.messages} -f a@{DOMAIN}, new connection per message, "
          f"median of {args.repeat}")
    for name, *_ in cases:
        runs = " ".join(f"{r:.0f}" for r in rates[name])
        print(f"  {name}: {statistics.median(rates[name]):.0f} msgs/s ({runs}); "
              f"DNS questions per run incl. warm-up: {statistics.median(questions[name]):.0f}")
        for (qname, rdtype), count in sorted(asked_names[name].items()):  # of the last run
            print(f"      {qname} {dns.rdatatype.to_text(rdtype)}: {count}")


if __name__ == "__main__":
    main()
