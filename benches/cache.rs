//! Read of a user (issue 5): cache hit vs store read.
//!
//! Owns: these measurements only. Must never: measure anything but the code the
//! server runs: reads go through `EntityCache::lookup` / `fill` as the read API's
//! `cached_entity` does, and store reads through `store::read::get` on a real
//! SQLite file. Four cases, round-robin over N users (default 10,000;
//! `CACHE_BENCH_USERS=N` to change):
//! - store read (SQLite), no cache;
//! - moka hit;
//! - redis, local layer hit (one `GET gen` round trip proves the layer coherent);
//! - redis, local layer miss -> Redis hit (a 16-entry local layer, so nearly
//!   every read goes to Redis: one script round trip plus decoding).
//!
//! Prints the mean of each and its ratio to the store read, then runs the
//! criterion groups. Redis comes from CLERKSYNC_BENCH_REDIS_URL (default the
//! local server); unreachable, its cases are skipped with a note.

use clerksync::clerk::model::Kind;
use clerksync::config::DatabaseUrl;
use clerksync::feed::cache::redis::RedisOptions;
use clerksync::feed::cache::{
    entity_key, Backend, Cached, Capacity, EntityCache, Invalidation, Lookup, Strategy,
};
use clerksync::store::db::Database;
use clerksync::store::read;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn fill_store(db: &Database, n: usize) {
    let Some(path) = db.file_path() else {
        unreachable!("the bench uses SQLite")
    };
    let pool = &sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("a pool on the bench's database");
    let mut tx = pool.begin().await.expect("begin");
    for i in 0..n {
        let data = json!({
            "id": format!("user_{i:08}"), "object": "user",
            "first_name": "Ada", "last_name": format!("Lovelace{i}"), "username": format!("ada{i}"),
            "primary_email_address_id": "idn_e",
            "email_addresses": [{"id": "idn_e", "email_address": format!("ada{i}@example.com"), "object": "email_address"}],
            "phone_numbers": [], "public_metadata": {"plan": "pro"}, "created_at": 1, "updated_at": 1,
        });
        sqlx::query(
            "INSERT INTO users (id, version, version_key, deleted, user_id, organization_id, data, synced_at) \
             VALUES (?, 1, 'k', 0, NULL, NULL, ?, 1)",
        )
        .bind(format!("user_{i:08}"))
        .bind(data.to_string())
        .execute(&mut *tx)
        .await
        .expect("insert");
    }
    tx.commit().await.expect("commit");
}

/// What the read API does for `GET /v1/users/{id}`.
async fn read_user(
    cache: &EntityCache,
    db: &Database,
    id: &str,
) -> Arc<clerksync::store::tx::EntityRow> {
    let key = entity_key(Kind::User, id);
    match cache.lookup(&key).await {
        Lookup::Hit(Cached::Row(r)) => r,
        Lookup::Hit(Cached::Rows(_)) => unreachable!("a user key holds a row"),
        Lookup::Miss(stamp) => {
            let r = Arc::new(
                read::get(db, Kind::User, id)
                    .await
                    .expect("read")
                    .expect("user"),
            );
            cache.fill(&key, Cached::Row(r.clone()), stamp).await;
            r
        }
    }
}

async fn redis_cache(local: u64) -> Option<Arc<EntityCache>> {
    let url = std::env::var("CLERKSYNC_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let backend = Backend::Redis(RedisOptions {
        url,
        prefix: format!("cs_bench_{:016x}:", rand::random::<u64>()),
        ttl_secs: 600,
        local_max_entries: local,
    });
    match EntityCache::open(
        &backend,
        Capacity {
            entries: local,
            bytes: 1 << 30,
        },
        Strategy::WriteThrough,
        Invalidation::Precise,
    )
    .await
    {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("SKIP the redis cases: {e}");
            None
        }
    }
}

fn bench(c: &mut Criterion) {
    // `cargo test --all-targets` runs benches once, without `--bench`, as a
    // smoke test: a few users keep that quick; `cargo bench` gets the full size.
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("CACHE_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 10_000 } else { 100 });
    let rounds = if full { 20_000 } else { 200 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = DatabaseUrl::parse(&format!("sqlite://{}/bench.db", dir.path().display())).unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("user_{i:08}")).collect();
    let (db, moka, redis_local, redis_remote) = rt.block_on(async {
        let db = Database::open(&url).await.expect("store");
        fill_store(&db, n).await;
        let moka = Arc::new(EntityCache::new(
            n as u64 * 2,
            Strategy::WriteThrough,
            Invalidation::Precise,
        ));
        let redis_local = redis_cache(n as u64 * 2).await;
        let redis_remote = redis_cache(16).await;
        // Warm every cache: each user read once through the real path.
        for id in &ids {
            read_user(&moka, &db, id).await;
            if let Some(c) = &redis_local {
                read_user(c, &db, id).await;
            }
            if let Some(c) = &redis_remote {
                read_user(c, &db, id).await;
            }
        }
        (db, moka, redis_local, redis_remote)
    });

    // Means over `rounds` reads each, and the ratios.
    let mean = |cache: Option<&EntityCache>| {
        rt.block_on(async {
            let t = Instant::now();
            for r in 0..rounds {
                let id = &ids[r % n];
                match cache {
                    None => {
                        black_box(read::get(&db, Kind::User, id).await.expect("read"));
                    }
                    Some(c) => {
                        black_box(read_user(c, &db, id).await);
                    }
                }
            }
            t.elapsed().as_secs_f64() * 1e6 / rounds as f64
        })
    };
    let store_us = mean(None);
    eprintln!("read of a user, mean over {rounds} reads of {n} users:");
    eprintln!("  store read (SQLite)              {store_us:9.2} µs  (1.0x)");
    for (name, cache) in [
        ("moka hit                       ", Some(&moka)),
        ("redis: local layer hit         ", redis_local.as_ref()),
        ("redis: local miss -> Redis hit ", redis_remote.as_ref()),
    ] {
        if let Some(cache) = cache {
            let us = mean(Some(cache));
            eprintln!(
                "  {name}  {us:9.2} µs  (store/this = {:.1}x)",
                store_us / us
            );
        }
    }

    let mut g = c.benchmark_group(format!("cache/read_user/{n}_users"));
    g.measurement_time(Duration::from_secs(if full { 5 } else { 1 }));
    let mut i = 0usize;
    g.bench_function("store read (sqlite)", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % n;
            let (db, id) = (&db, &ids[i]);
            async move { black_box(read::get(db, Kind::User, id).await.expect("read")) }
        })
    });
    let cases = [
        ("moka hit", Some(moka.clone())),
        ("redis local layer hit", redis_local.clone()),
        ("redis local miss -> redis hit", redis_remote.clone()),
    ];
    for (name, cache) in cases {
        let Some(cache) = cache else { continue };
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % n;
                let (db, id, cache) = (&db, &ids[i], &cache);
                async move { black_box(read_user(cache, db, id).await) }
            })
        });
    }
    g.finish();
    rt.block_on(db.close());
}

criterion_group!(benches, bench);
criterion_main!(benches);
