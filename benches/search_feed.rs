//! The search consumer's cost per change-feed batch (issue 21): what the
//! server pays to keep the index in step while webhooks arrive.
//!
//! Owns: this measurement only. Must never: touch the network, or measure
//! anything but the code the server runs: users sit in a real SQLite store and
//! batches go through `SearchIndex::apply_feed`, as the "search" consumer does.
//!
//! Three batches of 500 `user.updated` feed entries: activity only
//! (`last_active_at`, `last_sign_in_at`, `updated_at`: three in four user
//! updates in real traffic), a name change each, and the realistic mix (one in
//! four touching an indexed field). The commit interval is zero here so each
//! iteration pays its commit; the server spaces commits out.

use clerksync::clerk::model::Kind;
use clerksync::config::DatabaseUrl;
use clerksync::feed::FeedEntry;
use clerksync::search::{IndexOptions, SearchIndex};
use clerksync::store::db::Database;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use std::time::Duration;

const USERS: usize = 2_000;
const BATCH: usize = 500;

fn user_json(i: usize) -> String {
    json!({
        "id": format!("user_{i:010}"),
        "object": "user",
        "first_name": format!("First{i}"),
        "last_name": format!("Last{}", i % 97),
        "username": format!("handle_{i}"),
        "email_addresses": [{
            "id": format!("idn_{i}"),
            "email_address": format!("person{i}@example.com"),
            "verification": {"status": "verified", "strategy": "email_code"}
        }],
        "phone_numbers": [],
        "public_metadata": {"plan": "pro", "seats": i % 13},
        "private_metadata": {"note": "x".repeat(200)},
        "last_active_at": 1_700_000_000_000i64 + i as i64,
        "last_sign_in_at": 1_700_000_000_000i64 + i as i64,
        "updated_at": 1_700_000_000_000i64 + i as i64,
    })
    .to_string()
}

async fn fill_store(db: &Database) {
    let Some(path) = db.file_path() else {
        unreachable!("the bench uses SQLite")
    };
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("a pool on the bench's database");
    let mut tx = pool.begin().await.expect("begin");
    for i in 0..USERS {
        sqlx::query(
            "INSERT INTO users (id, version, version_key, deleted, user_id, organization_id, data, synced_at) \
             VALUES (?, 1, 'k', 0, NULL, NULL, ?, 1)",
        )
        .bind(format!("user_{i:010}"))
        .bind(user_json(i))
        .execute(&mut *tx)
        .await
        .expect("insert");
    }
    tx.commit().await.expect("commit");
}

/// `BATCH` updates of distinct users; every `indexed_every`-th one also
/// changed `first_name` (0: none did).
fn batch(start_seq: i64, indexed_every: usize) -> Vec<FeedEntry> {
    (0..BATCH)
        .map(|i| {
            let mut fields = vec![
                "last_active_at".to_string(),
                "last_sign_in_at".to_string(),
                "updated_at".to_string(),
            ];
            if indexed_every > 0 && i % indexed_every == 0 {
                fields.push("first_name".to_string());
            }
            let id = format!("user_{:010}", (start_seq as usize + i) % USERS);
            FeedEntry {
                seq: start_seq + i as i64,
                kind: Kind::User,
                entity_id: id.clone(),
                operation: "update".into(),
                changed_fields: fields,
                version: 2,
                svix_id: format!("msg_{i}"),
                committed_at: 0,
                user_id: Some(id),
                organization_id: None,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = DatabaseUrl::parse(&format!("sqlite://{}/bench.db", dir.path().display())).unwrap();
    let db = rt.block_on(async {
        let db = Database::open(&url).await.expect("store");
        fill_store(&db).await;
        db
    });
    let index = SearchIndex::open(
        Some(&dir.path().join("search")),
        IndexOptions {
            commit_interval: Duration::ZERO,
            ..IndexOptions::default()
        },
    )
    .expect("index");
    rt.block_on(async {
        let ticket = index.claim_rebuild().expect("rebuild slot");
        index.rebuild(ticket, &db, |_| {}).await.expect("rebuild");
    });
    let mut g = c.benchmark_group("search_feed_batch_500");
    g.sample_size(10);
    let mut seq = 1_000_000i64;
    for (name, every) in [
        ("activity_only", 0),
        ("realistic_mix", 4),
        ("all_indexed", 1),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                seq += BATCH as i64;
                let entries = batch(seq, every);
                rt.block_on(index.apply_feed(&db, &entries)).expect("apply");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
