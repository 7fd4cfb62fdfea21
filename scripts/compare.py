#!/usr/bin/env python3
"""Issue 21's side-by-side: the plain Node handler (bench/peer-node) and clerksync
on the same stream, one after the other, both on SQLite in a fresh temp dir.

The stream is `clerksync loadgen`'s (its default, realistic profile unless
--loadgen-arg says otherwise) with one seed, so both servers receive the same
deliveries in the same order: closed loop, --connections keep-alive
connections. For each server it measures:

- acks/s, ack p50/p99: loadgen's report;
- end-to-end drain: first send until everything acknowledged is applied (the
  peer applies before it answers; clerksync is polled on /admin/stats);
- server CPU per delivery: utime+stime of the server process from /proc over
  that window, divided by the deliveries answered 2xx;
- peak RSS: VmHWM of the server process at the end;
- on disk per delivery: bytes allocated under its data directory once drained.

With --ingest-env KEY=VALUE (a setting that stops or slows apply, e.g.
CLERKSYNC_APPLY_PAUSED=true) it also runs clerksync alone with that setting and
reports ingest-only acks/s (that run ends at the last ack, without a drain).

Usage: scripts/compare.py [--bin target/release/clerksync] [--events 123000]
       [--seed 21] [--connections 64] [--env KEY=VALUE ...] [--only peer|clerksync]
       [--ingest-env KEY=VALUE ...] [--loadgen-arg=--flag=value ...] [--json FILE]
Prints the table (Markdown), a met / NOT met line per goal of issue 21, and
where clerksync's CPU went by thread, on stdout; progress on stderr.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import benchlib

PEER_DIR = os.path.join(benchlib.REPO, "bench", "peer-node")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ensure_peer_installed():
    """`npm ci` once. better-sqlite3 compiles from source when its prebuilt
    binary cannot be downloaded: point node-gyp at the installed Node headers so
    it does not try to download those either."""
    if os.path.isdir(os.path.join(PEER_DIR, "node_modules", "better-sqlite3")):
        return
    cmd = ["npm", "ci", "--no-audit", "--no-fund"]
    node = shutil.which("node")
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(node))) if node else None
    if prefix and os.path.isdir(os.path.join(prefix, "include", "node")):
        cmd.append(f"--nodedir={prefix}")
    log(f"installing the peer: {' '.join(cmd)}")
    subprocess.run(cmd, cwd=PEER_DIR, check=True)


def run_peer(a, lg_args):
    ensure_peer_installed()
    data = tempfile.mkdtemp(prefix="peer-node-")
    port = benchlib.free_port()
    env = dict(os.environ, PORT=str(port), PEER_DB=os.path.join(data, "peer.db"),
               CLERKSYNC_WEBHOOK_SECRET=benchlib.SECRET, PEER_SYNCHRONOUS=a.peer_synchronous)
    log_path = os.path.join(data, "peer.log")
    with open(log_path, "w") as out:
        proc = subprocess.Popen(["node", os.path.join(PEER_DIR, "server.js")], env=env,
                                stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        benchlib.wait_ready(base + "/readyz", proc, log_path)
        log("peer-node: sending")
        row = benchlib.measure(proc, data, a.bin, base + "/webhooks/clerk", lg_args, env, lambda: None)
        with urllib.request.urlopen(base + "/stats", timeout=10) as r:
            row["peer_stats"] = json.loads(r.read())
    finally:
        benchlib.stop(proc)
    shutil.rmtree(data, ignore_errors=True)
    return row


def run_clerksync(a, lg_args, extra_env, drain=True):
    """One clerksync run. With drain=False (apply stopped by `extra_env`) the
    run ends at the last ack: nothing would ever drain."""
    data = tempfile.mkdtemp(prefix="clerksync-compare-")
    env = benchlib.clerksync_env(benchlib.free_port(), extra_env)
    log_path = os.path.join(data, "serve.log")
    proc, base = benchlib.start_clerksync(a.bin, data, env, log_path)
    try:
        log(f"clerksync: sending ({' '.join(extra_env) or 'defaults'})")
        drained = (lambda: benchlib.wait_drained(base)) if drain else (lambda: None)
        row = benchlib.measure(proc, data, a.bin, base + "/webhooks/clerk", lg_args, env,
                               drained)
    finally:
        benchlib.stop(proc)
    row["disk_bytes_after_stop"] = benchlib.disk_bytes(data)
    if a.keep:
        log(f"clerksync data directory kept: {data}")
    else:
        shutil.rmtree(data, ignore_errors=True)
    return row


ROWS = [
    ("deliveries answered 2xx", lambda r: f"{r['deliveries']:,}"),
    ("acks/s", lambda r: f"{r['acks_per_s']:,}"),
    ("ack p50", lambda r: f"{r['ack_p50_ms']:.1f} ms"),
    ("ack p99", lambda r: f"{r['ack_p99_ms']:.1f} ms"),
    ("end-to-end drain", lambda r: f"{r['drain_s']:.1f} s"),
    ("server CPU per delivery", lambda r: f"{r['cpu_us_per_delivery']} µs"),
    ("peak RSS", lambda r: f"{r['peak_rss_mib']:.0f} MiB"),
    ("on disk after the run", lambda r: f"{r['disk_bytes'] / 1e6:.0f} MB "
                                        f"({r['disk_bytes_per_delivery'] / 1e3:.2f} KB per delivery)"),
    ("machine load (1-min average, before / after)",
     lambda r: " / ".join(f"{x:.1f}" for x in r["loadavg_1m"])),
]


def table(results):
    names = list(results)
    lines = ["| per run | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for label, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt(results[n]) for n in names) + " |")
    return "\n".join(lines)


def drain_rate(r):
    """Deliveries applied per second, first send to drained."""
    return r["deliveries"] / r["drain_s"]


# Issue 21's goals, each checked against the peer measured in the same round.
# (name, test) where test(clerksync_row, peer_row) -> (met, what was measured).
GOALS = [
    ("server CPU per delivery <= 75 us",
     lambda c, p: (c["cpu_us_per_delivery"] <= 75, f"{c['cpu_us_per_delivery']} µs")),
    ("end-to-end drain >= 3x the Node handler's rate",
     lambda c, p: (p is not None and drain_rate(c) >= 3 * drain_rate(p),
                   f"{drain_rate(c) / drain_rate(p):.2f}x" if p else "no peer run")),
    ("ack p99 <= the Node handler's",
     lambda c, p: (p is not None and c["ack_p99_ms"] <= p["ack_p99_ms"],
                   f"{c['ack_p99_ms']:.1f} vs {p['ack_p99_ms']:.1f} ms" if p else "no peer run")),
    ("peak RSS <= 96 MiB",
     lambda c, p: (c["peak_rss_mib"] <= 96, f"{c['peak_rss_mib']:.0f} MiB")),
    ("disk per delivery after the run <= 1.5 KB",
     lambda c, p: (c["disk_bytes_per_delivery"] <= 1500,
                   f"{c['disk_bytes_per_delivery'] / 1e3:.2f} KB")),
]


def goals(rounds, ingest):
    """A line per goal of issue 21: met or not, with the figure, per round."""
    lines = ["Issue 21's goals:"]
    for name, test in GOALS:
        figures, met_all = [], True
        for r in rounds:
            c, p = r.get("clerksync"), r.get("Node handler")
            if c is None:
                continue
            met, what = test(c, p)
            met_all &= met
            figures.append(what)
        if figures:
            lines.append(f"- {'met' if met_all else 'NOT met'}: {name} ({', '.join(figures)})")
    if ingest:
        met = ingest["acks_per_s"] >= 20_000
        lines.append(f"- {'met' if met else 'NOT met'}: ingest alone >= 20,000 acks/s "
                     f"({ingest['acks_per_s']:,} acks/s)")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=benchlib.default_bin())
    ap.add_argument("--events", type=int, default=123_000,
                    help="events in the stream (default 123,000: ~129,000 deliveries with 5%% duplicates)")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--out-of-order", type=float, default=0.10)
    ap.add_argument("--duplicates", type=float, default=0.05)
    ap.add_argument("--env", action="append", default=[], help="clerksync setting KEY=VALUE")
    ap.add_argument("--ingest-env", action="append", default=[],
                    help="setting KEY=VALUE that stops or slows apply, for an ingest-only run")
    ap.add_argument("--loadgen-arg", action="append", default=[],
                    help="extra loadgen flag, e.g. --loadgen-arg=--profile=classic")
    ap.add_argument("--peer-synchronous", default="NORMAL",
                    choices=["OFF", "NORMAL", "FULL", "EXTRA"],
                    help="the peer's SQLite synchronous setting (default NORMAL: no fsync per ack; "
                         "see bench/peer-node/server.js)")
    ap.add_argument("--only", choices=["peer", "clerksync"])
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate peer and clerksync this many times (one table per round): "
                         "on a shared machine one round can be skewed by other work")
    ap.add_argument("--keep", action="store_true", help="keep clerksync's data directory")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    a = ap.parse_args()
    if not os.path.exists(a.bin):
        sys.exit(f"no binary at {a.bin}: cargo build --release, or pass --bin")

    lg_args = ["--events", str(a.events), "--seed", str(a.seed),
               "--connections", str(a.connections), "--out-of-order", str(a.out_of_order),
               "--duplicates", str(a.duplicates), *a.loadgen_arg]
    rounds = []
    for _ in range(a.rounds):
        results = {}
        if a.only != "clerksync":
            results["Node handler"] = run_peer(a, lg_args)
        if a.only != "peer":
            results["clerksync"] = run_clerksync(a, lg_args, a.env)
        rounds.append(results)
    ingest = None
    if a.ingest_env:
        ingest = run_clerksync(a, lg_args, a.env + a.ingest_env, drain=False)
    print(f"Stream: clerksync loadgen {' '.join(lg_args)} (closed loop), both on SQLite "
          f"(the peer with synchronous={a.peer_synchronous}).\n")
    for i, results in enumerate(rounds, 1):
        if len(rounds) > 1:
            print(f"Round {i}:\n")
        print(table(results))
        print()
    if ingest:
        print(f"Ingest only ({' '.join(a.ingest_env)}): {ingest['acks_per_s']:,} acks/s, "
              f"ack p50 {ingest['ack_p50_ms']:.1f} ms, p99 {ingest['ack_p99_ms']:.1f} ms, "
              f"server CPU {ingest['cpu_us_per_delivery']} µs per delivery, "
              f"peak RSS {ingest['peak_rss_mib']:.0f} MiB")
    else:
        print("Ingest only: not measured (pass --ingest-env CLERKSYNC_APPLY_PAUSED=true).")
    print()
    print(goals(rounds, ingest))
    for i, results in enumerate(rounds, 1):
        c = results.get("clerksync")
        if c and c.get("cpu_us_per_delivery_by_thread"):
            parts = ", ".join(f"{name} {us:g}" for name, us in
                              c["cpu_us_per_delivery_by_thread"].items())
            parts += f", threads that ended {c.get('cpu_us_per_delivery_ended_threads', 0):g}"
            print(f"\nWhere clerksync's CPU went{f' (round {i})' if len(rounds) > 1 else ''}, "
                  f"µs per delivery by thread: {parts}")
    if ingest and ingest.get("cpu_us_per_delivery_by_thread"):
        parts = ", ".join(f"{name} {us:g}" for name, us in
                          ingest["cpu_us_per_delivery_by_thread"].items())
        print(f"Ingest only, µs per delivery by thread: {parts}")
    print("\nWhy a goal is not met, and a perf profile: bench/RESULTS.md "
          "(scripts/profile.sh records one).")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"loadgen_args": lg_args, "rounds": rounds, "ingest_only": ingest}, f,
                      indent=2)


if __name__ == "__main__":
    main()
