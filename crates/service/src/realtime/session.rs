//! One realtime connection after the upgrade: its controller and its writer.
//!
//! Owns: the controller task, which reads client frames and answers them
//! (subscribe with its membership check, snapshot or replay; unsubscribe; auth
//! refresh; ping), keeps the heartbeat, the idle limit, the subscribe rate and
//! the session's expiry; and starting and stopping the connection's writer.
//! Must never: write to the socket itself (only the writer does), let a session
//! subscribe to a topic it is not entitled to, or block the hub. See
//! ARCHITECTURE.md.

use crate::clock::Clock;
use crate::feed::count_filtered;
use crate::realtime::auth::{verify_session_claims, Principal};
use crate::realtime::config::RealtimeConfig;
use crate::realtime::hub::{Connection, RealtimeHub};
use crate::realtime::protocol::{
    close_code, control, parse_client_message, ClientMessage, Outbound, Topic,
};
use crate::realtime::resume::{check_resume, feed_filter, ResumeRefused};
use crate::realtime::snapshot;
use crate::realtime::visibility::is_member;
use crate::realtime::writer::Writer;
use crate::store::db::Database;
use crate::telemetry::metrics::{Metrics, RealtimeMetrics, RejectReason};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures::stream::SplitStream;
use futures::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS: usize = 100;
/// How long a closing connection's writer may take to flush what is queued.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Counts an open connection while it lives.
struct Open(RealtimeMetrics);

impl Open {
    fn new(m: &RealtimeMetrics) -> Self {
        m.connections.inc();
        Open(m.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// What a connection's tasks need of the server, handed over by the endpoint
/// (api/realtime.rs) so that realtime does not depend on the app's state.
#[derive(Clone)]
pub struct SessionEnv {
    pub db: Database,
    pub hub: Arc<RealtimeHub>,
    /// The realtime settings (the endpoint shares one copy for all connections).
    pub config: Arc<RealtimeConfig>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
}

/// Serves one upgraded connection until it closes.
pub async fn serve(
    socket: WebSocket,
    env: SessionEnv,
    principal: Principal,
    expires_at: Option<i64>,
    conn: Connection,
    tx: mpsc::Sender<Outbound>,
    rx: mpsc::Receiver<Outbound>,
) {
    let _open = Open::new(&env.metrics.realtime);
    let hub = env.hub.clone();
    let (sink, stream) = socket.split();
    let abort = CancellationToken::new();
    let writer_done = CancellationToken::new();
    let writer = Writer {
        sink,
        rx,
        hub: hub.clone(),
        conn: conn.id,
        viewer: principal.viewer(),
        too_slow: conn.too_slow.clone(),
        abort: abort.clone(),
        metrics: env.metrics.realtime.clone(),
        clock: env.clock.clone(),
    };
    let done = writer_done.clone();
    let writer = tokio::spawn(async move {
        writer.run().await;
        done.cancel();
    });
    let user_id = match &principal {
        Principal::User(sub) => Some(sub.clone()),
        Principal::Service => None,
    };
    let _ = tx.try_send(control(
        json!({"type": "ready", "user_id": user_id, "seq": hub.position(), "expires_at": expires_at}),
    ));
    let mut ctl = Controller {
        env: &env,
        hub: &hub,
        conn: conn.id,
        principal: &principal,
        tx: &tx,
        expires_at,
        subscribes_left: f64::from(env.config.subscribes_per_minute),
        refilled_at: Instant::now(),
    };
    if let Some((code, reason)) = ctl.run(stream, &writer_done).await {
        let _ = tx.try_send(Outbound::Close { code, reason });
    }
    drop(tx);
    // The hub lets go of its sender too: the writer's queue ends after what is
    // already in it.
    drop(conn);
    if tokio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
        abort.cancel();
    }
}

/// Reads client frames, answers them, keeps the heartbeat and the idle limit.
struct Controller<'a> {
    env: &'a SessionEnv,
    hub: &'a Arc<RealtimeHub>,
    conn: u64,
    principal: &'a Principal,
    tx: &'a mpsc::Sender<Outbound>,
    /// The session token's `exp` (unix seconds), moved on by `auth` messages.
    expires_at: Option<i64>,
    /// Subscribe requests left (a token bucket of `subscribes_per_minute`,
    /// refilled continuously) and when it was last refilled.
    subscribes_left: f64,
    refilled_at: Instant,
}

/// A reason to close: (code, reason).
type Close = (u16, String);

impl Controller<'_> {
    /// Runs until the client or the writer ends the connection; returns the
    /// close frame to send, if any.
    async fn run(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        writer_done: &CancellationToken,
    ) -> Option<Close> {
        let rt = &self.env.config;
        let mut ping =
            tokio::time::interval_at(Instant::now() + rt.ping_interval, rt.ping_interval);
        // After a stall (a slow answer), the next ping is one interval later, not
        // a burst of two that would count the first as unanswered.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut awaiting_pong = false;
        // When the connection was last seen holding a subscription.
        let mut busy_at = Instant::now();
        loop {
            let idle_check = busy_at + rt.idle_timeout;
            let expiry = self.expiry_check();
            tokio::select! {
                _ = writer_done.cancelled() => return None,
                _ = self.hub.shutdown().cancelled() => return None,
                _ = async {
                    match expiry {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if self.expired() {
                        self.env.metrics.realtime.reject(RejectReason::session_expired);
                        return Some((close_code::TOKEN_EXPIRED, "token expired".into()));
                    }
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        return Some((close_code::NO_PONG, format!("no pong within {} s", rt.ping_interval.as_secs())));
                    }
                    awaiting_pong = true;
                    // A full queue means the hub is about to drop this connection anyway.
                    let _ = self.tx.try_send(Outbound::Ping);
                }
                _ = tokio::time::sleep_until(idle_check) => {
                    if self.hub.subscription_count(self.conn) > 0 {
                        busy_at = Instant::now();
                    } else {
                        return Some((close_code::IDLE, format!("idle: no subscription for {} s", rt.idle_timeout.as_secs())));
                    }
                }
                msg = stream.next() => {
                    // Any frame proves the client is alive.
                    awaiting_pong = false;
                    match msg {
                        None | Some(Ok(Message::Close(_))) => return None,
                        Some(Err(e)) => return Some(read_error(&e, rt.max_message_bytes)),
                        Some(Ok(Message::Text(t))) => {
                            if let Err(close) = self.handle(&t).await {
                                return Some(close);
                            }
                            if self.hub.subscription_count(self.conn) > 0 {
                                busy_at = Instant::now();
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let m = json!({"type": "error", "error": "binary messages are not supported: send JSON text"});
                            if let Err(close) = self.reply(m).await {
                                return Some(close);
                            }
                        }
                        // Pings are answered by the WebSocket layer.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    }
                }
            }
        }
    }

    /// The last moment the session token is valid (`exp` + leeway, by the app's
    /// clock), as a timer deadline; None for connections that do not expire.
    fn expiry_check(&self) -> Option<Instant> {
        let exp = self.expires_at?;
        let leeway = self.env.config.leeway_secs;
        // Expired once `now_secs > exp + leeway`, i.e. from the next whole second.
        let end_ms = exp
            .saturating_add(leeway)
            .saturating_add(1)
            .saturating_mul(1000);
        let left = end_ms.saturating_sub(self.env.clock.now_ms()).max(0) as u64;
        Some(Instant::now() + Duration::from_millis(left))
    }

    fn expired(&self) -> bool {
        let leeway = self.env.config.leeway_secs;
        self.expires_at
            .is_some_and(|exp| self.env.clock.now_secs() > exp.saturating_add(leeway))
    }

    /// `{"type":"auth","token":..}`: a refreshed session token for the same user
    /// moves the connection's expiry; anything else changes nothing.
    async fn refresh(&mut self, token: &str) -> Result<(), Close> {
        let metrics = &self.env.metrics.realtime;
        let refuse =
            |why: String| json!({"type": "error", "error": format!("auth refused: {why}")});
        let Principal::User(me) = self.principal else {
            metrics.reject(RejectReason::refresh_refused);
            return self
                .reply(refuse(
                    "this connection does not expire: auth is for session tokens".into(),
                ))
                .await;
        };
        let rt = &self.env.config;
        let Some(keys) = &rt.session_keys else {
            metrics.reject(RejectReason::refresh_refused);
            return self
                .reply(refuse("session tokens are not configured".into()))
                .await;
        };
        match verify_session_claims(rt, keys, token.trim(), self.env.clock.now_secs()) {
            Err(e) => {
                metrics.reject(e.reason());
                self.reply(refuse(e.to_string())).await
            }
            Ok(s) if s.sub != *me => {
                metrics.reject(RejectReason::refresh_refused);
                self.reply(refuse(
                    "the token is for another user: open a new connection".into(),
                ))
                .await
            }
            Ok(s) => {
                self.expires_at = Some(s.exp);
                self.reply(json!({"type": "authenticated", "user_id": me, "expires_at": s.exp}))
                    .await
            }
        }
    }

    /// Queues an answer; a client that does not read its answers is closed.
    async fn reply(&self, v: serde_json::Value) -> Result<(), Close> {
        self.queue(control(v)).await
    }

    async fn queue(&self, out: Outbound) -> Result<(), Close> {
        let wait = self.env.config.ping_interval;
        match tokio::time::timeout(wait, self.tx.send(out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err((
                close_code::TOO_SLOW,
                "too slow: answers are not being read".into(),
            )),
            Err(_) => {
                self.env.metrics.realtime.resyncs.inc();
                Err((
                    close_code::TOO_SLOW,
                    "too slow: answers are not being read".into(),
                ))
            }
        }
    }

    async fn handle(&mut self, text: &str) -> Result<(), Close> {
        let msg = match parse_client_message(text) {
            Ok(m) => m,
            Err(e) => {
                return self
                    .reply(json!({"type": "error", "error": format!("malformed message: {e}")}))
                    .await
            }
        };
        match msg {
            ClientMessage::Ping => self.reply(json!({"type": "pong"})).await,
            ClientMessage::Auth { token } => self.refresh(&token).await,
            ClientMessage::Unsubscribe { topic } => match Topic::parse(&topic) {
                Ok(t) if self.hub.unsubscribe(self.conn, &t) => {
                    self.reply(
                        json!({"type": "unsubscribed", "topic": topic, "reason": "requested"}),
                    )
                    .await
                }
                Ok(_) => {
                    self.reply(json!({"type": "error", "topic": topic, "error": "not subscribed"}))
                        .await
                }
                Err(e) => {
                    self.reply(json!({"type": "error", "topic": topic, "error": e.to_string()}))
                        .await
                }
            },
            ClientMessage::Subscribe {
                topic,
                since,
                snapshot,
            } => {
                if !self.take_subscribe() {
                    let per_minute = self.env.config.subscribes_per_minute;
                    self.env
                        .metrics
                        .realtime
                        .reject(RejectReason::subscribe_rate);
                    return self
                        .reply(json!({"type": "error", "topic": topic, "error": format!("too many subscribe requests: at most {per_minute} per minute")}))
                        .await;
                }
                self.subscribe(topic, since, snapshot).await
            }
        }
    }

    /// Takes one subscribe request from the connection's allowance: each one
    /// may cost a membership check, a snapshot or a replay.
    fn take_subscribe(&mut self) -> bool {
        let per_minute = f64::from(self.env.config.subscribes_per_minute);
        let now = Instant::now();
        let refill = now.duration_since(self.refilled_at).as_secs_f64() * per_minute / 60.0;
        self.refilled_at = now;
        self.subscribes_left = (self.subscribes_left + refill).min(per_minute);
        if self.subscribes_left >= 1.0 {
            self.subscribes_left -= 1.0;
            true
        } else {
            false
        }
    }

    async fn subscribe(
        &mut self,
        raw: String,
        since: Option<i64>,
        snapshot: bool,
    ) -> Result<(), Close> {
        let deny = |error: String| json!({"type": "error", "topic": raw, "error": error});
        let topic = match Topic::parse(&raw) {
            Ok(t) => t,
            Err(e) => return self.reply(deny(e.to_string())).await,
        };
        if let Principal::User(me) = self.principal {
            let refusal = match &topic {
                Topic::All => Some("topic * needs the API token"),
                Topic::User(id) if id != me => {
                    Some("not allowed: a session may subscribe only to its own user")
                }
                _ => None,
            };
            if let Some(r) = refusal {
                self.env.metrics.realtime.reject(RejectReason::topic_denied);
                return self.reply(deny(r.into())).await;
            }
        }
        let bad_request = match (since, snapshot, &topic) {
            (Some(s), _, _) if s < 0 => Some("since must be a sequence number >= 0"),
            (Some(_), true, _) => Some("since and snapshot exclude each other"),
            (None, true, Topic::All) => Some("snapshot is for user: and org: topics"),
            _ => None,
        };
        if let Some(r) = bad_request {
            return self.reply(deny(r.into())).await;
        }
        // Registered first, checked second: a membership deleted between the
        // check and the registration would otherwise never revoke it. Until
        // `go_live`, its live frames wait in the hub.
        let (start, sub) = match self.hub.begin(self.conn, &topic, MAX_SUBSCRIPTIONS) {
            Ok(p) => p,
            Err(e) => return self.reply(deny(e.to_string())).await,
        };
        if let (Principal::User(me), Topic::Org(org)) = (self.principal, &topic) {
            let refusal = match is_member(&self.env.db, me, org).await {
                Ok(true) => None,
                Ok(false) => {
                    self.env.metrics.realtime.reject(RejectReason::topic_denied);
                    Some("not allowed: not a member of this organization".to_string())
                }
                Err(e) => {
                    tracing::error!(error = %e, "realtime: membership check failed");
                    Some("internal error".to_string())
                }
            };
            if let Some(r) = refusal {
                self.hub.unsubscribe(self.conn, &topic);
                return self.reply(deny(r)).await;
            }
        }
        let frame = |v: serde_json::Value| Utf8Bytes::from(v.to_string());
        if snapshot {
            // Read after registering: the live frames meanwhile are buffered
            // and follow the snapshot, so nothing falls between the two.
            let state =
                match snapshot::snapshot(&self.env.db, &topic, &self.principal.viewer()).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(error = %e, "realtime: snapshot failed");
                        self.hub.unsubscribe(self.conn, &topic);
                        return self.reply(deny("internal error".into())).await;
                    }
                };
            let _ = self.hub.go_live(
                self.conn,
                &topic,
                sub,
                start,
                vec![
                    frame(json!({"type": "subscribed", "topic": raw, "seq": start})),
                    frame(json!({"type": "snapshot", "topic": raw, "seq": start, "data": state})),
                ],
            );
            return Ok(());
        }
        let Some(since) = since else {
            // The ack goes out with the switch to live, under the hub's lock: a
            // revocation in the meantime sends its notice instead (NotSubscribed).
            let _ = self.hub.go_live(
                self.conn,
                &topic,
                sub,
                start,
                vec![frame(
                    json!({"type": "subscribed", "topic": raw, "seq": start}),
                )],
            );
            return Ok(());
        };
        let now = self.env.clock.now_ms();
        let rt = &self.env.config;
        let resume = match check_resume(&self.env.db, since, now, &rt.resume).await {
            // A replay is bounded: past `max_replay` changes the client
            // reloads the topic's state instead (cheaper for both sides).
            Ok(Ok(())) => {
                count_filtered(&self.env.db, feed_filter(&topic), since, rt.max_replay + 1)
                    .await
                    .map(|n| {
                        if n > rt.max_replay {
                            Err(ResumeRefused::TooMany(rt.max_replay))
                        } else {
                            Ok(())
                        }
                    })
            }
            other => other,
        };
        match resume {
            Ok(Ok(())) => {
                // The writer acks, replays, then lets the buffered live frames through.
                let ack = json!({"type": "subscribed", "topic": raw, "since": since});
                self.queue(Outbound::Replay {
                    topic,
                    sub,
                    since,
                    ack: Utf8Bytes::from(ack.to_string()),
                })
                .await
            }
            Ok(Err(refused)) => {
                self.reply(json!({"type": "resync", "topic": raw, "reason": refused.to_string()}))
                    .await?;
                let _ = self.hub.go_live(
                    self.conn,
                    &topic,
                    sub,
                    start,
                    vec![frame(
                        json!({"type": "subscribed", "topic": raw, "seq": start}),
                    )],
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "realtime: resume check failed");
                self.hub.unsubscribe(self.conn, &topic);
                self.reply(deny("internal error".into())).await
            }
        }
    }
}

/// The close for a failed read: too big (the limit), or a protocol error.
fn read_error(e: &axum::Error, limit: usize) -> Close {
    // axum wraps tungstenite's error without exposing its type; its capacity
    // error reads "Space limit exceeded: Message too long: N > M".
    if e.to_string().contains("Space limit exceeded") {
        (
            close_code::TOO_BIG,
            format!("message too big: the limit is {limit} bytes"),
        )
    } else {
        (close_code::PROTOCOL_ERROR, "protocol error".into())
    }
}
