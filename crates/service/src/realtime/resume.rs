//! Resuming a topic from a client's last `seq`: whether a `since` can be
//! honoured, and the replayed frames, read straight from the change feed.
//!
//! Owns: the resume window (age and entries) and paging a topic's feed rows
//! through its index. Must never: replay what a viewer may not see, or write to
//! the store. See ARCHITECTURE.md.

use crate::clerk::kind::Topics;
use crate::clerk::model::Kind;
use crate::feed::{last_seq, read_after, read_filtered, FeedFilter};
use crate::realtime::protocol::Topic;
use crate::realtime::render::{current_data, render, resolve};
use crate::realtime::visibility::Viewer;
use crate::store::db::Database;
use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// How far back a `since` may reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResumeWindow {
    pub max_age: Duration,
    pub max_entries: i64,
}

/// Why a `since` cannot be honoured: the client must reload instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefused {
    #[error("since is older than the resume window")]
    TooOld,
    #[error("since is ahead of the change feed (was the server's database replaced?)")]
    Ahead,
    #[error("more than {0} changes to replay: reload the topic's state")]
    TooMany(i64),
}

/// Checks `since` against the window and against what the feed still holds
/// (entries past `feed_retention_days` are pruned).
pub async fn check_resume(
    db: &Database,
    since: i64,
    now_ms: i64,
    window: &ResumeWindow,
) -> Result<Result<(), ResumeRefused>, sqlx::Error> {
    let head = last_seq(db).await?;
    if since > head {
        return Ok(Err(ResumeRefused::Ahead));
    }
    if head - since > window.max_entries {
        return Ok(Err(ResumeRefused::TooOld));
    }
    // Entries after `since` were pruned (or never existed: a sequence gap; a
    // needless resync is the safe side of that doubt).
    let oldest = crate::store::maintenance::oldest_feed_seq(db).await?;
    if oldest > 0 && since + 1 < oldest {
        return Ok(Err(ResumeRefused::TooOld));
    }
    // The first change the client missed: older than the window, and the client
    // has been gone too long (a by-seq lookup, no scan).
    if let Some(first) = read_after(db, since, 1).await?.first() {
        let age_ms = now_ms.saturating_sub(first.committed_at);
        if age_ms > window.max_age.as_millis().min(i64::MAX as u128) as i64 {
            return Ok(Err(ResumeRefused::TooOld));
        }
    }
    Ok(Ok(()))
}

/// One frame of a replay.
#[derive(Debug, Clone)]
pub struct ReplayFrame {
    pub text: Utf8Bytes,
    /// Set when this change ended the viewer's own membership in this organization.
    pub ends_membership_in: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ReplayPage {
    pub frames: Vec<ReplayFrame>,
    /// Feed entries read for this page.
    pub read: usize,
    /// Every feed entry up to here was looked at (matching the topic or not).
    pub covered: i64,
    /// The feed head was reached.
    pub done: bool,
}

/// The feed rows a topic's replay reads: a user's or an organization's by
/// their index, every row for `*`.
pub fn feed_filter(topic: &Topic) -> FeedFilter<'_> {
    match topic {
        Topic::User(u) => FeedFilter::User(u),
        Topic::Org(o) => FeedFilter::Organization(o),
        Topic::All => FeedFilter::All,
    }
}

/// The frames for `topic` among the feed entries after `after` (one page).
pub async fn replay_page(
    db: &Database,
    topic: &Topic,
    viewer: &Viewer,
    after: i64,
    limit: i64,
) -> Result<ReplayPage, sqlx::Error> {
    // The head before the read: every entry of the topic up to it is in what
    // the read returns (feed order is commit order), so a last page covers it.
    let head = last_seq(db).await?;
    let entries = read_filtered(db, feed_filter(topic), after, limit).await?;
    let read = entries.len();
    let done = (entries.len() as i64) < limit;
    let last = entries.last().map_or(after, |e| e.seq);
    let covered = if done { last.max(head) } else { last };
    // Data is read at send time; within a page one read per entity is enough.
    let mut data_cache: HashMap<(Kind, String), Value> = HashMap::new();
    let mut frames = Vec::new();
    for e in entries {
        // Cheap routing on the feed row first; a membership's topics need its refs.
        let maybe = match (topic, e.kind.spec().topics) {
            (Topic::All, _) | (_, Topics::UserAndOrganization) => true,
            (Topic::User(u), Topics::OwnUser) => *u == e.entity_id,
            (Topic::Org(o), Topics::OwnOrganization) => *o == e.entity_id,
            (Topic::User(_), Topics::OwnOrganization | Topics::None)
            | (Topic::Org(_), Topics::OwnUser | Topics::None) => false,
        };
        if !maybe {
            continue;
        }
        let r = resolve(db, e).await?;
        let topics = r.topics();
        if !topics.contains(topic) {
            continue;
        }
        let key = (r.entry.kind, r.entry.entity_id.clone());
        let data = match data_cache.get(&key) {
            Some(d) => d.clone(),
            None => {
                let d = current_data(db, r.entry.kind, &r.entry.entity_id).await?;
                data_cache.insert(key, d.clone());
                d
            }
        };
        let rendered = render(&r, std::slice::from_ref(topic), &data);
        let Some((_, full, public)) = rendered.frames.into_iter().next() else {
            continue;
        };
        let text = match viewer {
            Viewer::Service => full,
            Viewer::User(_) => match public {
                Some(p) => p,
                None => continue,
            },
        };
        let ends_membership_in = match (viewer, r.ended_membership()) {
            (Viewer::User(me), Some((u, o))) if me == u => Some(o.to_string()),
            _ => None,
        };
        frames.push(ReplayFrame {
            text,
            ends_membership_in,
        });
    }
    Ok(ReplayPage {
        frames,
        read,
        covered,
        done,
    })
}
