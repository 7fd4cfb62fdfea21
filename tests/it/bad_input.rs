//! Bad input: each case gets a clear status and a JSON `{"error": ...}` that
//! never echoes a secret, and nothing is stored.

use crate::helpers::{sign, status_json, user_event, Options, TestApp};
use clerksync::clock::FixedClock;
use reqwest::StatusCode;

/// Asserts the refusal and that the inbox is still empty.
async fn assert_refused(app: &TestApp, resp: reqwest::Response, want: StatusCode, case: &str) {
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let (_, json) = status_json(resp).await;
    assert_eq!(status, want, "{case}: {json}");
    assert!(
        content_type.is_some_and(|c| c.starts_with("application/json")),
        "{case}: JSON content type"
    );
    let error = json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: no `error` string in {json}"));
    assert!(!error.is_empty(), "{case}: empty error");
    let text = json.to_string();
    for secret in &app.secret_texts {
        let key = secret.trim_start_matches("whsec_");
        assert!(!text.contains(key), "{case}: error body echoes the secret");
    }
    assert_eq!(app.inbox_count().await, 0, "{case}: nothing is stored");
}

fn headers(id: &str, ts: &str, sig: &str) -> Vec<(String, String)> {
    vec![
        ("svix-id".into(), id.into()),
        ("svix-timestamp".into(), ts.into()),
        ("svix-signature".into(), sig.into()),
    ]
}

#[tokio::test]
async fn a_missing_header_is_400() {
    let app = TestApp::spawn().await;
    let body = user_event("user.created", "user_1");
    let full = app.signed_headers("msg_1", app.now_secs(), &body);
    for missing in ["svix-id", "svix-timestamp", "svix-signature"] {
        let h: Vec<_> = full.iter().filter(|(k, _)| k != missing).cloned().collect();
        let resp = app.post_raw(&h, body.clone()).await;
        let case = format!("without {missing}");
        let status = resp.status();
        let (_, json) = status_json(resp).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}");
        assert!(
            json["error"].as_str().unwrap().contains(missing),
            "{case}: the error names the header: {json}"
        );
        // Blank counts as missing.
        let mut blank = full.clone();
        blank.iter_mut().find(|(k, _)| k == missing).unwrap().1 = "  ".into();
        let resp = app.post_raw(&blank, body.clone()).await;
        assert_refused(
            &app,
            resp,
            StatusCode::BAD_REQUEST,
            &format!("blank {missing}"),
        )
        .await;
    }
    let resp = app.post_raw(&[], body).await;
    assert_refused(&app, resp, StatusCode::BAD_REQUEST, "no headers").await;
}

#[tokio::test]
async fn a_malformed_timestamp_is_400() {
    let app = TestApp::spawn().await;
    let body = user_event("user.created", "user_1");
    let now = app.now_secs();
    for ts in [
        "yesterday",
        &format!("{now}.5"),
        &format!("-{now}"),
        "1e9",
        "0x10",
    ] {
        let sig = sign(&app.key, "msg_1", ts, &body);
        let resp = app
            .post_raw(&headers("msg_1", ts, &sig), body.clone())
            .await;
        assert_refused(
            &app,
            resp,
            StatusCode::BAD_REQUEST,
            &format!("timestamp {ts:?}"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_timestamp_six_minutes_off_is_401() {
    let app = TestApp::spawn().await;
    let body = user_event("user.created", "user_1");
    for (case, offset) in [("6 minutes old", -360), ("6 minutes ahead", 360)] {
        let resp = app
            .post_webhook("msg_1", app.now_secs() + offset, &body)
            .await;
        assert_refused(&app, resp, StatusCode::UNAUTHORIZED, case).await;
    }
}

#[tokio::test]
async fn a_bad_signature_is_401() {
    let app = TestApp::spawn().await;
    let body = user_event("user.created", "user_1");
    let ts = app.now_secs().to_string();
    let good = sign(&app.key, "msg_1", &ts, &body);
    let good_b64 = good.strip_prefix("v1,").unwrap();
    let cases = [
        ("wrong version prefix", format!("v2,{good_b64}")),
        ("v1a version", format!("v1a,{good_b64}")),
        ("no version", good_b64.to_string()),
        ("bad base64", "v1,!!!not*base64@@@".to_string()),
        ("truncated", format!("v1,{}", &good_b64[..20])),
        (
            "wrong key",
            sign(b"not-the-key-this-app-trusts!!!!!", "msg_1", &ts, &body),
        ),
        (
            "right key, different body",
            sign(
                &app.key,
                "msg_1",
                &ts,
                &user_event("user.created", "user_2"),
            ),
        ),
        (
            "right key, different id",
            sign(&app.key, "msg_2", &ts, &body),
        ),
    ];
    for (case, sig) in cases {
        let resp = app
            .post_raw(&headers("msg_1", &ts, &sig), body.clone())
            .await;
        assert_refused(&app, resp, StatusCode::UNAUTHORIZED, case).await;
    }
}

#[tokio::test]
async fn bodies_that_are_not_clerk_envelopes_are_400_even_when_signed() {
    let app = TestApp::spawn().await;
    let cases: [(&str, &[u8]); 9] = [
        ("empty body", b""),
        ("whitespace body", b"  \n"),
        ("not JSON", b"hello, world"),
        ("truncated JSON", br#"{"type":"user.created","data":{"id":"#),
        (
            "JSON array",
            br#"[{"type":"user.created","data":{"id":"user_1"}}]"#,
        ),
        ("JSON string", br#""user.created""#),
        (
            "missing type",
            br#"{"object":"event","data":{"id":"user_1"}}"#,
        ),
        (
            "missing data",
            br#"{"type":"user.created","object":"event"}"#,
        ),
        (
            "data not an object",
            br#"{"type":"user.created","data":["user_1"]}"#,
        ),
    ];
    for (i, (case, body)) in cases.into_iter().enumerate() {
        let id = format!("msg_{i}");
        let resp = app.post_webhook(&id, app.now_secs(), body).await;
        assert_refused(&app, resp, StatusCode::BAD_REQUEST, case).await;
    }
}

#[tokio::test]
async fn a_replayed_delivery_after_the_tolerance_window_is_401() {
    let start_ms = 1_760_000_000_000;
    let clock = FixedClock::new(start_ms);
    let app = TestApp::spawn_with(Options {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    // Two deliveries captured on the wire; the first reaches us in time.
    let ts = app.now_secs();
    let body1 = user_event("user.created", "user_1");
    let body2 = user_event("user.updated", "user_1");
    let captured1 = app.signed_headers("msg_1", ts, &body1);
    let captured2 = app.signed_headers("msg_2", ts, &body2);
    let resp = app.post_raw(&captured1, body1.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);

    clock.set_ms(start_ms + 6 * 60 * 1000);
    for (case, h, body) in [
        ("replay of a delivered message", &captured1, body1),
        (
            "replay of a captured, never delivered message",
            &captured2,
            body2,
        ),
    ] {
        let resp = app.post_raw(h, body).await;
        let (status, json) = status_json(resp).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {json}");
        assert!(json["error"].is_string(), "{case}");
    }
    let rows = app.inbox_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].svix_id, "msg_1");
}

/// A correctly signed delivery whose id is not one Svix would send: the id is
/// the stored deduplication key, so it is refused before the body is read.
#[tokio::test]
async fn a_ten_kb_svix_id_is_400_even_when_signed() {
    let app = TestApp::spawn().await;
    let body = user_event("user.created", "user_long_id");
    let long = format!("msg_{}", "a".repeat(10 * 1024));
    let resp = app.post_webhook(&long, app.now_secs(), &body).await;
    assert_refused(&app, resp, StatusCode::BAD_REQUEST, "10 KB svix-id").await;
    // The Standard Webhooks name is held to the same rule.
    let ts = app.now_secs().to_string();
    let sig = sign(&app.key, &long, &ts, &body);
    let std_headers = vec![
        ("webhook-id".to_string(), long.clone()),
        ("webhook-timestamp".to_string(), ts),
        ("webhook-signature".to_string(), sig),
    ];
    let resp = app.post_raw(&std_headers, body.clone()).await;
    assert_refused(&app, resp, StatusCode::BAD_REQUEST, "10 KB webhook-id").await;
    // 256 characters is still an id.
    let ok = format!("msg_{}", "b".repeat(252));
    let resp = app.post_webhook(&ok, app.now_secs(), &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_svix_id_with_invisible_characters_is_400_even_when_signed() {
    let app = TestApp::spawn().await;
    let body = user_event("user.created", "user_odd_id");
    for id in ["msg_a b", "msg_a\tb"] {
        let resp = app.post_webhook(id, app.now_secs(), &body).await;
        assert_refused(&app, resp, StatusCode::BAD_REQUEST, &format!("{id:?}")).await;
    }
}
