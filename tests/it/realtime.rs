//! `/v1/realtime` black-box: a real server on a random port, WebSocket clients
//! (tokio-tungstenite), Clerk-style session JWTs signed here with RSA keys
//! generated at test start (never committed).
//!
//! No assertion is about absolute time: absence is shown with a sentinel (a
//! later change must be the next frame), and "does not slow the others" compares
//! receipt lags as a ratio.

use crate::backends::{postgres_server, sqlite_server, Server};
use clerksync::api::realtime::SessionKeys;
use clerksync::config::Token;
use clerksync::store::db::Database;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const API: &str = "rt-api-token";
const ISS: &str = "https://clerk.example.test";
const AZP: &str = "https://app.example.test";

struct KeyPair {
    private_pem: String,
    public_pem: String,
}

fn generate() -> KeyPair {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key generation");
    KeyPair {
        private_pem: key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
        public_pem: key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    }
}

/// The instance's key, and another one the server does not trust.
fn keys() -> &'static (KeyPair, KeyPair) {
    static KEYS: OnceLock<(KeyPair, KeyPair)> = OnceLock::new();
    KEYS.get_or_init(|| (generate(), generate()))
}

fn now() -> i64 {
    clerksync::clock::system().now_secs()
}

fn sign_with(claims: &Value, pair: &KeyPair) -> String {
    let key = EncodingKey::from_rsa_pem(pair.private_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
}

fn claims(sub: &str) -> Value {
    let t = now();
    json!({"sub": sub, "iss": ISS, "azp": AZP, "iat": t, "nbf": t - 1, "exp": t + 60, "sid": "sess_1"})
}

/// A valid session token for `sub`.
fn session(sub: &str) -> String {
    sign_with(&claims(sub), &keys().0)
}

/// The API token, the instance's key and the allow-lists.
fn with_auth(c: &mut clerksync::Config) {
    c.api_token = Some(Token::new(API));
    c.realtime.session_keys = Some(SessionKeys::from_pem(&keys().0.public_pem).unwrap());
    c.realtime.issuers = vec![ISS.into()];
    c.realtime.authorized_parties = vec![AZP.into()];
}

async fn server(tweak: impl FnOnce(&mut clerksync::Config)) -> Server {
    sqlite_server(move |c| {
        with_auth(c);
        tweak(c);
    })
    .await
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connected client.
struct Client {
    ws: Stream,
}

/// Connects with the token in the Authorization header; a refusal is
/// (HTTP status, JSON body).
async fn connect(s: &Server, token: Option<&str>) -> Result<Client, (u16, Value)> {
    let mut req = format!("ws://{}/v1/realtime", s.addr)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    open(req).await
}

/// Connects with the token in the query string, as a browser does.
async fn connect_query(s: &Server, token: &str) -> Result<Client, (u16, Value)> {
    let req = format!("ws://{}/v1/realtime?token={token}", s.addr)
        .into_client_request()
        .unwrap();
    open(req).await
}

async fn open(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<Client, (u16, Value)> {
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => {
            let mut c = Client { ws };
            let ready = c.next().await.expect("ready");
            assert_eq!(ready["type"], "ready", "{ready}");
            Ok(c)
        }
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// What ended a stream.
#[derive(Debug)]
enum End {
    Closed(Option<(u16, String)>),
    Error(#[allow(dead_code)] String),
}

impl Client {
    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next JSON frame; None once the stream ended (see [`Self::next_or_end`]).
    async fn next(&mut self) -> Option<Value> {
        self.next_or_end().await.ok()
    }

    async fn next_or_end(&mut self) -> Result<Value, End> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .expect("no frame within 60 s");
            match m {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(f))) => {
                    return Err(End::Closed(
                        f.map(|f| (u16::from(f.code), f.reason.to_string())),
                    ))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(End::Error(e.to_string())),
                None => return Err(End::Closed(None)),
            }
        }
    }

    async fn subscribe(&mut self, topic: &str) -> Value {
        self.send(json!({"type": "subscribe", "topic": topic}))
            .await;
        self.next().await.unwrap()
    }
}

fn user(id: &str, v: i64, first: &str) -> Value {
    json!({"type": "user.updated", "object": "event", "data": {
        "id": id, "object": "user", "first_name": first, "last_name": "L", "updated_at": v,
        "private_metadata": {"plan": "secret"}, "unsafe_metadata": {"u": 1},
        "public_metadata": {"p": 1},
        "email_addresses": [{"id": format!("idn_{id}"), "email_address": format!("{id}@example.test")}],
        "primary_email_address_id": format!("idn_{id}"),
        "phone_numbers": [],
    }})
}

fn org(id: &str, v: i64, name: &str) -> Value {
    json!({"type": "organization.updated", "object": "event", "data": {
        "id": id, "object": "organization", "name": name, "slug": name, "updated_at": v,
        "private_metadata": {"billing": "secret"},
    }})
}

fn membership(id: &str, org: &str, user: &str, v: i64) -> Value {
    json!({"type": "organizationMembership.created", "object": "event", "data": {
        "id": id, "object": "organization_membership", "role": "org:member", "updated_at": v,
        "organization": {"id": org, "name": org, "private_metadata": {"billing": "secret"}},
        "public_user_data": {"user_id": user, "first_name": "F", "identifier": format!("{user}@example.test")},
        "private_metadata": {"note": "secret"},
    }})
}

fn membership_deleted(id: &str, org: &str, user: &str, v: i64) -> Value {
    json!({"type": "organizationMembership.deleted", "object": "event", "timestamp": v, "data": {
        "id": id, "object": "organization_membership", "deleted": true,
        "organization": {"id": org}, "public_user_data": {"user_id": user},
    }})
}

async fn post(s: &Server, svix_id: &str, body: &Value) {
    let st = s.post(svix_id, body).await;
    assert!(st.is_success(), "{svix_id}: {st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let s = server(|_| {}).await;
    let t = now();
    let (good, wrong) = keys();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("user_a");
        f(&mut c);
        sign_with(&c, good)
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "missing token"),
        ("not a JWT", Some("hello".into()), "malformed"),
        ("three garbage parts", Some("a.b.c".into()), "malformed"),
        ("wrong API token", Some("rt-api-tokem".into()), "malformed"),
        (
            "expired",
            Some(with(&|c| c["exp"] = json!(t - 60))),
            "expired",
        ),
        (
            "not yet valid",
            Some(with(&|c| c["nbf"] = json!(t + 60))),
            "not valid yet",
        ),
        (
            "wrong key",
            Some(sign_with(&claims("user_a"), wrong)),
            "signature",
        ),
        (
            "wrong issuer",
            Some(with(&|c| c["iss"] = json!("https://evil.test"))),
            "issuer",
        ),
        (
            "no issuer",
            Some(with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            })),
            "iss",
        ),
        (
            "wrong azp",
            Some(with(&|c| c["azp"] = json!("https://evil.test"))),
            "authorized party",
        ),
        (
            "no exp",
            Some(with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            "exp",
        ),
        (
            "no sub",
            Some(with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            })),
            "sub",
        ),
        // A JWT template handed to a third party: signed by the instance, but no session.
        (
            "no sid",
            Some(with(&|c| {
                c.as_object_mut().unwrap().remove("sid");
            })),
            "sid",
        ),
        (
            "ten-year lifetime",
            Some(with(&|c| c["exp"] = json!(t + 10 * 365 * 86400))),
            "lives longer than 3600",
        ),
        (
            "two hours left, no iat",
            Some(with(&|c| {
                c.as_object_mut().unwrap().remove("iat");
                c["exp"] = json!(t + 7200);
            })),
            "lives longer",
        ),
    ];
    for (name, token, want) in cases {
        let refused = connect(&s, token.as_deref()).await;
        let Err((status, body)) = refused else {
            panic!("{name}: connected");
        };
        assert_eq!(status, 401, "{name}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(want), "{name}: {error}");
        if let Some(t) = &token {
            assert!(!error.contains(t.as_str()), "{name}: the token is echoed");
        }
    }
    // Within the 5 s leeway, and the accepted ways in.
    let barely = with(&|c| c["exp"] = json!(t - 2));
    assert!(connect(&s, Some(&barely)).await.is_ok());
    assert!(connect(&s, Some(&session("user_a"))).await.is_ok());
    assert!(connect_query(&s, &session("user_a")).await.is_ok());
    assert!(connect(&s, Some(API)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_sees_only_its_own_user_and_organizations_without_private_fields() {
    let s = server(|_| {}).await;
    post(&s, "msg_v_1", &user("user_a", 1, "Ada")).await;
    post(&s, "msg_v_2", &user("user_b", 1, "Bob")).await;
    post(&s, "msg_v_3", &org("org_1", 1, "one")).await;
    post(&s, "msg_v_4", &org("org_2", 1, "two")).await;
    post(
        &s,
        "msg_v_5",
        &membership("orgmem_a1", "org_1", "user_a", 1),
    )
    .await;
    post(
        &s,
        "msg_v_6",
        &membership("orgmem_b2", "org_2", "user_b", 1),
    )
    .await;
    s.settle().await;

    let mut a = connect(&s, Some(&session("user_a"))).await.unwrap();
    for (topic, want) in [
        ("user:user_b", "own user"),
        ("org:org_2", "not a member"),
        ("*", "API token"),
        ("group:x", "unknown topic"),
        ("user:bad id", "invalid id"),
    ] {
        let r = a.subscribe(topic).await;
        assert_eq!(r["type"], "error", "{topic}: {r}");
        assert_eq!(r["topic"], topic);
        assert!(r["error"].as_str().unwrap().contains(want), "{topic}: {r}");
    }
    assert_eq!(a.subscribe("user:user_a").await["type"], "subscribed");
    // The org's current state first (a browser cannot call the read API).
    a.send(json!({"type": "subscribe", "topic": "org:org_1", "snapshot": true}))
        .await;
    assert_eq!(a.next().await.unwrap()["type"], "subscribed");
    let snap = a.next().await.unwrap();
    assert_eq!(snap["type"], "snapshot", "{snap}");
    assert_eq!(snap["data"]["organization"]["name"], "one");
    assert!(
        snap["data"]["organization"]
            .get("private_metadata")
            .is_none(),
        "{snap}"
    );
    let members = snap["data"]["memberships"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{snap}");
    assert_eq!(members[0]["user_id"], "user_a");
    assert_eq!(members[0]["public_user_data"]["first_name"], "Ada");
    assert!(members[0].get("private_metadata").is_none(), "{snap}");
    assert!(
        members[0]["organization"].get("private_metadata").is_none(),
        "{snap}"
    );
    let again = a.subscribe("org:org_1").await;
    assert!(
        again["error"].as_str().unwrap().contains("already"),
        "{again}"
    );
    let mut backend = connect(&s, Some(API)).await.unwrap();
    backend
        .send(json!({"type": "subscribe", "topic": "*", "snapshot": true}))
        .await;
    assert!(backend.next().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("snapshot"));
    assert_eq!(backend.subscribe("*").await["type"], "subscribed");
    assert_eq!(backend.subscribe("user:user_b").await["type"], "subscribed");

    // B changes (A must not see it), then A changes: A's next frame is its own.
    post(&s, "msg_v_7", &user("user_b", 2, "Bobby")).await;
    let mut a2 = user("user_a", 2, "Ada L.");
    a2["data"]["private_metadata"] = json!({"plan": "upgraded"});
    post(&s, "msg_v_8", &a2).await;
    let m = a.next().await.unwrap();
    assert_eq!(
        (m["topic"].as_str(), m["id"].as_str()),
        (Some("user:user_a"), Some("user_a")),
        "{m}"
    );
    assert_eq!(m["type"], "update");
    assert_eq!(m["kind"], "user");
    assert_eq!(m["data"]["first_name"], "Ada L.");
    assert_eq!(m["data"]["primary_email_address"], "user_a@example.test");
    assert_eq!(m["data"]["public_metadata"], json!({"p": 1}));
    for private in [
        "private_metadata",
        "unsafe_metadata",
        "email_addresses",
        "phone_numbers",
    ] {
        assert!(m["data"].get(private).is_none(), "{private} leaked: {m}");
    }
    let fields: Vec<&str> = m["changed_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(fields.contains(&"first_name"), "{fields:?}");
    assert!(!fields.contains(&"private_metadata"), "{fields:?}");
    // The membership refresh (A's public data on org_1's member list) follows on
    // both of A's topics, with the organization's private fields removed.
    let mut refreshes = Vec::new();
    for _ in 0..2 {
        let r = a.next().await.unwrap();
        assert_eq!(
            (r["type"].as_str(), r["kind"].as_str()),
            (Some("refresh"), Some("membership")),
            "{r}"
        );
        assert_eq!(r["data"]["public_user_data"]["first_name"], "Ada L.");
        assert!(r["data"].get("private_metadata").is_none(), "{r}");
        assert!(
            r["data"]["organization"].get("private_metadata").is_none(),
            "{r}"
        );
        refreshes.push(r["topic"].as_str().unwrap().to_string());
    }
    refreshes.sort();
    assert_eq!(refreshes, ["org:org_1", "user:user_a"]);

    // A private-only change shows the session nothing: the next frame is the org rename.
    let mut private_only = a2.clone();
    private_only["data"]["private_metadata"] = json!({"plan": "changed"});
    private_only["data"]["updated_at"] = json!(3);
    post(&s, "msg_v_9", &private_only).await;
    post(&s, "msg_v_10", &org("org_1", 2, "one renamed")).await;
    let m = a.next().await.unwrap();
    assert_eq!(m["topic"], "org:org_1", "{m}");
    assert_eq!(m["data"]["name"], "one renamed");
    assert!(m["data"].get("private_metadata").is_none(), "{m}");

    // The backend saw everything, private fields included, in feed order.
    let mut seen = Vec::new();
    let mut last = 0;
    while seen.len() < 8 {
        let m = backend.next().await.unwrap();
        let seq = m["seq"].as_i64().unwrap();
        assert!(seq >= last, "out of order: {m}");
        last = seq;
        seen.push(m);
    }
    let b = seen
        .iter()
        .find(|m| m["topic"] == "user:user_b")
        .expect("the backend got B's change on user:user_b");
    assert_eq!(b["data"]["private_metadata"], json!({"plan": "secret"}));
    assert!(seen
        .iter()
        .any(|m| m["topic"] == "*" && m["id"] == "user_a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_membership_ends_the_org_subscription_at_once() {
    let s = server(|_| {}).await;
    post(&s, "msg_m_1", &user("user_a", 1, "Ada")).await;
    post(&s, "msg_m_2", &org("org_1", 1, "one")).await;
    post(
        &s,
        "msg_m_3",
        &membership("orgmem_a1", "org_1", "user_a", 1),
    )
    .await;
    post(
        &s,
        "msg_m_4",
        &membership("orgmem_c1", "org_1", "user_c", 1),
    )
    .await;
    s.settle().await;
    let mut a = connect(&s, Some(&session("user_a"))).await.unwrap();
    assert_eq!(a.subscribe("org:org_1").await["type"], "subscribed");
    assert_eq!(a.subscribe("user:user_a").await["type"], "subscribed");
    // A colleague watching the same organization keeps its subscription.
    let mut c = connect(&s, Some(&session("user_c"))).await.unwrap();
    assert_eq!(c.subscribe("org:org_1").await["type"], "subscribed");

    post(
        &s,
        "msg_m_5",
        &membership_deleted("orgmem_a1", "org_1", "user_a", 2_000_000_000_000),
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(a.next().await.unwrap());
    }
    let deleted_on_org = got
        .iter()
        .position(|m| m["topic"] == "org:org_1" && m["type"] == "delete")
        .unwrap_or_else(|| panic!("{got:?}"));
    let ended = got
        .iter()
        .position(|m| m["type"] == "unsubscribed")
        .unwrap_or_else(|| panic!("{got:?}"));
    assert!(deleted_on_org < ended, "{got:?}");
    assert_eq!(got[ended]["topic"], "org:org_1");
    assert_eq!(got[ended]["reason"], "membership deleted");
    assert!(got
        .iter()
        .any(|m| m["topic"] == "user:user_a" && m["type"] == "delete" && m["data"].is_null()));
    let seen_by_c = c.next().await.unwrap();
    assert_eq!(
        (seen_by_c["type"].as_str(), seen_by_c["id"].as_str()),
        (Some("delete"), Some("orgmem_a1"))
    );

    // Org changes no longer reach A: its next frame is its own user's change.
    post(&s, "msg_m_6", &org("org_1", 2, "one renamed")).await;
    post(&s, "msg_m_7", &user("user_a", 2, "Ada L.")).await;
    let m = a.next().await.unwrap();
    assert_eq!(m["topic"], "user:user_a", "{m}");
    assert_eq!(c.next().await.unwrap()["data"]["name"], "one renamed");
    let r = a.subscribe("org:org_1").await;
    assert!(
        r["error"].as_str().unwrap_or("").contains("not a member"),
        "{r}"
    );
}

/// Changes on the watched topic, per run. The issue asks for 10,000; a debug
/// build posting one signed, fsynced webhook at a time makes that minutes, so
/// the default is 2,000 (set CLERKSYNC_RT_RESUME_CHANGES=10000 for the full run).
fn resume_changes() -> i64 {
    std::env::var("CLERKSYNC_RT_RESUME_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_disconnects_has_no_gap_and_no_duplicate() {
    resume_case(server(|_| {}).await, resume_changes()).await;
}

/// On PostgreSQL feed order is commit order only thanks to the feed lock taken
/// at commit: the same check, shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_postgres_has_no_gap_and_no_duplicate() {
    if let Some(s) = postgres_server(with_auth).await {
        resume_case(s, 400).await;
    }
}

/// Watches `user:user_a` while `n` changes of it and `n` of another user are
/// posted, disconnecting and resuming with `since` at pseudo-random points;
/// what arrives must be exactly the feed's list for the topic.
async fn resume_case(s: Server, n: i64) {
    let s = std::sync::Arc::new(s);
    post(&s, "msg_r_a0", &user("user_a", 1, "a0")).await;
    s.settle().await;
    // The hub learns of the first change asynchronously: subscribe once it has,
    // so the stream and the feed query below start at the same point.
    let created = s
        .scalar("SELECT COALESCE(MAX(seq), 0) FROM change_feed WHERE entity_id = 'user_a'")
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (mut a, first) = loop {
        let mut a = connect(&s, Some(&session("user_a"))).await.unwrap();
        let sub = a.subscribe("user:user_a").await;
        let first = sub["seq"].as_i64().expect("subscribed at a seq");
        if first >= created {
            break (a, first);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hub never caught up"
        );
        drop(a);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let mut last = first;
    // Two writers: the watched user and another one interleaved in the feed.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for who in ["user_a", "user_b"] {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    for v in 2..n + 2 {
                        post(
                            &s,
                            &format!("msg_r_{who}_{v}"),
                            &user(who, v, &format!("{who}-{v}")),
                        )
                        .await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
    };
    let mut received: Vec<i64> = Vec::new();
    let mut reconnects = 0;
    let mut rng = 7u64;
    loop {
        // Read a pseudo-random number of changes, then drop the connection.
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let burst = 50 + (rng >> 33) % (n as u64 / 5).max(1);
        let mut finished = false;
        for _ in 0..burst {
            let m = a.next().await.expect("stream open");
            match m["type"].as_str() {
                Some("replayed") | Some("subscribed") => continue,
                _ => {}
            }
            assert_eq!(m["topic"], "user:user_a", "{m}");
            let seq = m["seq"].as_i64().unwrap();
            assert!(seq > last, "duplicate or out of order: {seq} after {last}");
            last = seq;
            received.push(seq);
            if received.len() as i64 >= n {
                finished = true;
                break;
            }
        }
        if finished {
            break;
        }
        drop(a);
        reconnects += 1;
        a = connect(&s, Some(&session("user_a"))).await.unwrap();
        a.send(json!({"type": "subscribe", "topic": "user:user_a", "since": last}))
            .await;
        let ack = a.next().await.unwrap();
        assert_eq!(ack["type"], "subscribed", "{ack}");
        assert_eq!(ack["since"], last);
    }
    writer.await.unwrap();
    s.settle().await;
    const Q: &str = "SELECT seq FROM change_feed WHERE kind = 'user' AND entity_id = 'user_a' AND seq > $1 ORDER BY seq";
    let want: Vec<i64> = match &s.db {
        Database::Sqlite(p, ..) => sqlx::query_scalar(Q).bind(first).fetch_all(p).await,
        Database::Postgres(p) => sqlx::query_scalar(Q).bind(first).fetch_all(p).await,
    }
    .unwrap();
    assert_eq!(
        want.len() as i64,
        n,
        "every change of user_a is in the feed"
    );
    assert!(reconnects >= 3, "only {reconnects} reconnects");
    assert_eq!(
        received, want,
        "gap or duplicate across {reconnects} reconnects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_outside_the_resume_window_gets_resync() {
    let s = server(|c| c.realtime.resume.max_entries = 5).await;
    for v in 1..=10 {
        post(
            &s,
            &format!("msg_w_{v}"),
            &user("user_a", v, &format!("v{v}")),
        )
        .await;
    }
    s.settle().await;
    let mut a = connect(&s, Some(&session("user_a"))).await.unwrap();
    for (since, reason) in [(1, "older"), (1_000_000, "ahead")] {
        a.send(json!({"type": "subscribe", "topic": "user:user_a", "since": since}))
            .await;
        let r = a.next().await.unwrap();
        assert_eq!(r["type"], "resync", "{r}");
        assert!(r["reason"].as_str().unwrap().contains(reason), "{r}");
        // It goes on live, from now.
        let ack = a.next().await.unwrap();
        assert_eq!(ack["type"], "subscribed", "{ack}");
        a.send(json!({"type": "unsubscribe", "topic": "user:user_a"}))
            .await;
        assert_eq!(a.next().await.unwrap()["type"], "unsubscribed");
    }
    // Within the window: the last three changes, then the marker.
    let head = s.scalar("SELECT MAX(seq) FROM change_feed").await;
    a.send(json!({"type": "subscribe", "topic": "user:user_a", "since": head - 3}))
        .await;
    assert_eq!(a.next().await.unwrap()["type"], "subscribed");
    for want in head - 2..=head {
        assert_eq!(a.next().await.unwrap()["seq"], want);
    }
    let done = a.next().await.unwrap();
    assert_eq!(
        (
            done["type"].as_str(),
            done["seq"].as_i64(),
            done["count"].as_i64()
        ),
        (Some("replayed"), Some(head), Some(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_error_frames_and_oversized_ones_close() {
    let s = server(|c| c.realtime.max_connections_per_token = 2).await;
    let mut a = connect(&s, Some(API)).await.unwrap();
    for bad in [
        "{not json",
        r#"{"type":"dance"}"#,
        r#"{"type":"subscribe"}"#,
        "[]",
    ] {
        a.ws.send(Message::text(bad)).await.unwrap();
        let r = a.next().await.unwrap();
        assert_eq!(r["type"], "error", "{bad}: {r}");
        assert!(
            r["error"]
                .as_str()
                .unwrap()
                .starts_with("malformed message"),
            "{r}"
        );
    }
    a.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert!(a.next().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("binary"));
    a.send(json!({"type": "subscribe", "topic": "user:u", "since": -1}))
        .await;
    assert!(a.next().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("since"));
    a.send(json!({"type": "ping"})).await;
    assert_eq!(
        a.next().await.unwrap()["type"],
        "pong",
        "still open after bad input"
    );

    // The per-token limit: a second connection is fine, a third is refused.
    let _b = connect(&s, Some(API)).await.unwrap();
    let refused = connect(&s, Some(API))
        .await
        .err()
        .expect("third connection refused");
    assert_eq!(refused.0, 429, "{refused:?}");
    assert!(refused.1["error"]
        .as_str()
        .unwrap()
        .contains("too many connections"));

    let big = json!({"type": "subscribe", "topic": "user:u", "pad": "x".repeat(5000)});
    a.ws.send(Message::text(big.to_string())).await.unwrap();
    match a.next_or_end().await {
        Err(End::Closed(Some((code, reason)))) => {
            assert_eq!(code, u16::from(CloseCode::Size));
            assert!(reason.contains("4096"), "{reason}");
        }
        other => panic!("expected a close for the oversized message, got {other:?}"),
    }
    drop(a);
    // Its slot is free again.
    let mut again = None;
    for _ in 0..100 {
        if let Ok(c) = connect(&s, Some(API)).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        again.is_some(),
        "the closed connection's slot was never freed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_subscriptions_is_closed_as_idle() {
    let s = server(|c| c.realtime.idle_timeout = Duration::from_secs(1)).await;
    let mut a = connect(&s, Some(API)).await.unwrap();
    match a.next_or_end().await {
        Err(End::Closed(Some((4000, reason)))) => assert!(reason.contains("idle"), "{reason}"),
        other => panic!("expected an idle close, got {other:?}"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Posts `count` changes of `user_s` (60 KB each: on loopback the kernel lets a
/// socket buffer up to 4 MiB, and the stalled client's must overflow) and returns each healthy client's receipt lags (ms after
/// commit).
async fn burst(s: &Server, healthy: &mut [Client], from: i64, count: i64) -> Vec<f64> {
    let pad = "p".repeat(60_000);
    let readers: Vec<_> = healthy
        .iter_mut()
        .map(|c| async move {
            let mut lags = Vec::new();
            while (lags.len() as i64) < count {
                let m = c.next().await.expect("healthy client stays open");
                assert_ne!(m["type"], "resync", "a healthy client was told to resync");
                if m["kind"] != "user" {
                    continue;
                }
                let now_ms = clerksync::clock::system().now_ms();
                lags.push((now_ms - m["committed_at"].as_i64().unwrap()) as f64);
            }
            lags
        })
        .collect();
    let writer = async {
        for v in from..from + count {
            let mut u = user("user_s", v, &format!("s{v}"));
            u["data"]["public_metadata"] = json!({"pad": pad});
            post(s, &format!("msg_s_{v}"), &u).await;
        }
    };
    let (lags, ()) = tokio::join!(futures::future::join_all(readers), writer);
    lags.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_dropped_and_does_not_slow_the_others() {
    let s = server(|c| c.realtime.queue = 16).await;
    post(&s, "msg_s_0", &user("user_s", 1, "s")).await;
    s.settle().await;
    let mut healthy = Vec::new();
    for _ in 0..3 {
        let mut c = connect(&s, Some(API)).await.unwrap();
        assert_eq!(c.subscribe("user:user_s").await["type"], "subscribed");
        healthy.push(c);
    }
    const K: i64 = 200;
    let baseline = burst(&s, &mut healthy, 2, K).await;

    // A client with a tiny receive window that never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(s.addr).await.unwrap();
    let mut req = format!("ws://{}/v1/realtime", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {API}").parse().unwrap());
    let (mut stalled, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    stalled
        .send(Message::text(
            json!({"type": "subscribe", "topic": "user:user_s"}).to_string(),
        ))
        .await
        .unwrap();
    // Its subscription is live once the server has answered (unread) and the
    // next change reaches the healthy clients after it.
    let with_stall = burst(&s, &mut healthy, 2 + K, K).await;

    // Now read what the stalled client got: some changes, then the end.
    let mut changes = 0;
    let mut told_resync = false;
    let end = loop {
        let m = tokio::time::timeout(Duration::from_secs(60), stalled.next())
            .await
            .expect("the stalled client's stream ends");
        match m {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("resync") => told_resync = true,
                    Some("update") => changes += 1,
                    _ => {}
                }
                if changes >= K {
                    break "everything".to_string();
                }
            }
            Some(Ok(Message::Close(f))) => break format!("close {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("error {e}"),
            None => break "eof".into(),
        }
    };
    assert!(
        changes < K,
        "the stalled client was never dropped ({changes} changes, then {end})"
    );
    // It is told to resync when the server could still write to it; when its
    // socket was stuck, the connection is just dropped.
    assert!(told_resync || !end.starts_with("close"), "{end}");
    let (a, b) = (median(baseline), median(with_stall));
    eprintln!("stalled client: {changes} changes, then {end}; healthy median lag {a} ms -> {b} ms");
    // Lags are whole milliseconds; 1 ms is the resolution, not a limit.
    assert!(
        b <= 10.0 * a.max(1.0),
        "healthy clients slowed down by a stalled one: median lag {a} ms -> {b} ms"
    );
}

/// A session token for `sub` that expires at `exp` (unix seconds).
fn session_until(sub: &str, exp: i64) -> String {
    let mut c = claims(sub);
    c["exp"] = json!(exp);
    sign_with(&c, &keys().0)
}

/// Connects and returns the client with its `ready` message.
async fn connect_ready(s: &Server, token: &str) -> (Client, Value) {
    let mut req = format!("ws://{}/v1/realtime", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut c = Client { ws };
    let ready = c.next().await.expect("ready");
    assert_eq!(ready["type"], "ready", "{ready}");
    (c, ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_at_token_expiry_unless_refreshed() {
    // No leeway: the connections end right at `exp`.
    let s = server(|c| c.realtime.leeway_secs = 0).await;
    post(&s, "msg_x_1", &user("user_a", 1, "Ada")).await;
    s.settle().await;
    let exp = now() + 2;
    let (mut stale, ready) = connect_ready(&s, &session_until("user_a", exp)).await;
    assert_eq!(ready["expires_at"], exp, "{ready}");
    assert_eq!(stale.subscribe("user:user_a").await["type"], "subscribed");
    let (mut fresh, _) = connect_ready(&s, &session_until("user_a", exp)).await;
    assert_eq!(fresh.subscribe("user:user_a").await["type"], "subscribed");
    // The API token's connection never expires.
    let (_, ready) = connect_ready(&s, API).await;
    assert!(ready["expires_at"].is_null(), "{ready}");

    // Refusals change nothing: another user's token, an expired one, garbage.
    for (token, want) in [
        (session_until("user_b", exp + 60), "another user"),
        (session_until("user_a", now() - 10), "expired"),
        ("x.y.z".to_string(), "malformed"),
    ] {
        fresh.send(json!({"type": "auth", "token": token})).await;
        let r = fresh.next().await.unwrap();
        assert_eq!(r["type"], "error", "{r}");
        let e = r["error"].as_str().unwrap();
        assert!(e.starts_with("auth refused") && e.contains(want), "{e}");
        assert!(!e.contains(&token), "the token is echoed");
    }
    let later = now() + 60;
    fresh
        .send(json!({"type": "auth", "token": session_until("user_a", later)}))
        .await;
    let r = fresh.next().await.unwrap();
    assert_eq!(
        (
            r["type"].as_str(),
            r["user_id"].as_str(),
            r["expires_at"].as_i64()
        ),
        (Some("authenticated"), Some("user_a"), Some(later)),
        "{r}"
    );

    // The stale connection is closed, with the reason, once its token expires.
    // The hub may still be delivering the change posted before it subscribed
    // (settle waits for apply, not for the hub): that one may come first.
    loop {
        match stale.next_or_end().await {
            Ok(m) if m["seq"] == 1 && m["id"] == "user_a" => continue,
            Err(End::Closed(Some((code, reason)))) => {
                assert_eq!((code, reason.as_str()), (4001, "token expired"));
                break;
            }
            other => panic!("expected a token-expired close, got {other:?}"),
        }
    }
    assert!(now() > exp, "closed before the token expired");
    // Past the old expiry, the refreshed one still gets changes.
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    post(&s, "msg_x_2", &user("user_a", 2, "Ada L.")).await;
    let m = fresh
        .next_or_end()
        .await
        .expect("the refreshed connection is open");
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("update"), Some("user_a")),
        "{m}"
    );

    let rejected =
        |reason: &str| format!("clerksync_realtime_rejected_total{{reason=\"{reason}\"}}");
    assert_eq!(s.metric(&rejected("session_expired")).await, Some(1.0));
    assert_eq!(s.metric(&rejected("refresh_refused")).await, Some(1.0));
    assert_eq!(s.metric(&rejected("expired_token")).await, Some(1.0));
    assert!(
        s.metric("clerksync_realtime_messages_sent_total")
            .await
            .unwrap()
            >= 1.0
    );
    assert!(
        s.metric("clerksync_realtime_delivery_lag_seconds_count")
            .await
            .unwrap()
            >= 1.0
    );
    // `fresh` is open; the stale and the API connections have ended (or are ending).
    assert!(s.metric("clerksync_realtime_connections").await.unwrap() >= 1.0);
}

/// `clerksync wsbench`'s step, in process and tiny: every client sees every
/// change of the feed, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ws_bench_delivers_every_change_to_every_client_once_in_order() {
    use clerksync_loadgen::ws::{run_step, StepConfig, TopicMode};
    let s = server(|c| c.realtime.max_connections_per_token = 50).await;
    let before = s
        .scalar("SELECT COALESCE(MAX(seq), 0) FROM change_feed")
        .await;
    let secret =
        clerksync::webhook::SecretSet::parse_list(&crate::helpers::whsec(crate::helpers::TEST_KEY))
            .unwrap()
            .first()
            .clone();
    let cfg = StepConfig {
        base: format!("http://{}", s.addr).parse().unwrap(),
        secret,
        api_token: Some(API.into()),
        clients: 20,
        rate: 500.0,
        events: 200,
        seed: 11,
        topics: TopicMode::All,
        max_in_flight: 16,
        drain_timeout: Duration::from_secs(120),
        // Not a timing test: delivery only.
        max_p99_ms: f64::INFINITY,
        keep_seqs: true,
        progress: false,
    };
    let r = run_step(&cfg).await.unwrap();
    assert_eq!(r.webhooks_acked, 200, "{r:?}");
    assert!(r.drained, "{r:?}");
    assert_eq!(
        (r.resynced_clients, r.closed_clients, r.out_of_order),
        (0, 0, 0),
        "{r:?}"
    );
    assert!(r.all_delivered && r.kept_up, "{r:?}");
    const Q: &str = "SELECT seq FROM change_feed WHERE seq > $1 ORDER BY seq";
    let want: Vec<i64> = match &s.db {
        Database::Sqlite(p, ..) => sqlx::query_scalar(Q).bind(before).fetch_all(p).await,
        Database::Postgres(p) => sqlx::query_scalar(Q).bind(before).fetch_all(p).await,
    }
    .unwrap();
    assert!(want.len() >= 200, "{} changes", want.len());
    assert_eq!(r.changes as i64, want.last().unwrap() - before);
    let seqs = r.seqs.expect("kept seqs");
    assert_eq!(seqs.len(), 20);
    for (i, got) in seqs.iter().enumerate() {
        assert_eq!(got, &want, "client {i}");
    }
    assert_eq!(r.messages, 20 * want.len() as u64);
    assert!(r.latency_ms.max >= r.latency_ms.p50);
}

/// Replaying `user:ID` reads that user's feed rows only, however many other
/// users' memberships are in between (it used to read the whole feed, and the
/// store for every membership in it); past `max_replay` the client resyncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_replay_reads_only_its_rows_and_is_bounded() {
    let s = server(|c| c.realtime.max_replay = 4).await;
    post(&s, "msg_q_org", &org("org_q", 1, "q")).await;
    post(&s, "msg_q_a0", &user("user_a", 1, "a0")).await;
    s.settle().await;
    let since = s.scalar("SELECT MAX(seq) FROM change_feed").await;
    for i in 0..40 {
        post(
            &s,
            &format!("msg_q_m{i}"),
            &membership(&format!("orgmem_q{i}"), "org_q", &format!("user_o{i}"), 1),
        )
        .await;
    }
    post(&s, "msg_q_a1", &user("user_a", 2, "a1")).await;
    post(
        &s,
        "msg_q_am",
        &membership("orgmem_qa", "org_q", "user_a", 1),
    )
    .await;
    // Also refreshes user_a's membership: two rows.
    post(&s, "msg_q_a2", &user("user_a", 3, "a2")).await;
    s.settle().await;
    let mine = "svix_id IN ('msg_q_a1', 'msg_q_am', 'msg_q_a2')";
    let n = s
        .scalar(&format!("SELECT COUNT(*) FROM change_feed WHERE {mine}"))
        .await;
    assert_eq!(n, 4);
    let first = s
        .scalar(&format!("SELECT MIN(seq) FROM change_feed WHERE {mine}"))
        .await;
    let last = s
        .scalar(&format!("SELECT MAX(seq) FROM change_feed WHERE {mine}"))
        .await;
    let read_before = s
        .metric("clerksync_realtime_replay_rows_read_total")
        .await
        .unwrap_or(0.0);
    let mut a = connect(&s, Some(API)).await.unwrap();
    a.send(json!({"type": "subscribe", "topic": "user:user_a", "since": since}))
        .await;
    let ack = a.next().await.unwrap();
    assert_eq!(ack["type"], "subscribed", "{ack}");
    let mut got = Vec::new();
    for _ in 0..n {
        let f = a.next().await.unwrap();
        assert_eq!(f["topic"], "user:user_a", "{f}");
        got.push(f["seq"].as_i64().unwrap());
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    assert_eq!((got[0], got[got.len() - 1]), (first, last), "{got:?}");
    let done = a.next().await.unwrap();
    assert_eq!(done["type"], "replayed", "{done}");
    assert_eq!(done["count"], n, "{done}");
    let read = s
        .metric("clerksync_realtime_replay_rows_read_total")
        .await
        .unwrap()
        - read_before;
    assert_eq!(read, n as f64, "feed rows read: only the topic's");
    // Two more changes of the topic, six in all, with a bound of four: reload instead.
    post(&s, "msg_q_a3", &user("user_a", 4, "a3")).await;
    s.settle().await;
    let mut b = connect(&s, Some(API)).await.unwrap();
    b.send(json!({"type": "subscribe", "topic": "user:user_a", "since": since}))
        .await;
    let r = b.next().await.unwrap();
    assert_eq!(r["type"], "resync", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("more than 4"), "{r}");
    assert_eq!(b.next().await.unwrap()["type"], "subscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_requests_past_the_rate_get_an_error_frame() {
    let s = server(|c| c.realtime.subscribes_per_minute = 3).await;
    let mut c = connect(&s, Some(API)).await.unwrap();
    for id in ["a", "b", "c"] {
        let ack = c.subscribe(&format!("user:user_{id}")).await;
        assert_eq!(ack["type"], "subscribed", "{ack}");
    }
    let refused = c.subscribe("user:user_d").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("at most 3 per minute"),
        "{refused}"
    );
    assert_eq!(
        s.metric("clerksync_realtime_rejected_total{reason=\"subscribe_rate\"}")
            .await,
        Some(1.0)
    );
    // The connection goes on.
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.next().await.unwrap()["type"], "pong");
}
