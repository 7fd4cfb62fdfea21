#!/usr/bin/env python3
"""Whole-system benchmark: ingress + apply at once, on a fresh data directory.

Starts `clerksync serve` on a random port, drives it with `clerksync loadgen`
(closed loop by default, open loop with --rate), waits until every delivery is
applied, then reports:

- ingress: acks/s and ack latency (loadgen's own report);
- end to end: events applied per second, from the first send to the last commit;
- cost: server CPU (utime+stime from /proc over the run) per delivery, peak RSS
  (VmHWM), bytes on disk under the data directory per delivery once drained;
- sync lag (received -> processed), exact p50/p90/p99/max, read from the inbox
  rows themselves (`processed_at - received_at`, both stamped by the server).

Usage: scripts/bench_e2e.py [--bin target/release/clerksync] [--events N]
       [--rate R] [--connections C] [--seed S] [--env KEY=VALUE ...]
       [--loadgen-arg=--profile=... ...] [--database-url postgres://...]
       (default: SQLite in a temp dir)
Prints one JSON object on the last line; progress on stderr.
"""
import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time

import benchlib


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=benchlib.default_bin())
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rate", type=float)
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary data directory (its path goes to stderr)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--database-url")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--loadgen-arg", action="append", default=[],
                    help="extra loadgen flag, e.g. --loadgen-arg=--duplicates=0.05")
    a = ap.parse_args()

    data = tempfile.mkdtemp(prefix="clerksync-bench-")
    env = benchlib.clerksync_env(benchlib.free_port(), a.env, a.database_url)
    log_path = os.environ.get("BENCH_SERVE_LOG") or os.path.join(data, "serve.log")
    server, base = benchlib.start_clerksync(a.bin, data, env, log_path)
    try:
        args = ["--events", str(a.events), "--connections", str(a.connections),
                "--seed", str(a.seed), *a.loadgen_arg]
        if a.rate:
            args += ["--rate", str(a.rate)]
        cpu_before = benchlib.cpu_seconds(server.pid)
        started = time.time()
        lg, loadgen_cpu = benchlib.loadgen(a.bin, base + "/webhooks/clerk", args, env)
        acked = time.time()
        print(f"loadgen: {lg.get('throughput_acks_per_s')} acks/s", file=sys.stderr)
        stats = benchlib.wait_drained(base)
        done = time.time()
        server_cpu = benchlib.cpu_seconds(server.pid) - cpu_before
        peak_rss = benchlib.peak_rss_bytes(server.pid)
        disk = benchlib.disk_bytes(data)
    finally:
        benchlib.stop(server)
    deliveries = max(lg.get("status_2xx", 0), 1)
    result = {
        "events_stored": stats["received"],
        "acks_per_s": lg.get("throughput_acks_per_s"),
        "ack_ms": {k: lg.get("latency_ms", {}).get(k) for k in ("p50", "p90", "p99", "max")},
        "elapsed_s": round(done - started, 2),
        "drain_after_last_ack_s": round(done - acked, 2),
        "e2e_events_per_s": round(stats["received"] / (done - started), 1),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_us_per_event": round(server_cpu * 1e6 / max(stats["received"], 1)),
        "server_cpu_us_per_delivery": round(server_cpu * 1e6 / deliveries),
        "peak_rss_mib": round(peak_rss / 2**20, 1),
        "disk_bytes": disk,
        "disk_bytes_per_delivery": round(disk / deliveries),
        "loadgen_cpu_s": round(loadgen_cpu, 2),
    }
    if not a.database_url:
        db = sqlite3.connect(os.path.join(data, "clerksync.db"))
        lags = sorted(r[0] for r in db.execute(
            "SELECT processed_at - received_at FROM inbox WHERE processed_at IS NOT NULL"))
        result["sync_lag_ms"] = {f"p{p}": benchlib.pct(lags, p) for p in (50, 90, 99)}
        result["sync_lag_ms"]["max"] = lags[-1] if lags else None
    if a.keep:
        print(f"data directory kept: {data}", file=sys.stderr)
    else:
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
