//! The realtime wire protocol: topics, client messages, close codes and what a
//! connection's writer sends (the message shapes are listed in
//! [`crate::realtime`]).
//!
//! Owns: parsing what a client sends (strictly: anything else is answered with
//! an error frame) and the frames every part of realtime agrees on. Must never:
//! decide who may see what (visibility.rs) or touch the store. See ARCHITECTURE.md.
//!
//! Frames are axum's `Utf8Bytes` (the only axum type realtime uses outside the
//! socket tasks): built once per change, shared by every subscriber's queue,
//! and handed to the socket without a copy or a second UTF-8 check.

use axum::extract::ws::Utf8Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::fmt;

/// Close codes (4000-4999 are the application's).
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const TOO_BIG: u16 = 1009;
    pub const IDLE: u16 = 4000;
    pub const TOKEN_EXPIRED: u16 = 4001;
    pub const NO_PONG: u16 = 4002;
    pub const TOO_SLOW: u16 = 4008;
}

/// A stream a connection can subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A user's own record and its memberships.
    User(String),
    /// An organization's record and its memberships (the member list).
    Org(String),
    /// Every change of every kind (API token only).
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("unknown topic: use user:{{id}}, org:{{id}} or *")]
    Unknown,
    #[error("invalid id in topic: 1 to 128 letters, digits, '_' or '-'")]
    BadId,
}

impl Topic {
    pub fn parse(s: &str) -> Result<Topic, TopicError> {
        if s == "*" {
            return Ok(Topic::All);
        }
        let (make, id): (fn(String) -> Topic, &str) = if let Some(id) = s.strip_prefix("user:") {
            (Topic::User, id)
        } else if let Some(id) = s.strip_prefix("org:") {
            (Topic::Org, id)
        } else {
            return Err(TopicError::Unknown);
        };
        // Clerk ids are `user_2abc...`: a strict alphabet keeps topics unambiguous
        // and keeps odd bytes out of log lines and error frames.
        let ok = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(TopicError::BadId);
        }
        Ok(make(id.to_string()))
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::User(id) => write!(f, "user:{id}"),
            Topic::Org(id) => write!(f, "org:{id}"),
            Topic::All => f.write_str("*"),
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ClientMessage {
    Subscribe {
        topic: String,
        since: Option<i64>,
        #[serde(default)]
        snapshot: bool,
    },
    Unsubscribe {
        topic: String,
    },
    /// A refreshed session token (same `sub`) that extends the connection.
    Auth {
        token: String,
    },
    Ping,
}

/// One client frame; anything else is answered with an error frame.
pub(crate) fn parse_client_message(text: &str) -> Result<ClientMessage, serde_json::Error> {
    serde_json::from_str(text)
}

/// What a connection's writer sends, in queue order.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame (a control message, or a replayed change).
    Frame(Utf8Bytes),
    /// A live change's frame; `committed_at` (unix ms) times its delivery.
    Change { text: Utf8Bytes, committed_at: i64 },
    /// A WebSocket ping.
    Ping,
    /// Sends `ack`, replays `topic` after `since`, then lets the subscription's
    /// buffered live frames through; skipped if subscription `sub` is gone.
    Replay {
        topic: Topic,
        sub: u64,
        since: i64,
        ack: Utf8Bytes,
    },
    /// Sends a close frame and ends the connection.
    Close { code: u16, reason: String },
}

/// A control message (`{"type": ..., ...}`) as a frame.
pub fn control(v: Value) -> Outbound {
    Outbound::Frame(Utf8Bytes::from(v.to_string()))
}

pub(crate) fn revoked_frame(topic: &Topic) -> Utf8Bytes {
    Utf8Bytes::from(
        json!({"type": "unsubscribed", "topic": topic.to_string(), "reason": "membership deleted"})
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_strictly() {
        assert_eq!(Topic::parse("*"), Ok(Topic::All));
        assert_eq!(
            Topic::parse("user:user_1"),
            Ok(Topic::User("user_1".into()))
        );
        assert_eq!(Topic::parse("org:org_1"), Ok(Topic::Org("org_1".into())));
        assert_eq!(Topic::parse("org:"), Err(TopicError::BadId));
        assert_eq!(Topic::parse("user:a b"), Err(TopicError::BadId));
        assert_eq!(Topic::parse("session:x"), Err(TopicError::Unknown));
        assert_eq!(Topic::User("u".into()).to_string(), "user:u");
    }
}
