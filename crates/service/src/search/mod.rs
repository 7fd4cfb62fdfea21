//! The search index: users and organizations in an embedded tantivy index,
//! kept in step with the store from the committed change feed.
//!
//! Layout, one concern per file:
//! - `schema.rs`: the index schema, its analyzer, and store rows as documents;
//! - `index.rs`: opening the index, writing and committing (with the feed
//!   position in the commit), rebuilding from the store, start-up reconcile;
//! - `query.rs`: a caller's words checked and turned into index queries;
//! - `consumer.rs`: the "search" feed consumer and the offline reindex.
//!
//! Owns: the index schema and its analyzer, turning store rows into documents,
//! the "search" feed consumer (and keeping its checkpoint consistent with what
//! the index directory really holds), rebuilding from the store, and running
//! queries built from the caller's words.
//!
//! Must never: be the source of truth (a hit is only a kind and an id; the API
//! re-reads each row from the store, so content is never stale and a deleted
//! entity vanishes even before the index hears of it); hand raw user input to
//! tantivy's query parser (its syntax errors and unbounded queries would be
//! reachable from a URL); let the consumer's checkpoint run ahead of a commit
//! (`handle` returns only after the commit); or write a document from a row read
//! before it took the writer lock (see `index.rs`, `WriterState`), which is what
//! keeps a rebuild and the consumer from putting an older version back.
//! See ARCHITECTURE.md.

mod consumer;
mod index;
mod query;
mod schema;

pub use consumer::{reindex_offline, run, SearchConsumer, CONSUMER};
pub use index::{
    IndexOptions, RebuildReport, RebuildStatus, RebuildTicket, Reconciled, SearchError,
    SearchIndex, DEFAULT_COMMIT_INTERVAL_MS, DEFAULT_WRITER_MEMORY_MB,
};
pub use query::{parse_query, BadQuery, Hit, ParsedQuery, MAX_QUERY_CHARS, MAX_QUERY_WORDS};
