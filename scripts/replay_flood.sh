#!/usr/bin/env bash
# Webhook acks while 50 realtime clients keep asking for `since` replays
# (issue: replay must be cheap to serve). Seeds 30,000 deliveries, then sends
# 60,000 at 1,500/s, with MODE=flood also 50 API-token clients that loop
# connect / subscribe user:X since 1 / close for 42 s (scripts/replay_flood.py,
# needs `pip install websockets`). Compare MODE=none and MODE=flood.
#   scripts/replay_flood.sh target/release/clerksync flood
# Loopback only; bounded (about 90 s).
set -u
BIN=$1; MODE=${2:-flood}; PORT=${PORT:-18298}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
D=$(mktemp -d)
export CLERKSYNC_WEBHOOK_SECRET="whsec_$(head -c 32 /dev/urandom | base64)" CLERKSYNC_API_TOKEN=bench-token
RUST_LOG=warn "$BIN" serve --data-dir "$D" --listen 127.0.0.1:$PORT 2>"$D/server.log" &
SP=$!
for _ in $(seq 1 100); do curl -s 127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.2; done
"$BIN" loadgen --url "http://127.0.0.1:$PORT/webhooks/clerk" --connections 32 --events 30000 --seed 5 --json >/dev/null
sleep 3
TOPICS=$(curl -s -H "Authorization: Bearer bench-token" "127.0.0.1:$PORT/v1/users?limit=5" |
    python3 -c "import json,sys; print(','.join('user:'+u['id'] for u in json.load(sys.stdin)['data']))")
if [ "$MODE" = flood ]; then
    python3 "$HERE/replay_flood.py" "ws://127.0.0.1:$PORT/v1/realtime" bench-token "$TOPICS" 42 &
    FP=$!
    sleep 1
fi
"$BIN" loadgen --url "http://127.0.0.1:$PORT/webhooks/clerk" --rate 1500 --events 60000 --seed 9 --json >"$D/loadgen.json"
[ "$MODE" = flood ] && wait $FP
curl -s 127.0.0.1:$PORT/metrics | grep '^clerksync_realtime_replay_rows_read_total'
kill -TERM $SP; wait $SP
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], 'acks/s', round(r['throughput_acks_per_s']), 'latency ms', r['latency_ms'], 'transport errors', r['transport_errors'])" "$D/loadgen.json" "$MODE"
rm -rf "$D"
