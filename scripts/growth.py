#!/usr/bin/env python3
"""Issue 21's cost-growth check: the same stream on an empty store and on a store
that already holds many users.

Run 1: a fresh clerksync (SQLite) receives the measured stream S.
Run 2: a fresh clerksync first receives prefill streams (users joining
organizations, no updates or deletes, --prefill-events per chunk, each chunk its
own seed so every id is new) until it holds at least --prefill-users users, is
drained, and then receives the same S.

For S it reports, in both runs: end-to-end events/s (first send to last
apply), the apply rate over S's inbox rows (rows / (last processed_at - first
processed_at), which is the applier's pace while it has a backlog) and the
server CPU per delivery; then run 2 / run 1. The goal in the issue is >= 0.8 with
1M users; on a 2-core machine 1M users take long to load, so --prefill-users
scales it down (the report says what ran).

Usage: scripts/growth.py [--bin target/release/clerksync] [--events 60000]
       [--prefill-users 200000] [--prefill-events 300000] [--prefill-sql | --prefilled DIR] [--json FILE]
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

# Sign-ups that join organizations: mostly user.created, about one membership
# each, a few organizations; no updates or deletes, so every event adds a row.
PREFILL = ["--profile", "classic", "--max-updates", "0", "--deletes", "0",
           "--users-per-org", "1000", "--out-of-order", "0", "--duplicates", "0"]
# Prefill chunks are placed before S's default start time, a chunk apart.
DEFAULT_START_MS = 1_735_689_600_000
CHUNK_SPAN_MS = 10_000_000_000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def count(db_path, sql, *args):
    db = sqlite3.connect(db_path)
    try:
        return db.execute(sql, args).fetchone()
    finally:
        db.close()


def user_record(uid, i, now):
    """A stored user record shaped like Clerk's (sorted keys, as the store writes)."""
    email = f"pf{i}@example.com"
    return json.dumps({
        "backup_code_enabled": False, "banned": False, "create_organization_enabled": True,
        "created_at": now, "delete_self_enabled": True,
        "email_addresses": [{"email_address": email, "id": f"idn_pf{i:08d}", "linked_to": [],
                             "object": "email_address", "reserved": False,
                             "verification": {"attempts": None, "expire_at": None,
                                              "status": "verified", "strategy": "email_code"}}],
        "external_accounts": [], "external_id": None, "first_name": f"First{i}",
        "has_image": False, "id": uid, "image_url": "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCJ9",
        "last_active_at": now, "last_name": f"Last{i}", "last_sign_in_at": now,
        "locked": False, "object": "user", "password_enabled": True, "phone_numbers": [],
        "primary_email_address_id": f"idn_pf{i:08d}", "primary_phone_number_id": None,
        "private_metadata": {}, "profile_image_url": "https://www.gravatar.com/avatar?d=mp",
        "public_metadata": {"plan": "free", "team": f"t{i % 97}"},
        "two_factor_enabled": False, "unsafe_metadata": {}, "updated_at": now,
        "username": None}, sort_keys=True, separators=(",", ":"))


def prefill_sql(db_path, users, now):
    """Writes `users` users, each with one membership of one of 1,000
    organizations, their contact rows, and the rows applying them left behind
    (done inbox rows with bodies, audit rows) straight into the store: loading
    1M users through the service takes hours on a 2-core machine. No change-feed
    rows: the consumers (search, cache) would otherwise start by reading them all."""
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA synchronous = OFF")
    orgs = 1000
    db.executemany(
        "INSERT INTO organizations (id, version, version_key, deleted, data, synced_at) "
        "VALUES (?, ?, 'msg_pf', 0, ?, ?)",
        ((f"org_pf{o:05d}", now, json.dumps({"id": f"org_pf{o:05d}", "name": f"Org {o}",
                                              "object": "organization"}), now)
         for o in range(orgs)))
    chunk = 50_000
    for start in range(0, users, chunk):
        rows = range(start, min(users, start + chunk))
        recs = [(i, f"user_pf{i:08d}", user_record(f"user_pf{i:08d}", i, now)) for i in rows]
        db.executemany(
            "INSERT INTO users (id, version, version_key, deleted, data, synced_at) "
            "VALUES (?, ?, 'msg_pf', 0, ?, ?)", ((u, now, d, now) for _, u, d in recs))
        db.executemany(
            "INSERT INTO user_emails (user_id, id, email_address, is_primary) VALUES (?, ?, ?, 1)",
            ((u, f"idn_pf{i:08d}", f"pf{i}@example.com") for i, u, _ in recs))
        db.executemany(
            "INSERT INTO memberships (id, version, version_key, deleted, user_id, organization_id, "
            "data, synced_at) VALUES (?, ?, 'msg_pf', 0, ?, ?, ?, ?)",
            ((f"orgmem_pf{i:08d}", now, u, f"org_pf{i % orgs:05d}",
              json.dumps({"id": f"orgmem_pf{i:08d}", "object": "organization_membership",
                          "role": "org:member", "public_user_data": {
                              "user_id": u, "first_name": f"First{i}", "last_name": f"Last{i}",
                              "identifier": f"pf{i}@example.com"}}), now)
             for i, u, _ in recs))
        for kind, eid in (("user", lambda i, u: u), ("membership", lambda i, u: f"orgmem_pf{i:08d}")):
            db.executemany(
                "INSERT INTO audit (svix_id, kind, entity_id, user_id, operation, changes, "
                "version, at) VALUES (?, ?, ?, ?, 'create', ?, ?, ?)",
                ((f"msg_pf{kind[0]}{i:08d}", kind, eid(i, u), u, d, now, now) for i, u, d in recs))
        first, last = recs[0][1], recs[-1][1]
        # The inbox rows and bodies of the deliveries, set-based (row by row
        # took most of the time).
        for etype, table, key in (("user.created", "users", "u.id"),
                                  ("organizationMembership.created", "memberships",
                                   "u.organization_id")):
            user = "u.id" if table == "users" else "u.user_id"
            rng = "u.id" if table == "users" else "u.user_id"
            after = db.execute("SELECT COALESCE(MAX(seq), 0) FROM inbox").fetchone()[0]
            db.execute(
                f"INSERT INTO inbox (svix_id, event_type, entity_key, object_id, svix_timestamp, "
                f"event_timestamp, received_at, status, attempts, processed_at, duration_us, user_id) "
                f"SELECT 'msg_pf' || u.id, ?, {key}, u.id, ?, ?, ?, 'done', 1, ?, 50, {user} "
                f"FROM {table} u WHERE {rng} BETWEEN ? AND ? ORDER BY u.id",
                (etype, now // 1000, now, now, now, first, last))
            db.execute(
                f"INSERT INTO inbox_bodies (seq, body) SELECT i.seq, "
                f"'{{\"data\":' || u.data || ',\"object\":\"event\",\"type\":\"{etype}\"}}' "
                f"FROM inbox i JOIN {table} u ON u.id = i.object_id WHERE i.seq > ?", (after,))
        db.commit()
        log(f"prefill: {min(users, start + chunk):,} users written")
    # No ANALYZE: clerksync never runs it, and with statistics saying nearly
    # every inbox row is done SQLite plans the due-events query as a full scan.
    db.close()


def run(a, prefill_users):
    data = tempfile.mkdtemp(prefix="clerksync-growth-")
    db_path = os.path.join(data, "clerksync.db")
    env = benchlib.clerksync_env(benchlib.free_port(), a.env)
    if prefill_users and a.prefilled:
        # A copy: the run adds S to it.
        shutil.rmtree(data)
        shutil.copytree(a.prefilled, data, ignore=shutil.ignore_patterns("*.log"))
    elif prefill_users and a.prefill_sql:
        # Once to create the schema, then the rows straight into the file.
        proc, base = benchlib.start_clerksync(a.bin, data, env, os.path.join(data, "serve0.log"))
        benchlib.stop(proc)
        prefill_sql(db_path, prefill_users, DEFAULT_START_MS - CHUNK_SPAN_MS)
    proc, base = benchlib.start_clerksync(a.bin, data, env, os.path.join(data, "serve.log"))
    url = base + "/webhooks/clerk"
    try:
        users, chunk = 0, 0
        if prefill_users and (a.prefill_sql or a.prefilled):
            users = count(db_path, "SELECT COUNT(*) FROM users")[0]
        while users < prefill_users:
            chunk += 1
            start = DEFAULT_START_MS - chunk * CHUNK_SPAN_MS
            benchlib.loadgen(a.bin, url, ["--events", str(a.prefill_events), "--seed",
                                          str(10_000 + chunk), "--start-ms", str(start),
                                          *PREFILL], env)
            benchlib.wait_drained(base)
            users = count(db_path, "SELECT COUNT(*) FROM users")[0]
            log(f"prefill chunk {chunk}: {users:,} users stored")
        since_ms = int(time.time() * 1000)
        row = benchlib.measure(proc, data, a.bin, url,
                               ["--events", str(a.events), "--seed", str(a.seed),
                                "--out-of-order", "0.1", "--duplicates", "0.05"],
                               env, lambda: benchlib.wait_drained(base))
    finally:
        benchlib.stop(proc)
    n, first, last = count(
        db_path,
        "SELECT COUNT(*), MIN(processed_at), MAX(processed_at) FROM inbox "
        "WHERE received_at >= ? AND processed_at IS NOT NULL", since_ms)
    row["users_before"] = users
    row["e2e_events_per_s"] = round(row["deliveries"] / row["drain_s"])
    row["apply_events_per_s"] = round(n * 1000 / max(last - first, 1)) if n else None
    shutil.rmtree(data, ignore_errors=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=benchlib.default_bin())
    ap.add_argument("--events", type=int, default=60_000, help="events in the measured stream S")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--prefill-users", type=int, default=200_000)
    ap.add_argument("--prefill-events", type=int, default=300_000, help="events per prefill chunk")
    ap.add_argument("--prefill-sql", action="store_true",
                    help="write the prefill users straight into the SQLite file (minutes for 1M) "
                         "instead of sending them through the service (hours)")
    ap.add_argument("--prefilled", metavar="DATA_DIR",
                    help="start run 2 from a copy of this data directory (made by an earlier "
                         "--prefill-sql run or the same binary's schema) instead of prefilling")
    ap.add_argument("--env", action="append", default=[], help="clerksync setting KEY=VALUE")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()

    log("run 1: empty store")
    empty = run(a, 0)
    log(f"run 2: at least {a.prefill_users:,} users stored first")
    full = run(a, a.prefill_users)
    print(f"Stream S: loadgen --events {a.events} --seed {a.seed} (default profile), "
          f"{empty['deliveries']:,} deliveries, closed loop, SQLite.")
    print("| store before S | e2e events/s | apply events/s | CPU per delivery |")
    print("|---|---|---|---|")
    for r in (empty, full):
        print(f"| {r['users_before']:,} users | {r['e2e_events_per_s']:,} | "
              f"{r['apply_events_per_s']:,} | {r['cpu_us_per_delivery']} µs |")
    ratio = full["apply_events_per_s"] / max(empty["apply_events_per_s"], 1)
    e2e_ratio = full["e2e_events_per_s"] / max(empty["e2e_events_per_s"], 1)
    print(f"\nfull / empty: apply {ratio:.2f}x, end to end {e2e_ratio:.2f}x (goal >= 0.8 at 1M users)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"empty": empty, "full": full, "apply_ratio": ratio,
                       "e2e_ratio": e2e_ratio}, f, indent=2)


if __name__ == "__main__":
    main()
