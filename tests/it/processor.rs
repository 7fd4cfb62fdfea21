//! The parallel processor seen from outside: retries with backoff, dead
//! letters that hold nothing back, leases, and per-entity order with many
//! workers. A trigger that refuses some rows stands in for a broken database.

use crate::backends::{postgres_server, sqlite_server, Server};
use clerksync::config::Token;
use clerksync::Config;
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret";

fn user(id: &str, first: &str, updated_at: i64) -> Value {
    json!({"type": "user.updated", "object": "event", "data": {
        "id": id, "first_name": first, "updated_at": updated_at,
        "email_addresses": [], "phone_numbers": [], "external_accounts": []
    }})
}

fn is_postgres(s: &Server) -> bool {
    matches!(s.db, clerksync::store::db::Database::Postgres(_))
}

/// Makes every write of a user whose data mentions `word` fail, as a bad
/// migration would.
async fn poison(s: &Server, word: &str) {
    if is_postgres(s) {
        s.exec(&format!(
            "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN \
             IF NEW.data LIKE '%{word}%' THEN RAISE EXCEPTION 'column too narrow'; END IF; \
             RETURN NEW; END $$ LANGUAGE plpgsql"
        ))
        .await;
        s.exec("CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION poison()")
            .await;
    } else {
        for op in ["INSERT", "UPDATE"] {
            s.exec(&format!(
                "CREATE TRIGGER poison_{op} BEFORE {op} ON users WHEN NEW.data LIKE '%{word}%' \
                 BEGIN SELECT RAISE(ABORT, 'column too narrow'); END"
            ))
            .await;
        }
    }
}

async fn cure(s: &Server) {
    if is_postgres(s) {
        s.exec("DROP TRIGGER poison ON users").await;
    } else {
        s.exec("DROP TRIGGER poison_INSERT").await;
        s.exec("DROP TRIGGER poison_UPDATE").await;
    }
}

async fn status(s: &Server, svix_id: &str) -> Value {
    let (code, ev) = s
        .get_json(&format!("/admin/events/{svix_id}"), Some(ADMIN))
        .await;
    assert_eq!(code, 200, "{ev}");
    ev
}

/// A dead event of a user never holds back the user's later events; once the
/// cause is fixed and it is retried, versions keep the newer state.
async fn dead_event_holds_nothing_back(s: Server) {
    poison(&s, "POISON").await;
    s.post("msg_1", &user("user_x", "Ann", 1)).await;
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'done'", 1)
        .await;
    s.post("msg_2", &user("user_x", "POISON", 2)).await;
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'dead'", 1)
        .await;
    s.post("msg_3", &user("user_x", "Cy", 3)).await;
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'done'", 2)
        .await;
    let dead = status(&s, "msg_2").await;
    assert_eq!(dead["status"], "dead");
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("column too narrow"),
        "{dead}"
    );
    assert_eq!(
        s.get_json("/v1/users/user_x", None).await.1["first_name"],
        "Cy"
    );

    cure(&s).await;
    let (code, _) = s.post_json("/admin/events/msg_2/retry", Some(ADMIN)).await;
    assert_eq!(code, 200);
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'done'", 3)
        .await;
    // The retried event is older than what is stored: it changes nothing.
    assert_eq!(
        s.get_json("/v1/users/user_x", None).await.1["first_name"],
        "Cy"
    );
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM audit WHERE svix_id = 'msg_2'")
            .await,
        0
    );
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM audit WHERE entity_id = 'user_x'")
            .await,
        2
    );
    s.stop().await;
}

/// The admin API on, and a failing event dead at its first failure.
fn dead_at_once(c: &mut Config) {
    c.admin_token = Some(Token::new(ADMIN));
    c.max_attempts = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_event_holds_nothing_back_sqlite_one_worker() {
    dead_event_holds_nothing_back(sqlite_server(dead_at_once).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_event_holds_nothing_back_sqlite_four_workers() {
    let s = sqlite_server(|c| {
        dead_at_once(c);
        c.max_concurrent = 4;
    })
    .await;
    dead_event_holds_nothing_back(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_event_holds_nothing_back_postgres() {
    if let Some(s) = postgres_server(dead_at_once).await {
        dead_event_holds_nothing_back(s).await;
    }
}

/// A database error is retried with growing delays, then dead-lettered; a
/// payload that can never apply is dead-lettered at its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_back_off_then_dead_letter_permanent_ones_die_at_once() {
    let s = sqlite_server(|c| {
        c.admin_token = Some(Token::new(ADMIN));
        c.max_attempts = 3;
    })
    .await;
    poison(&s, "POISON").await;
    s.post("msg_t", &user("user_t", "POISON", 1)).await;
    // `email_addresses` must be a list: no retry can fix this payload.
    let bad = json!({"type": "user.updated", "data": {"id": "user_p", "updated_at": 1, "email_addresses": "nope"}});
    s.post("msg_p", &bad).await;

    s.wait_for(
        "SELECT COUNT(*) FROM inbox WHERE svix_id = 'msg_p' AND status = 'dead' AND attempts = 1",
        1,
    )
    .await;
    assert!(status(&s, "msg_p").await["last_error"]
        .as_str()
        .unwrap_or("")
        .contains("email_addresses"));

    let next_after = |attempts: i64| {
        format!(
            "SELECT COALESCE(MAX(next_attempt_at), 0) FROM inbox WHERE svix_id = 'msg_t' \
             AND status = 'failed' AND attempts = {attempts}"
        )
    };
    s.wait_for(
        "SELECT COUNT(*) FROM inbox WHERE svix_id = 'msg_t' AND status = 'failed' AND attempts = 1",
        1,
    )
    .await;
    let n1 = s.scalar(&next_after(1)).await;
    s.wait_for(
        "SELECT COUNT(*) FROM inbox WHERE svix_id = 'msg_t' AND status = 'failed' AND attempts = 2",
        1,
    )
    .await;
    let n2 = s.scalar(&next_after(2)).await;
    // Attempt 2 ran no earlier than n1, and its retry waits about twice the
    // first delay (1 s base, jitter 0.75-1.25): at least 1.5 s.
    assert!(n2 - n1 >= 1_500, "second delay {} ms", n2 - n1);
    s.wait_for(
        "SELECT COUNT(*) FROM inbox WHERE svix_id = 'msg_t' AND status = 'dead' AND attempts = 3",
        1,
    )
    .await;
    let (_, stats) = s.get_json("/admin/stats", Some(ADMIN)).await;
    assert_eq!(stats["dead"], 2, "{stats}");
    assert!(
        s.metric("clerksync_event_retries_total")
            .await
            .unwrap_or(0.0)
            >= 2.0
    );

    // Fixed: "retry all dead" brings back both; only the fixable one applies.
    cure(&s).await;
    let (code, r) = s.post_json("/admin/events/retry-dead", Some(ADMIN)).await;
    assert_eq!((code.as_u16(), r), (200, json!({"queued": 2})));
    s.wait_for(
        "SELECT COUNT(*) FROM inbox WHERE svix_id = 'msg_t' AND status = 'done'",
        1,
    )
    .await;
    s.wait_for(
        "SELECT COUNT(*) FROM inbox WHERE svix_id = 'msg_p' AND status = 'dead'",
        1,
    )
    .await;
    assert_eq!(
        s.get_json("/v1/users/user_t", None).await.1["first_name"],
        "POISON"
    );
    s.stop().await;
}

/// An event still leased by a worker that is gone is left alone until the
/// lease runs out, then taken and applied.
async fn an_expired_lease_is_taken_again(s: Server) {
    let now_ms = s
        .scalar(if is_postgres(&s) {
            "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
        } else {
            "SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
        })
        .await;
    let leased_until = now_ms + 1_500;
    let body = user("user_l", "Lee", 1).to_string();
    s.exec(&format!(
        "INSERT INTO inbox (svix_id, event_type, entity_key, svix_timestamp, received_at, \
         next_attempt_at, leased_until) VALUES ('msg_leased', 'user.updated', 'user_l', {}, {now_ms}, \
         {now_ms}, {leased_until})",
        now_ms / 1000
    ))
    .await;
    s.exec(&format!(
        "INSERT INTO inbox_bodies (seq, body) \
         SELECT seq, '{body}' FROM inbox WHERE svix_id = 'msg_leased'"
    ))
    .await;
    // Something else arrives meanwhile and is applied at once.
    s.post("msg_free", &user("user_f", "Fay", 1)).await;
    s.wait_for(
        "SELECT COUNT(*) FROM inbox WHERE svix_id = 'msg_free' AND status = 'done'",
        1,
    )
    .await;
    s.wait_for(
        "SELECT COUNT(*) FROM inbox WHERE svix_id = 'msg_leased' AND status = 'done'",
        1,
    )
    .await;
    let processed = s
        .scalar("SELECT processed_at FROM inbox WHERE svix_id = 'msg_leased'")
        .await;
    assert!(
        processed >= leased_until,
        "applied {} ms before its lease ran out",
        leased_until - processed
    );
    assert_eq!(
        s.get_json("/v1/users/user_l", None).await.1["first_name"],
        "Lee"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_again_sqlite() {
    an_expired_lease_is_taken_again(sqlite_server(|c| c.max_concurrent = 2).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_again_postgres() {
    let Some(s) = postgres_server(|_| {}).await else {
        return;
    };
    an_expired_lease_is_taken_again(s).await;
}

/// Out-of-order, duplicated deliveries spread over many workers still converge
/// to what the generator expects (events of one entity apply one at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shuffled_stream_converges_with_sixteen_workers_sqlite() {
    let s = sqlite_server(|c| {
        c.max_concurrent = 16;
        c.batch_max = 8;
    })
    .await;
    crate::apply::loadgen_stream_converges(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shuffled_stream_converges_with_sixteen_workers_postgres() {
    let Some(s) = postgres_server(|c| {
        c.max_concurrent = 16;
        c.batch_max = 8;
    })
    .await
    else {
        return;
    };
    crate::apply::loadgen_stream_converges(&s).await;
}

#[test]
fn a_bad_lease_setting_is_a_clear_error() {
    for bad in [0.0, -1.0, f64::NAN, 1e9] {
        let err = clerksync::config::Config::from_settings(clerksync::config::Settings {
            webhook_secret: Some(crate::helpers::whsec(crate::helpers::TEST_KEY)),
            lease_secs: Some(bad),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("CLERKSYNC_LEASE_SECS"),
            "{bad}: {err}"
        );
    }
}

/// PostgreSQL's statistics follow tables that grow from empty (a fresh
/// deployment, a replay) without waiting for autovacuum's minute.
#[tokio::test]
async fn grown_tables_are_analyzed_once_postgres() {
    let Some((db, _schema)) = crate::backends::postgres_db().await else {
        return;
    };
    let clerksync::store::db::Database::Postgres(pool) = &db else {
        unreachable!()
    };
    use clerksync::store::maintenance::analyze_grown_tables;
    // Whatever the migrations left to analyze, then nothing.
    analyze_grown_tables(pool).await.unwrap();
    assert!(analyze_grown_tables(pool).await.unwrap().is_empty());
    sqlx::query(
        "INSERT INTO users (id, version, version_key, synced_at) \
         SELECT 'user_' || g, 1, 'k', 0 FROM generate_series(1, 2000) g",
    )
    .execute(pool)
    .await
    .unwrap();
    // pg_stat counters are flushed by the backend at the end of a transaction,
    // and read through a snapshot: give them a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let analyzed = loop {
        let a = analyze_grown_tables(pool).await.unwrap();
        if !a.is_empty() || std::time::Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(analyzed, vec!["users".to_string()]);
    assert!(analyze_grown_tables(pool).await.unwrap().is_empty());
    let tuples: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = 'users'::regclass")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(tuples, 2000.0);
}

/// Raw bodies are stored compressed and read back whole; past the raw-body
/// retention an applied delivery loses its body but keeps its inbox row (so a
/// redelivery is still deduplicated), while a dead letter keeps its body for a
/// retry, and `replay --since` re-queues only deliveries that still have one.
async fn raw_bodies_expire_after_apply(s: Server) {
    poison(&s, "POISON").await;
    s.post("msg_b1", &user("user_b", "Bea", 1)).await;
    s.post("msg_b2", &user("user_b", "Bo", 2)).await;
    s.post("msg_b3", &user("user_c", "POISON", 1)).await;
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'done'", 2)
        .await;
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'dead'", 1)
        .await;
    // Compressed at rest, whole when read.
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM inbox_bodies WHERE body_zstd IS NOT NULL")
            .await,
        3
    );
    assert_eq!(
        status(&s, "msg_b2").await["body"]["data"]["first_name"],
        "Bo"
    );

    // Not yet past the retention: nothing goes.
    let now_ms = crate::helpers::system_now_secs() * 1000;
    let past = now_ms - 60_000;
    let kept = clerksync::store::maintenance::expire_bodies(&s.db, 0, past, 1000)
        .await
        .unwrap();
    assert_eq!((kept.deleted, kept.more), (0, false));
    assert_eq!(s.bodies().await.len(), 3);

    // Past it, in steps of one inbox row: the walk resumes where it stopped.
    let future = now_ms + 60_000;
    let (mut after, mut deleted, mut steps) = (0, 0, 0);
    loop {
        let r = clerksync::store::maintenance::expire_bodies(&s.db, after, future, 1)
            .await
            .unwrap();
        deleted += r.deleted;
        after = r.next_after;
        steps += 1;
        if !r.more {
            break;
        }
        assert!(steps < 10, "the walk does not end");
    }
    assert_eq!(deleted, 2);
    let left = s.bodies().await;
    assert_eq!(left.len(), 1, "only the dead letter keeps its body");
    assert!(left[0].contains("POISON"));
    assert_eq!(s.scalar("SELECT COUNT(*) FROM inbox").await, 3);
    let shown = status(&s, "msg_b1").await;
    assert_eq!(shown["status"], "done");
    assert_eq!(shown["body"], "");
    // A redelivery of an expired delivery is still a duplicate.
    assert_eq!(s.post("msg_b1", &user("user_b", "Bea", 1)).await, 200);
    assert_eq!(s.scalar("SELECT COUNT(*) FROM inbox").await, 3);
    // Replay covers only deliveries whose body is kept: none of the applied ones.
    let (queued, _) = clerksync::processor::replay::replay_since(
        s.db.clone(),
        0,
        clerksync::clock::system(),
        Config::for_tests(
            &crate::helpers::whsec(crate::helpers::TEST_KEY),
            "sqlite://unused",
        )
        .processor(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(queued, 0);
    assert_eq!(
        s.get_json("/v1/users/user_b", None).await.1["first_name"],
        "Bo"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bodies_expire_after_apply_sqlite() {
    raw_bodies_expire_after_apply(sqlite_server(dead_at_once).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bodies_expire_after_apply_postgres() {
    if let Some(s) = postgres_server(dead_at_once).await {
        raw_bodies_expire_after_apply(s).await;
    }
}
