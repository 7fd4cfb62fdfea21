#!/usr/bin/env bash
# Fuzzes clerksync's untrusted inputs: each target in fuzz/fuzz_targets/ for a
# given number of executions, seeded from tests/fixtures, then prints a summary.
#
#   scripts/fuzz.sh [RUNS] [TARGET ...]     (default: 1000000 runs, every target)
#   scripts/fuzz.sh 200000 payload envelope
#
# Targets: webhook_delivery (headers + Svix signature), envelope (intake),
# payload (every Clerk payload kind), realtime_message (WebSocket client
# frames), cursor (page cursors), search_query (GET /v1/search q).
# Needs cargo-fuzz (installed here when missing). cargo fuzz uses nightly-only
# flags (sanitizers); on a stable toolchain RUSTC_BOOTSTRAP=1 allows them.
# FUZZ_SANITIZER=none builds without AddressSanitizer (several times faster;
# clerksync itself forbids unsafe code). A crash leaves its input in
# fuzz/artifacts/TARGET/: add it to REGRESSIONS in tests/it/fuzz_seeds.rs.
# Not run in CI: it takes minutes per target.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=${1:-1000000}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(webhook_delivery envelope payload realtime_message cursor search_query)
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/clerksync-fuzz-target}
sanitizer=${FUZZ_SANITIZER:-address}

# seed TARGET DIR: a few starting inputs in DIR.
seed() {
    local t=$1 dir=$2 f n=0
    mkdir -p "$dir"
    case $t in
    webhook_delivery)
        for f in $(find tests/fixtures/clerk -name '*.json'); do
            n=$((n + 1))
            { printf '\001msg_seed%d\n1700000000\nv1,x\n' "$n"; cat "$f"; } >"$dir/seed$n"
        done ;;
    envelope | payload)
        for f in $(find tests/fixtures/clerk -name '*.json'); do
            n=$((n + 1))
            cp "$f" "$dir/seed$n"
        done ;;
    realtime_message)
        printf '%s' '{"type":"subscribe","topic":"org:org_1","snapshot":true}' >"$dir/s1"
        printf '%s' '{"type":"subscribe","topic":"user:user_1","since":42}' >"$dir/s2"
        printf '%s' '{"type":"unsubscribe","topic":"*"}' >"$dir/s3"
        printf '%s' '{"type":"auth","token":"eyJhbGciOiJSUzI1NiJ9.e30.x"}' >"$dir/s4"
        printf '%s' '{"type":"ping"}' >"$dir/s5" ;;
    cursor)
        printf '%s' 'dXNlcl8x' >"$dir/s1"
        printf '%s' 'NDI' >"$dir/s2" ;;
    search_query)
        printf '%s' 'kwame.h' >"$dir/s1"
        printf '%s' 'ada lovelace' >"$dir/s2"
        printf '%s' 'ada@example.com' >"$dir/s3"
        printf '%s' '+1 415 555' >"$dir/s4" ;;
    esac
}

summary=()
for t in "${targets[@]}"; do
    corpus=fuzz/corpus/$t
    seed "$t" "$corpus"
    log=$(mktemp)
    echo "==> $t: $runs runs"
    status=ok
    if ! cargo fuzz run --sanitizer "$sanitizer" "$t" "$corpus" -- \
        -runs="$runs" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        status="CRASH (see fuzz/artifacts/$t/)"
    fi
    done_runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    secs=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    tail -n 5 "$log"
    summary+=("$(printf '%-18s %10s executions %8s exec/s  %s' "$t" "$done_runs" "$secs" "$status")")
    rm -f "$log"
done
echo
echo "==> summary"
printf '%s\n' "${summary[@]}"
if printf '%s\n' "${summary[@]}" | grep -q CRASH; then
    exit 1
fi
