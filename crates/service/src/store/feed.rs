//! The change feed's rows and the consumers' checkpoints, as the store hands them out.
//!
//! Owns: the plain types of feed reads. Must never: hold backend SQL (each
//! backend reads the feed in its own folder).

use crate::clerk::model::Kind;

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FeedEntry {
    pub seq: i64,
    pub kind: Kind,
    pub entity_id: String,
    pub operation: String,
    pub changed_fields: Vec<String>,
    pub version: i64,
    pub svix_id: String,
    pub committed_at: i64,
    /// The user and organization whose topics the change is on (set by the
    /// apply for users, organizations and memberships).
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
}

/// Which rows of the feed to read: all, or one user's or organization's
/// (indexed, for a realtime replay of one topic).
#[derive(Debug, Clone, Copy)]
pub enum FeedFilter<'a> {
    All,
    User(&'a str),
    Organization(&'a str),
}

impl<'a> FeedFilter<'a> {
    /// The value the filter binds first, if any.
    pub(crate) fn key(self) -> Option<&'a str> {
        match self {
            FeedFilter::All => None,
            FeedFilter::User(k) | FeedFilter::Organization(k) => Some(k),
        }
    }

    /// The statement reading the filter's rows after a seq (then a limit).
    /// Parameters are numbered in order of appearance (SQLite binds by position).
    pub(crate) fn read_sql(self) -> &'static str {
        match self {
            FeedFilter::All => {
                "SELECT seq, kind, entity_id, operation, changed_fields, version, svix_id, committed_at, user_id, organization_id \
                 FROM change_feed WHERE seq > $1 ORDER BY seq LIMIT $2"
            }
            FeedFilter::User(_) => {
                "SELECT seq, kind, entity_id, operation, changed_fields, version, svix_id, committed_at, user_id, organization_id \
                 FROM change_feed WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            }
            FeedFilter::Organization(_) => {
                "SELECT seq, kind, entity_id, operation, changed_fields, version, svix_id, committed_at, user_id, organization_id \
                 FROM change_feed WHERE organization_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            }
        }
    }

    /// The statement counting the filter's rows after a seq, up to a cap.
    pub(crate) fn count_sql(self) -> &'static str {
        match self {
            FeedFilter::All => {
                "SELECT COUNT(*) FROM (SELECT 1 FROM change_feed WHERE seq > $1 LIMIT $2) t"
            }
            FeedFilter::User(_) => {
                "SELECT COUNT(*) FROM (SELECT 1 FROM change_feed WHERE user_id = $1 AND seq > $2 LIMIT $3) t"
            }
            FeedFilter::Organization(_) => {
                "SELECT COUNT(*) FROM (SELECT 1 FROM change_feed WHERE organization_id = $1 AND seq > $2 LIMIT $3) t"
            }
        }
    }
}

/// A feed row as stored (`kind` and `changed_fields` still text).
#[derive(sqlx::FromRow)]
pub(crate) struct StoredFeedRow {
    pub seq: i64,
    pub kind: String,
    pub entity_id: String,
    pub operation: String,
    pub changed_fields: String,
    pub version: i64,
    pub svix_id: String,
    pub committed_at: i64,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
}

/// Rows of a kind this build does not know are left out.
pub(crate) fn entries(rows: Vec<StoredFeedRow>) -> Vec<FeedEntry> {
    rows.into_iter()
        .filter_map(|r| {
            Some(FeedEntry {
                seq: r.seq,
                kind: Kind::parse(&r.kind)?,
                entity_id: r.entity_id,
                operation: r.operation,
                changed_fields: serde_json::from_str(&r.changed_fields).unwrap_or_default(),
                version: r.version,
                svix_id: r.svix_id,
                committed_at: r.committed_at,
                user_id: r.user_id,
                organization_id: r.organization_id,
            })
        })
        .collect()
}
