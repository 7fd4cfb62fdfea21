#!/usr/bin/env bash
# Where clerksync's CPU goes on the realistic stream: `perf record` on the server
# while `clerksync loadgen` sends EVENTS events (closed loop, 64 connections) and
# until everything is applied; then the share of samples per thread name and the
# top functions (self time). A release build has symbols but no frame pointers,
# so read self time by function, not call graphs; `cargo build --profile
# profiling` adds line tables.
#
# Usage: scripts/profile.sh BIN [EVENTS=60000] [OUT_DIR=a temp dir]
set -euo pipefail
BIN=${1:?usage: scripts/profile.sh BIN [EVENTS] [OUT_DIR]}
EVENTS=${2:-60000}
OUT=${3:-$(mktemp -d -t clerksync-profile-XXXXXX)}
DATA=$(mktemp -d -t clerksync-profile-data-XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export CLERKSYNC_WEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
export CLERKSYNC_ADMIN_TOKEN=bench-admin-token CLERKSYNC_LISTEN=127.0.0.1:$PORT RUST_LOG=warn
"$BIN" serve --data-dir "$DATA" > "$OUT/serve.log" 2>&1 &
SERVER=$!
cleanup() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT
until curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; do
    kill -0 "$SERVER" 2> /dev/null || { echo "server exited; see $OUT/serve.log" >&2; exit 1; }
    sleep 0.1
done
perf record -F 499 -p "$SERVER" -o "$OUT/perf.data" 2> "$OUT/perf-record.log" &
PERF=$!
"$BIN" loadgen --url "http://127.0.0.1:$PORT/webhooks/clerk" --events "$EVENTS" --seed 21 \
    --out-of-order 0.1 --duplicates 0.05 --quiet
until curl -sf -H "Authorization: Bearer $CLERKSYNC_ADMIN_TOKEN" \
    "http://127.0.0.1:$PORT/admin/stats" | grep -q '"pending":0'; do sleep 0.1; done
kill -INT "$PERF"
wait "$PERF" || true
echo "== samples by thread"
perf report -i "$OUT/perf.data" --sort comm --stdio 2> /dev/null | grep -v '^#' | grep -v '^$' | head -20
echo "== top functions (self)"
perf report -i "$OUT/perf.data" --sort dso,sym --stdio 2> /dev/null | grep -v '^#' | grep -v '^$' | head -40
echo "perf data: $OUT/perf.data"
