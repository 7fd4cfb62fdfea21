//! The realtime hub: committed changes fanned out to connections by topic.
//!
//! Owns: the registry of connections and their subscriptions, per-connection
//! bounded queues, the buffers that make a `since` replay gapless, live
//! revocation of `org:` subscriptions when a membership is deleted, and
//! following the change feed. Must never: wait on a connection (the hub only
//! `try_send`s; a full queue marks the connection as too slow and stops feeding
//! it), write to the store, or save a feed checkpoint: realtime is live-only
//! plus resume, so the hub starts at the feed head at boot and keeps its
//! position in memory. A durable checkpoint would replay, after a restart,
//! changes nobody is connected to receive (and a reconnecting client resumes
//! from *its* last `seq` via [`replay_page`](crate::realtime::resume::replay_page)
//! anyway). See ARCHITECTURE.md.

use crate::feed::{last_seq, read_after, FeedEntry};
use crate::realtime::protocol::{revoked_frame, Outbound, Topic};
use crate::realtime::render::{current_data, render, resolve, Rendered};
use crate::realtime::visibility::{is_member, Viewer};
use crate::store::db::Database;
use axum::extract::ws::Utf8Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The consumer's name (the lag metric's label). It has no checkpoint row.
pub const CONSUMER: &str = "realtime";

/// Feed entries read per round.
const BATCH: i64 = 500;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("too many connections for this {0} (limit {1})")]
    TooManyConnections(&'static str, usize),
    #[error("already subscribed to this topic")]
    AlreadySubscribed,
    #[error("too many subscriptions on this connection (limit {0})")]
    TooManySubscriptions(usize),
    #[error("not subscribed to this topic")]
    NotSubscribed,
}

enum SubState {
    /// Registered, but live frames wait in `buffer` until the subscription is
    /// authorized and any replay is done (so nothing overtakes the replay).
    Pending {
        after: i64,
        buffer: Vec<(i64, Outbound)>,
    },
    /// Frames with `seq > floor` go straight to the queue.
    Live { floor: i64 },
}

/// One subscription of one connection. `id` tells it apart from an earlier
/// subscription to the same topic (unsubscribe, subscribe again) whose replay
/// may still be queued.
struct Sub {
    id: u64,
    state: SubState,
}

struct ConnSlot {
    tx: mpsc::Sender<Outbound>,
    viewer: Viewer,
    /// The budgets this connection counts against.
    keys: Vec<String>,
    too_slow: CancellationToken,
    topics: HashSet<Topic>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    next_sub: u64,
    /// The last feed `seq` fanned out (or skipped for lack of subscribers).
    position: i64,
    conns: HashMap<u64, ConnSlot>,
    topics: HashMap<Topic, HashMap<u64, Sub>>,
    per_key: HashMap<String, usize>,
}

impl Registry {
    fn drop_sub(&mut self, id: u64, topic: &Topic) -> bool {
        let removed = match self.topics.get_mut(topic) {
            Some(subs) => {
                let r = subs.remove(&id).is_some();
                if subs.is_empty() {
                    self.topics.remove(topic);
                }
                r
            }
            None => false,
        };
        if let Some(c) = self.conns.get_mut(&id) {
            c.topics.remove(topic);
        }
        removed
    }

    /// Stops feeding a connection that cannot keep up and tells its writer.
    fn too_slow(&mut self, id: u64) {
        let topics: Vec<Topic> = match self.conns.get(&id) {
            Some(c) => c.topics.iter().cloned().collect(),
            None => return,
        };
        for t in &topics {
            self.drop_sub(id, t);
        }
        if let Some(c) = self.conns.get(&id) {
            c.too_slow.cancel();
        }
    }

    /// Hands one change's frames to its subscribers; returns the connections
    /// that could not take them.
    fn fan_out(&mut self, rendered: &Rendered, capacity: usize) -> Vec<u64> {
        let seq = rendered.seq;
        let mut slow = Vec::new();
        let Registry { topics, conns, .. } = self;
        for (topic, full, public) in &rendered.frames {
            let Some(subs) = topics.get_mut(topic) else {
                continue;
            };
            for (id, sub) in subs.iter_mut() {
                let Some(c) = conns.get(id) else {
                    continue;
                };
                let frame = match &c.viewer {
                    Viewer::Service => full.clone(),
                    Viewer::User(_) => match public {
                        Some(p) => p.clone(),
                        None => continue,
                    },
                };
                let out = Outbound::Change {
                    text: frame,
                    committed_at: rendered.committed_at,
                };
                let kept_up = match &mut sub.state {
                    SubState::Live { floor } => seq <= *floor || c.tx.try_send(out).is_ok(),
                    SubState::Pending { after, buffer } => {
                        if seq > *after {
                            buffer.push((seq, out));
                        }
                        buffer.len() <= capacity
                    }
                };
                if !kept_up {
                    slow.push(*id);
                }
            }
        }
        slow
    }

    /// Ends `user`'s session subscriptions to `org`; returns the connections
    /// that could not take the notice.
    fn revoke_user(&mut self, user: &str, org: &str) -> Vec<u64> {
        let topic = Topic::Org(org.to_string());
        let ids: Vec<u64> = match self.topics.get(&topic) {
            Some(subs) => subs
                .keys()
                .copied()
                .filter(|id| {
                    self.conns
                        .get(id)
                        .is_some_and(|c| matches!(&c.viewer, Viewer::User(u) if u == user))
                })
                .collect(),
            None => Vec::new(),
        };
        let mut slow = Vec::new();
        for id in ids {
            self.drop_sub(id, &topic);
            if !self.offer(id, Outbound::Frame(revoked_frame(&topic))) {
                slow.push(id);
            }
        }
        slow
    }

    /// Queues a frame without waiting; false if the connection is full or gone.
    fn offer(&self, id: u64, out: Outbound) -> bool {
        match self.conns.get(&id) {
            Some(c) => c.tx.try_send(out).is_ok(),
            None => false,
        }
    }
}

/// Fans committed changes out to connections. Cheap to share (`Arc`).
pub struct RealtimeHub {
    db: Database,
    registry: Mutex<Registry>,
    /// Frames a connection may have queued (and buffered during a resume).
    queue_capacity: usize,
    shutdown: CancellationToken,
}

/// A registered connection: deregisters (and frees its slot) when dropped.
pub struct Connection {
    pub id: u64,
    hub: Arc<RealtimeHub>,
    /// Cancelled when the hub gave up on this connection (queue full).
    pub too_slow: CancellationToken,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut reg = self.hub.lock();
        if let Some(c) = reg.conns.remove(&self.id) {
            for t in &c.topics {
                if let Some(subs) = reg.topics.get_mut(t) {
                    subs.remove(&self.id);
                    if subs.is_empty() {
                        reg.topics.remove(t);
                    }
                }
            }
            for key in &c.keys {
                if let Some(n) = reg.per_key.get_mut(key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        reg.per_key.remove(key);
                    }
                }
            }
        }
    }
}

impl RealtimeHub {
    /// A hub that starts after `position` (the feed head at boot).
    pub fn new(db: Database, position: i64, queue_capacity: usize) -> Self {
        Self {
            db,
            registry: Mutex::new(Registry {
                position,
                ..Default::default()
            }),
            queue_capacity: queue_capacity.max(1),
            shutdown: CancellationToken::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain maps behind, still usable.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The last `seq` the hub has fanned out.
    pub fn position(&self) -> i64 {
        self.lock().position
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// Cancelled when the server shuts down: every connection closes.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn connection_count(&self) -> usize {
        self.lock().conns.len()
    }

    /// Registers a connection if each of its `budgets` (key, most connections:
    /// a token identity, a client address) has room; returns it with the
    /// receiving end of its queue.
    pub fn connect(
        self: &Arc<Self>,
        budgets: Vec<(String, usize)>,
        viewer: Viewer,
    ) -> Result<(Connection, mpsc::Sender<Outbound>, mpsc::Receiver<Outbound>), HubError> {
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let too_slow = CancellationToken::new();
        let mut reg = self.lock();
        for (key, max) in &budgets {
            if reg.per_key.get(key).copied().unwrap_or(0) >= *max {
                let what = if key.starts_with("addr:") {
                    "address"
                } else {
                    "token"
                };
                return Err(HubError::TooManyConnections(what, *max));
            }
        }
        let mut keys = Vec::with_capacity(budgets.len());
        for (key, _) in budgets {
            *reg.per_key.entry(key.clone()).or_default() += 1;
            keys.push(key);
        }
        reg.next_id += 1;
        let id = reg.next_id;
        reg.conns.insert(
            id,
            ConnSlot {
                tx: tx.clone(),
                viewer,
                keys,
                too_slow: too_slow.clone(),
                topics: HashSet::new(),
            },
        );
        drop(reg);
        Ok((
            Connection {
                id,
                hub: self.clone(),
                too_slow,
            },
            tx,
            rx,
        ))
    }

    /// Registers a pending subscription (its live frames are buffered until
    /// [`Self::go_live`]); returns the position it starts after and its id.
    pub fn begin(&self, conn: u64, topic: &Topic, max_subs: usize) -> Result<(i64, u64), HubError> {
        let mut reg = self.lock();
        let position = reg.position;
        reg.next_sub += 1;
        let sub = reg.next_sub;
        let Some(c) = reg.conns.get_mut(&conn) else {
            return Err(HubError::NotSubscribed);
        };
        if c.topics.contains(topic) {
            return Err(HubError::AlreadySubscribed);
        }
        if c.topics.len() >= max_subs {
            return Err(HubError::TooManySubscriptions(max_subs));
        }
        c.topics.insert(topic.clone());
        reg.topics.entry(topic.clone()).or_default().insert(
            conn,
            Sub {
                id: sub,
                state: SubState::Pending {
                    after: position,
                    buffer: Vec::new(),
                },
            },
        );
        Ok((position, sub))
    }

    /// Ends a pending subscription's buffering: the `ack` frames first, then the frames
    /// after `covered` (what a replay delivered, or the start position), in
    /// order; later ones follow directly. Frames at or before `covered` are
    /// dropped: the replay already sent them. Under the hub's lock, so a
    /// revocation notice comes either instead of the ack or after it.
    pub fn go_live(
        &self,
        conn: u64,
        topic: &Topic,
        sub: u64,
        covered: i64,
        ack: Vec<Utf8Bytes>,
    ) -> Result<(), HubError> {
        let mut reg = self.lock();
        let Some(s) = reg
            .topics
            .get_mut(topic)
            .and_then(|s| s.get_mut(&conn))
            .filter(|s| s.id == sub)
        else {
            return Err(HubError::NotSubscribed);
        };
        let (floor, buffered) = match &mut s.state {
            SubState::Pending { after, buffer } => ((*after).max(covered), std::mem::take(buffer)),
            SubState::Live { floor } => (*floor, Vec::new()),
        };
        s.state = SubState::Live { floor };
        let frames = ack.into_iter().map(Outbound::Frame).chain(
            buffered
                .into_iter()
                .filter(|(seq, _)| *seq > floor)
                .map(|(_, f)| f),
        );
        for frame in frames {
            if !reg.offer(conn, frame) {
                reg.too_slow(conn);
                break;
            }
        }
        Ok(())
    }

    pub fn unsubscribe(&self, conn: u64, topic: &Topic) -> bool {
        self.lock().drop_sub(conn, topic)
    }

    /// Subscriptions a connection holds (pending ones included).
    pub fn subscription_count(&self, conn: u64) -> usize {
        self.lock().conns.get(&conn).map_or(0, |c| c.topics.len())
    }

    /// Is subscription `sub` still there?
    pub fn is_subscribed(&self, conn: u64, topic: &Topic, sub: u64) -> bool {
        self.lock()
            .topics
            .get(topic)
            .and_then(|s| s.get(&conn))
            .is_some_and(|s| s.id == sub)
    }

    /// Ends subscription `sub` because its membership is gone, telling the client.
    pub fn revoke(&self, conn: u64, topic: &Topic, sub: u64) {
        let mut reg = self.lock();
        let current = reg
            .topics
            .get(topic)
            .and_then(|s| s.get(&conn))
            .is_some_and(|s| s.id == sub);
        if current
            && reg.drop_sub(conn, topic)
            && !reg.offer(conn, Outbound::Frame(revoked_frame(topic)))
        {
            reg.too_slow(conn);
        }
    }

    /// Advances past `seq` without building anything if nobody listens to any
    /// of `topics` (or to anything, when `topics` is None). Decided and advanced
    /// under one lock, so a subscription made afterwards starts after `seq`.
    fn skip_if_unheard(&self, seq: i64, topics: Option<&[Topic]>) -> bool {
        let mut reg = self.lock();
        let unheard = match topics {
            None => reg.topics.is_empty(),
            Some(ts) => !ts.iter().any(|t| reg.topics.contains_key(t)),
        };
        if unheard {
            reg.position = reg.position.max(seq);
        }
        unheard
    }

    /// Publishes one committed change to its topics' subscribers.
    pub async fn publish(&self, entry: FeedEntry) -> Result<(), sqlx::Error> {
        let seq = entry.seq;
        if self.skip_if_unheard(seq, None) {
            return Ok(());
        }
        let r = resolve(&self.db, entry).await?;
        let topics = r.topics();
        if self.skip_if_unheard(seq, Some(&topics)) {
            return Ok(());
        }
        // A deleted membership ends the user's org subscription, unless the
        // user is (again) a member by another membership.
        let revoke = match r.ended_membership() {
            Some((u, o)) if !is_member(&self.db, u, o).await? => Some((u.to_string(), o)),
            _ => None,
        };
        let data = current_data(&self.db, r.entry.kind, &r.entry.entity_id).await?;
        let rendered = render(&r, &topics, &data);
        let mut reg = self.lock();
        let mut slow = reg.fan_out(&rendered, self.queue_capacity);
        if let Some((user, org)) = &revoke {
            slow.extend(reg.revoke_user(user, org));
        }
        for id in slow {
            reg.too_slow(id);
        }
        reg.position = reg.position.max(seq);
        Ok(())
    }

    /// Follows the change feed from the hub's position until `cancel`, woken by
    /// apply commits (`applied`) with a slow poll as the fallback; then closes
    /// every connection.
    pub async fn run(
        self: Arc<Self>,
        mut applied: watch::Receiver<u64>,
        lag: prometheus_client::metrics::gauge::Gauge,
        cancel: CancellationToken,
    ) {
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            applied.borrow_and_update();
            let pos = self.position();
            let entries = match read_after(&self.db, pos, BATCH).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(consumer = CONSUMER, error = %e, "reading the change feed failed");
                    Vec::new()
                }
            };
            if let Ok(last) = last_seq(&self.db).await {
                lag.set(last.saturating_sub(pos).max(0));
            }
            if entries.is_empty() {
                tokio::select! {
                    _ = applied.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = cancel.cancelled() => break,
                }
                continue;
            }
            for e in entries {
                // The position advances entry by entry, so a retry after a
                // failure neither skips nor repeats a change.
                if let Err(e) = self.publish(e).await {
                    failures += 1;
                    let wait = Duration::from_millis(100u64 << failures.min(6));
                    tracing::warn!(consumer = CONSUMER, error = %e, retry_in_ms = wait.as_millis() as u64, "realtime publish failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => {}
                    }
                    break;
                }
                failures = 0;
            }
        }
        self.shutdown.cancel();
    }
}
