#!/usr/bin/env python3
"""Whole-system benchmark: ingress + apply at once, on a fresh data directory.

Starts `clerksync serve` on a random port, drives it with `clerksync loadgen`
(closed loop by default, open loop with --rate), waits until every delivery is
applied, then reports:

- ingress: acks/s and ack latency (loadgen's own report);
- end to end: events applied per second, from the first send to the last commit;
- sync lag (received -> processed), exact p50/p90/p99/max, read from the inbox
  rows themselves (`processed_at - received_at`, both stamped by the server).

Usage: scripts/bench_e2e.py [--bin target/release/clerksync] [--events N]
       [--rate R] [--connections C] [--seed S] [--env KEY=VALUE ...]
       [--database-url postgres://...]   (default: SQLite in a temp dir)
Prints one JSON object on the last line; progress on stderr.
"""
import argparse
import json
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ADMIN = "bench-admin-token"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get_json(url):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, int(round(p / 100.0 * (len(sorted_vals) - 1))))
    return sorted_vals[i]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "clerksync"))
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rate", type=float)
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary data directory (its path goes to stderr)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--database-url")
    ap.add_argument("--env", action="append", default=[])
    a = ap.parse_args()

    data = tempfile.mkdtemp(prefix="clerksync-bench-")
    port = free_port()
    env = dict(os.environ)
    env.update({
        "CLERKSYNC_LISTEN": f"127.0.0.1:{port}",
        "CLERKSYNC_WEBHOOK_SECRET": SECRET,
        "CLERKSYNC_ADMIN_TOKEN": ADMIN,
        "RUST_LOG": "warn",
    })
    if a.database_url:
        env["CLERKSYNC_DATABASE_URL"] = a.database_url
    for kv in a.env:
        k, v = kv.split("=", 1)
        env[k] = v
    log = open(os.environ.get("BENCH_SERVE_LOG") or os.path.join(data, "serve.log"), "w")
    server = subprocess.Popen([a.bin, "serve", "--data-dir", data], env=env,
                              stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/readyz", timeout=1)
                break
            except Exception:
                time.sleep(0.05)
        else:
            sys.exit(f"server did not become ready; see {data}/serve.log")
        cmd = [a.bin, "loadgen", "--url", base + "/webhooks/clerk", "--events",
               str(a.events), "--connections", str(a.connections), "--seed",
               str(a.seed), "--json", "--quiet"]
        if a.rate:
            cmd += ["--rate", str(a.rate)]
        started = time.time()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        loadgen_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        acked = time.time()
        lg = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"loadgen: {lg.get('throughput_acks_per_s')} acks/s", file=sys.stderr)
        while True:
            st = get_json(base + "/admin/stats")
            if st["pending"] == 0:
                break
            time.sleep(0.05)
        done = time.time()
        stats = st
        with open(f"/proc/{server.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        server_cpu = (int(fields[11]) + int(fields[12])) / tick
    finally:
        server.terminate()
        server.wait(timeout=60)
    result = {
        "events_stored": stats["received"],
        "acks_per_s": lg.get("throughput_acks_per_s"),
        "ack_ms": {k: lg.get("latency_ms", {}).get(k) for k in ("p50", "p90", "p99", "max")},
        "elapsed_s": round(done - started, 2),
        "drain_after_last_ack_s": round(done - acked, 2),
        "e2e_events_per_s": round(stats["received"] / (done - started), 1),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_us_per_event": round(server_cpu * 1e6 / max(stats["received"], 1)),
        "loadgen_cpu_s": round(loadgen_cpu, 2),
    }
    if not a.database_url:
        db = sqlite3.connect(os.path.join(data, "clerksync.db"))
        lags = sorted(r[0] for r in db.execute(
            "SELECT processed_at - received_at FROM inbox WHERE processed_at IS NOT NULL"))
        result["sync_lag_ms"] = {f"p{p}": pct(lags, p) for p in (50, 90, 99)}
        result["sync_lag_ms"]["max"] = lags[-1] if lags else None
    if a.keep:
        print(f"data directory kept: {data}", file=sys.stderr)
    else:
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
