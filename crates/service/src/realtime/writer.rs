//! The one task that writes to a realtime connection's socket.
//!
//! Owns: draining the connection's queue in order (frames, live changes timed
//! for the delivery-lag metric, pings, replays, close frames), flushing in
//! bursts, and the replay of a topic from the feed before its buffered live
//! frames. Must never: wait on a socket longer than `WRITE_TIMEOUT`, or send a
//! replayed frame the viewer may not see. See ARCHITECTURE.md.

use crate::clock::Clock;
use crate::realtime::hub::RealtimeHub;
use crate::realtime::protocol::{close_code, Outbound, Topic};
use crate::realtime::resume::replay_page;
use crate::realtime::visibility::{is_member, Viewer};
use crate::telemetry::metrics::RealtimeMetrics;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::SplitSink;
use futures::SinkExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest one socket write may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Feed entries read per replay page.
const REPLAY_PAGE: i64 = 500;

/// The one task that writes to the socket.
pub(crate) struct Writer {
    pub(crate) sink: SplitSink<WebSocket, Message>,
    pub(crate) rx: mpsc::Receiver<Outbound>,
    pub(crate) hub: Arc<RealtimeHub>,
    pub(crate) conn: u64,
    pub(crate) viewer: Viewer,
    pub(crate) too_slow: CancellationToken,
    pub(crate) abort: CancellationToken,
    pub(crate) metrics: RealtimeMetrics,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Writer {
    pub(crate) async fn run(mut self) {
        loop {
            let out = tokio::select! {
                biased;
                _ = self.abort.cancelled() => return,
                _ = self.too_slow.cancelled() => return self.close_too_slow().await,
                _ = self.hub.shutdown().cancelled() => {
                    return self.close(close_code::GOING_AWAY, "server shutting down").await
                }
                out = self.rx.recv() => out,
            };
            let ok = match out {
                None => {
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, self.sink.close()).await;
                    return;
                }
                Some(Outbound::Frame(t)) => self.put(Message::Text(t)).await,
                Some(Outbound::Change { text, committed_at }) => {
                    let ok = self.put(Message::Text(text)).await;
                    if ok {
                        let lag_ms = self.clock.now_ms().saturating_sub(committed_at).max(0);
                        self.metrics
                            .delivery_lag_seconds
                            .observe(lag_ms as f64 / 1000.0);
                    }
                    ok
                }
                Some(Outbound::Ping) => self.put(Message::Ping(Default::default())).await,
                Some(Outbound::Close { code, reason }) => return self.close(code, &reason).await,
                Some(Outbound::Replay {
                    topic,
                    sub,
                    since,
                    ack,
                }) => self.replay(topic, sub, since, ack).await,
            };
            if !ok {
                return;
            }
        }
    }

    /// Writes one message, flushing when nothing else is queued (so bursts go
    /// out in few syscalls). False: the socket is gone or stuck.
    async fn put(&mut self, m: Message) -> bool {
        if matches!(m, Message::Text(_)) {
            self.metrics.messages_sent.inc();
        }
        let flush = self.rx.is_empty();
        let write = async {
            if flush {
                self.sink.send(m).await
            } else {
                self.sink.feed(m).await
            }
        };
        tokio::select! {
            biased;
            _ = self.abort.cancelled() => false,
            r = tokio::time::timeout(WRITE_TIMEOUT, write) => matches!(r, Ok(Ok(()))),
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        };
        let _ =
            tokio::time::timeout(WRITE_TIMEOUT, self.sink.send(Message::Close(Some(frame)))).await;
    }

    async fn close_too_slow(&mut self) {
        self.metrics.resyncs.inc();
        let reason = format!(
            "too slow: more than {} messages waiting; reconnect and resume from the last seq you saw",
            self.hub.queue_capacity()
        );
        let resync = json!({"type": "resync", "reason": reason}).to_string();
        if self.put(Message::Text(resync.into())).await {
            self.close(close_code::TOO_SLOW, "too slow").await;
        }
    }

    /// Sends `topic`'s changes after `since` straight from the feed, then lets
    /// the live frames the hub buffered meanwhile through (those after what the
    /// replay covered): no gap, no duplicate. False: the socket is gone.
    async fn replay(&mut self, topic: Topic, sub: u64, since: i64, ack: Utf8Bytes) -> bool {
        if !self.hub.is_subscribed(self.conn, &topic, sub) {
            return true;
        }
        if !self.put(Message::Text(ack)).await {
            return false;
        }
        let mut after = since;
        let mut count = 0u64;
        loop {
            // Unsubscribed, revoked or dropped as too slow meanwhile.
            if !self.hub.is_subscribed(self.conn, &topic, sub) {
                return true;
            }
            let page = match replay_page(self.hub.db(), &topic, &self.viewer, after, REPLAY_PAGE)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "realtime: replay failed");
                    if self.hub.is_subscribed(self.conn, &topic, sub) {
                        self.hub.unsubscribe(self.conn, &topic);
                    }
                    let m = json!({"type": "error", "topic": topic.to_string(), "error": "replay failed: subscribe again"});
                    return self.put(Message::Text(m.to_string().into())).await;
                }
            };
            for f in page.frames {
                if !self.put(Message::Text(f.text)).await {
                    return false;
                }
                count += 1;
                // The session's own membership ended in the replayed history:
                // if it is still not a member, the subscription ends here.
                if let (Some(org), Viewer::User(me)) = (&f.ends_membership_in, &self.viewer) {
                    if topic == Topic::Org(org.clone())
                        && !is_member(self.hub.db(), me, org).await.unwrap_or(false)
                    {
                        self.hub.revoke(self.conn, &topic, sub);
                        return true;
                    }
                }
            }
            self.metrics.replay_rows_read.inc_by(page.read as u64);
            after = page.covered;
            if page.done {
                break;
            }
        }
        // The marker goes ahead of the buffered live frames, through the queue.
        let done =
            json!({"type": "replayed", "topic": topic.to_string(), "seq": after, "count": count});
        let _ = self.hub.go_live(
            self.conn,
            &topic,
            sub,
            after,
            vec![Utf8Bytes::from(done.to_string())],
        );
        true
    }
}
