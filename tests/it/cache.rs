//! The read cache is never stale once a change's invalidation is processed:
//! readers hammer the read API while changes apply, under both strategies, both
//! invalidation patterns and both backends (moka, the real Redis); two nodes
//! sharing one Redis; and a Redis cache left stale by a crash catches up from
//! the cache consumer's checkpoint.
//!
//! Redis comes from CLERKSYNC_TEST_REDIS_URL (default the machine's local
//! server). Unreachable: outside CI the Redis tests say so and skip; under
//! CI=true they fail. Each test uses its own key prefix.

use crate::backends::{postgres_schema_url, sqlite_server, start, SchemaGuard, Server};
use clerksync::config::Config;
use clerksync::feed::cache::redis::RedisOptions;
use clerksync::feed::cache::{Backend, Invalidation, Strategy};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

/// A fresh prefix on a reachable Redis; None (skip) when unreachable outside CI.
async fn redis_options() -> Option<RedisOptions> {
    let url = std::env::var("CLERKSYNC_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let ping = async {
        let client = redis::Client::open(url.as_str())?;
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    if let Err(e) = ping.await {
        crate::skip::skip(
            &format!("Redis at {url} is unreachable ({e})"),
            "start Redis or set CLERKSYNC_TEST_REDIS_URL",
        );
        return None;
    }
    Some(RedisOptions {
        url,
        prefix: format!("cs_test_{:016x}:", rand::random::<u64>()),
        ttl_secs: 600,
        local_max_entries: 1_000,
    })
}

async fn redis_conn(o: &RedisOptions) -> redis::aio::MultiplexedConnection {
    redis::Client::open(o.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Deletes a test's keys (values expire anyway; the counter would not).
async fn forget(backend: &Backend) {
    if let Backend::Redis(o) = backend {
        let mut c = redis_conn(o).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", o.prefix))
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut c).await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Moka,
    Redis,
}

/// The backend for `mode`; None when the test should skip.
async fn backend(mode: Mode) -> Option<Backend> {
    match mode {
        Mode::Moka => Some(Backend::Moka),
        Mode::Redis => redis_options().await.map(Backend::Redis),
    }
}

fn tune(c: &mut Config, backend: &Backend, strategy: Strategy, invalidation: Invalidation) {
    c.cache_backend = backend.clone();
    c.cache_strategy = strategy;
    c.cache_invalidation = invalidation;
}

fn user(id: &str, v: i64) -> serde_json::Value {
    json!({"type": "user.updated", "data": {"id": id, "first_name": format!("v{v}"), "updated_at": v}})
}

/// Waits until the change with version `v` of `id` is committed and its
/// invalidation processed. The cache consumer's checkpoint is the signal for
/// both strategies: it moves only after the consumer invalidated the change,
/// whereas the commit (what `wait_ms` sees) comes just before a write-through
/// invalidation, so a floor raised at the commit could flag a read that was
/// legitimately served before the change counted as processed.
async fn wait_invalidated(s: &Server, id: &str, v: i64) {
    let (st, _) = s
        .get_json(
            &format!("/v1/users/{id}?wait_ms=30000&min_updated_at={v}"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    {
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

async fn never_stale(mode: Mode, strategy: Strategy, invalidation: Invalidation) {
    let Some(backend) = backend(mode).await else {
        return;
    };
    let s = Arc::new(sqlite_server(|c| tune(c, &backend, strategy, invalidation)).await);
    const IDS: &[&str] = &["user_c0", "user_c1", "user_c2"];
    let ids = IDS;
    for (i, id) in ids.iter().enumerate() {
        s.post(&format!("msg_c_{i}_0"), &user(id, 1)).await;
        wait_invalidated(&s, id, 1).await;
    }
    hammer(s.clone(), s, IDS).await;
    forget(&backend).await;
}

/// Readers hammer `reader` while 24 versions of each user are posted to
/// `writer`; no read may return a version older than one already processed.
async fn hammer(writer: Arc<Server>, reader: Arc<Server>, ids: &'static [&'static str]) {
    // For each user, the version every read started from now on must reach.
    let floors: Arc<Vec<AtomicI64>> = Arc::new(ids.iter().map(|_| AtomicI64::new(1)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = tokio::task::JoinSet::new();
    for r in 0..4 {
        let (s, floors, stop) = (reader.clone(), floors.clone(), stop.clone());
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
            writer.post(&format!("msg_c_{i}_{v}"), &user(id, v)).await;
        }
        for (i, id) in ids.iter().enumerate() {
            wait_invalidated(&writer, id, v).await;
            floors[i].store(v, Ordering::SeqCst);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    while let Some(r) = readers.join_next().await {
        total += r.expect("reader saw no stale version");
    }
    assert!(total > 0);
    let text = reader.metrics_text().await;
    assert!(text.contains("clerksync_cache_hits_total"), "{text}");
}

macro_rules! never_stale_tests {
    ($($name:ident: $mode:ident, $strategy:ident, $invalidation:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            never_stale(Mode::$mode, Strategy::$strategy, Invalidation::$invalidation).await;
        }
    )*};
}

never_stale_tests! {
    write_through_precise_is_never_stale: Moka, WriteThrough, Precise;
    write_through_group_is_never_stale: Moka, WriteThrough, Group;
    write_behind_precise_is_never_stale: Moka, WriteBehind, Precise;
    write_behind_group_is_never_stale: Moka, WriteBehind, Group;
    redis_write_through_precise_is_never_stale: Redis, WriteThrough, Precise;
    redis_write_through_group_is_never_stale: Redis, WriteThrough, Group;
    redis_write_behind_precise_is_never_stale: Redis, WriteBehind, Precise;
    redis_write_behind_group_is_never_stale: Redis, WriteBehind, Group;
}

/// Two nodes over one PostgreSQL schema and one Redis: updates posted to node A
/// are never served stale by node B once processed (B's local layer is kept
/// coherent by the pub/sub invalidations, and checked against Redis' counter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sharing_redis_are_never_stale() {
    let Some(opts) = redis_options().await else {
        return;
    };
    let Some((url, schema)) = postgres_schema_url().await else {
        return;
    };
    let backend = Backend::Redis(opts);
    let tweak = |c: &mut Config| tune(c, &backend, Strategy::WriteThrough, Invalidation::Precise);
    let a = Arc::new(start(&url, Box::new(SchemaGuard(schema)), tweak).await);
    let b = Arc::new(start(&url, Box::new(()), tweak).await);
    const IDS: &[&str] = &["user_n0", "user_n1"];
    for (i, id) in IDS.iter().enumerate() {
        a.post(&format!("msg_c_{i}_0"), &user(id, 1)).await;
        wait_invalidated(&a, id, 1).await;
        // B caches version 1 (in Redis and its local layer).
        assert_eq!(
            b.get_json(&format!("/v1/users/{id}"), None).await.1["updated_at"],
            1
        );
    }
    hammer(a.clone(), b.clone(), IDS).await;
    assert!(metric(&b, "clerksync_cache_hits_total").await > 0.0);
    forget(&backend).await;
}

/// A write-behind Redis cache outlives the process: a crash after the commit
/// of version 2 but before the cache consumer handled it leaves version 1 in
/// Redis. The next start replays the feed from the consumer's checkpoint and
/// drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_catches_up_from_its_checkpoint_after_a_crash() {
    let Some(opts) = redis_options().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let backend = Backend::Redis(opts.clone());
    let tweak = |c: &mut Config| tune(c, &backend, Strategy::WriteBehind, Invalidation::Precise);
    let slot = format!("{}k:user:user_k", opts.prefix);
    let mut r = redis_conn(&opts).await;

    let s1 = start(&url, Box::new(()), tweak).await;
    s1.post("msg_k1", &user("user_k", 1)).await;
    wait_invalidated(&s1, "user_k", 1).await;
    assert_eq!(
        s1.get_json("/v1/users/user_k", None).await.1["updated_at"],
        1
    );
    let v1: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(&slot)
        .arg("v")
        .query_async(&mut r)
        .await
        .unwrap();
    let v1 = v1.expect("version 1 is cached in Redis");
    let cp1 = s1
        .scalar("SELECT seq FROM feed_checkpoints WHERE consumer = 'cache'")
        .await;
    s1.post("msg_k2", &user("user_k", 2)).await;
    wait_invalidated(&s1, "user_k", 2).await;
    let seq2 = s1
        .scalar("SELECT MAX(seq) FROM change_feed WHERE entity_id = 'user_k'")
        .await;
    s1.stop().await;

    // The crash: version 2 committed, the cache consumer never got to it.
    let _: () = redis::cmd("HSET")
        .arg(&slot)
        .arg("v")
        .arg(&v1)
        .query_async(&mut r)
        .await
        .unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE feed_checkpoints SET seq = $1 WHERE consumer = 'cache'")
        .bind(cp1)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let s3 = start(&url, Box::new(()), tweak).await;
    s3.wait_for(
        &format!(
            "SELECT COUNT(*) FROM feed_checkpoints WHERE consumer = 'cache' AND seq >= {seq2}"
        ),
        1,
    )
    .await;
    let (st, u) = s3.get_json("/v1/users/user_k", None).await;
    assert_eq!(st, 200);
    assert_eq!(
        u["updated_at"], 2,
        "the stale Redis entry survived the catch-up: {u}"
    );
    forget(&backend).await;
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_start_up_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(
        &crate::helpers::whsec(crate::helpers::TEST_KEY),
        &format!("sqlite://{}/t.db", dir.path().display()),
    );
    config.cache_backend = Backend::Redis(RedisOptions {
        url: format!("redis://127.0.0.1:{port}"),
        prefix: "x:".into(),
        ttl_secs: 60,
        local_max_entries: 10,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = match clerksync::App::build(config, listener).await {
        Ok(_) => panic!("built without Redis"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("CLERKSYNC_REDIS_URL"), "{err}");
    assert!(err.contains(&port.to_string()), "{err}");
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
    // The cache consumer's own invalidations of these changes come first: one
    // arriving after the first read would drop the list it just cached.
    s.wait_for(
        "SELECT COUNT(*) FROM feed_checkpoints WHERE consumer = 'cache' \
         AND seq >= (SELECT MAX(seq) FROM change_feed)",
        1,
    )
    .await;
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
    s.metric(name).await.unwrap_or(0.0)
}

/// A TCP relay to Redis that the test can cut and restore: a Redis outage
/// without touching the shared server.
struct Relay {
    port: u16,
    upstream: String,
    cut: tokio_util::sync::CancellationToken,
}

impl Relay {
    async fn start(port: u16, upstream: &str) -> Relay {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = tokio_util::sync::CancellationToken::new();
        let (up, token) = (upstream.to_string(), cut.clone());
        tokio::spawn(async move {
            loop {
                let (mut down, _) = tokio::select! {
                    a = listener.accept() => a.unwrap(),
                    _ = token.cancelled() => return,
                };
                let (up, token) = (up.clone(), token.clone());
                tokio::spawn(async move {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(&up).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut upstream) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        Relay {
            port,
            upstream: upstream.to_string(),
            cut,
        }
    }

    /// Closes the listener and every relayed connection.
    fn cut(&self) {
        self.cut.cancel();
    }

    async fn restore(&self) -> Relay {
        Relay::start(self.port, &self.upstream).await
    }
}

/// Redis failing at run time: reads are answered from the store (never a 500,
/// never the record Redis still holds), failures are counted, and once Redis is
/// back the pending invalidation reaches it before the cache is trusted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_the_store_and_never_serves_stale() {
    let Some(mut opts) = redis_options().await else {
        return;
    };
    let upstream = opts.url.trim_start_matches("redis://").to_string();
    let relay = Relay::start(0, &upstream).await;
    opts.url = format!("redis://127.0.0.1:{}", relay.port);
    let backend = Backend::Redis(opts);
    let s =
        sqlite_server(|c| tune(c, &backend, Strategy::WriteThrough, Invalidation::Precise)).await;
    s.post("msg_o1", &user("user_o", 1)).await;
    wait_invalidated(&s, "user_o", 1).await;
    for _ in 0..3 {
        assert_eq!(
            s.get_json("/v1/users/user_o", None).await.1["updated_at"],
            1
        );
    }

    relay.cut();
    s.post("msg_o2", &user("user_o", 2)).await;
    let (st, _) = s
        .get_json("/v1/users/user_o?wait_ms=30000&min_updated_at=2", None)
        .await;
    assert_eq!(st, 200);
    for _ in 0..5 {
        let (st, u) = s.get_json("/v1/users/user_o", None).await;
        assert_eq!(st, 200, "{u}");
        assert_eq!(u["updated_at"], 2, "stale read during the outage: {u}");
    }
    assert!(metric(&s, "clerksync_cache_errors_total").await > 0.0);

    let _relay = relay.restore().await;
    // Right away (Redis still holds version 1 until the pending invalidation
    // or the consumer's retry reaches it) and after the consumer caught up.
    for _ in 0..20 {
        let (st, u) = s.get_json("/v1/users/user_o", None).await;
        assert_eq!(st, 200, "{u}");
        assert_eq!(u["updated_at"], 2, "stale read as Redis came back: {u}");
    }
    let seq2 = s
        .scalar("SELECT MAX(seq) FROM change_feed WHERE entity_id = 'user_o'")
        .await;
    s.wait_for(
        &format!(
            "SELECT COUNT(*) FROM feed_checkpoints WHERE consumer = 'cache' AND seq >= {seq2}"
        ),
        1,
    )
    .await;
    for _ in 0..5 {
        let (st, u) = s.get_json("/v1/users/user_o", None).await;
        assert_eq!(st, 200, "{u}");
        assert_eq!(u["updated_at"], 2, "stale read after the outage: {u}");
    }
    forget(&backend).await;
}
