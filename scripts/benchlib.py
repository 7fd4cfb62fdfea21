"""Shared pieces of the benchmark scripts (bench_e2e.py, compare.py, pg_scaling.py).

Owns: starting a server process on a free port and waiting until it answers,
reading a process's CPU time and peak memory from /proc, bytes on disk under a
directory, running `clerksync loadgen` and parsing its JSON report, waiting
until clerksync has applied everything it acknowledged, and `measure`: one
loadgen run against one server with the figures issue 21 compares.

Must never: touch the server's internals beyond what an operator could read
(its admin API, its files after the run, /proc): these scripts measure the
product as users run it.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ADMIN = "bench-admin-token"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_bin():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return os.path.join(target, "release", "clerksync")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get_json(url, token=ADMIN):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, int(round(p / 100.0 * (len(sorted_vals) - 1))))
    return sorted_vals[i]


def wait_ready(url, proc, log_path):
    """Polls `url` until it answers; fails fast if `proc` exits first."""
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode} before it was ready; see {log_path}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"server did not become ready; see {log_path}")


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may contain spaces: split after its closing ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_thread(pid):
    """utime + stime of each live thread of a process, summed by thread name
    (`comm`: tokio-rt-worker, apply, inbox-writer...), in seconds. A thread
    that ended before the reading is not in it."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # ended between the listing and the read
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def peak_rss_bytes(pid):
    """The process's peak resident set (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def disk_bytes(path):
    """Bytes allocated on disk under `path` (st_blocks, so sparse files count as stored)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass  # a temporary file removed while walking
    return total


def loadgen(bin_path, url, args, env):
    """Runs `clerksync loadgen` (closed loop unless args say otherwise); returns
    (its JSON report, the loadgen's own CPU seconds)."""
    cmd = [bin_path, "loadgen", "--url", url, "--json", "--quiet", *args]
    start = os.times()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    end = os.times()
    if out.returncode != 0:
        sys.exit(f"loadgen failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    cpu = (end.children_user + end.children_system) - (start.children_user + start.children_system)
    return json.loads(out.stdout.strip().splitlines()[-1]), cpu


def clerksync_env(port, extra=(), database_url=None):
    env = dict(os.environ)
    env.update({
        "CLERKSYNC_LISTEN": f"127.0.0.1:{port}",
        "CLERKSYNC_WEBHOOK_SECRET": SECRET,
        "CLERKSYNC_ADMIN_TOKEN": ADMIN,
        "RUST_LOG": "warn",
    })
    if database_url:
        env["CLERKSYNC_DATABASE_URL"] = database_url
    for kv in extra:
        k, sep, v = kv.partition("=")
        if not sep:
            sys.exit(f"--env takes KEY=VALUE, got {kv!r}")
        env[k] = v
    return env


def start_clerksync(bin_path, data_dir, env, log_path):
    """Starts `clerksync serve` on `data_dir`; returns (process, base URL) once ready."""
    port = env["CLERKSYNC_LISTEN"].rsplit(":", 1)[1]
    log = open(log_path, "w")
    proc = subprocess.Popen([bin_path, "serve", "--data-dir", data_dir], env=env,
                            stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base + "/readyz", proc, log_path)
    return proc, base


def wait_drained(base, poll_s=0.05):
    """Waits until clerksync has no delivery left to apply; returns its /admin/stats."""
    while True:
        asked = time.monotonic()
        st = get_json(base + "/admin/stats")
        if st["pending"] == 0:
            return st
        # The totals in /admin/stats count the whole inbox: on a store of
        # millions of deliveries one answer takes a good part of a second, and
        # polling it back to back would keep a core busy that the service
        # being measured needs. Poll at most a fifth of the time.
        time.sleep(max(poll_s, 4 * (time.monotonic() - asked)))


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(proc, data_dir, bin_path, url, lg_args, env, drained):
    """Drives `proc` with loadgen, waits for `drained()`, returns the row."""
    # Other work on the machine skews every figure: record how busy it was.
    load_before = os.getloadavg()[0]
    cpu0 = cpu_seconds(proc.pid)
    threads0 = cpu_by_thread(proc.pid)
    started = time.time()
    lg, lg_cpu = loadgen(bin_path, url, lg_args, env)
    acked = time.time()
    drained()
    done = time.time()
    cpu = cpu_seconds(proc.pid) - cpu0
    threads1 = cpu_by_thread(proc.pid)
    rss = peak_rss_bytes(proc.pid)
    disk = disk_bytes(data_dir)
    ok = lg["status_2xx"]
    if ok != lg["deliveries"] - lg["forged"]:
        print(f"WARNING: {lg['deliveries'] - lg['forged'] - ok} genuine deliveries not acknowledged: "
              f"{lg.get('non_2xx')} transport errors {lg.get('transport_errors')}", file=sys.stderr)
    return {
        "deliveries": ok,
        "acks_per_s": round(lg["throughput_acks_per_s"]),
        "ack_p50_ms": lg["latency_ms"]["p50"],
        "ack_p99_ms": lg["latency_ms"]["p99"],
        "drain_s": round(done - started, 2),
        "drain_after_last_ack_s": round(done - acked, 2),
        "cpu_s": round(cpu, 2),
        "cpu_us_per_delivery": round(cpu * 1e6 / max(ok, 1)),
        "peak_rss_mib": round(rss / 2**20, 1),
        "disk_bytes": disk,
        "disk_bytes_per_delivery": round(disk / max(ok, 1)),
        "loadgen_cpu_s": round(lg_cpu, 2),
        # Where the server's CPU went, by thread name (µs per delivery).
        "cpu_us_per_delivery_by_thread": {
            name: round((t - threads0.get(name, 0.0)) * 1e6 / max(ok, 1), 1)
            for name, t in sorted(threads1.items(), key=lambda kv: -kv[1])
            if t - threads0.get(name, 0.0) > 0
        },
        # Threads that ended during the run (tantivy's per-commit indexing
        # threads, a dictionary's training): the process's total minus the above.
        "cpu_us_per_delivery_ended_threads": round(
            (cpu - sum(t - threads0.get(n, 0.0) for n, t in threads1.items())) * 1e6 / max(ok, 1), 1),
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
