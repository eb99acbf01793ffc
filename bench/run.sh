#!/usr/bin/env bash
# bench/run.sh: start qpsmtpd-py-prefork on a copy of a config dir and drive it
# with bench/load.py in the three standard scenarios (small, 10k, persist).
#
#   bench/run.sh [CONFIG_DIR]       default: the embedded config/ (queue/maildir, fsync)
#
# Environment: PORT (2700), MESSAGES (5000), SESSIONS (20), CHILDREN (2), TO, EXTRA_ARGS
# (more daemon options). When Postfix's smtp-source is installed it also drives the
# daemon with it, the client the peers' benchmark numbers were taken with:
# load.py is pure Python and tops out near 2,000 msgs/s on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-config}
PORT=${PORT:-2700}
MESSAGES=${MESSAGES:-5000}
SESSIONS=${SESSIONS:-20}
CHILDREN=${CHILDREN:-2}
TO=${TO:-b@example.com}  # the recipient: its domain must be accepted by the config
PY=.venv/bin/python
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT

cp -r "$CONFIG" "$work/config"
# Deliver into the work dir, and accept the load's recipient domain.
sed -i "s#^queue/maildir .*#queue/maildir $work/Maildir#" "$work/config/plugins"
echo "$work/spool" > "$work/config/spool_dir"
grep -qx example.com "$work/config/rcpthosts" 2>/dev/null || echo example.com >> "$work/config/rcpthosts"

.venv/bin/qpsmtpd-py-prefork --config-dir "$work/config" --listen-address 127.0.0.1 --port "$PORT" \
    --children "$CHILDREN" --idle-children "$CHILDREN" --child-lifetime 1000000 ${EXTRA_ARGS:-} \
    >"$work/daemon.log" 2>&1 &
pid=$!
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

scenario() {  # name, load.py options, smtp-source options
    local name=$1 load_opts=$2 source_opts=$3
    $PY bench/load.py --port "$PORT" --messages 1000 --sessions "$SESSIONS" --to "$TO" $load_opts >/dev/null  # warm-up
    local out
    out=$($PY bench/load.py --port "$PORT" --messages "$MESSAGES" --sessions "$SESSIONS" --to "$TO" --pid "$pid" \
        $load_opts)
    echo "== $name (load.py)"
    echo "$out" | sed -n '2,4p'
    echo "msgs/s $(echo "$out" | tail -n1)"
    if command -v smtp-source >/dev/null 2>&1 || [ -x /usr/sbin/smtp-source ]; then
        local src start end
        src=$(command -v smtp-source || echo /usr/sbin/smtp-source)
        start=$(date +%s.%N)
        "$src" -s "$SESSIONS" -m "$MESSAGES" $source_opts -f a@example.com -t "$TO" \
            -M bench.client "127.0.0.1:$PORT"
        end=$(date +%s.%N)
        echo "msgs/s (smtp-source) $(awk -v s="$start" -v e="$end" -v m="$MESSAGES" 'BEGIN {printf "%.0f", m / (e - s)}')"
    fi
}

scenario small "" ""
scenario 10k "--size 10240" "-l 10240"
scenario persist "--persist" "-d"
echo "== idle memory after the runs"
$PY bench/load.py --port "$PORT" --messages 1 --sessions 1 --pid "$pid" | grep '^memory'
echo "messages in the Maildir: $(find "$work/Maildir/new" -type f | wc -l)"
