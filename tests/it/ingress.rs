//! Genuine deliveries: every Clerk fixture, duplicates, concurrency, unknown types.

use crate::helpers::{sign, status_json, user_event, whsec, Options, TestApp};
use reqwest::StatusCode;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clerk");

const ORG: &str = "org_29w9IfBrPmcpi0IeBVaKtA7R94W";
const USER: &str = "user_29w83sxmDNGwOuEthce5gg56FcC";

/// Every fixture with the event type and the entity key (partition) it must be
/// stored under: the user for user-scoped events, the organization for
/// organization-scoped ones (memberships, invitations and domains included),
/// else the object itself (Billing objects too: clerk/kind.rs `billing`).
const EXPECTED: &[(&str, &str, &str)] = &[
    ("organization.created.json", "organization.created", ORG),
    ("organization.deleted.json", "organization.deleted", ORG),
    ("organization.updated.json", "organization.updated", ORG),
    (
        "organizationInvitation.accepted.json",
        "organizationInvitation.accepted",
        ORG,
    ),
    (
        "organizationInvitation.created.json",
        "organizationInvitation.created",
        ORG,
    ),
    (
        "organizationInvitation.revoked.json",
        "organizationInvitation.revoked",
        ORG,
    ),
    (
        "organizationMembership.created.json",
        "organizationMembership.created",
        ORG,
    ),
    (
        "organizationMembership.deleted.json",
        "organizationMembership.deleted",
        ORG,
    ),
    (
        "organizationMembership.updated.json",
        "organizationMembership.updated",
        ORG,
    ),
    (
        "permission.created.json",
        "permission.created",
        "perm_2Ym16qDMKg37umUxkqDlizY7dfi",
    ),
    (
        "permission.deleted.json",
        "permission.deleted",
        "perm_2Ym16qDMKg37umUxkqDlizY7dfi",
    ),
    (
        "permission.updated.json",
        "permission.updated",
        "perm_2Ym16qDMKg37umUxkqDlizY7dfi",
    ),
    (
        "role.created.json",
        "role.created",
        "role_2Ym4Iu9JcfMpa4wsTmsRgnY83MX",
    ),
    (
        "role.deleted.json",
        "role.deleted",
        "role_2Ym4Iu9JcfMpa4wsTmsRgnY83MX",
    ),
    (
        "role.updated.json",
        "role.updated",
        "role_2Ym4Iu9JcfMpa4wsTmsRgnY83MX",
    ),
    (
        "session.created.json",
        "session.created",
        "user_29wBMCtzATuFJut8jO2VNTVekS4",
    ),
    (
        "session.ended.json",
        "session.ended",
        "user_29wBMCtzATuFJut8jO2VNTVekS4",
    ),
    (
        "session.removed.json",
        "session.removed",
        "user_29wACSk1DjeUCwsS6SbbgIgilMy",
    ),
    (
        "session.revoked.json",
        "session.revoked",
        "user_29wACSk1DjeUCwsS6SbbgIgilMy",
    ),
    (
        "user.created.json",
        "user.created",
        "user_29w83sxmDNGwOuEthce5gg56FcC",
    ),
    (
        "user.deleted.json",
        "user.deleted",
        "user_29wBMCtzATuFJut8jO2VNTVekS4",
    ),
    (
        "user.updated.json",
        "user.updated",
        "user_29w83sxmDNGwOuEthce5gg56FcC",
    ),
    (
        "organizationDomain.created.json",
        "organizationDomain.created",
        ORG,
    ),
    (
        "organizationDomain.updated.json",
        "organizationDomain.updated",
        ORG,
    ),
    // A deleted object names no organization: its own id.
    (
        "organizationDomain.deleted.json",
        "organizationDomain.deleted",
        "orgdmn_2xJ4kVf7nQeP0sLbW3cYzRtUaHm",
    ),
    ("email.created.json", "email.created", USER),
    ("sms.created.json", "sms.created", USER),
    (
        "waitlistEntry.created.json",
        "waitlistEntry.created",
        "wle_2xJ6aB4cD5eF6gH7iJ8kL9mN0pQ",
    ),
    (
        "waitlistEntry.updated.json",
        "waitlistEntry.updated",
        "wle_2xJ6aB4cD5eF6gH7iJ8kL9mN0pQ",
    ),
    (
        "subscription.active.json",
        "subscription.active",
        "csub_2xJ9aSuBsCrIpTiOnAaBbCcDdEe",
    ),
    (
        "subscription.created.json",
        "subscription.created",
        "csub_2xJ9aSuBsCrIpTiOnAaBbCcDdEe",
    ),
    (
        "subscription.pastDue.json",
        "subscription.pastDue",
        "csub_2xJ9aSuBsCrIpTiOnAaBbCcDdEe",
    ),
    (
        "subscription.updated.json",
        "subscription.updated",
        "csub_2xJ9aSuBsCrIpTiOnAaBbCcDdEe",
    ),
    (
        "subscriptionItem.abandoned.json",
        "subscriptionItem.abandoned",
        "csubi_2xJ8cItEmCCcDdEeFfGgHhIiJj",
    ),
    (
        "subscriptionItem.active.json",
        "subscriptionItem.active",
        "csubi_2xJ8bItEmBBbCcDdEeFfGgHhIi",
    ),
    (
        "subscriptionItem.canceled.json",
        "subscriptionItem.canceled",
        "csubi_2xJ8aItEmAAaBbCcDdEeFfGgHh",
    ),
    (
        "subscriptionItem.created.json",
        "subscriptionItem.created",
        "csubi_2xJ8aItEmAAaBbCcDdEeFfGgHh",
    ),
    (
        "subscriptionItem.ended.json",
        "subscriptionItem.ended",
        "csubi_2xJ8aItEmAAaBbCcDdEeFfGgHh",
    ),
    (
        "subscriptionItem.freeTrialEnding.json",
        "subscriptionItem.freeTrialEnding",
        "csubi_2xJ8eItEmEEeFfGgHhIiJjKkLl",
    ),
    (
        "subscriptionItem.incomplete.json",
        "subscriptionItem.incomplete",
        "csubi_2xJ8dItEmDDdEeFfGgHhIiJjKk",
    ),
    (
        "subscriptionItem.pastDue.json",
        "subscriptionItem.pastDue",
        "csubi_2xJ8bItEmBBbCcDdEeFfGgHhIi",
    ),
    (
        "subscriptionItem.upcoming.json",
        "subscriptionItem.upcoming",
        "csubi_2xJ8cItEmCCcDdEeFfGgHhIiJj",
    ),
    (
        "subscriptionItem.updated.json",
        "subscriptionItem.updated",
        "csubi_2xJ8aItEmAAaBbCcDdEeFfGgHh",
    ),
    (
        "paymentAttempt.created.json",
        "paymentAttempt.created",
        "cpayatt_2xJ9dAtTeMpTaAbBcCdDeEfF",
    ),
    (
        "paymentAttempt.updated.json",
        "paymentAttempt.updated",
        "cpayatt_2xJ9dAtTeMpTaAbBcCdDeEfF",
    ),
    (
        "variants/user.created.clerk-docs-2024-04.json",
        "user.created",
        "user_29w83sxmDNGwOuEthce5gg56FcC",
    ),
    (
        "variants/user.created.clerk-docs-overview.json",
        "user.created",
        "user_29w83sxmDNGwOuEthce5gg56FcC",
    ),
];

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("fixtures dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

#[tokio::test]
async fn every_clerk_fixture_is_accepted_and_stored_under_its_entity() {
    let mut files = Vec::new();
    json_files(Path::new(FIXTURES), &mut files);
    let on_disk: HashSet<String> = files
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(FIXTURES).unwrap();
            rel.to_string_lossy().replace('\\', "/")
        })
        .collect();
    let listed: HashSet<String> = EXPECTED.iter().map(|e| e.0.to_string()).collect();
    assert_eq!(on_disk, listed, "every fixture needs a row in EXPECTED");

    let app = TestApp::spawn().await;
    let mut sent = HashMap::new();
    for (i, (file, _, _)) in EXPECTED.iter().enumerate() {
        let body = std::fs::read(Path::new(FIXTURES).join(file)).unwrap();
        let id = format!("msg_fixture_{i:02}");
        let (status, json) = status_json(app.post_webhook(&id, app.now_secs(), &body).await).await;
        assert_eq!(status, StatusCode::OK, "{file}: {json}");
        assert_eq!(json["status"], "accepted", "{file}");
        sent.insert(id, (file, body));
    }

    let rows = app.inbox_rows().await;
    assert_eq!(rows.len(), EXPECTED.len(), "exactly one row per delivery");
    for row in rows {
        let (file, body) = &sent[&row.svix_id];
        let (_, event_type, key) = EXPECTED.iter().find(|e| e.0 == **file).unwrap();
        assert_eq!(row.event_type, *event_type, "{file}");
        assert_eq!(row.entity_key.as_deref(), Some(*key), "{file}");
        assert_eq!(
            row.body.as_bytes(),
            body.as_slice(),
            "{file}: raw body kept"
        );
        // Stored as received; what the processor has done with it since is
        // the apply tests' business.
        assert!(
            ["pending", "done", "failed", "dead", "discarded"].contains(&row.status.as_str()),
            "{file}: {}",
            row.status
        );
    }
}

#[tokio::test]
async fn a_duplicate_delivery_is_acknowledged_and_stored_once() {
    let app = TestApp::spawn().await;
    let body = user_event("user.created", "user_dup");
    let (status, json) =
        status_json(app.post_webhook("msg_dup", app.now_secs(), &body).await).await;
    assert_eq!(
        (status, json["status"].as_str()),
        (StatusCode::OK, Some("accepted"))
    );
    let (status, json) =
        status_json(app.post_webhook("msg_dup", app.now_secs(), &body).await).await;
    assert_eq!(
        (status, json["status"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    // Svix signs each retry anew, with the attempt's own timestamp.
    let retry = app
        .post_webhook("msg_dup", app.now_secs() - 60, &body)
        .await;
    let (status, json) = status_json(retry).await;
    assert_eq!(
        (status, json["status"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    let rows = app.inbox_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].svix_id, "msg_dup");
}

#[tokio::test]
async fn shutdown_drains_and_keeps_what_was_acknowledged() {
    let mut app = TestApp::spawn().await;
    for i in 0..5 {
        let body = user_event("user.created", &format!("user_{i}"));
        let resp = app
            .post_webhook(&format!("msg_{i}"), app.now_secs(), &body)
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    app.shutdown().await;
    assert_eq!(app.inbox_count().await, 5);
    let refused = app.client.get(app.url("/healthz")).send().await;
    assert!(refused.is_err(), "the listener is closed after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_copies_of_one_delivery_store_one_row() {
    let app = Arc::new(TestApp::spawn().await);
    let body = Arc::new(user_event("user.updated", "user_race"));
    let ts = app.now_secs();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (app, body) = (app.clone(), body.clone());
        tasks
            .spawn(async move { status_json(app.post_webhook("msg_race", ts, &body).await).await });
    }
    let mut accepted = 0;
    while let Some(r) = tasks.join_next().await {
        let (status, json) = r.unwrap();
        assert_eq!(status, StatusCode::OK, "{json}");
        match json["status"].as_str() {
            Some("accepted") => accepted += 1,
            Some("duplicate") => {}
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert_eq!(accepted, 1, "exactly one copy is the first");
    assert_eq!(app.inbox_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_distinct_deliveries_are_all_stored() {
    const TASKS: usize = 32;
    const PER_TASK: usize = 16; // 512 deliveries
    let app = Arc::new(TestApp::spawn().await);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let app = app.clone();
        tasks.spawn(async move {
            for i in 0..PER_TASK {
                let id = format!("msg_{t:02}_{i:03}");
                let body = user_event("user.created", &format!("user_{t}_{i}"));
                let resp = app.post_webhook(&id, app.now_secs(), &body).await;
                assert_eq!(resp.status(), StatusCode::OK, "{id}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let rows = app.inbox_rows().await;
    assert_eq!(rows.len(), TASKS * PER_TASK);
    let ids: HashSet<_> = rows.iter().map(|r| r.svix_id.as_str()).collect();
    assert_eq!(ids.len(), TASKS * PER_TASK);
    assert_eq!(
        app.metric("clerksync_webhook_deliveries_total{outcome=\"accepted\"}")
            .await,
        (TASKS * PER_TASK) as f64
    );
}

#[tokio::test]
async fn an_unknown_event_type_is_stored_and_acknowledged() {
    let app = TestApp::spawn().await;
    let body = br#"{"type":"foo.bar","object":"event","data":{"id":"foo_1","anything":[1,2]}}"#;
    let (status, json) = status_json(app.post_webhook("msg_foo", app.now_secs(), body).await).await;
    assert_eq!(
        (status, json["status"].as_str()),
        (StatusCode::OK, Some("accepted"))
    );
    let rows = app.inbox_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].event_type, "foo.bar");
    assert_eq!(rows[0].body.as_bytes(), body);
}

#[tokio::test]
async fn standard_webhooks_header_names_are_accepted() {
    let app = TestApp::spawn().await;
    let body = user_event("user.created", "user_std");
    let ts = app.now_secs().to_string();
    let headers = vec![
        ("webhook-id".to_string(), "msg_std".to_string()),
        ("webhook-timestamp".to_string(), ts.clone()),
        (
            "webhook-signature".to_string(),
            sign(&app.key, "msg_std", &ts, &body),
        ),
    ];
    let (status, json) = status_json(app.post_raw(&headers, body).await).await;
    assert_eq!(
        (status, json["status"].as_str()),
        (StatusCode::OK, Some("accepted"))
    );
    assert_eq!(app.inbox_count().await, 1);
}

#[tokio::test]
async fn a_rotated_secret_and_several_signatures_are_accepted() {
    let old_key = b"the-old-signing-key-of-32-bytes!";
    let app = TestApp::spawn_with(Options {
        secrets: Some(format!(
            "{},{}",
            whsec(old_key),
            whsec(b"the-new-signing-key-of-32-bytes!")
        )),
        ..Default::default()
    })
    .await;
    // `app.key` is TEST_KEY, which this app does not trust.
    let body = user_event("user.created", "user_rot");
    let resp = app
        .post_webhook("msg_untrusted", app.now_secs(), &body)
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let ts = app.now_secs().to_string();
    let new_sig = sign(b"the-new-signing-key-of-32-bytes!", "msg_rot", &ts, &body);
    let forged = sign(b"some-other-key", "msg_rot", &ts, &body);
    let headers = vec![
        ("svix-id".to_string(), "msg_rot".to_string()),
        ("svix-timestamp".to_string(), ts.clone()),
        (
            "svix-signature".to_string(),
            format!("{forged} v1a,xyz {new_sig}"),
        ),
    ];
    let (status, json) = status_json(app.post_raw(&headers, body.clone()).await).await;
    assert_eq!(
        (status, json["status"].as_str()),
        (StatusCode::OK, Some("accepted"))
    );

    let old_sig = sign(old_key, "msg_rot_old", &ts, &body);
    let headers = vec![
        ("svix-id".to_string(), "msg_rot_old".to_string()),
        ("svix-timestamp".to_string(), ts),
        ("svix-signature".to_string(), old_sig),
    ];
    assert_eq!(app.post_raw(&headers, body).await.status(), StatusCode::OK);
    let ids: HashSet<_> = app
        .inbox_rows()
        .await
        .into_iter()
        .map(|r| r.svix_id)
        .collect();
    assert_eq!(
        ids,
        HashSet::from(["msg_rot".to_string(), "msg_rot_old".to_string()])
    );
}
