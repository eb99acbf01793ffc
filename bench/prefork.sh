#!/usr/bin/env bash
# bench/prefork.sh: what the pre-forking process model costs.
#
#   bench/prefork.sh
#
# 1. Memory: RSS, PSS and private memory (USS = Private_Clean + Private_Dirty, from
#    /proc/PID/smaps_rollup) of the master and of one idle child, right after start,
#    once every child is up (its reactor waits in epoll_wait), for a pool of
#    $CHILDREN and of $START_CHILDREN children; again after 1000 messages, to see how
#    much of the shared memory the children's work copies.
# 2. Throughput: msgs/s with one session per child (qpsmtpd-prefork's model,
#    --sessions-per-child 1 --children 20) versus many (--sessions-per-child 100
#    --children 2), same load: a new connection per message, then many messages per
#    connection. With Postfix's smtp-source when installed, otherwise bench/load.py.
# 3. Child start: from the SIGKILL of the only child until the master forked its
#    replacement, until that one waits in epoll_wait, and until a client that
#    connected right after the kill is greeted; and from the master's start to
#    $START_CHILDREN children serving.
#
# Like bench/compare.py it runs on a copy of config/ in a temp dir, but the queue plugin is
# replaced by a no-op one (bench_null_queue, written there), so the numbers measure the
# process model, not fsync. Environment: PORT (2710), MESSAGES (5000), SESSIONS (20),
# LIFETIME (--child-lifetime, 100 as in qpsmtpd), CHILDREN (2), START_CHILDREN (20),
# KILLS (5), REPEAT (3: each rate is the median of this many runs), CLIENT=load.py (use
# bench/load.py even when smtp-source is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-2710}
MESSAGES=${MESSAGES:-5000}
SESSIONS=${SESSIONS:-20}
LIFETIME=${LIFETIME:-100}
CHILDREN=${CHILDREN:-2}
START_CHILDREN=${START_CHILDREN:-20}
KILLS=${KILLS:-5}
REPEAT=${REPEAT:-3}
PY=.venv/bin/python
DAEMON=.venv/bin/qpsmtpd-py-prefork
work=$(mktemp -d)
pid=
stop_daemon() {
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
    fi
}
trap 'stop_daemon; rm -rf "$work"' EXIT

cp -r config "$work/config"
mkdir -p "$work/plugins"
cat >"$work/plugins/bench_null_queue.py" <<'EOF'
"""bench_null_queue - accept every message and store nothing (benchmarks only)."""

from qpsmtpd_py.constants import OK
from qpsmtpd_py.plugin import Plugin


class BenchNullQueue(Plugin):
    def hook_queue(self, transaction):
        return OK, "Queued! (discarded)"
EOF
echo "$work/plugins" >"$work/config/plugin_dirs"
sed -i "s#^queue/maildir .*#bench_null_queue#" "$work/config/plugins"
echo "$work/spool" >"$work/config/spool_dir"
grep -qx example.com "$work/config/rcpthosts" 2>/dev/null || echo example.com >>"$work/config/rcpthosts"

# The measuring side: reads /proc, kills children, times greetings.
cat >"$work/probe.py" <<'EOF'
import os
import signal
import socket
import statistics
import subprocess
import sys
import time


def children(master):
    try:
        with open(f"/proc/{master}/task/{master}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []
    return [p for p in pids if state(p) not in (None, "Z")]


def state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def serving(pid):
    """The child's reactor is up: it waits in epoll_wait for clients."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read().strip() == "do_epoll_wait"
    except (FileNotFoundError, ProcessLookupError):
        return False


def smaps(pid):
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields


def mib(kb):
    return f"{kb / 1024:6.1f}"


def wait_ready(master, count, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children(master)
        if len(kids) >= count and all(serving(p) for p in kids):
            return kids
        time.sleep(0.01)
    sys.exit(f"{count} children not serving after {timeout}s (have {children(master)})")


def memory(master, count, label):
    kids = wait_ready(master, count)
    time.sleep(0.5)  # let the children's start-up settle
    rows = [("master", master), ("idle child", kids[0])]
    print(f"{label}: pool of {len(kids)} children")
    print(f"  {'process':<12} {'RSS MiB':>8} {'PSS MiB':>8} {'USS MiB':>8}")
    for name, p in rows:
        m = smaps(p)
        print(f"  {name:<12} {mib(m['Rss']):>8} {mib(m['Pss']):>8} "
              f"{mib(m.get('Private_Clean', 0) + m.get('Private_Dirty', 0)):>8}")
    total = [smaps(p) for p in [master, *kids]]
    print(f"  {'all':<12} {mib(sum(m['Rss'] for m in total)):>8} {mib(sum(m['Pss'] for m in total)):>8} "
          f"{mib(sum(m.get('Private_Clean', 0) + m.get('Private_Dirty', 0) for m in total)):>8}")


def respawn(master, port, kills):
    """SIGKILL the only child; time fork, epoll_wait and greeting of its replacement."""
    samples = []
    for _ in range(kills):
        [victim] = wait_ready(master, 1)
        time.sleep(0.5)  # the previous replacement has settled
        client = socket.socket()
        start = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        client.connect(("127.0.0.1", port))  # waits in the listen queue for the next child
        client.setblocking(False)
        forked = ready = greeted = None
        while greeted is None and time.monotonic() - start < 10:
            now = time.monotonic()
            if forked is None and [p for p in children(master) if p != victim]:
                forked = now
            if forked is not None and ready is None and any(serving(p) for p in children(master)):
                ready = now
            try:
                if client.recv(512).startswith(b"220"):
                    greeted = time.monotonic()
            except BlockingIOError:
                time.sleep(0.0005)
        client.close()
        if greeted is None:
            sys.exit("no greeting within 10 s of the kill")
        ready = ready or greeted
        forked = forked or ready
        samples.append(((forked - start) * 1e3, (ready - start) * 1e3, (greeted - start) * 1e3))
    for name, index in (("kill -> replacement forked", 0), ("kill -> replacement in epoll_wait", 1),
                        ("kill -> waiting client greeted", 2)):
        values = [s[index] for s in samples]
        print(f"  {name:<34} median {statistics.median(values):6.1f} ms  "
              f"(min {min(values):.1f}, max {max(values):.1f}, n={len(values)})")


def start_time(count, log, command):
    """Start the master; time until the first and until all `count` children serve."""
    start = time.monotonic()
    with open(log, "ab") as out:
        daemon = subprocess.Popen(command, stdout=out, stderr=out)
    first = None
    deadline = start + 60
    while time.monotonic() < deadline:
        kids = children(daemon.pid)
        up = [p for p in kids if serving(p)]
        if up and first is None:
            first = time.monotonic()
        if len(up) >= count:
            break
        time.sleep(0.002)
    done = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(30)
    print(f"  master start -> first child serving    {(first - start) * 1e3:7.1f} ms")
    print(f"  master start -> all {count} children serving {(done - start) * 1e3:7.1f} ms "
          f"({(done - first) * 1e3 / max(1, count - 1):.1f} ms per further child)")


command = sys.argv[1]
if command == "wait-ready":
    wait_ready(int(sys.argv[2]), int(sys.argv[3]))
elif command == "memory":
    memory(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
elif command == "respawn":
    respawn(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
elif command == "start-time":
    start_time(int(sys.argv[2]), sys.argv[3], sys.argv[5:])
EOF

start_daemon() {  # daemon options
    "$DAEMON" --config-dir "$work/config" --listen-address 127.0.0.1 --port "$PORT" "$@" \
        >>"$work/daemon.log" 2>&1 &
    pid=$!
}

SOURCE=
if [ "${CLIENT:-}" != load.py ]; then
    SOURCE=$(command -v smtp-source || { [ -x /usr/sbin/smtp-source ] && echo /usr/sbin/smtp-source; } || true)
fi
load() {  # messages, persist (0/1): prints msgs/s
    local messages=$1 persist=$2 start end
    if [ -n "$SOURCE" ]; then
        local opts=()
        [ "$persist" = 1 ] && opts+=(-d)
        start=$(date +%s.%N)
        "$SOURCE" -s "$SESSIONS" -m "$messages" "${opts[@]}" -f a@example.com -t b@example.com \
            -M bench.client "127.0.0.1:$PORT" >"$work/source.out" 2>&1
        end=$(date +%s.%N)
        if [ -s "$work/source.out" ]; then sed 's/^/  smtp-source: /' "$work/source.out" | head -5 >&2; fi
        awk -v s="$start" -v e="$end" -v m="$messages" 'BEGIN {printf "%.0f", m / (e - s)}'
    else
        local opts=()
        [ "$persist" = 1 ] && opts+=(--persist)
        $PY bench/load.py --port "$PORT" --messages "$messages" --sessions "$SESSIONS" "${opts[@]}" | tail -n1
    fi
}

echo "qpsmtpd-py prefork bench, $(date -u +%Y-%m-%d), $(nproc) CPUs, $($PY --version 2>&1)"
echo "client: ${SOURCE:-bench/load.py}, $SESSIONS sessions, $MESSAGES messages, --child-lifetime $LIFETIME"

echo "== memory right after start, and after 1000 messages (same children)"
for pool in "$CHILDREN" "$START_CHILDREN"; do
    start_daemon --children "$pool" --idle-children "$pool" --sessions-per-child 100 --child-lifetime 1000000
    $PY "$work/probe.py" memory "$pid" "$pool" "--children $pool, right after start"
    load 1000 0 >/dev/null
    $PY "$work/probe.py" memory "$pid" "$pool" "--children $pool, after 1000 messages"
    stop_daemon
done

median_rate() {  # messages, persist: the median msgs/s of $REPEAT runs
    local runs=()
    for _ in $(seq "$REPEAT"); do runs+=("$(load "$1" "$2")"); done
    printf '%s\n' "${runs[@]}" | sort -n | awk '{v[NR] = $1} END {printf "%s", v[int((NR + 1) / 2)]}'
    printf ' (%s)' "$(printf '%s\n' "${runs[@]}" | sort -n | paste -sd/)"
}

echo "== throughput (msgs/s, median of $REPEAT runs, all runs in brackets), queue plugin that stores nothing"
printf '  %-38s %26s %26s\n' "pool (--idle-children = --children)" "new connection per msg" "many msgs per connection"
for model in "1 20" "100 2"; do
    read -r per_child pool <<<"$model"
    start_daemon --sessions-per-child "$per_child" --children "$pool" --idle-children "$pool" \
        --child-lifetime "$LIFETIME"
    $PY "$work/probe.py" wait-ready "$pid" "$pool"
    load 500 0 >/dev/null  # warm-up
    per_message=$(median_rate "$MESSAGES" 0)
    persistent=$(median_rate "$MESSAGES" 1)
    printf '  %-38s %26s %26s\n' "--sessions-per-child $per_child --children $pool" "$per_message" "$persistent"
    stop_daemon
done

echo "== child start"
start_daemon --children 1 --idle-children 1 --sessions-per-child 100
$PY "$work/probe.py" respawn "$pid" "$PORT" "$KILLS"
stop_daemon
$PY "$work/probe.py" start-time "$START_CHILDREN" "$work/daemon.log" -- \
    "$DAEMON" --config-dir "$work/config" --listen-address 127.0.0.1 --port "$PORT" \
    --children "$START_CHILDREN" --idle-children "$START_CHILDREN" --sessions-per-child 1
if grep -v 'running as root' "$work/daemon.log" | grep -q .; then
    echo "== daemon log (not empty)"
    grep -v 'running as root' "$work/daemon.log" | tail -n 20
fi
