//! What a token-less server exposes (issue 16, items 3, 4, 7): loopback only
//! (the real binary refuses another address in one line unless told
//! `CLERKSYNC_INSECURE_OPEN_API`), a loopback Host, no cross-origin WebSocket,
//! and a connection budget per client address.

use crate::backends::{sqlite_server, Server};
use crate::helpers::{whsec, TEST_KEY};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

const GUARD: Duration = Duration::from_secs(60);

/// `clerksync serve` with a clean environment, run in `dir`, stderr to a file.
fn serve(dir: &Path, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clerksync"));
    cmd.arg("serve").current_dir(dir);
    crate::helpers::without_inherited_settings(&mut cmd);
    cmd.env("CLERKSYNC_WEBHOOK_SECRET", whsec(TEST_KEY))
        .env(
            "CLERKSYNC_DATABASE_URL",
            format!("sqlite://{}", dir.join("t.db").display()),
        )
        .env("CLERKSYNC_LOG_FORMAT", "json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn clerksync")
}

fn stderr_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

#[test]
fn a_token_less_server_refuses_to_listen_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve(dir.path(), &[("CLERKSYNC_LISTEN", "0.0.0.0:0")]);
    let status =
        crate::helpers::wait_exit(&mut child, "serve on 0.0.0.0 without a token kept running");
    let stderr = stderr_of(dir.path());
    assert!(!status.success(), "{stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr}");
    assert!(stderr.contains("CLERKSYNC_API_TOKEN"), "{stderr}");
    assert!(stderr.contains("CLERKSYNC_INSECURE_OPEN_API"), "{stderr}");
}

/// The address the JSON log says the server listens on.
fn listening_port(dir: &Path, child: &mut Child) -> u16 {
    let deadline = Instant::now() + GUARD;
    loop {
        let log = stderr_of(dir);
        let port = log.lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let addr: std::net::SocketAddr = v["fields"]["addr"].as_str()?.parse().ok()?;
            (addr.port() != 0).then_some(addr.port())
        });
        if let Some(p) = port {
            return p;
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!("serve exited ({s}): {log}");
        }
        assert!(Instant::now() < deadline, "serve never listened: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn the_insecure_opt_in_serves_any_address_and_any_host() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve(
        dir.path(),
        &[
            ("CLERKSYNC_LISTEN", "0.0.0.0:0"),
            ("CLERKSYNC_INSECURE_OPEN_API", "true"),
        ],
    );
    let port = listening_port(dir.path(), &mut child);
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1/users"))
        .header("host", "clerksync.example.test")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
}

async fn get_with_host(s: &Server, host: &str) -> (u16, serde_json::Value) {
    let resp = s
        .client
        .get(s.url("/v1/users"))
        .header("host", host)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_token_less_server_answers_only_loopback_host_names() {
    let s = sqlite_server(|_| {}).await;
    let port = s.addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_string(),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(get_with_host(&s, &host).await.0, 200, "{host}");
    }
    // A DNS-rebound page sends its own name.
    for host in [
        format!("attacker.example:{port}"),
        "127.0.0.1.attacker.example".to_string(),
        "localhost:x".to_string(),
    ] {
        let (status, body) = get_with_host(&s, &host).await;
        assert_eq!(status, 421, "{host}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("CLERKSYNC_API_TOKEN"),
            "{body}"
        );
    }
    // Same for search and the realtime handshake.
    let resp = s
        .client
        .get(s.url("/v1/search?q=a"))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 421);
    assert_eq!(
        ws(&s, Some("attacker.example"), None).await.unwrap_err(),
        421
    );
    // With a token, names are the proxy's business.
    let t = sqlite_server(|c| c.api_token = Some(clerksync::config::Token::new("t"))).await;
    let resp = t
        .client
        .get(t.url("/v1/users"))
        .header("host", "api.example.test")
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Opens `/v1/realtime` with the given Host and Origin headers; Err is the HTTP status.
async fn ws(s: &Server, host: Option<&str>, origin: Option<&str>) -> Result<WsStream, u16> {
    let mut req = format!("ws://{}/v1/realtime", s.addr)
        .into_client_request()
        .unwrap();
    if let Some(h) = host {
        req.headers_mut().insert("host", h.parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[tokio::test]
async fn a_cross_origin_page_cannot_open_the_open_stream() {
    let s = sqlite_server(|c| {
        c.realtime.allowed_origins = vec!["https://admin.example.test".into()];
    })
    .await;
    // Any page on the web (what CSWSH is).
    assert_eq!(
        ws(&s, None, Some("https://evil.example"))
            .await
            .unwrap_err(),
        403
    );
    assert_eq!(
        s.metric("clerksync_realtime_rejected_total{reason=\"origin_denied\"}")
            .await,
        Some(1.0)
    );
    // Not a browser; a same-origin page; a listed origin.
    ws(&s, None, None).await.expect("no Origin");
    ws(&s, None, Some(&format!("http://{}", s.addr)))
        .await
        .expect("same origin");
    ws(&s, None, Some("https://admin.example.test"))
        .await
        .expect("allowed origin");
    // With no list, the open server allows no cross-origin page at all.
    let d = sqlite_server(|_| {}).await;
    assert_eq!(
        ws(&d, None, Some("http://localhost:3000"))
            .await
            .unwrap_err(),
        403
    );
}

/// A WebSocket from `local` (a loopback address) to the server.
async fn ws_from(s: &Server, local: &str) -> Result<WsStream, u16> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let tcp = sock.connect(s.addr).await.unwrap();
    let req = format!("ws://{}/v1/realtime", s.addr)
        .into_client_request()
        .unwrap();
    match tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp)).await
    {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

#[tokio::test]
async fn one_address_cannot_take_every_anonymous_slot() {
    let s = sqlite_server(|c| {
        c.realtime.max_connections_per_token = 5;
        c.realtime.max_connections_per_address = 2;
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(
            ws_from(&s, "127.0.0.1")
                .await
                .expect("under the address cap"),
        );
    }
    assert_eq!(ws_from(&s, "127.0.0.1").await.unwrap_err(), 429);
    // Other clients still get in, up to the shared budget.
    for local in ["127.0.0.2", "127.0.0.2", "127.0.0.3"] {
        open.push(ws_from(&s, local).await.expect("another address"));
    }
    assert_eq!(ws_from(&s, "127.0.0.4").await.unwrap_err(), 429);
    // A closed connection gives its slot back.
    drop(open.remove(0));
    let deadline = Instant::now() + GUARD;
    while ws_from(&s, "127.0.0.4").await.is_err() {
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 1,000 `wait_ms` requests for one id all answer once it is synced, with
/// other ids' commits before it (that those wake none of them is the unit
/// test in feed/waiters.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiters_on_one_id_all_answer_when_it_arrives() {
    // Each long poll holds a connection: room for all of them above the
    // default connection cap.
    let s = std::sync::Arc::new(sqlite_server(|c| c.http.max_connections = 1_100).await);
    let waiting: Vec<_> = (0..1000)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                s.client
                    .get(s.url("/v1/users/user_w?wait_ms=30000"))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    // Other users' commits meanwhile.
    for i in 0..20 {
        let body: serde_json::Value = serde_json::from_slice(&crate::helpers::user_event(
            "user.created",
            &format!("user_x{i}"),
        ))
        .unwrap();
        assert!(s.post(&format!("msg_w_x{i}"), &body).await.is_success());
    }
    let body: serde_json::Value =
        serde_json::from_slice(&crate::helpers::user_event("user.created", "user_w")).unwrap();
    assert!(s.post("msg_w_w", &body).await.is_success());
    for w in waiting {
        let status = tokio::time::timeout(GUARD, w)
            .await
            .expect("a waiter hung")
            .unwrap();
        assert_eq!(status, 200);
    }
}
