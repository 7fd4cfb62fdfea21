//! Backfill apply rate (issue 17): records listed from a local stand-in for
//! Clerk's Backend API (no rate limit) and applied to an empty SQLite store,
//! per second. Target: >= 10,000 records/s.
//!
//! Owns: this measurement only. Must never: bench anything but the path
//! `clerksync backfill` takes: `backfill::run` with the default options
//! (users, organizations, memberships; paging, apply, checkpoints,
//! reconciliation) against the stand-in served over HTTP on loopback.
//!
//! Each iteration imports the whole instance into a new database (a second
//! run into the same store would change nothing and measure less). The
//! instance is the demo's: `BACKFILL_BENCH_EVENTS` events of the generated
//! stream (default 20,000: about 4,000 users, 400 organizations and 4,800
//! memberships).

use clerksync::backfill::client::{ClerkClient, ClientConfig, SecretKey};
use clerksync::backfill::{self, Options, Progress};
use clerksync::config::DatabaseUrl;
use clerksync::store::db::Database;
use clerksync_loadgen::clerk_api;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};

const KEY: &str = "sk_test_bench";

fn bench(c: &mut Criterion) {
    let events: usize = std::env::var("BACKFILL_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let api = clerk_api::seeded(KEY, events, 4242);
    let records =
        (api.len("users") + api.len("organizations") + api.len("organization_memberships")) as u64;
    let (url, _task) = rt.block_on(api.spawn(0)).expect("the stand-in binds");
    let client = || {
        let mut c = ClientConfig::new(&url, SecretKey::parse(KEY).expect("key")).expect("config");
        c.rate = None;
        ClerkClient::new(c).expect("client")
    };
    let dir = tempfile::tempdir().expect("temp dir");

    // One run outside criterion, to print the figure the issue asks for.
    let mut n = 0u32;
    let mut import = |client: &ClerkClient| {
        n += 1;
        let url = format!("sqlite://{}/b{n}.db", dir.path().display());
        rt.block_on(async {
            let db = Database::open(&DatabaseUrl::parse(&url).expect("url"))
                .await
                .expect("store");
            let started = Instant::now();
            let report = backfill::run(&db, client, &Options::default(), &|_: &Progress| {})
                .await
                .expect("backfill runs");
            let took = started.elapsed();
            db.close().await;
            for f in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}/b{n}.db{f}", dir.path().display()));
            }
            (took, report)
        })
    };
    let (took, report) = import(&client());
    println!(
        "backfill of {records} records ({} users) into an empty SQLite store: {:.2} s, {:.0} records/s",
        api.len("users"),
        took.as_secs_f64(),
        report.per_second()
    );

    let mut g = c.benchmark_group("backfill");
    g.throughput(Throughput::Elements(records));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("import_into_empty_sqlite", |b| {
        let client = client();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += import(&client).0;
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
