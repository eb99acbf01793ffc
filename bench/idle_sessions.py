"""Many idle SMTP sessions at once: the daemon's memory, and how fast a newcomer is still greeted.

    .venv/bin/python bench/idle_sessions.py                 # 10,000 sessions against our daemon
    .venv/bin/python bench/idle_sessions.py --port 2526 --pid PID   # against a server already running

Without `--port` it starts `qpsmtpd-py-prefork` on 127.0.0.1:`--daemon-port` on a copy of
the embedded config/ (its `queue/maildir` pointed into a temp dir) with `--children
CHILDREN --idle-children CHILDREN --sessions-per-child SESSIONS_PER_CHILD
--child-lifetime 1000000`; the defaults (2 × 6,000) leave room for the 10,000 sessions.

Then it opens `--sessions` connections, `--concurrency` connects in flight at once, from
`--sources` source addresses 127.0.1.1, 127.0.1.2, ... (all loopback), reads each 220
greeting and leaves the session idle. It raises its own open-files limit to the hard
limit (setrlimit) first. With all of them open it reports the RSS and PSS summed over
the daemon's process tree (/proc/PID/smaps_rollup; needs root for other users'
processes), then times `--probes` new connections from 127.0.0.1, one after another:
connect until the 220 greeting is read, then QUIT. It prints p50/p99/max of that.

Exit status 1 when fewer than `--sessions` sessions were greeted or a probe failed.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (a sibling script, not a package)


def raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < needed:
        raise SystemExit(f"open-files hard limit {hard} is below the {needed} this run needs (ulimit -Hn)")
    return soft


async def open_idle(port: int, source: str, timeout: float) -> asyncio.StreamWriter | None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout)
        greeting = await asyncio.wait_for(reader.readline(), timeout)
    except (TimeoutError, OSError):
        return None
    if not greeting.startswith(b"220"):
        writer.close()
        return None
    return writer


async def probe(port: int, timeout: float) -> float | None:
    start = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        greeting = await asyncio.wait_for(reader.readline(), timeout)
    except (TimeoutError, OSError):
        return None
    took = time.monotonic() - start
    writer.write(b"QUIT\r\n")
    try:
        await asyncio.wait_for(reader.read(), timeout)
    except (TimeoutError, OSError):
        pass
    writer.close()
    return took if greeting.startswith(b"220") else None


async def run(args: argparse.Namespace, pid: int | None) -> int:
    sources = [f"127.0.1.{n}" for n in range(1, args.sources + 1)]
    gate = asyncio.Semaphore(args.concurrency)

    async def one(n: int) -> asyncio.StreamWriter | None:
        async with gate:
            return await open_idle(args.port, sources[n % len(sources)], args.timeout)

    start = time.monotonic()
    writers = await asyncio.gather(*(one(n) for n in range(args.sessions)))
    open_writers = [w for w in writers if w is not None]
    print(f"idle sessions greeted: {len(open_writers)} of {args.sessions} from {len(sources)} source addresses "
          f"in {time.monotonic() - start:.1f} s")
    await asyncio.sleep(2)  # let the children settle
    if pid is not None:
        m = compare.load.tree_memory(pid)
        print(f"daemon memory with the sessions open: RSS {m['rss_mib']:.1f} MiB, PSS {m['pss_mib']:.1f} MiB, "
              f"{m['procs']} processes")
    samples = []
    for _ in range(args.probes):
        samples.append(await probe(args.port, args.timeout))
    ok = sorted(s * 1000 for s in samples if s is not None)
    failed = len(samples) - len(ok)
    if ok:
        print(f"second client, connect -> 220 over {len(ok)} connects: p50 {statistics.median(ok):.1f} ms, "
              f"p99 {compare.load.percentile(ok, 99):.1f} ms, max {ok[-1]:.1f} ms; failed {failed}")
    for writer in open_writers:
        writer.close()
    return 0 if len(open_writers) == args.sessions and failed == 0 and ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--sessions", type=int, default=10000)
    p.add_argument("--sources", type=int, default=8, help="source addresses 127.0.1.1 ... 127.0.1.N")
    p.add_argument("--concurrency", type=int, default=200, help="connects in flight at once")
    p.add_argument("--probes", type=int, default=200)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--port", type=int, help="a server already running on 127.0.0.1 (else ours is started)")
    p.add_argument("--pid", type=int, help="with --port: that server's PID, for its memory")
    p.add_argument("--daemon-port", type=int, default=2650)
    p.add_argument("--config", choices=compare.CONFIGS, default="default")
    p.add_argument("--children", type=int, default=2)
    p.add_argument("--sessions-per-child", type=int, default=6000)
    args = p.parse_args(argv)
    if not 1 <= args.sources <= 254:
        p.error("--sources must be 1 to 254")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile(args.sessions + args.probes + 100)
    server = None
    if args.port is None:
        server = compare.start_ours(args.config, args.daemon_port, args.children,
                                    ["--sessions-per-child", str(args.sessions_per_child)])
        args.port, pid = args.daemon_port, server.pid
        m = compare.load.tree_memory(pid)
        print(f"qpsmtpd-py ({args.config} config, --children {args.children} --sessions-per-child "
              f"{args.sessions_per_child}) idle: RSS {m['rss_mib']:.1f} MiB, PSS {m['pss_mib']:.1f} MiB, "
              f"{m['procs']} processes")
    else:
        pid = args.pid
    try:
        return asyncio.run(run(args, pid))
    finally:
        if server is not None:
            compare.stop_ours(server)


if __name__ == "__main__":
    sys.exit(main())
