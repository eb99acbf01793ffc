#!/usr/bin/env python3
"""bench/greylist.py: greylisting decisions per second, SQLite vs Redis, from 2 processes at once.

    .venv/bin/python bench/greylist.py [--decisions 20000] [--concurrency 20] [--clients 5000] [--processes 2]

A decision is what the greylisting plugin does per MAIL: read the triplet's
entry, decide (plugins/greylisting.py's `decide`), write the new value with
its time-to-live; the plugin's own store code (qpsmtpd_py/state), on a Twisted
epoll reactor as in a child. Each of `--processes` worker processes (the
daemon's children) makes `--decisions` decisions, `--concurrency` at a time
(sessions in one child), for keys drawn from `--clients` client IPs, so most
keys are read and written many times and the processes meet on the same keys.
The workers start together; the rate is all decisions over the time from the
first start to the last finish.

Stores: SQLite (WAL, one worker thread per process) in a temporary directory,
and a private redis-server (tests/redis_server.py: loopback, free port, no
persistence) on the same machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def load_decide():
    spec = importlib.util.spec_from_file_location("greylisting_bench", ROOT / "plugins" / "greylisting.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.decide


def worker(args: argparse.Namespace) -> None:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import defer, reactor, task

    from qpsmtpd_py.state import StoreSettings

    decide = load_decide()
    settings = StoreSettings.from_args("greylist", json.loads(args.store), Path(tempfile.gettempdir()))
    store = settings.open(reactor)
    rng = random.Random(args.seed)
    keys = [str(3221225472 + rng.randrange(args.clients)) for _ in range(args.decisions)]
    result = {}

    async def one(key: str) -> None:
        _, value, _ = decide(await store.get(key), time.time(), 3000, 36 * 86400)
        await store.set(key, value, ttl=36 * 86400)

    async def lane(lane_keys: list[str]) -> None:
        for key in lane_keys:
            await one(key)

    async def main(_reactor) -> None:
        await store.get("warm-up")  # connect / open before the clock starts
        await task.deferLater(reactor, max(0.0, args.start_at - time.time()), lambda: None)
        result["start"] = time.time()
        await defer.gatherResults([defer.ensureDeferred(lane(keys[n::args.concurrency]))
                                   for n in range(args.concurrency)])
        result["end"] = time.time()
        await store.close()

    try:
        task.react(lambda r: defer.ensureDeferred(main(r)))
    except SystemExit:
        pass
    print(json.dumps({**result, "decisions": len(keys)}))


def measure(store: dict, args: argparse.Namespace) -> float:
    start_at = time.time() + 1.5
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", "--store", json.dumps(store),
                                 "--start-at", str(start_at), "--seed", str(n), "--decisions", str(args.decisions),
                                 "--concurrency", str(args.concurrency), "--clients", str(args.clients)],
                                stdout=subprocess.PIPE, text=True) for n in range(args.processes)]
    results = [json.loads(w.communicate(timeout=600)[0]) for w in workers]
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    return sum(r["decisions"] for r in results) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20000, help="decisions per process")
    parser.add_argument("--concurrency", type=int, default=20, help="decisions in flight per process")
    parser.add_argument("--clients", type=int, default=5000, help="distinct client IPs")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from redis_server import start_redis

    print(f"greylist decisions/s, {args.processes} processes x {args.decisions} decisions, "
          f"{args.concurrency} in flight each, {args.clients} clients")
    with tempfile.TemporaryDirectory(prefix="greylist-bench-") as directory:
        print(f"sqlite {measure({'db_dir': directory}, args):.0f}")
    redis = start_redis()
    try:
        print(f"redis  {measure({'redis': redis.url}, args):.0f}")
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
