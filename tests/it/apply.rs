//! Applying events end to end: webhook in, read API out, on SQLite and PostgreSQL.

use crate::backends::{postgres_server, sqlite_server, Server};
use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let p = format!("{}/tests/fixtures/clerk/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn user(id: &str, first: &str, email: &str, updated_at: i64) -> Value {
    json!({"type": "user.updated", "object": "event", "timestamp": updated_at, "data": {
        "id": id, "object": "user", "first_name": first, "last_name": "Lovelace", "username": null,
        "primary_email_address_id": "idn_1", "private_metadata": {"k": 1},
        "email_addresses": [{"id": "idn_1", "email_address": email, "object": "email_address"}],
        "phone_numbers": [{"id": "idn_p", "phone_number": "+15550001111"}],
        "created_at": 1, "updated_at": updated_at}})
}

fn user_deleted(id: &str, at: i64) -> Value {
    json!({"type": "user.deleted", "object": "event", "timestamp": at, "data": {"deleted": true, "id": id, "object": "user"}})
}

fn membership(id: &str, org: &str, user: &str, role: &str, updated_at: i64) -> Value {
    json!({"type": "organizationMembership.created", "object": "event", "timestamp": updated_at, "data": {
        "id": id, "object": "organization_membership", "role": role,
        "organization": {"id": org, "name": "Acme", "slug": "acme"},
        "public_user_data": {"user_id": user, "first_name": "Old", "identifier": "old@x.io"},
        "created_at": 1, "updated_at": updated_at}})
}

async fn fixtures_are_readable(s: &Server) {
    let names = [
        "organization.created.json",
        "organizationMembership.created.json",
        "user.created.json",
        "user.updated.json",
        "user.deleted.json",
        "role.created.json",
        "session.created.json",
        "organizationInvitation.created.json",
        "permission.created.json",
    ];
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            s.post(&format!("msg_fx_{i:03}"), &fixture(n)).await,
            200,
            "{n}"
        );
    }
    s.settle().await;
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM inbox WHERE status <> 'done'")
            .await,
        0
    );
    let (st, u) = s
        .get_json("/v1/users/user_29w83sxmDNGwOuEthce5gg56FcC", None)
        .await;
    assert_eq!(st, 200, "{u}");
    assert_eq!(u["primary_email_address"], "example@example.org");
    assert_eq!(u["first_name"], "Example");
    // user.deleted fixture: a user we never saw is a tombstone now.
    let (st, g) = s
        .get_json("/v1/users/user_29wBMCtzATuFJut8jO2VNTVekS4", None)
        .await;
    assert_eq!(
        (st.as_u16(), g),
        (
            410,
            json!({"id": "user_29wBMCtzATuFJut8jO2VNTVekS4", "deleted": true})
        )
    );
    assert_eq!(s.get_json("/v1/users/user_never", None).await.0, 404);
    let (st, m) = s
        .get_json(
            "/v1/organizations/org_29w9IfBrPmcpi0IeBVaKtA7R94W/memberships",
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        m["data"][0]["role"], "org:admin",
        "legacy `admin` reads as org:admin: {m}"
    );
    assert_eq!(m["data"][0]["user_id"], "user_29w83sxmDNGwOuEthce5gg56FcC");
    assert_eq!(
        m["data"][0]["organization_id"],
        "org_29w9IfBrPmcpi0IeBVaKtA7R94W"
    );
    // The membership's copy of the user's public data follows the synced user.
    assert_eq!(
        m["data"][0]["public_user_data"]["identifier"],
        "example@example.org"
    );
    let (st, orgs) = s
        .get_json(
            "/v1/users/user_29w83sxmDNGwOuEthce5gg56FcC/organizations",
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(orgs["data"][0]["name"], "Acme Inc");
    assert_eq!(orgs["data"][0]["role"], "org:admin");
}

#[tokio::test]
async fn fixtures_are_readable_sqlite() {
    fixtures_are_readable(&sqlite_server(|_| {}).await).await;
}

#[tokio::test]
async fn fixtures_are_readable_postgres() {
    if let Some(s) = postgres_server(|_| {}).await {
        fixtures_are_readable(&s).await;
    }
}

/// A user update that changes only activity stamps (`last_active_at`,
/// `last_sign_in_at`, `updated_at`) writes the user row and a small audit and
/// feed row and leaves memberships alone; the next real change still reaches
/// them. Audit rows hold a create's field names and, for an object field, only
/// the members that changed.
async fn activity_only_updates_and_compact_audit(s: &Server) {
    // The organization, so its membership list can be read.
    let org = json!({"type": "organization.created", "data": {"id": "org_t", "name": "Acme", "slug": "acme", "updated_at": 1}});
    s.post("msg_t0", &org).await;
    s.post("msg_t1", &user("user_t", "Tia", "t@x.io", 100))
        .await;
    // The user first: a membership applied before it would get a refresh row.
    s.settle().await;
    s.post(
        "msg_t2",
        &membership("orgmem_t", "org_t", "user_t", "admin", 100),
    )
    .await;
    s.settle().await;
    let activity = |at: i64| {
        let mut u = user("user_t", "Tia", "t@x.io", at);
        u["data"]["last_active_at"] = json!(at);
        u["data"]["last_sign_in_at"] = json!(at - 1);
        u
    };
    s.post("msg_t3", &activity(200)).await;
    s.post("msg_t4", &activity(300)).await;
    // An older activity update after a newer one changes nothing.
    s.post("msg_t5", &activity(250)).await;
    s.settle().await;
    let (_, u) = s.get_json("/v1/users/user_t", None).await;
    assert_eq!(u["last_active_at"], 300);
    assert_eq!(u["updated_at"], 300);
    let (_, audit) = s.get_json("/v1/audit?entity_id=user_t", None).await;
    let rows = audit["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{audit}");
    assert_eq!(rows[0]["operation"], "create");
    // A create stores no field list, in the audit as in the feed: every field is new.
    assert_eq!(rows[0]["changes"], json!({}), "{audit}");
    assert_eq!(
        s.scalar(
            "SELECT COUNT(*) FROM change_feed WHERE entity_id = 'user_t' \
             AND operation = 'create' AND changed_fields = '[]'"
        )
        .await,
        1
    );
    let keys = |r: &Value| {
        let mut k: Vec<String> = r["changes"].as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&rows[1]),
        ["last_active_at", "last_sign_in_at", "updated_at"]
    );
    assert_eq!(
        rows[2]["changes"]["last_active_at"],
        json!({"before": 200, "after": 300})
    );
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM audit WHERE entity_id = 'orgmem_t'")
            .await,
        1,
        "activity stamps touch no membership"
    );
    // A real change refreshes the membership's copy; its audit keeps the member that changed.
    s.post("msg_t6", &user("user_t", "Tara", "t@x.io", 400))
        .await;
    s.settle().await;
    let (_, m) = s
        .get_json("/v1/organizations/org_t/memberships", None)
        .await;
    assert_eq!(
        m["data"][0]["public_user_data"]["first_name"], "Tara",
        "{m}"
    );
    let (_, audit) = s.get_json("/v1/audit?entity_id=orgmem_t", None).await;
    let refresh = &audit["data"][1];
    assert_eq!(refresh["operation"], "refresh", "{audit}");
    assert_eq!(
        refresh["changes"]["public_user_data.first_name"],
        json!({"before": "Tia", "after": "Tara"})
    );
    assert!(
        refresh["changes"].get("public_user_data").is_none(),
        "{refresh}"
    );
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM change_feed").await,
        s.scalar("SELECT COUNT(*) FROM audit").await,
        "one feed row per effective change"
    );
}

#[tokio::test]
async fn activity_only_updates_and_compact_audit_sqlite() {
    activity_only_updates_and_compact_audit(&sqlite_server(|_| {}).await).await;
}

#[tokio::test]
async fn activity_only_updates_and_compact_audit_postgres() {
    if let Some(s) = postgres_server(|_| {}).await {
        activity_only_updates_and_compact_audit(&s).await;
    }
}

async fn lifecycle_audit_cascade(s: &Server) {
    let org = json!({"type": "organization.created", "data": {"id": "org_a", "name": "Acme", "slug": "acme", "updated_at": 1}});
    s.post("msg_a00", &org).await;
    s.post("msg_a1", &user("user_a", "Ada", "ada@x.io", 100))
        .await;
    s.post(
        "msg_a2",
        &membership("orgmem_a", "org_a", "user_a", "org:member", 50),
    )
    .await;
    s.post("msg_a3", &user("user_a", "Ada B", "ada@x.io", 200))
        .await;
    // Stale (older updated_at) and a no-op replay of the same state under a new id.
    s.post("msg_a4", &user("user_a", "Stale", "stale@x.io", 150))
        .await;
    s.post("msg_a0", &user("user_a", "Ada B", "ada@x.io", 200))
        .await;
    // The same state again under a greater id: it wins the tie, and writes the
    // record it already holds (no audit, email kept).
    s.post("msg_a3z", &user("user_a", "Ada B", "ada@x.io", 200))
        .await;
    s.settle().await;
    let (_, u) = s.get_json("/v1/users/user_a", None).await;
    assert_eq!(u["first_name"], "Ada B");
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM user_emails WHERE user_id = 'user_a' AND email_address = 'ada@x.io'")
            .await,
        1
    );
    let (_, audit) = s.get_json("/v1/audit?entity_id=user_a", None).await;
    let ops: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        ["create", "update"],
        "stale and no-op events audit nothing: {audit}"
    );
    assert_eq!(
        audit["data"][1]["changes"]["first_name"],
        json!({"before": "Ada", "after": "Ada B"})
    );
    let (_, m) = s
        .get_json("/v1/organizations/org_a/memberships", None)
        .await;
    assert_eq!(m["data"][0]["public_user_data"]["first_name"], "Ada B");
    // Delete: tombstone, archive, cascade to memberships, and nothing resurrects it.
    s.post("msg_a5", &user_deleted("user_a", 300)).await;
    s.post("msg_a6", &user("user_a", "Zombie", "z@x.io", 400))
        .await;
    s.post(
        "msg_a7",
        &membership("orgmem_b", "org_a", "user_a", "org:member", 500),
    )
    .await;
    s.settle().await;
    assert_eq!(s.get_json("/v1/users/user_a", None).await.0, 410);
    let (_, m) = s
        .get_json("/v1/organizations/org_a/memberships", None)
        .await;
    assert_eq!(
        m["data"],
        json!([]),
        "memberships of a deleted user are gone: {m}"
    );
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM archive WHERE entity_id = 'user_a'")
            .await,
        1
    );
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM user_emails WHERE user_id = 'user_a'")
            .await,
        0
    );
    let feed = s.scalar("SELECT COUNT(*) FROM change_feed").await;
    let audits = s.scalar("SELECT COUNT(*) FROM audit").await;
    assert_eq!(feed, audits, "one feed row per effective change");
    // Erasure after retention: nothing of the user's name or email anywhere.
    let report = clerksync::sync::erasure::purge_expired(&s.db, i64::MAX)
        .await
        .unwrap();
    assert_eq!(report.users_erased, 1);
    for t in [
        "inbox",
        "inbox_bodies",
        "users",
        "memberships",
        "archive",
        "audit",
        "change_feed",
        "user_emails",
    ] {
        for needle in ["ada@x.io", "Ada B", "Lovelace", "+15550001111"] {
            let sql =
                format!("SELECT COUNT(*) FROM {t} WHERE CAST({t}.* AS TEXT) LIKE '%{needle}%'");
            let sql = match &s.db {
                clerksync::store::Database::Sqlite(..) => format!(
                    "SELECT COUNT(*) FROM {t} WHERE instr((SELECT group_concat(x) FROM (SELECT quote({cols}) AS x)), '{needle}') > 0",
                    cols = sqlite_cols(t)
                ),
                clerksync::store::Database::Postgres(_) => sql.replace(&format!("CAST({t}.* AS TEXT)"), &format!("{t}::text")),
            };
            assert_eq!(s.scalar(&sql).await, 0, "{needle} left in {t}");
        }
    }
    // Stored bodies are compressed: the SQL search above cannot see into them.
    let bodies = s.bodies().await;
    assert!(!bodies.is_empty());
    for needle in ["ada@x.io", "Ada B", "Lovelace", "+15550001111"] {
        assert!(
            !bodies.iter().any(|b| b.contains(needle)),
            "{needle} left in a body"
        );
    }
}

/// Every column of a table, concatenated, for a text search on SQLite.
fn sqlite_cols(t: &str) -> &'static str {
    match t {
        "inbox" => "svix_id || coalesce(last_error, '')",
        "inbox_bodies" => "body",
        "users" | "memberships" => "coalesce(data, '')",
        "archive" => "coalesce(data, '')",
        "audit" => "changes",
        "change_feed" => "changed_fields",
        "user_emails" => "email_address",
        _ => "''",
    }
}

#[tokio::test]
async fn lifecycle_audit_cascade_sqlite() {
    lifecycle_audit_cascade(&sqlite_server(|_| {}).await).await;
}

#[tokio::test]
async fn lifecycle_audit_cascade_postgres() {
    if let Some(s) = postgres_server(|_| {}).await {
        lifecycle_audit_cascade(&s).await;
    }
}

#[tokio::test]
async fn invalid_data_fails_readably_and_touches_nothing() {
    let s = sqlite_server(|c| c.max_attempts = 2).await;
    let no_id = json!({"type": "user.created", "object": "event", "data": {"first_name": "x"}});
    let wrong = json!({"type": "user.updated", "object": "event", "data": {"id": "user_w", "first_name": 42}});
    let no_org = json!({"type": "organizationMembership.created", "data": {"id": "orgmem_x", "public_user_data": {"user_id": "u"}}});
    for (i, b) in [no_id, wrong, no_org].iter().enumerate() {
        assert_eq!(
            s.post(&format!("msg_bad_{i}"), b).await,
            200,
            "ingress accepts a well-formed envelope"
        );
    }
    s.post("msg_ok", &user("user_ok", "Fine", "f@x.io", 5))
        .await;
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'dead'", 3)
        .await;
    s.settle().await;
    let (st, ev) = s.get_json("/v1/users/user_ok", None).await;
    assert_eq!(st, 200, "events behind a bad one still apply: {ev}");
    let errors: Vec<String> = match &s.db {
        clerksync::store::Database::Sqlite(..) => {
            let p = &crate::helpers::sqlite_pool(&s.db).await;
            sqlx::query_scalar("SELECT last_error FROM inbox WHERE status = 'dead' ORDER BY seq")
                .fetch_all(p)
                .await
                .unwrap()
        }
        _ => unreachable!(),
    };
    assert!(errors[0].contains("data.id"), "{errors:?}");
    assert!(errors[1].contains("first_name"), "{errors:?}");
    assert!(errors[2].contains("organization"), "{errors:?}");
    assert_eq!(s.scalar("SELECT COUNT(*) FROM users").await, 1);
    assert_eq!(s.scalar("SELECT COUNT(*) FROM audit").await, 1);
}

async fn injected_failure_leaves_no_trace(s: &Server, trigger: &[&str], drop: &str) {
    for t in trigger {
        s.exec(t).await;
    }
    assert_eq!(
        s.post("msg_p1", &user("user_poison", "P", "p@x.io", 5))
            .await,
        200
    );
    s.wait_for(
        "SELECT COUNT(*) FROM inbox WHERE status = 'failed' AND last_error LIKE '%injected%'",
        1,
    )
    .await;
    for t in ["users", "audit", "change_feed", "user_emails"] {
        assert_eq!(
            s.scalar(&format!("SELECT COUNT(*) FROM {t}")).await,
            0,
            "partial rows in {t}"
        );
    }
    s.exec(drop).await;
    // The retry (after backoff) applies it whole.
    s.settle().await;
    assert_eq!(s.get_json("/v1/users/user_poison", None).await.0, 200);
    assert_eq!(s.scalar("SELECT COUNT(*) FROM audit").await, 1);
    assert_eq!(s.scalar("SELECT COUNT(*) FROM change_feed").await, 1);
}

#[tokio::test]
async fn injected_failure_leaves_no_trace_sqlite() {
    let s = sqlite_server(|_| {}).await;
    injected_failure_leaves_no_trace(
        &s,
        &["CREATE TRIGGER fail_feed BEFORE INSERT ON change_feed WHEN NEW.entity_id = 'user_poison' \
           BEGIN SELECT RAISE(ABORT, 'injected failure'); END"],
        "DROP TRIGGER fail_feed",
    )
    .await;
}

#[tokio::test]
async fn injected_failure_leaves_no_trace_postgres() {
    let Some(s) = postgres_server(|_| {}).await else {
        return;
    };
    injected_failure_leaves_no_trace(
        &s,
        &[
            "CREATE FUNCTION fail_feed() RETURNS trigger AS $$ BEGIN \
             IF NEW.entity_id = 'user_poison' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER fail_feed BEFORE INSERT ON change_feed FOR EACH ROW EXECUTE FUNCTION fail_feed()",
        ],
        "DROP TRIGGER fail_feed ON change_feed",
    )
    .await;
}

#[tokio::test]
async fn wait_ms_returns_once_the_webhook_is_applied() {
    let s = sqlite_server(|_| {}).await;
    let url = s.url("/v1/users/user_late?wait_ms=20000");
    let client = s.client.clone();
    let waiter = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the request is held until the user is synced"
    );
    s.post("msg_late", &user("user_late", "Late", "l@x.io", 7))
        .await;
    let resp = waiter.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["first_name"], "Late");
    // min_updated_at: an older copy is not enough until the newer one lands.
    let url = s.url("/v1/users/user_late?wait_ms=20000&min_updated_at=9");
    let client = s.client.clone();
    let waiter = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    s.post("msg_late2", &user("user_late", "Later", "l@x.io", 9))
        .await;
    assert_eq!(
        waiter.await.unwrap().json::<Value>().await.unwrap()["first_name"],
        "Later"
    );
    // Never seen, short wait: 404.
    assert_eq!(
        s.get_json("/v1/users/user_none?wait_ms=50", None).await.0,
        404
    );
}

#[tokio::test]
async fn read_api_token_pagination_and_bad_params() {
    let s =
        sqlite_server(|c| c.api_token = Some(clerksync::config::Token::new("read-token"))).await;
    for i in 0..7 {
        s.post(
            &format!("msg_pg_{i}"),
            &user(&format!("user_{i}"), "N", &format!("{i}@x.io"), 1),
        )
        .await;
    }
    s.settle().await;
    assert_eq!(s.get_json("/v1/users", None).await.0, 401);
    assert_eq!(s.get_json("/v1/users", Some("wrong")).await.0, 401);
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let (st, page) = s
            .get_json(
                &format!("/v1/users?limit=3&cursor={cursor}"),
                Some("read-token"),
            )
            .await;
        assert_eq!(st, 200);
        ids.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(ids.len(), 7);
    for bad in [
        "/v1/users?limit=0",
        "/v1/users?limit=100000",
        "/v1/users?cursor=%%%",
        "/v1/users?limit=abc",
        "/v1/audit",
    ] {
        let (st, body) = s.get_json(bad, Some("read-token")).await;
        assert_eq!(st, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let long = "x".repeat(10_000);
    assert_eq!(
        s.get_json(&format!("/v1/users/{long}"), Some("read-token"))
            .await
            .0,
        400
    );
}

use crate::helpers::loadgen_args;

/// A disordered (10%) and duplicated (5%) loadgen stream through the HTTP
/// ingress reaches exactly the `--expect` state.
pub(crate) async fn loadgen_stream_converges(s: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let expect = dir.path().join("expect.json");
    let url = s.url("/webhooks/clerk");
    let secret = crate::helpers::whsec(crate::helpers::TEST_KEY);
    let expect_s = expect.display().to_string();
    let send = loadgen_args(&[
        "--url",
        &url,
        "--secret",
        &secret,
        "--events",
        "1500",
        "--seed",
        "5",
        "--out-of-order",
        "0.1",
        "--duplicates",
        "0.05",
        "--connections",
        "8",
        "-q",
        "--expect",
        &expect_s,
    ]);
    clerksync_loadgen::run(send)
        .await
        .expect("every delivery acknowledged");
    s.settle().await;
    let check = loadgen_args(&["--url", &url, "--check", &expect_s]);
    let report = clerksync_loadgen::run(check)
        .await
        .expect("store matches --expect");
    assert!(report.contains("entities match"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_stream_converges_sqlite() {
    loadgen_stream_converges(&sqlite_server(|_| {}).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_stream_converges_postgres() {
    if let Some(s) = postgres_server(|_| {}).await {
        loadgen_stream_converges(&s).await;
    }
}

/// The change feed is pruned past its retention, but never ahead of a consumer:
/// an entry some consumer has not handled stays, however old.
async fn feed_pruning_waits_for_every_consumer(s: &Server) {
    use clerksync::store::maintenance::{oldest_feed_seq, prune_feed};
    for i in 0..5 {
        s.post(
            &format!("msg_fp{i}"),
            &user(&format!("user_fp{i}"), "Fp", "fp@x.io", 100 + i),
        )
        .await;
    }
    s.settle().await;
    let head = s.scalar("SELECT MAX(seq) FROM change_feed").await;
    assert_eq!(s.scalar("SELECT COUNT(*) FROM change_feed").await, 5);
    // A consumer that has read only the first entry (stopped, or slow).
    s.exec("INSERT INTO feed_checkpoints (consumer, seq, updated_at) VALUES ('laggard', 0, 0)")
        .await;
    let first = oldest_feed_seq(&s.db).await.unwrap();
    s.exec(&format!(
        "UPDATE feed_checkpoints SET seq = {first} WHERE consumer = 'laggard'"
    ))
    .await;
    // The live consumers catch up to the head.
    s.wait_for(
        &format!(
            "SELECT COUNT(*) FROM feed_checkpoints WHERE consumer IN ('cache', 'search') AND seq = {head}"
        ),
        // The consumers with a checkpoint: cache and search (search registers
        // after it has reconciled its index, so count them by name).
        2,
    )
    .await;
    // Nothing is past a retention that starts now.
    assert_eq!(prune_feed(&s.db, 0, 1000).await.unwrap(), 0);
    // Past retention: only what the laggard has read goes.
    assert_eq!(prune_feed(&s.db, i64::MAX, 1000).await.unwrap(), 1);
    assert_eq!(s.scalar("SELECT COUNT(*) FROM change_feed").await, 4);
    // Once it catches up, the rest goes too.
    s.exec(&format!(
        "UPDATE feed_checkpoints SET seq = {head} WHERE consumer = 'laggard'"
    ))
    .await;
    // All but the head, which realtime clients resume against.
    assert_eq!(prune_feed(&s.db, i64::MAX, 1000).await.unwrap(), 3);
    assert_eq!(oldest_feed_seq(&s.db).await.unwrap(), head);
    // New entries keep counting from where the feed was.
    s.post("msg_fp9", &user("user_fp9", "Fp", "fp9@x.io", 200))
        .await;
    s.settle().await;
    assert!(s.scalar("SELECT MAX(seq) FROM change_feed").await > head);
    assert_eq!(s.scalar("SELECT MIN(seq) FROM change_feed").await, head);
}

#[tokio::test]
async fn feed_pruning_waits_for_every_consumer_sqlite() {
    feed_pruning_waits_for_every_consumer(&sqlite_server(|_| {}).await).await;
}

#[tokio::test]
async fn feed_pruning_waits_for_every_consumer_postgres() {
    if let Some(s) = postgres_server(|_| {}).await {
        feed_pruning_waits_for_every_consumer(&s).await;
    }
}
