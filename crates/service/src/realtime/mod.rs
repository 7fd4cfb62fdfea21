//! The realtime change stream (`GET /v1/realtime`): committed changes pushed to
//! WebSocket clients by topic.
//!
//! Layout, one concern per file:
//! - `config.rs`: settings, limits and session-token keys, validated at start-up;
//! - `auth.rs`: the API token or a Clerk session JWT, verified locally;
//! - `protocol.rs`: topics, client messages, close codes, outbound frames;
//! - `visibility.rs`: allow-listed fields for session viewers, the membership check;
//! - `render.rs`: a feed entry routed to topics and rendered as frames;
//! - `snapshot.rs`, `resume.rs`: a topic's current state, and `since` replays;
//! - `hub.rs`: the registry of connections and the fan-out from the change feed;
//! - `session.rs`, `writer.rs`: one connection's controller and socket writer.
//!
//! The HTTP handler that authenticates and upgrades is `api/realtime.rs`.
//! Owns (together): what each principal may subscribe to, and each connection's
//! two tasks. Must never: let a session see a topic it is not entitled to (its
//! own user; organizations it is a live member of, re-checked when a membership
//! is deleted), make a network call to verify a token, block the hub on a slow
//! socket, or echo a token in an error. See ARCHITECTURE.md.
//!
//! Protocol (text frames, JSON):
//! - connect with `Authorization: Bearer <token>` or `?token=<token>` (browsers
//!   cannot set headers on a WebSocket). A bad or missing token is refused with
//!   HTTP 401 before the upgrade, too many connections for one token with 429.
//!   With neither `CLERKSYNC_API_TOKEN` nor a Clerk key configured the stream is
//!   open, like the read API: on a loopback address and `Host` only (421), to
//!   same-origin pages and `CLERKSYNC_ALLOWED_ORIGINS` only (403: a page on
//!   any site could otherwise read it), and with a per-address share (429) of
//!   the anonymous connection budget. Session tokens need `sid` and a lifetime
//!   (`exp - iat`) within `CLERKSYNC_CLERK_MAX_TOKEN_LIFETIME_SECS`.
//! - subscribe requests past `CLERKSYNC_REALTIME_SUBSCRIBES_PER_MINUTE` get an
//!   error frame; a `since` with more than `CLERKSYNC_REALTIME_MAX_REPLAY`
//!   changes of the topic gets `resync`.
//! - server: `{"type":"ready","user_id":..|null,"seq":N}` once connected.
//! - client: `{"type":"subscribe","topic":"user:ID"|"org:ID"|"*","since":SEQ?,"snapshot":bool?}`
//!   → `{"type":"subscribed","topic":..,"seq":N}` (live after N); with
//!   `snapshot` then `{"type":"snapshot","topic":..,"seq":N,"data":{"user"|"organization":..,
//!   "memberships":[..],"truncated":bool}}` (a browser cannot call the read API
//!   with a session token; live changes after N follow); with `since`
//!   `{"type":"subscribed","topic":..,"since":SEQ}`, the missed changes, then
//!   `{"type":"replayed","topic":..,"seq":N,"count":C}` and live changes after N;
//!   a `since` outside the resume window gets `{"type":"resync",..}` (reload
//!   the topic's state from the read API) and the subscription goes on live.
//!   Denied: `{"type":"error","topic":..,"error":".."}`.
//! - client: `{"type":"unsubscribe","topic":..}` → `{"type":"unsubscribed",..}`;
//!   `{"type":"ping"}` → `{"type":"pong"}`.
//! - changes: `{"seq","topic","type","kind","id","changed_fields","committed_at","data"}`;
//!   a create's `changed_fields` is `[]` (every field is new: the feed stores
//!   no list for it, sync/mod.rs `feed_fields`).
//! - a deleted membership ends the session's `org:` subscription with
//!   `{"type":"unsubscribed","topic":..,"reason":"membership deleted"}`.
//! - too slow (queue full): `{"type":"resync","reason":..}` and close 4008; the
//!   client may reconnect and resume each topic from the last `seq` it saw.
//! - session expiry: `ready` carries `expires_at` (the session token's `exp`,
//!   unix seconds; null for the API token). Before then the client sends
//!   `{"type":"auth","token":"<fresh session token>"}` (Clerk session tokens
//!   live about a minute: send each refreshed one), verified exactly like the
//!   connecting token and for the same `sub` →
//!   `{"type":"authenticated","user_id":..,"expires_at":..}`; a refused one gets
//!   `{"type":"error","error":"auth refused: .."}` and changes nothing. Past
//!   `expires_at` + the leeway (`CLERKSYNC_CLERK_LEEWAY_SECS`) the connection is
//!   closed with code 4001, reason "token expired"; reconnect with a fresh token
//!   and resume with `since`.
//!
//! What a session may see is enforced from the synced store (memberships), and
//! for no longer than its token (refreshed or not) is valid.

pub(crate) mod auth;
pub(crate) mod config;
pub(crate) mod hub;
pub(crate) mod protocol;
pub(crate) mod render;
pub(crate) mod resume;
pub(crate) mod session;
pub(crate) mod snapshot;
pub(crate) mod visibility;
pub(crate) mod writer;

pub use auth::{AuthError, Principal};
pub use config::{RealtimeConfig, RealtimeSettings, SessionKeys};
pub use hub::RealtimeHub;
pub use protocol::Topic;
