//! The admin API: disabled without a token, stats, dead letters, retry, discard.

use crate::backends::sqlite_server;
use clerksync::config::Token;
use serde_json::json;

#[tokio::test]
async fn admin_is_404_when_no_token_is_configured() {
    let s = sqlite_server(|_| {}).await;
    assert_eq!(s.get_json("/admin/stats", None).await.0, 404);
    assert_eq!(s.get_json("/admin/stats", Some("anything")).await.0, 404);
}

#[tokio::test]
async fn dead_letter_found_fixed_and_retried() {
    let s = sqlite_server(|c| {
        c.admin_token = Some(Token::new("admin-secret"));
        c.max_attempts = 1;
    })
    .await;
    let t = Some("admin-secret");
    let (st, body) = s.get_json("/admin/stats", Some("wrong")).await;
    assert_eq!(st, 401);
    assert!(!body.to_string().contains("admin-secret"));

    // A poisoned event: the database refuses it (a trigger stands in for a bad migration).
    s.exec(
        "CREATE TRIGGER poison BEFORE INSERT ON users WHEN NEW.id = 'user_dead' \
         BEGIN SELECT RAISE(ABORT, 'column too narrow'); END",
    )
    .await;
    let ev = |id: &str, v: i64| json!({"type": "user.updated", "data": {"id": id, "first_name": "D", "updated_at": v}});
    s.post("msg_dead", &ev("user_dead", 1)).await;
    s.post("msg_after", &ev("user_dead", 2)).await;
    s.post("msg_other", &ev("user_other", 1)).await;
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'dead'", 2)
        .await;
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'done'", 1)
        .await;

    let (st, stats) = s.get_json("/admin/stats", t).await;
    assert_eq!(st, 200);
    assert_eq!(stats["received"], 3);
    assert_eq!(stats["dead"], 2);
    assert_eq!(stats["processed"], 1);
    assert_eq!(stats["pending"], 0);

    let (_, list) = s.get_json("/admin/events?status=dead", t).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert!(list["data"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("column too narrow"));
    let (_, one) = s.get_json("/admin/events/msg_dead", t).await;
    assert_eq!(one["body"]["data"]["id"], "user_dead");
    assert_eq!(one["status"], "dead");
    let (_, by_entity) = s.get_json("/admin/events?entity=user_other", t).await;
    assert_eq!(by_entity["data"].as_array().unwrap().len(), 1);
    assert_eq!(s.get_json("/admin/events?status=bogus", t).await.0, 400);
    assert_eq!(s.get_json("/admin/events/msg_nope", t).await.0, 404);

    // Fix the cause, retry one, discard the other.
    s.exec("DROP TRIGGER poison").await;
    assert_eq!(s.post_json("/admin/events/msg_dead/retry", t).await.0, 200);
    assert_eq!(
        s.post_json("/admin/events/msg_after/discard", t).await.0,
        200
    );
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'done'", 2)
        .await;
    let (_, u) = s.get_json("/v1/users/user_dead", None).await;
    assert_eq!(u["updated_at"], 1);
    // A processed event cannot be retried or discarded.
    assert_eq!(s.post_json("/admin/events/msg_dead/retry", t).await.0, 409);
    assert_eq!(
        s.post_json("/admin/events/msg_dead/discard", t).await.0,
        409
    );
    // Retry all dead: the discarded one can be brought back by name, then applied.
    assert_eq!(s.post_json("/admin/events/msg_after/retry", t).await.0, 200);
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'done'", 3)
        .await;
    assert_eq!(
        s.get_json("/v1/users/user_dead", None).await.1["updated_at"],
        2
    );
    let (st, r) = s.post_json("/admin/events/retry-dead", t).await;
    assert_eq!((st.as_u16(), r), (200, json!({"queued": 0})));
}
