//! A database written by an older clerksync opens, migrates and carries on:
//! the deliveries it stored are neither lost nor changed.

use crate::backends::{postgres_schema_url, start, SchemaGuard};
use clerksync::config::Token;
use serde_json::json;
use std::borrow::Cow;

const ADMIN: &str = "admin-secret";

/// Runs the migrations up to, not including, the one that moved bodies out of
/// the inbox, and stores one applied and one pending delivery the old way, and
/// the audit and feed rows of a create that named its fields.
async fn old_database<DB>(pool: &sqlx::Pool<DB>, mut migrator: sqlx::migrate::Migrator)
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Connection: sqlx::migrate::Migrate,
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    let before: Vec<_> = migrator
        .migrations
        .iter()
        .take_while(|m| !m.description.contains("inbox bodies"))
        .cloned()
        .collect();
    assert!(
        before.len() < migrator.migrations.len(),
        "no bodies migration found"
    );
    migrator.migrations = Cow::Owned(before);
    migrator.run(pool).await.unwrap();
    // Received now: older rows would lose their bodies to the raw-body
    // retention once applied, and this test reads them back.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (svix_id, first, status) in [
        ("msg_old", "Old", "done"),
        ("msg_new", "Pending", "pending"),
    ] {
        let body = json!({"type": "user.updated", "object": "event", "data": {
            "id": "user_up", "first_name": first, "updated_at": if status == "done" { 1 } else { 2 },
            "email_addresses": [], "phone_numbers": [], "external_accounts": []
        }})
        .to_string();
        sqlx::query(&format!(
            "INSERT INTO inbox (svix_id, event_type, entity_key, svix_timestamp, received_at, body, status) \
             VALUES ('{svix_id}', 'user.updated', 'user_up', 1700000000, {now_ms}, '{body}', '{status}')"
        ))
        .execute(pool)
        .await
        .unwrap();
    }
    for sql in [
        "INSERT INTO audit (svix_id, kind, entity_id, user_id, operation, changes, version, at) \
         VALUES ('msg_old', 'user', 'user_up', 'user_up', 'create', '{\"first_name\":{}}', 1, 1)",
        "INSERT INTO audit (svix_id, kind, entity_id, user_id, operation, changes, version, at) \
         VALUES ('msg_old', 'user', 'user_up', 'user_up', 'update', '{\"x\":{\"before\":1,\"after\":2}}', 1, 1)",
        "INSERT INTO change_feed (kind, entity_id, operation, changed_fields, version, svix_id, committed_at) \
         VALUES ('user', 'user_up', 'create', '[\"first_name\"]', 1, 'msg_old', 1)",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
}

async fn carries_on(s: &crate::backends::Server) {
    // The pending delivery stored before the upgrade is applied after it.
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'done'", 2)
        .await;
    assert_eq!(
        s.get_json("/v1/users/user_up", None).await.1["first_name"],
        "Pending"
    );
    // Bodies stored the old way are still there, byte for byte.
    for (id, first) in [("msg_old", "Old"), ("msg_new", "Pending")] {
        let (code, ev) = s
            .get_json(&format!("/admin/events/{id}"), Some(ADMIN))
            .await;
        assert_eq!(code, 200, "{ev}");
        assert_eq!(ev["body"]["data"]["first_name"], first, "{ev}");
    }
    // A create's audit and feed rows written before migration 0027 named each
    // field: they take the compact form; other operations keep theirs.
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM audit WHERE svix_id = 'msg_old' AND operation = 'create' AND changes = '{}'")
            .await,
        1
    );
    assert_eq!(
        s.scalar(
            "SELECT COUNT(*) FROM audit WHERE operation = 'update' AND changes LIKE '%before%'"
        )
        .await,
        1
    );
    assert_eq!(
        s.scalar(
            "SELECT COUNT(*) FROM change_feed WHERE svix_id = 'msg_old' AND changed_fields = '[]'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_database_from_before_the_bodies_table_upgrades_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    old_database(&pool, clerksync::store::migrations::sqlite()).await;
    pool.close().await;
    let url = format!("sqlite://{}", path.display());
    let s = start(&url, Box::new(dir), |c| {
        c.admin_token = Some(Token::new(ADMIN))
    })
    .await;
    carries_on(&s).await;
}

#[tokio::test]
async fn a_database_from_before_the_bodies_table_upgrades_postgres() {
    let Some((url, schema)) = postgres_schema_url().await else {
        return;
    };
    let guard = SchemaGuard(schema);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    old_database(&pool, clerksync::store::migrations::postgres()).await;
    pool.close().await;
    let s = start(&url, Box::new(guard), |c| {
        c.admin_token = Some(Token::new(ADMIN))
    })
    .await;
    carries_on(&s).await;
}
