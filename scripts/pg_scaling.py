#!/usr/bin/env python3
"""Issue 21: does the PostgreSQL worker pool scale where it matters, across a network?

Builds one stored event log (clerksync serve on SQLite, fed by `clerksync
loadgen`, drained, stopped), then replays it (`clerksync replay --into`, apply
only: no HTTP, no search) into an empty PostgreSQL schema reached through
scripts/latency_proxy.py, which adds --rtt-ms of round-trip time to every
exchange with the database, once per --max-concurrent value. Prints each
replay's events/s and the ratio of the last to the first.

The proxy is scripts/latency_proxy.rs, built with rustc next to --bin on first
use (--proxy python runs the older latency_proxy.py, whose own cost per round
trip grew with the number of connections). The proxy counts the client's
exchanges (chunks sent to PostgreSQL), so each run also prints them per applied
event: the round trips an event costs.

Usage: scripts/pg_scaling.py [--bin target/release/clerksync] [--events 20000]
       [--rtt-ms 1.0] [--concurrency 1,16] [--postgres postgres://postgres@127.0.0.1:5432/test]
       [--source DATA_DIR (reuse a stored log)] [--proxy rust|python] [--json FILE]
Needs `psql` (to create and drop the schemas) and, for the default proxy, `rustc`.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

import benchlib

RATE = re.compile(r"replayed (\d+) deliveries: (\d+) applied, (\d+) failed in ([\d.]+)s \(([\d.]+) events/s\)")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def build_log(bin_path, events, seed):
    data = tempfile.mkdtemp(prefix="clerksync-pgscale-src-")
    env = benchlib.clerksync_env(benchlib.free_port())
    proc, base = benchlib.start_clerksync(bin_path, data, env, os.path.join(data, "serve.log"))
    try:
        benchlib.loadgen(bin_path, base + "/webhooks/clerk",
                         ["--events", str(events), "--seed", str(seed), "--out-of-order", "0.1",
                          "--duplicates", "0.05"], env)
        benchlib.wait_drained(base)
    finally:
        benchlib.stop(proc)
    return data


def psql(url, sql):
    # client_min_messages: no NOTICE per dropped table on stderr.
    subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], check=True,
                   stdout=subprocess.DEVNULL,
                   env=dict(os.environ, PGOPTIONS="-c client_min_messages=warning"))


def with_port_and_schema(url, port, schema):
    u = urllib.parse.urlsplit(url)
    host = u.hostname or "127.0.0.1"
    auth = f"{u.username}@" if u.username else ""
    opts = urllib.parse.quote(f"-c search_path={schema}")
    return urllib.parse.urlunsplit((u.scheme, f"{auth}{host}:{port}", u.path, f"options={opts}", ""))


def proxy_command(kind, bin_path):
    here = os.path.dirname(os.path.abspath(__file__))
    if kind == "python":
        return [sys.executable, os.path.join(here, "latency_proxy.py")]
    src = os.path.join(here, "latency_proxy.rs")
    exe = os.path.join(os.path.dirname(os.path.abspath(bin_path)), "latency_proxy")
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        subprocess.run(["rustc", "-O", "--edition", "2021", "-o", exe, src], check=True)
    return [exe]


EXCHANGES = re.compile(r"totals: exchanges (\d+)")


def exchanges_so_far(err_path):
    """The proxy's last reported total of client exchanges."""
    with open(err_path) as f:
        found = EXCHANGES.findall(f.read())
    return int(found[-1]) if found else 0


def replay(bin_path, source, url, concurrency):
    out = subprocess.run([bin_path, "replay", "--data-dir", source, "--max-concurrent",
                          str(concurrency), "--into", url],
                         env=dict(os.environ, RUST_LOG="warn"), capture_output=True, text=True)
    m = RATE.search(out.stdout)
    if out.returncode != 0 or not m:
        sys.exit(f"replay failed ({out.returncode}): {out.stdout[-1000:]} {out.stderr[-2000:]}")
    return {"deliveries": int(m[1]), "applied": int(m[2]), "failed": int(m[3]),
            "seconds": float(m[4]), "events_per_s": float(m[5])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=benchlib.default_bin())
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--rtt-ms", type=float, default=1.0)
    ap.add_argument("--concurrency", default="1,16",
                    help="comma-separated max_concurrent values (default 1,16)")
    ap.add_argument("--postgres", default=os.environ.get(
        "CLERKSYNC_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--source", help="data directory of a stored log to replay (default: build one)")
    ap.add_argument("--proxy", choices=["rust", "python"], default="rust")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    levels = [int(x) for x in a.concurrency.split(",")]

    source = a.source or build_log(a.bin, a.events, a.seed)
    pg = urllib.parse.urlsplit(a.postgres)
    err_path = os.path.join(tempfile.mkdtemp(prefix="clerksync-pgscale-proxy-"), "proxy.err")
    err = open(err_path, "w")
    proxy = subprocess.Popen(proxy_command(a.proxy, a.bin) + [
                              "--target", f"{pg.hostname or '127.0.0.1'}:{pg.port or 5432}",
                              "--rtt-ms", str(a.rtt_ms)], stdout=subprocess.PIPE, stderr=err,
                             text=True)
    results = {}
    try:
        line = proxy.stdout.readline()
        if not line.startswith("listening on "):
            sys.exit(f"latency proxy did not start: {line!r}")
        port = int(line.rsplit(":", 1)[1])
        for n in levels:
            schema = f"pgscale_{os.getpid()}_{n}"
            psql(a.postgres, f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
            try:
                log(f"replay at max_concurrent {n} through +{a.rtt_ms} ms RTT")
                before = exchanges_so_far(err_path)
                results[n] = replay(a.bin, source, with_port_and_schema(a.postgres, port, schema), n)
                # The pool's connections close as the replay exits; the proxy
                # reports its totals as each one does.
                time.sleep(0.5)
                exchanged = exchanges_so_far(err_path) - before
                if a.proxy == "rust":
                    results[n]["exchanges_per_event"] = round(
                        exchanged / max(results[n]["applied"], 1), 2)
                log(f"  {results[n]['events_per_s']:.0f} events/s")
            finally:
                psql(a.postgres, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        proxy.terminate()
        proxy.wait()
        if not a.source:
            shutil.rmtree(source, ignore_errors=True)
    name = "latency_proxy.rs" if a.proxy == "rust" else "latency_proxy.py"
    print(f"PostgreSQL through {name} (+{a.rtt_ms} ms RTT), apply only (replay):")
    for n, r in results.items():
        per = (f", {r['exchanges_per_event']} exchanges per event"
               if "exchanges_per_event" in r else "")
        print(f"  max_concurrent {n:>3}: {r['events_per_s']:>8.0f} events/s "
              f"({r['applied']} applied, {r['failed']} failed in {r['seconds']:.1f} s{per})")
    first, last = levels[0], levels[-1]
    ratio = results[last]["events_per_s"] / max(results[first]["events_per_s"], 1e-9)
    print(f"  ratio {last} / {first}: {ratio:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rtt_ms": a.rtt_ms, "results": results, "ratio": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
