//! The body size limit: 413 with and without a Content-Length, without the
//! server reading the whole body, and configurable.

use crate::helpers::{status_json, Options, TestApp};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::StatusCode;
use std::time::Duration;

const TEN_MIB: usize = 10 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// A hang guard, not a timing assertion: a server that waits for a body that
/// never ends would otherwise hang the suite.
const GUARD: Duration = Duration::from_secs(60);

fn big_envelope(total: usize) -> Vec<u8> {
    let head = br#"{"type":"user.created","data":{"id":"user_big","pad":""#;
    let tail = br#""}}"#;
    let mut body = head.to_vec();
    body.resize(total - tail.len(), b'a');
    body.extend_from_slice(tail);
    body
}

async fn assert_too_large(app: &TestApp, resp: reqwest::Response, case: &str) {
    let (status, json) = status_json(resp).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{case}: {json}");
    assert!(json["error"].is_string(), "{case}: {json}");
    assert_eq!(app.inbox_count().await, 0, "{case}: nothing stored");
}

/// Sends a signed delivery whose body is `stream`; `content_length` set means
/// a declared length instead of chunked transfer encoding.
async fn post_stream(
    app: &TestApp,
    body_for_signature: &[u8],
    stream: impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static,
    content_length: Option<usize>,
) -> reqwest::Response {
    let mut headers = app.signed_headers("msg_big", app.now_secs(), body_for_signature);
    if let Some(n) = content_length {
        headers.push(("content-length".into(), n.to_string()));
    }
    let send = app.post_raw(&headers, reqwest::Body::wrap_stream(stream));
    tokio::time::timeout(GUARD, send)
        .await
        .expect("the server answered while the body was still coming")
}

#[tokio::test]
async fn ten_mib_with_content_length_is_413() {
    let app = TestApp::spawn().await;
    let body = big_envelope(TEN_MIB);
    let resp = tokio::time::timeout(GUARD, app.post_webhook("msg_big", app.now_secs(), &body))
        .await
        .unwrap();
    assert_too_large(&app, resp, "10 MiB, Content-Length").await;
}

#[tokio::test]
async fn ten_mib_chunked_is_413() {
    let app = TestApp::spawn().await;
    let body = Bytes::from(big_envelope(TEN_MIB));
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..body.len())
        .step_by(CHUNK)
        .map(|i| Ok(body.slice(i..(i + CHUNK).min(body.len()))))
        .collect();
    let resp = post_stream(&app, &body, futures::stream::iter(chunks), None).await;
    assert_too_large(&app, resp, "10 MiB, chunked").await;
}

/// The body never finishes: the server can only answer if it refuses once the
/// limit is passed (chunked) or from the declared length alone, without
/// waiting for (or buffering) the rest.
#[tokio::test]
async fn an_oversized_body_is_refused_before_it_is_all_sent() {
    let app = TestApp::spawn().await;
    let endless = || {
        futures::stream::iter((0..32).map(|_| Ok(Bytes::from(vec![b'a'; CHUNK]))))
            .chain(futures::stream::pending())
    };
    // 2 MiB sent, then silence, chunked.
    let resp = post_stream(&app, b"", endless(), None).await;
    assert_too_large(&app, resp, "chunked, never ending").await;
    // Declares 10 MiB, sends 2 MiB, then silence.
    let resp = post_stream(&app, b"", endless(), Some(TEN_MIB)).await;
    assert_too_large(&app, resp, "Content-Length 10 MiB, never ending").await;
}

#[tokio::test]
async fn the_body_limit_is_configurable() {
    let app = TestApp::spawn_with(Options {
        max_body_bytes: Some(4096),
        ..Default::default()
    })
    .await;
    let fits = big_envelope(4096);
    let resp = app.post_webhook("msg_fits", app.now_secs(), &fits).await;
    assert_eq!(resp.status(), StatusCode::OK, "exactly the limit is fine");
    let over = big_envelope(4097);
    let resp = app.post_webhook("msg_over", app.now_secs(), &over).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let chunks = vec![
        Ok(Bytes::from(over[..2048].to_vec())),
        Ok(Bytes::from(over[2048..].to_vec())),
    ];
    let resp = post_stream(&app, &over, futures::stream::iter(chunks), None).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE, "chunked");
    // 2 MiB is far under the default limit but over this one.
    let default_ok = big_envelope(2 * 1024 * 1024);
    let resp = app
        .post_webhook("msg_2mib", app.now_secs(), &default_ok)
        .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let ids: Vec<_> = app
        .inbox_rows()
        .await
        .into_iter()
        .map(|r| r.svix_id)
        .collect();
    assert_eq!(ids, ["msg_fits"]);
}

#[tokio::test]
async fn the_default_limit_is_one_mib() {
    let app = TestApp::spawn().await;
    let at_limit = big_envelope(1024 * 1024);
    let resp = app
        .post_webhook("msg_1mib", app.now_secs(), &at_limit)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let over = big_envelope(1024 * 1024 + 1);
    let resp = app.post_webhook("msg_over", app.now_secs(), &over).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.inbox_count().await, 1);
}
