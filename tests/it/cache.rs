//! The read cache is never stale once a change's invalidation is processed:
//! readers hammer the read API while changes apply, under both strategies and
//! both invalidation patterns.

use crate::backends::{sqlite_server, Server};
use clerksync::feed::cache::{Invalidation, Strategy};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

fn user(id: &str, v: i64) -> serde_json::Value {
    json!({"type": "user.updated", "data": {"id": id, "first_name": format!("v{v}"), "updated_at": v}})
}

/// Waits until the change with version `v` of `id` is committed and, for a
/// write-behind cache, until the cache consumer has handled it.
async fn wait_invalidated(s: &Server, id: &str, v: i64, strategy: Strategy) {
    let (st, _) = s
        .get_json(
            &format!("/v1/users/{id}?wait_ms=30000&min_updated_at={v}"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    if strategy == Strategy::WriteBehind {
        let feed_seq = s
            .scalar(&format!("SELECT COALESCE(MAX(seq), 0) FROM change_feed WHERE entity_id = '{id}' AND version = {v}"))
            .await;
        s.wait_for(
            &format!("SELECT COUNT(*) FROM feed_checkpoints WHERE consumer = 'cache' AND seq >= {feed_seq}"),
            1,
        )
        .await;
    }
}

async fn never_stale(strategy: Strategy, invalidation: Invalidation) {
    let s = Arc::new(
        sqlite_server(|c| {
            c.cache_strategy = strategy;
            c.cache_invalidation = invalidation;
        })
        .await,
    );
    let ids = ["user_c0", "user_c1", "user_c2"];
    for (i, id) in ids.iter().enumerate() {
        s.post(&format!("msg_c_{i}_0"), &user(id, 1)).await;
        wait_invalidated(&s, id, 1, strategy).await;
    }
    // For each user, the version every read started from now on must reach.
    let floors: Arc<Vec<AtomicI64>> = Arc::new(ids.iter().map(|_| AtomicI64::new(1)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = tokio::task::JoinSet::new();
    for r in 0..4 {
        let (s, floors, stop) = (s.clone(), floors.clone(), stop.clone());
        readers.spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let i = (reads as usize + r) % ids.len();
                let floor = floors[i].load(Ordering::SeqCst);
                let (st, u) = s.get_json(&format!("/v1/users/{}", ids[i]), None).await;
                assert_eq!(st, 200);
                let got = u["updated_at"].as_i64().unwrap();
                assert!(
                    got >= floor,
                    "stale read of {}: version {got} after {floor} was processed",
                    ids[i]
                );
                reads += 1;
            }
            reads
        });
    }
    for v in 2..=25 {
        for (i, id) in ids.iter().enumerate() {
            s.post(&format!("msg_c_{i}_{v}"), &user(id, v)).await;
        }
        for (i, id) in ids.iter().enumerate() {
            wait_invalidated(&s, id, v, strategy).await;
            floors[i].store(v, Ordering::SeqCst);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    while let Some(r) = readers.join_next().await {
        total += r.expect("reader saw no stale version");
    }
    assert!(total > 0);
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("clerksync_cache_hits_total"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_precise_is_never_stale() {
    never_stale(Strategy::WriteThrough, Invalidation::Precise).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_group_is_never_stale() {
    never_stale(Strategy::WriteThrough, Invalidation::Group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_precise_is_never_stale() {
    never_stale(Strategy::WriteBehind, Invalidation::Precise).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_group_is_never_stale() {
    never_stale(Strategy::WriteBehind, Invalidation::Group).await;
}

/// Group invalidation caches an organization's member list and drops it when a
/// membership changes (without the drop the list would stay stale forever).
#[tokio::test]
async fn group_invalidation_refreshes_member_lists() {
    let s = sqlite_server(|c| c.cache_invalidation = Invalidation::Group).await;
    let org = json!({"type": "organization.created", "data": {"id": "org_g", "name": "G", "slug": "g", "updated_at": 1}});
    let mem = |role: &str, v: i64| {
        json!({"type": "organizationMembership.updated", "data": {"id": "orgmem_g", "role": role, "updated_at": v,
            "organization": {"id": "org_g"}, "public_user_data": {"user_id": "user_g"}}})
    };
    s.post("msg_g0", &org).await;
    s.post("msg_g1", &mem("org:member", 1)).await;
    s.settle().await;
    let first = s
        .get_json("/v1/organizations/org_g/memberships", None)
        .await
        .1;
    assert_eq!(first["data"][0]["role"], "org:member");
    let hits_before = metric(&s, "clerksync_cache_hits_total").await;
    let again = s
        .get_json("/v1/organizations/org_g/memberships", None)
        .await
        .1;
    assert_eq!(again, first);
    assert!(
        metric(&s, "clerksync_cache_hits_total").await > hits_before,
        "the list was served from the cache"
    );
    s.post("msg_g2", &mem("org:admin", 2)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = s
            .get_json("/v1/organizations/org_g/memberships", None)
            .await
            .1;
        if now["data"][0]["role"] == "org:admin" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member list never refreshed: {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn metric(s: &Server, name: &str) -> f64 {
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
