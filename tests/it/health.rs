//! `/healthz`, `/readyz` and `/metrics`.

use crate::helpers::{metric_value, sign, status_json, user_event, TestApp};
use reqwest::StatusCode;

#[tokio::test]
async fn healthz_and_readyz_are_200() {
    let app = TestApp::spawn().await;
    let (status, _) = status_json(app.get("/healthz").await).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = status_json(app.get("/readyz").await).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_deliveries_by_outcome() {
    let app = TestApp::spawn().await;
    let now = app.now_secs();
    // 3 accepted, 2 duplicates.
    for i in 0..3 {
        let body = user_event("user.created", &format!("user_{i}"));
        assert_eq!(
            app.post_webhook(&format!("msg_{i}"), now, &body)
                .await
                .status(),
            200
        );
    }
    for _ in 0..2 {
        let body = user_event("user.created", "user_0");
        assert_eq!(app.post_webhook("msg_0", now, &body).await.status(), 200);
    }
    // 4 bad signatures (wrong key, stale, future, wrong body).
    let body = user_event("user.created", "user_x");
    let ts = now.to_string();
    let forged = vec![
        ("svix-id".to_string(), "msg_x".to_string()),
        ("svix-timestamp".to_string(), ts.clone()),
        (
            "svix-signature".to_string(),
            sign(b"wrong", "msg_x", &ts, &body),
        ),
    ];
    assert_eq!(app.post_raw(&forged, body.clone()).await.status(), 401);
    assert_eq!(
        app.post_webhook("msg_x", now - 3600, &body).await.status(),
        401
    );
    assert_eq!(
        app.post_webhook("msg_x", now + 3600, &body).await.status(),
        401
    );
    let mut other = app.signed_headers("msg_x", now, &body);
    other[2].1 = sign(&app.key, "msg_x", &ts, b"{}");
    assert_eq!(app.post_raw(&other, body.clone()).await.status(), 401);
    // 2 malformed (missing header, not an envelope).
    assert_eq!(app.post_raw(&forged[..2], body.clone()).await.status(), 400);
    assert_eq!(app.post_webhook("msg_y", now, b"[]").await.status(), 400);
    // 1 too large.
    let big = vec![b'a'; 2 * 1024 * 1024];
    assert_eq!(app.post_webhook("msg_z", now, &big).await.status(), 413);

    let resp = app.get("/metrics").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    let count = |outcome: &str| {
        metric_value(
            &text,
            &format!("clerksync_webhook_deliveries_total{{outcome=\"{outcome}\"}}"),
        )
        .unwrap_or_else(|| panic!("no sample for outcome {outcome} in:\n{text}"))
    };
    assert_eq!(count("accepted"), 3.0);
    assert_eq!(count("duplicate"), 2.0);
    assert_eq!(count("bad_signature"), 4.0);
    assert_eq!(count("malformed"), 2.0);
    assert_eq!(count("too_large"), 1.0);
    // Read at scrape time; the processor may have applied some already.
    let pending = metric_value(&text, "clerksync_events_pending").expect("events_pending");
    assert!((0.0..=3.0).contains(&pending), "{pending}");
    assert_eq!(app.inbox_count().await, 3);
}
