//! Event coverage: every event type of `@clerk/backend`'s `WebhookEvent` union
//! (clerk/events.rs `KNOWN`), one real-shaped payload each
//! (tests/fixtures/clerk/), sent as a signed webhook to a server on a random
//! port; after each, the entity it names is stored, updated or deleted as the
//! convergence rules say. On SQLite and PostgreSQL.

use crate::backends::{postgres_server, sqlite_server, Server};
use clerksync::clerk::events::KNOWN;
use clerksync::store::Database;
use serde_json::Value;

fn fixture(event_type: &str) -> Value {
    let p = format!(
        "{}/tests/fixtures/clerk/{event_type}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// What the entity an event names must look like once the event applied.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Live, holding this event's object (every top-level field but the
    /// copies sync refreshes).
    Holds,
    /// A tombstone.
    Deleted,
}

/// The send order, and what each event leaves. Parents come before their
/// children and the organization's deletion comes last, so its cascade can
/// be checked on what the earlier events created.
const ORDER: [(&str, Expect); 45] = [
    ("user.created", Expect::Holds),
    ("user.updated", Expect::Holds),
    ("organization.created", Expect::Holds),
    ("organization.updated", Expect::Holds),
    ("organizationMembership.created", Expect::Holds),
    ("organizationMembership.deleted", Expect::Deleted),
    // Same membership, a later version: a tombstone is final.
    ("organizationMembership.updated", Expect::Deleted),
    ("organizationInvitation.created", Expect::Holds),
    ("organizationInvitation.accepted", Expect::Holds),
    // A revoked invitation is still an invitation Clerk keeps: an update.
    ("organizationInvitation.revoked", Expect::Holds),
    ("organizationDomain.created", Expect::Holds),
    ("organizationDomain.updated", Expect::Holds),
    ("organizationDomain.deleted", Expect::Deleted),
    ("role.created", Expect::Holds),
    // Same `updated_at` as the create: the later svix-id wins.
    ("role.updated", Expect::Holds),
    ("role.deleted", Expect::Deleted),
    ("permission.created", Expect::Holds),
    ("permission.updated", Expect::Holds),
    ("permission.deleted", Expect::Deleted),
    ("session.created", Expect::Holds),
    // Ended, removed and revoked sessions are status changes, not deletions.
    ("session.ended", Expect::Holds),
    ("session.removed", Expect::Holds),
    ("session.revoked", Expect::Holds),
    ("email.created", Expect::Holds),
    ("sms.created", Expect::Holds),
    ("waitlistEntry.created", Expect::Holds),
    ("waitlistEntry.updated", Expect::Holds),
    ("subscription.created", Expect::Holds),
    ("subscription.updated", Expect::Holds),
    ("subscription.active", Expect::Holds),
    ("subscription.pastDue", Expect::Holds),
    ("subscriptionItem.created", Expect::Holds),
    ("subscriptionItem.updated", Expect::Holds),
    ("subscriptionItem.active", Expect::Holds),
    ("subscriptionItem.canceled", Expect::Holds),
    ("subscriptionItem.upcoming", Expect::Holds),
    ("subscriptionItem.ended", Expect::Holds),
    ("subscriptionItem.abandoned", Expect::Holds),
    ("subscriptionItem.incomplete", Expect::Holds),
    ("subscriptionItem.pastDue", Expect::Holds),
    ("subscriptionItem.freeTrialEnding", Expect::Holds),
    ("paymentAttempt.created", Expect::Holds),
    ("paymentAttempt.updated", Expect::Holds),
    ("user.deleted", Expect::Deleted),
    ("organization.deleted", Expect::Deleted),
];

/// `(deleted, data, user_id, organization_id)` of an entity row, if any.
async fn row(
    s: &Server,
    table: &str,
    id: &str,
) -> Option<(bool, Option<Value>, Option<String>, Option<String>)> {
    let sql = format!(
        "SELECT CASE WHEN deleted THEN 1 ELSE 0 END, data, user_id, organization_id FROM {table} WHERE id = '{id}'"
    );
    type Row = (i32, Option<String>, Option<String>, Option<String>);
    let r: Option<Row> = match &s.db {
        Database::Sqlite(..) => {
            let p = crate::helpers::sqlite_pool(&s.db).await;
            sqlx::query_as(&sql).fetch_optional(&p).await.unwrap()
        }
        Database::Postgres(p) => sqlx::query_as(&sql).fetch_optional(p).await.unwrap(),
    };
    r.map(|(d, data, u, o)| {
        (
            d == 1,
            data.map(|t| serde_json::from_str(&t).unwrap()),
            u,
            o,
        )
    })
}

async fn every_known_event_type_applies(s: &Server) {
    // The send order covers the table exactly.
    let mut names: Vec<&str> = ORDER.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    let mut known: Vec<&str> = KNOWN.iter().map(|e| e.name).collect();
    known.sort_unstable();
    assert_eq!(names, known);

    for (i, (name, expect)) in ORDER.iter().enumerate() {
        let body = fixture(name);
        assert_eq!(body["type"], *name, "the fixture's type");
        let e = KNOWN.iter().find(|e| e.name == *name).unwrap();
        assert_eq!(
            s.post(&format!("msg_ev_{i:03}"), &body).await,
            200,
            "{name}"
        );
        s.settle().await;
        let id = body["data"]["id"].as_str().unwrap();
        let table = e.kind.table();
        let (deleted, data, _, _) = row(s, table, id)
            .await
            .unwrap_or_else(|| panic!("{name}: no {table} row {id}"));
        match expect {
            Expect::Deleted => assert!(deleted, "{name}: {id} is not deleted"),
            Expect::Holds => {
                assert!(!deleted, "{name}: {id} is deleted");
                let stored = data.unwrap();
                for (k, v) in body["data"].as_object().unwrap() {
                    // Sync keeps the membership's copy of its user current.
                    if k == "public_user_data" {
                        continue;
                    }
                    assert_eq!(stored.get(k), Some(v), "{name}: field {k}");
                }
            }
        }
    }
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM inbox WHERE status <> 'done'")
            .await,
        0
    );

    // Billing rows reference their payer: a user, or an organization.
    let sub = fixture("subscription.created");
    let (_, _, user, org) = row(
        s,
        "billing_subscriptions",
        sub["data"]["id"].as_str().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        (user.as_deref(), org),
        (Some("user_29w83sxmDNGwOuEthce5gg56FcC"), None)
    );
    let (_, _, _, org) = row(
        s,
        "billing_subscription_items",
        fixture("subscriptionItem.freeTrialEnding")["data"]["id"]
            .as_str()
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(org.as_deref(), Some("org_29w9IfBrPmcpi0IeBVaKtA7R94W"));

    // The organization's deletion took its children: memberships,
    // invitations, and what it pays for; not its user-paid subscription.
    let gone = |t: &'static str, f: &'static str| async move {
        let id = fixture(f)["data"]["id"].as_str().unwrap().to_string();
        row(s, t, &id).await.unwrap().0
    };
    assert!(gone("memberships", "organizationMembership.created").await);
    assert!(gone("invitations", "organizationInvitation.revoked").await);
    assert!(gone("billing_payment_attempts", "paymentAttempt.updated").await);
    assert!(
        gone(
            "billing_subscription_items",
            "subscriptionItem.freeTrialEnding"
        )
        .await
    );
    assert!(!gone("billing_subscriptions", "subscription.pastDue").await);
    // The subscription item with no payer named belongs to nobody: kept.
    assert!(!gone("billing_subscription_items", "subscriptionItem.abandoned").await);

    // Billing rows are private: the read API has no route to them and the
    // change feed puts them on no user or organization topic.
    assert_eq!(
        s.scalar(
            "SELECT COUNT(*) FROM change_feed WHERE kind IN ('subscription', 'subscription_item', 'payment_attempt') AND (user_id IS NOT NULL OR organization_id IS NOT NULL)"
        )
        .await,
        0
    );
    assert!(
        s.scalar("SELECT COUNT(*) FROM change_feed WHERE kind = 'subscription_item'")
            .await
            > 0
    );
    // Known types are counted under their own name.
    let text = s.metrics_text().await;
    assert!(
        text.contains(r#"event_type="subscriptionItem.freeTrialEnding""#),
        "{text}"
    );
}

#[tokio::test]
async fn every_known_event_type_applies_sqlite() {
    every_known_event_type_applies(&sqlite_server(|_| {}).await).await;
}

#[tokio::test]
async fn every_known_event_type_applies_postgres() {
    if let Some(s) = postgres_server(|_| {}).await {
        every_known_event_type_applies(&s).await;
    }
}

/// A type Clerk adds after the table: of a modelled family it applies as the
/// family's object; of an unknown family it is stored, acknowledged and
/// ignored; both count under the `other` label.
async fn unknown_types_stay_accepted(s: &Server) {
    let mut item = fixture("subscriptionItem.active");
    item["type"] = "subscriptionItem.trialStarted".into();
    item["data"]["status"] = "trialing".into();
    item["timestamp"] = Value::from(item["timestamp"].as_i64().unwrap() + 1);
    let other = serde_json::json!({"type": "agentTask.created", "object": "event", "data": {"id": "agt_1"}});
    assert_eq!(s.post("msg_unknown_1", &item).await, 200);
    assert_eq!(s.post("msg_unknown_2", &other).await, 200);
    s.settle().await;
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM inbox WHERE status = 'done'")
            .await,
        2
    );
    let id = item["data"]["id"].as_str().unwrap();
    let (deleted, data, _, _) = row(s, "billing_subscription_items", id).await.unwrap();
    assert!(!deleted);
    assert_eq!(data.unwrap()["status"], "trialing");
    // Both count under the shared label (known types are labelled by name).
    let text = s.metrics_text().await;
    let counted = |status: &str| {
        crate::helpers::metric_value(
            &text,
            &format!(r#"clerksync_events_processed_total{{event_type="other",status="{status}"}}"#),
        )
    };
    assert_eq!(counted("applied"), Some(1.0));
    assert_eq!(counted("ignored"), Some(1.0));
}

#[tokio::test]
async fn unknown_types_stay_accepted_sqlite() {
    unknown_types_stay_accepted(&sqlite_server(|_| {}).await).await;
}

#[tokio::test]
async fn unknown_types_stay_accepted_postgres() {
    if let Some(s) = postgres_server(|_| {}).await {
        unknown_types_stay_accepted(&s).await;
    }
}
