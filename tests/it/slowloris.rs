//! Slow and greedy clients over real sockets: connections that never finish
//! their headers, the connection cap, slow bodies past the buffered-body
//! budget, a body that never completes, and a 413 a client still writing can
//! read. `/healthz` must keep answering throughout.
//!
//! Timeouts are configured short; durations here are hang guards, never
//! assertions.

use crate::helpers::{Options, TestApp};
use clerksync::serve::HttpConfig;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GUARD: Duration = Duration::from_secs(60);

fn http(f: impl FnOnce(&mut HttpConfig)) -> Option<HttpConfig> {
    let mut c = HttpConfig::default();
    f(&mut c);
    Some(c)
}

/// A connection that starts a request and never finishes its headers.
async fn slow_headers(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /webhooks/clerk HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .expect("write partial headers");
    s
}

/// Webhook request headers (any svix values: these requests never get as far
/// as the signature check).
fn webhook_head(id: &str, framing: &str) -> String {
    format!(
        "POST /webhooks/clerk HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         svix-id: {id}\r\nsvix-timestamp: 1700000000\r\nsvix-signature: v1,AAAA\r\n{framing}\r\n"
    )
}

/// True once the server has closed the connection (EOF or reset).
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(GUARD, read).await.is_ok()
}

/// One HTTP/1.1 response read off `s`: status, head (lowercased) and body.
async fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let read = async {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().expect("content-length"))
                    .unwrap_or(0);
                if data.len() >= end + 4 + len {
                    let status = head[9..12].parse().expect("status code");
                    let body = String::from_utf8_lossy(&data[end + 4..end + 4 + len]).into();
                    return (status, head, body);
                }
            }
            let n = s.read(&mut buf).await.expect("read the response");
            assert!(
                n > 0,
                "connection closed before a full response: {:?}",
                String::from_utf8_lossy(&data)
            );
            data.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(GUARD, read)
        .await
        .expect("a response arrived")
}

/// `GET /healthz` on a new connection.
async fn healthz(addr: SocketAddr) -> u16 {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect for /healthz");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write /healthz");
    read_response(&mut s).await.0
}

async fn wait_for_metric(app: &TestApp, sample: &str, want: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let v = app.metric(sample).await;
        if want(v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sample} stayed at {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connections_that_never_finish_their_headers_are_closed_and_healthz_answers() {
    let app = TestApp::spawn_with(Options {
        http: http(|c| c.header_timeout = Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(slow_headers(app.addr).await);
    }
    assert_eq!(healthz(app.addr).await, 200, "/healthz while 300 are held");
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(closed_by_server(s).await, "slow connection {i} left open");
    }
    let timeouts = app.metric("clerksync_http_header_timeouts_total").await;
    assert!(timeouts >= 300.0, "header timeouts counted: {timeouts}");
    assert_eq!(healthz(app.addr).await, 200);
}

#[tokio::test]
async fn at_the_connection_cap_healthz_still_answers() {
    let app = TestApp::spawn_with(Options {
        http: http(|c| c.max_connections = 20),
        ..Default::default()
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..40 {
        slow.push(slow_headers(app.addr).await);
    }
    for i in 0..10 {
        assert_eq!(healthz(app.addr).await, 200, "/healthz #{i} at the cap");
    }
    // The oldest connections that were only sending headers made room.
    let evicted = app.metric("clerksync_http_connections_evicted_total").await;
    assert!(evicted >= 21.0, "evicted: {evicted}");
    assert!(
        closed_by_server(&mut slow[0]).await,
        "the oldest was closed"
    );
    let open = app.metric("clerksync_http_connections").await;
    assert!(open <= 21.0, "open connections stay at the cap: {open}");
}

#[tokio::test]
async fn slow_bodies_past_the_buffered_body_budget_get_503_with_retry_after() {
    const BODY: usize = 64 * 1024;
    let app = TestApp::spawn_with(Options {
        max_body_bytes: Some(BODY),
        http: http(|c| c.max_buffered_body_bytes = 4 * BODY),
        ..Default::default()
    })
    .await;
    let framing = format!("Content-Length: {BODY}\r\n");
    // Four deliveries that send a few bytes of their body and then stall hold
    // the whole budget.
    let mut holders = Vec::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(webhook_head(&format!("msg_hold{i}"), &framing).as_bytes())
            .await
            .unwrap();
        s.write_all(b"{\"type\":").await.unwrap();
        holders.push(s);
    }
    let reserved = "clerksync_webhook_body_bytes_reserved";
    wait_for_metric(&app, reserved, |v| v == (4 * BODY) as f64).await;
    for i in 0..16 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(webhook_head(&format!("msg_more{i}"), &framing).as_bytes())
            .await
            .unwrap();
        let (status, head, body) = read_response(&mut s).await;
        assert_eq!(status, 503, "delivery {i} past the budget: {body}");
        assert!(head.contains("\r\nretry-after:"), "Retry-After: {head}");
        assert!(body.contains("\"error\""), "{body}");
    }
    let exhausted = app
        .metric("clerksync_webhook_body_budget_exhausted_total")
        .await;
    assert_eq!(exhausted, 16.0);
    assert_eq!(app.metric(reserved).await, (4 * BODY) as f64, "never more");
    // Once the stalled clients go, the budget is back.
    drop(holders);
    wait_for_metric(&app, reserved, |v| v == 0.0).await;
    let body = crate::helpers::user_event("user.created", "user_after_budget");
    let resp = app.post_webhook("msg_after", app.now_secs(), &body).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_body_that_never_completes_gets_408() {
    let app = TestApp::spawn_with(Options {
        http: http(|c| c.body_timeout = Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(webhook_head("msg_slow_body", "Content-Length: 1000\r\n").as_bytes())
        .await
        .unwrap();
    s.write_all(b"{\"type\":").await.unwrap();
    let (status, _, body) = read_response(&mut s).await;
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    assert_eq!(app.inbox_count().await, 0);
    assert_eq!(
        app.metric("clerksync_webhook_body_bytes_reserved").await,
        0.0
    );
}

/// The client writes its whole body before it reads: the 413 must be there to
/// read, never a reset connection (20 times, both framings). 8 MiB, not 2: on
/// loopback 2 MiB fits in the socket buffers, so it passes even without the drain.
#[tokio::test]
async fn a_client_that_writes_an_8_mib_body_first_reads_the_413() {
    let app = TestApp::spawn().await;
    let body = vec![b'a'; 8 * 1024 * 1024];
    for i in 0..20 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let chunked = i % 2 == 1;
        let mut request = if chunked {
            let mut r = webhook_head("msg_big", "Transfer-Encoding: chunked\r\n").into_bytes();
            for c in body.chunks(64 * 1024) {
                r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                r.extend_from_slice(c);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        } else {
            webhook_head("msg_big", &format!("Content-Length: {}\r\n", body.len())).into_bytes()
        };
        if !chunked {
            request.extend_from_slice(&body);
        }
        tokio::time::timeout(GUARD, s.write_all(&request))
            .await
            .expect("hang guard")
            .unwrap_or_else(|e| panic!("attempt {i} (chunked: {chunked}): write failed: {e}"));
        let (status, _, text) = read_response(&mut s).await;
        assert_eq!(status, 413, "attempt {i} (chunked: {chunked}): {text}");
        assert!(text.contains("larger than the limit"), "{text}");
    }
    assert_eq!(app.inbox_count().await, 0);
}

/// The real binary, configured only through its environment: 300 connections
/// that never finish their headers, over a cap of 100. `/healthz` answers
/// while they are held, every one of them is closed, and deliveries go on.
#[tokio::test]
async fn the_binary_survives_300_slowloris_connections() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::process::Server::start_with(
        dir.path(),
        &[
            ("CLERKSYNC_HTTP_HEADER_TIMEOUT_SECS", "2"),
            ("CLERKSYNC_HTTP_MAX_CONNECTIONS", "100"),
        ],
    )
    .await;
    let addr: SocketAddr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(slow_headers(addr).await);
    }
    for i in 0..5 {
        assert_eq!(healthz(addr).await, 200, "/healthz #{i} while 300 are held");
    }
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(closed_by_server(s).await, "slow connection {i} left open");
    }
    let body = crate::helpers::user_event("user.created", "user_after_slowloris");
    let ts = crate::helpers::system_now_secs().to_string();
    let sig = crate::helpers::sign(crate::helpers::TEST_KEY, "msg_after", &ts, &body);
    let resp = reqwest::Client::new()
        .post(format!("{}/webhooks/clerk", server.base))
        .header("svix-id", "msg_after")
        .header("svix-timestamp", ts)
        .header("svix-signature", sig)
        .body(body)
        .send()
        .await
        .expect("delivery sent");
    assert_eq!(resp.status(), 200);
}
