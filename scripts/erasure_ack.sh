#!/usr/bin/env bash
# Webhook acks while a retention purge erases 2,000 users (issue: erasure must
# never stall intake). Starts `serve` on a fresh data dir with the given archive
# retention, creates and deletes 2,000 users, then sends 60,000 deliveries at
# 1,500/s from t=45 s; with RETENTION_DAYS=0.0005 (43 s) the purge at t=60 s
# erases all 2,000 during the run. Compare with RETENTION_DAYS=30 (no purge).
#   scripts/erasure_ack.sh target/release/clerksync 0.0005
# Loopback only; bounded (about 90 s).
set -u
BIN=$1; RET=${2:-0.0005}; PORT=${PORT:-18299}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
D=$(mktemp -d)
export CLERKSYNC_WEBHOOK_SECRET="whsec_$(head -c 32 /dev/urandom | base64)"
CLERKSYNC_ARCHIVE_RETENTION_DAYS=$RET RUST_LOG=info "$BIN" serve --data-dir "$D" --listen 127.0.0.1:$PORT 2>"$D/server.log" &
SP=$!
for _ in $(seq 1 100); do curl -s 127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.2; done
T0=$(date +%s)
python3 "$HERE/seed_deleted_users.py" "http://127.0.0.1:$PORT/webhooks/clerk" "$CLERKSYNC_WEBHOOK_SECRET" 2000
sleep $((45 - ($(date +%s) - T0)))
"$BIN" loadgen --url "http://127.0.0.1:$PORT/webhooks/clerk" --rate 1500 --events 60000 --json >"$D/loadgen.json"
kill -TERM $SP; wait $SP
echo "purge transactions: $(grep -c 'retention purge' "$D/server.log")"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('acks/s', round(r['throughput_acks_per_s']), 'latency ms', r['latency_ms'], 'non-2xx', r['non_2xx'], 'transport errors', r['transport_errors'])" "$D/loadgen.json"
rm -rf "$D"
