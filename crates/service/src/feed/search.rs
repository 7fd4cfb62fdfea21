//! The search index: users and organizations in an embedded tantivy index,
//! kept in step with the store from the committed change feed.
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
//! before it took the writer lock (see [`WriterState`]), which is what keeps a
//! rebuild and the consumer from putting an older version back.

use crate::clerk::model::Kind;
use crate::feed::{self, FeedConsumer, FeedEntry, FeedError};
use crate::store::db::Database;
use crate::store::read;
use crate::store::tx::EntityRow;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};
use tantivy::collector::TopDocs;
use tantivy::directory::{MmapDirectory, INDEX_WRITER_LOCK};
use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, FuzzyTermQuery, Occur, Query, RangeQuery, TermQuery,
};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, Value as _,
    STORED, STRING,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer,
    TokenizerManager,
};
use tantivy::{Directory, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The consumer's name: the key of its checkpoint in `feed_checkpoints`.
pub const CONSUMER: &str = "search";
/// Longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 512;
/// Most words in a query: each word becomes a handful of automaton queries, so
/// the count bounds a query's cost.
pub const MAX_QUERY_WORDS: usize = 16;

/// The analyzer's registered name (it is part of the schema).
const ANALYZER: &str = "clerksync_words";
/// Tokens this long (bytes) or longer are dropped, at index and at query time:
/// nobody types them, and they only bloat the term dictionary.
const MAX_TOKEN_BYTES: usize = 100;
/// Raw values (emails, usernames) longer than this are not indexed for exact match.
const MAX_EXACT_BYTES: usize = 320;
/// Words longer than this get no typo tolerance: a Levenshtein automaton grows
/// with the word, and a 60-letter word with one typo is not a real search.
const MAX_FUZZY_CHARS: usize = 32;
/// Rows per store page during a rebuild (and per writer-lock hold).
const REBUILD_PAGE: i64 = 1000;
/// Phone numbers also match by their trailing digits (no country code), from this many on.
const MIN_PHONE_SUFFIX: usize = 7;
/// Word prefixes of these lengths are indexed as terms of their own (edge
/// n-grams), so "what you have typed so far" is one posting list. A prefix
/// automaton instead visits every term it matches: on a million users a
/// three-letter prefix matches tens of thousands of unique email words
/// (p99 48 ms in the bench, against 10 ms allowed). One letter is no search.
const MIN_PREFIX_CHARS: usize = 2;
const MAX_PREFIX_CHARS: usize = 16;
/// An exact email, username, slug or phone number outranks any word match.
const EXACT_BOOST: f32 = 20.0;
/// Segments holding deleted documents are merged away at most this often.
const PURGE_DELETED_EVERY: Duration = Duration::from_secs(60);
/// The query as the start of a whole value outranks word and typo matches.
const VALUE_PREFIX_BOOST: f32 = 8.0;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("search index directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the search index at {0} is in use by another process (a running `clerksync serve`, or an \
         offline `clerksync reindex`); stop it, or use `clerksync reindex --url` against the server"
    )]
    Locked(PathBuf),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("a search index rebuild is already running")]
    RebuildRunning,
    #[error("search task failed: {0}")]
    Task(String),
}

/// Why a query is refused (the API answers 400 with this text).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BadQuery {
    #[error("q is required and must contain more than spaces")]
    Empty,
    #[error("q is longer than {MAX_QUERY_CHARS} characters")]
    TooLong,
    #[error("q has more than {MAX_QUERY_WORDS} words")]
    TooManyWords,
}

/// A query reduced to what the index is asked: never tantivy query syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuery {
    /// Analyzed words (lowercased, ASCII-folded), in order; the last is also a prefix.
    pub words: Vec<String>,
    /// The whole query, trimmed and lowercased: matched against raw emails,
    /// usernames, slugs and phone numbers.
    pub exact: String,
    /// The digits of a query that looks like a phone number.
    pub digits: Option<String>,
}

/// One search result: which entity, and how well it matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub kind: Kind,
    pub id: String,
    pub score: f32,
}

/// How the index is opened.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Commits at most this often: a batch that arrives sooner waits for the
    /// rest of the interval (the feed meanwhile grows the next batch), so a
    /// trickle of changes does not make a segment per change.
    pub commit_interval: Duration,
    /// Indexing threads (the feed's batches are small; a bulk rebuild likes 2).
    pub writer_threads: usize,
    /// Memory the writer buffers before it writes a segment, all threads together.
    pub writer_memory_bytes: usize,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            // Each commit writes a segment and later merges it: at 50 ms the index
            // took about 13% of the server's CPU under a 3,500 events/s load.
            // A change is searchable within this interval (plus the batch).
            commit_interval: Duration::from_millis(250),
            writer_threads: 1,
            writer_memory_bytes: 64 << 20,
        }
    }
}

/// What a commit records in the index itself, so the index can tell, after a
/// restart, how far along the feed its content is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct Payload {
    /// Every feed entry up to here is reflected.
    seq: i64,
    /// The generation documents are stamped with now (see [`WriterState::gen`]).
    gen: u64,
}

#[derive(Clone, Copy)]
struct Fields {
    /// `{kind}:{id}`, the upsert/delete key (ids of different kinds never collide).
    key: Field,
    id: Field,
    kind: Field,
    gen: Field,
    /// Words of first name, last name (so the full name) and organization name.
    name: Field,
    /// Words of username, email addresses, phone numbers and slug.
    handle: Field,
    /// Raw lowercased emails, username, slug, org name, phone digits.
    exact: Field,
    /// Prefixes (edge n-grams) of every word of `name` and `handle`.
    prefix: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let words = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let fields = Fields {
        key: b.add_text_field("key", STRING),
        id: b.add_text_field("id", STORED),
        kind: b.add_text_field("kind", STRING | STORED),
        gen: b.add_u64_field("gen", NumericOptions::default().set_indexed().set_fast()),
        name: b.add_text_field("name", words.clone()),
        handle: b.add_text_field("handle", words),
        exact: b.add_text_field("exact", STRING),
        // "v2": also whole-value prefixes. A new name is a new schema, so an
        // index written before is recreated and rebuilt at start-up (`open`).
        prefix: b.add_text_field("prefix_v2", STRING),
    };
    (b.build(), fields)
}

/// Splits on anything not alphanumeric (so `ada.lovelace@example.com` is four
/// words and query syntax characters are just separators), lowercases and
/// folds accents, so `Zoë` finds `zoe`.
fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

fn words_of(text: &str) -> Vec<String> {
    let mut a = analyzer();
    let mut stream = a.token_stream(text);
    let mut out = Vec::new();
    while let Some(t) = stream.next() {
        out.push(t.text.clone());
    }
    out
}

/// Checks and analyzes a query string.
pub fn parse_query(q: &str) -> Result<ParsedQuery, BadQuery> {
    let q = q.trim();
    if q.is_empty() {
        return Err(BadQuery::Empty);
    }
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(BadQuery::TooLong);
    }
    let words = words_of(q);
    if words.len() > MAX_QUERY_WORDS {
        return Err(BadQuery::TooManyWords);
    }
    let digits: String = q.chars().filter(char::is_ascii_digit).collect();
    let phone_like = q
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().".contains(c));
    Ok(ParsedQuery {
        words,
        exact: q.to_lowercase(),
        digits: (phone_like && digits.len() >= 4).then_some(digits),
    })
}

/// The writer and what only the writer's holder may touch. One lock, held from
/// reading rows from the store until they are written, makes writes land in
/// the order of the reads behind them: a later write always carries a store
/// state at least as new as an earlier one, whoever (consumer or rebuild) made it.
struct WriterState {
    writer: IndexWriter,
    /// Stamped on every document written now. A rebuild bumps it, rewrites every
    /// live entity, then deletes documents of older generations: what is left
    /// of entities deleted while nobody was listening.
    gen: u64,
    /// The last commit's payload; None while this index was never committed.
    committed: Option<Payload>,
    last_commit: Instant,
    /// When segments holding deleted documents were last merged away.
    last_purge: Option<Instant>,
}

/// Progress of the latest rebuild, for `GET /admin/reindex`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildStatus {
    /// Rebuilds started since the process started (the latest one's number).
    pub run: u64,
    pub running: bool,
    /// Documents written so far by the latest rebuild.
    pub indexed: u64,
    pub finished: Option<RebuildReport>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    pub users: u64,
    pub organizations: u64,
    /// The feed position the rebuilt index is consistent with.
    pub seq: i64,
    pub seconds: f64,
}

/// The right to run the one rebuild allowed at a time; released on drop.
pub struct RebuildTicket {
    flag: Arc<AtomicBool>,
    status: Arc<StdMutex<RebuildStatus>>,
    pub run: u64,
}

impl Drop for RebuildTicket {
    fn drop(&mut self) {
        if let Ok(mut s) = self.status.lock() {
            s.running = false;
        }
        self.flag.store(false, Ordering::SeqCst);
    }
}

/// What [`SearchIndex::reconcile`] found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The index holds at least what the checkpoint says.
    UpToDate,
    /// The index is older than the checkpoint; the checkpoint was moved back to it.
    Replay { from: i64 },
    /// The index was new, lost or too old for the feed: rebuilt from the store.
    Rebuilt { seq: i64 },
}

pub struct SearchIndex {
    reader: IndexReader,
    fields: Fields,
    writer: Arc<Mutex<WriterState>>,
    opts: IndexOptions,
    /// Where the index lives, for messages.
    location: String,
    rebuilding: Arc<AtomicBool>,
    status: Arc<StdMutex<RebuildStatus>>,
    progress: AtomicU64,
}

impl SearchIndex {
    /// Opens the index in `dir` (created if missing), or in memory when `dir` is
    /// None. An index from an older schema is derived data: it is wiped and the
    /// start-up reconcile rebuilds it from the store.
    pub fn open(dir: Option<&Path>, opts: IndexOptions) -> Result<SearchIndex, SearchError> {
        let (schema, fields) = schema();
        let tokenizers = TokenizerManager::default();
        tokenizers.register(ANALYZER, analyzer());
        let builder = || {
            Index::builder()
                .schema(schema.clone())
                .tokenizers(tokenizers.clone())
        };
        let (index, location) = match dir {
            None => (builder().create_in_ram()?, "memory".to_string()),
            Some(path) => {
                let dir_err = |source| SearchError::Dir {
                    path: path.to_path_buf(),
                    source,
                };
                std::fs::create_dir_all(path).map_err(dir_err)?;
                let open = || -> Result<Index, SearchError> {
                    let d = MmapDirectory::open(path).map_err(|e| SearchError::Dir {
                        path: path.to_path_buf(),
                        source: std::io::Error::other(e.to_string()),
                    })?;
                    Ok(builder().open_or_create(d)?)
                };
                let index = match open() {
                    Err(SearchError::Index(tantivy::TantivyError::SchemaError(_))) => {
                        // Only wipe a directory no other process is writing.
                        let d = MmapDirectory::open(path).map_err(|e| SearchError::Dir {
                            path: path.to_path_buf(),
                            source: std::io::Error::other(e.to_string()),
                        })?;
                        drop(
                            d.acquire_lock(&INDEX_WRITER_LOCK)
                                .map_err(|_| SearchError::Locked(path.to_path_buf()))?,
                        );
                        tracing::warn!(path = %path.display(), "search index has an older schema; recreating it");
                        std::fs::remove_dir_all(path).map_err(dir_err)?;
                        std::fs::create_dir_all(path).map_err(dir_err)?;
                        open()?
                    }
                    other => other?,
                };
                (index, path.display().to_string())
            }
        };
        let writer_opts = tantivy::indexer::IndexWriterOptions::builder()
            .num_worker_threads(opts.writer_threads.max(1))
            .memory_budget_per_thread(
                (opts.writer_memory_bytes / opts.writer_threads.max(1)).max(15_000_000),
            )
            // Two cores: merging must not starve the threads that serve requests.
            .num_merge_threads(1)
            .build();
        let writer: IndexWriter = index
            .writer_with_options(writer_opts)
            .map_err(|e| match e {
                tantivy::TantivyError::LockFailure(..) => {
                    SearchError::Locked(PathBuf::from(&location))
                }
                e => SearchError::Index(e),
            })?;
        let committed = index
            .load_metas()?
            .payload
            .and_then(|p| serde_json::from_str::<Payload>(&p).ok());
        // The writer also reloads right after each commit, so a search that
        // follows a handled batch sees it; the watcher picks up what background
        // merges produce (fewer segments, faster queries) when no commit follows.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::OnCommitWithDelay)
            .try_into()?;
        Ok(SearchIndex {
            reader,
            fields,
            writer: Arc::new(Mutex::new(WriterState {
                writer,
                gen: committed.map_or(0, |p| p.gen),
                committed,
                last_commit: Instant::now()
                    .checked_sub(opts.commit_interval)
                    .unwrap_or_else(Instant::now),
                last_purge: None,
            })),
            opts,
            location,
            rebuilding: Arc::new(AtomicBool::new(false)),
            status: Arc::new(StdMutex::new(RebuildStatus::default())),
            progress: AtomicU64::new(0),
        })
    }

    /// Where the index lives (`memory` or a path).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Documents in the last committed state (a gauge for metrics).
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Segments searched per query (background merges bring it down).
    pub fn segment_count(&self) -> usize {
        self.reader.searcher().segment_readers().len()
    }

    /// The feed position the last commit recorded; None for a never-committed index.
    pub async fn committed_seq(&self) -> Option<i64> {
        self.writer.lock().await.committed.map(|p| p.seq)
    }

    pub fn rebuild_status(&self) -> RebuildStatus {
        let mut s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        if s.running {
            s.indexed = self.progress.load(Ordering::Relaxed);
        }
        s
    }

    /// Claims the one rebuild slot, or says one is running.
    pub fn claim_rebuild(&self) -> Result<RebuildTicket, SearchError> {
        if self
            .rebuilding
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(SearchError::RebuildRunning);
        }
        self.progress.store(0, Ordering::Relaxed);
        let run = match self.status.lock() {
            Ok(mut s) => {
                s.run += 1;
                s.running = true;
                s.indexed = 0;
                s.error = None;
                s.run
            }
            Err(_) => 0,
        };
        Ok(RebuildTicket {
            flag: self.rebuilding.clone(),
            status: self.status.clone(),
            run,
        })
    }

    fn key_term(&self, kind: Kind, id: &str) -> Term {
        Term::from_field_text(self.fields.key, &format!("{}:{id}", kind.as_str()))
    }

    /// The document for a store row; None when the row is a tombstone or not a
    /// searchable kind (then the entity must not be in the index).
    fn doc_for(&self, kind: Kind, row: &EntityRow, gen: u64) -> Option<TantivyDocument> {
        if row.deleted {
            return None;
        }
        let data: Value = row
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null);
        let f = self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_text(f.key, format!("{}:{}", kind.as_str(), row.id));
        doc.add_text(f.id, &row.id);
        doc.add_text(f.kind, kind.as_str());
        doc.add_u64(f.gen, gen);
        let s = |k: &str| {
            data.get(k)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
        };
        let mut exact = |v: &str| {
            if v.len() <= MAX_EXACT_BYTES {
                doc.add_text(f.exact, v.trim().to_lowercase());
            }
        };
        // Read leniently from the raw JSON (not the typed view): a field of an
        // unexpected type loses that field, not the whole document.
        let mut name = Vec::new();
        let mut handle = Vec::new();
        // Whole values as typed (`kwame.haddad@mail.test`, `ada lovelace`),
        // punctuation included: their prefixes match a query that stops
        // inside a word (`kwame.h`), which the word prefixes cannot.
        let mut raw: Vec<String> = Vec::new();
        match kind {
            Kind::User => {
                name.extend(s("first_name"));
                name.extend(s("last_name"));
                raw.push(name.join(" "));
                raw.extend(s("username").map(str::to_string));
                raw.extend(list_of(&data, "email_addresses", "email_address").map(str::to_string));
                if let Some(u) = s("username") {
                    handle.push(u.to_string());
                    exact(u);
                }
                for e in list_of(&data, "email_addresses", "email_address") {
                    handle.push(e.to_string());
                    exact(e);
                }
                for p in list_of(&data, "phone_numbers", "phone_number") {
                    let digits: String = p.chars().filter(char::is_ascii_digit).collect();
                    exact(p);
                    if !digits.is_empty() {
                        exact(&digits);
                        handle.push(digits.clone());
                        // Without the country code: any long enough tail.
                        for start in 1..digits.len().saturating_sub(MIN_PHONE_SUFFIX - 1) {
                            handle.push(digits[start..].to_string());
                        }
                    }
                }
            }
            Kind::Organization => {
                raw.extend(s("name").map(str::to_string));
                raw.extend(s("slug").map(str::to_string));
                if let Some(n) = s("name") {
                    name.push(n);
                    exact(n);
                }
                if let Some(slug) = s("slug") {
                    handle.push(slug.to_string());
                    exact(slug);
                }
            }
            _ => return None,
        }
        let mut prefixes = HashSet::new();
        for text in name
            .iter()
            .copied()
            .chain(handle.iter().map(String::as_str))
        {
            for word in words_of(text) {
                let ends = word.char_indices().map(|(i, _)| i).skip(MIN_PREFIX_CHARS);
                let ends = ends.chain(std::iter::once(word.len()));
                for end in ends.take(MAX_PREFIX_CHARS + 1 - MIN_PREFIX_CHARS) {
                    prefixes.insert(word[..end].to_string());
                }
            }
        }
        for value in raw {
            let value = value.trim().to_lowercase();
            let ends = value.char_indices().map(|(i, _)| i).skip(MIN_PREFIX_CHARS);
            let ends = ends.chain(std::iter::once(value.len()));
            for end in ends.take(MAX_PREFIX_CHARS + 1 - MIN_PREFIX_CHARS) {
                prefixes.insert(value[..end].to_string());
            }
        }
        for p in prefixes {
            doc.add_text(f.prefix, p);
        }
        for n in name {
            doc.add_text(f.name, n);
        }
        for h in handle {
            doc.add_text(f.handle, h);
        }
        Some(doc)
    }

    /// Runs `f` on the writer off the async threads (tantivy blocks: a full
    /// indexing queue, fsync on commit), keeping the lock held throughout.
    async fn blocking<R: Send + 'static>(
        guard: OwnedMutexGuard<WriterState>,
        f: impl FnOnce(&mut WriterState) -> R + Send + 'static,
    ) -> Result<(OwnedMutexGuard<WriterState>, R), SearchError> {
        let mut guard = guard;
        tokio::task::spawn_blocking(move || {
            let r = f(&mut guard);
            (guard, r)
        })
        .await
        .map_err(|e| SearchError::Task(e.to_string()))
    }

    fn commit(st: &mut WriterState, payload: Payload) -> tantivy::Result<()> {
        let text = serde_json::to_string(&payload).unwrap_or_default();
        let result = st.writer.prepare_commit().and_then(|mut p| {
            p.set_payload(&text);
            p.commit()
        });
        match result {
            Ok(_) => {
                st.committed = Some(payload);
                st.last_commit = Instant::now();
                Ok(())
            }
            Err(e) => {
                // Drop what is pending: the caller's batch comes again and is re-read.
                let _ = st.writer.rollback();
                Err(e)
            }
        }
    }

    /// A deleted document stays in its segment's files (its terms: a deleted
    /// user's email and name) until the segment is merged. After a commit that
    /// removed documents, merges the segments holding deleted documents and
    /// deletes the old files, at most once per [`PURGE_DELETED_EVERY`] (a merge
    /// rewrites whole segments). Best effort: a segment already being merged in
    /// the background drops its deleted documents there.
    fn purge_deleted(st: &mut WriterState) {
        if st
            .last_purge
            .is_some_and(|t| t.elapsed() < PURGE_DELETED_EVERY)
        {
            return;
        }
        st.last_purge = Some(Instant::now());
        let ids: Vec<tantivy::index::SegmentId> = match st.writer.index().searchable_segment_metas()
        {
            Ok(metas) => metas
                .iter()
                .filter(|m| m.num_deleted_docs() > 0)
                .map(|m| m.id())
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "reading the search index's segments failed");
                return;
            }
        };
        if ids.is_empty() {
            return;
        }
        if let Err(e) = st.writer.merge(&ids).wait() {
            tracing::debug!(error = %e, "merging away deleted search documents failed");
        }
        if let Err(e) = st.writer.garbage_collect_files().wait() {
            tracing::debug!(error = %e, "removing old search index files failed");
        }
    }

    fn write(
        st: &mut WriterState,
        ops: Vec<(Term, Option<TantivyDocument>)>,
    ) -> tantivy::Result<()> {
        for (key, doc) in ops {
            // A delete applies to documents added before it only: delete, then add.
            st.writer.delete_term(key);
            if let Some(d) = doc {
                st.writer.add_document(d)?;
            }
        }
        Ok(())
    }

    /// Brings the index up to date with a batch of the feed and commits, with
    /// the batch's last position in the commit. Idempotent: each entity is
    /// re-read from the store and replaced (or removed) whole.
    pub async fn apply_feed(&self, db: &Database, batch: &[FeedEntry]) -> Result<(), SearchError> {
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(());
        };
        let mut seen = HashSet::new();
        let targets: Vec<(Kind, &str)> = batch
            .iter()
            .filter(|e| matches!(e.kind, Kind::User | Kind::Organization))
            .map(|e| (e.kind, e.entity_id.as_str()))
            .filter(|t| seen.insert(*t))
            .collect();
        let guard = self.writer.clone().lock_owned().await;
        let wait = self
            .opts
            .commit_interval
            .saturating_sub(guard.last_commit.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let mut rows: HashMap<(Kind, String), EntityRow> = HashMap::with_capacity(targets.len());
        for kind in [Kind::User, Kind::Organization] {
            let ids: Vec<&str> = targets
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, id)| *id)
                .collect();
            for r in read::get_many(db, kind, &ids).await? {
                rows.insert((kind, r.id.clone()), r);
            }
        }
        let mut ops = Vec::with_capacity(targets.len());
        for (kind, id) in targets {
            let row = rows.get(&(kind, id.to_string()));
            let doc = row.and_then(|r| self.doc_for(kind, r, guard.gen));
            ops.push((self.key_term(kind, id), doc));
        }
        let removed = ops.iter().any(|(_, doc)| doc.is_none());
        let (guard, r) = Self::blocking(guard, move |st| {
            Self::write(st, ops)?;
            let payload = Payload {
                seq: st.committed.map_or(last, |p| p.seq.max(last)),
                gen: st.gen,
            };
            Self::commit(st, payload)?;
            if removed {
                Self::purge_deleted(st);
            }
            Ok::<_, tantivy::TantivyError>(())
        })
        .await?;
        r?;
        self.reader.reload()?;
        drop(guard);
        Ok(())
    }

    /// Rewrites every live user and organization from the store, then removes
    /// whatever else the index held, and commits. Search keeps answering from
    /// the previous commit meanwhile, and the consumer keeps running between
    /// pages. `on_progress` gets the running count of documents written.
    pub async fn rebuild(
        &self,
        ticket: RebuildTicket,
        db: &Database,
        on_progress: impl FnMut(u64) + Send,
    ) -> Result<RebuildReport, SearchError> {
        let run = ticket.run;
        let result = self.rebuild_inner(db, on_progress).await;
        if let Ok(mut s) = self.status.lock() {
            if s.run == run {
                s.indexed = self.progress.load(Ordering::Relaxed);
                match &result {
                    Ok(r) => s.finished = Some(r.clone()),
                    Err(e) => s.error = Some(e.to_string()),
                }
            }
        }
        drop(ticket);
        result
    }

    async fn rebuild_inner(
        &self,
        db: &Database,
        mut on_progress: impl FnMut(u64) + Send,
    ) -> Result<RebuildReport, SearchError> {
        let started = Instant::now();
        // Noted before the scan: every change up to here is in what the scan reads.
        let seq = feed::last_seq(db).await?;
        let gen = {
            let mut st = self.writer.lock().await;
            st.gen += 1;
            st.gen
        };
        let mut counts = [0u64; 2];
        for (i, kind) in [Kind::User, Kind::Organization].into_iter().enumerate() {
            let mut after: Option<String> = None;
            loop {
                let guard = self.writer.clone().lock_owned().await;
                let rows = read::list_live(db, kind, None, after.as_deref(), REBUILD_PAGE).await?;
                let Some(last) = rows.last() else { break };
                after = Some(last.id.clone());
                let n = rows.len() as u64;
                let ops: Vec<_> = rows
                    .iter()
                    .map(|r| (self.key_term(kind, &r.id), self.doc_for(kind, r, gen)))
                    .collect();
                let (guard, r) = Self::blocking(guard, move |st| Self::write(st, ops)).await?;
                drop(guard);
                r?;
                counts[i] += n;
                let done = counts[0] + counts[1];
                self.progress.store(done, Ordering::Relaxed);
                on_progress(done);
                if (n as i64) < REBUILD_PAGE {
                    break;
                }
            }
        }
        let guard = self.writer.clone().lock_owned().await;
        let gen_field = self.fields.gen;
        let (guard, r) = Self::blocking(guard, move |st| {
            st.writer.delete_query(Box::new(RangeQuery::new(
                Bound::Included(Term::from_field_u64(gen_field, 0)),
                Bound::Excluded(Term::from_field_u64(gen_field, gen)),
            )))?;
            let payload = Payload {
                seq: st.committed.map_or(seq, |p| p.seq.max(seq)),
                gen: st.gen,
            };
            Self::commit(st, payload).map(|_| payload.seq)
        })
        .await?;
        let seq = r?;
        self.reader.reload()?;
        drop(guard);
        Ok(RebuildReport {
            users: counts[0],
            organizations: counts[1],
            seq,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Before the consumer starts: makes its checkpoint agree with what this
    /// index really holds. A new or lost index directory (or one from before a
    /// feed gap) is rebuilt from the store; an older copy replays the feed from
    /// its own position.
    pub async fn reconcile(&self, db: &Database, now_ms: i64) -> Result<Reconciled, SearchError> {
        let cp = feed::load_checkpoint(db, CONSUMER).await?;
        match self.committed_seq().await {
            Some(seq) if seq >= cp => return Ok(Reconciled::UpToDate),
            Some(seq) => {
                // The entries after `seq` must all still be in the feed.
                let next = feed::read_after(db, seq, 1).await?;
                if next.first().is_some_and(|e| e.seq == seq + 1) {
                    feed::save_checkpoint(db, CONSUMER, seq, now_ms).await?;
                    return Ok(Reconciled::Replay { from: seq });
                }
            }
            None => {}
        }
        let ticket = self.claim_rebuild()?;
        let report = self.rebuild(ticket, db, |_| {}).await?;
        feed::save_checkpoint(db, CONSUMER, report.seq, now_ms).await?;
        Ok(Reconciled::Rebuilt { seq: report.seq })
    }

    fn term_query(field: Field, text: &str, opt: IndexRecordOption, boost: f32) -> Box<dyn Query> {
        Box::new(BoostQuery::new(
            Box::new(TermQuery::new(Term::from_field_text(field, text), opt)),
            boost,
        ))
    }

    /// One word: itself (scored), a near miss (typo), and for the last word a prefix.
    fn word_query(&self, word: &str, last: bool) -> Box<dyn Query> {
        let f = self.fields;
        let mut any: Vec<(Occur, Box<dyn Query>)> = vec![
            (
                Occur::Should,
                Self::term_query(f.name, word, IndexRecordOption::WithFreqs, 3.0),
            ),
            (
                Occur::Should,
                Self::term_query(f.handle, word, IndexRecordOption::WithFreqs, 2.0),
            ),
        ];
        let n = word.chars().count();
        // Typos are forgiven in words, not in numbers (`lovelace1984` is an id,
        // not a misspelling). Handles (emails, usernames) are nearly one unique
        // word per user, so an automaton over them is the costliest part of a
        // query: one edit there, up to two in names.
        if (4..=MAX_FUZZY_CHARS).contains(&n) && !word.chars().any(|c| c.is_ascii_digit()) {
            let name_distance = if n >= 8 { 2 } else { 1 };
            for (field, distance, boost) in [(f.name, name_distance, 1.0), (f.handle, 1, 0.8)] {
                let q = FuzzyTermQuery::new(Term::from_field_text(field, word), distance, true);
                any.push((Occur::Should, Box::new(BoostQuery::new(Box::new(q), boost))));
            }
        }
        if last {
            any.extend(self.prefix_query(word, 1.5).map(|q| (Occur::Should, q)));
        }
        Box::new(BooleanQuery::new(any))
    }

    /// Words that start with `word` (constant score: a prefix says nothing of
    /// how well the rest matches). Short ones from the indexed prefixes; longer
    /// ones by automaton, which is cheap there since few terms share a long prefix.
    fn prefix_query(&self, word: &str, boost: f32) -> Option<Box<dyn Query>> {
        let f = self.fields;
        let n = word.chars().count();
        if n < MIN_PREFIX_CHARS {
            return None;
        }
        let q: Box<dyn Query> = if n <= MAX_PREFIX_CHARS {
            Box::new(TermQuery::new(
                Term::from_field_text(f.prefix, word),
                IndexRecordOption::Basic,
            ))
        } else {
            let mut any: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            for field in [f.name, f.handle] {
                let q = FuzzyTermQuery::new_prefix(Term::from_field_text(field, word), 0, true);
                any.push((Occur::Should, Box::new(q)));
            }
            Box::new(BooleanQuery::new(any))
        };
        Some(Box::new(ConstScoreQuery::new(q, boost)))
    }

    /// The whole query as the start of an email, username, name or slug,
    /// punctuation included. Constant score above any word or typo match: what
    /// someone typed from the start of a value is what they are looking for.
    fn value_prefix_query(&self, typed: &str) -> Option<Box<dyn Query>> {
        let f = self.fields;
        let n = typed.chars().count();
        if n < MIN_PREFIX_CHARS {
            return None;
        }
        let q: Box<dyn Query> = if n <= MAX_PREFIX_CHARS {
            Box::new(TermQuery::new(
                Term::from_field_text(f.prefix, typed),
                IndexRecordOption::Basic,
            ))
        } else {
            // Longer than the indexed prefixes: few raw values share that
            // many leading characters, so the automaton visits few terms.
            Box::new(FuzzyTermQuery::new_prefix(
                Term::from_field_text(f.exact, typed),
                0,
                true,
            ))
        };
        Some(Box::new(ConstScoreQuery::new(q, VALUE_PREFIX_BOOST)))
    }

    fn build_query(&self, q: &ParsedQuery, kind: Option<Kind>) -> Box<dyn Query> {
        let f = self.fields;
        let mut any: Vec<(Occur, Box<dyn Query>)> = vec![(
            Occur::Should,
            Self::term_query(f.exact, &q.exact, IndexRecordOption::Basic, EXACT_BOOST),
        )];
        any.extend(
            self.value_prefix_query(&q.exact)
                .map(|q| (Occur::Should, q)),
        );
        if let Some(d) = &q.digits {
            any.push((
                Occur::Should,
                Self::term_query(f.exact, d, IndexRecordOption::Basic, EXACT_BOOST),
            ));
            any.extend(self.prefix_query(d, 2.0).map(|q| (Occur::Should, q)));
        }
        if let Some(last) = q.words.len().checked_sub(1) {
            // Every word must match (in some form): more words, fewer results.
            let all = q
                .words
                .iter()
                .enumerate()
                .map(|(i, w)| (Occur::Must, self.word_query(w, i == last)))
                .collect();
            any.push((Occur::Should, Box::new(BooleanQuery::new(all))));
        }
        let main: Box<dyn Query> = Box::new(BooleanQuery::new(any));
        match kind {
            None => main,
            Some(k) => {
                let filter = TermQuery::new(
                    Term::from_field_text(f.kind, k.as_str()),
                    IndexRecordOption::Basic,
                );
                Box::new(BooleanQuery::new(vec![
                    (Occur::Must, main),
                    (
                        Occur::Must,
                        Box::new(ConstScoreQuery::new(Box::new(filter), 0.0)),
                    ),
                ]))
            }
        }
    }

    /// The best `limit` matches, best first (ties in index order).
    pub async fn search(
        &self,
        q: &ParsedQuery,
        kind: Option<Kind>,
        limit: usize,
    ) -> Result<Vec<Hit>, SearchError> {
        let query = self.build_query(q, kind);
        let searcher = self.reader.searcher();
        let f = self.fields;
        let limit = limit.max(1);
        // CPU-bound: off the async threads.
        tokio::task::spawn_blocking(move || -> Result<Vec<Hit>, SearchError> {
            let top = searcher.search(&*query, &TopDocs::with_limit(limit).order_by_score())?;
            let mut hits = Vec::with_capacity(top.len());
            for (score, addr) in top {
                let doc: TantivyDocument = searcher.doc(addr)?;
                let id = doc.get_first(f.id).and_then(|v| v.as_str());
                let kind = doc
                    .get_first(f.kind)
                    .and_then(|v| v.as_str())
                    .and_then(Kind::parse);
                if let (Some(id), Some(kind)) = (id, kind) {
                    hits.push(Hit {
                        kind,
                        id: id.to_string(),
                        score,
                    });
                }
            }
            Ok(hits)
        })
        .await
        .map_err(|e| SearchError::Task(e.to_string()))?
    }
}

/// `clerksync reindex` without `--url`: rebuilds the index directory with its
/// own writer (so the server must be down: the directory admits one writer,
/// and [`SearchError::Locked`] says so). The consumer's checkpoint is left as
/// it is: the rebuilt index is at least as new, and what the consumer replays
/// from its checkpoint is idempotent. `say` gets progress lines about once a second.
pub async fn reindex_offline(
    db: &Database,
    dir: &Path,
    mut say: impl FnMut(String) + Send,
) -> Result<RebuildReport, SearchError> {
    let index = SearchIndex::open(
        Some(dir),
        IndexOptions {
            // Offline, the machine is ours: both cores and a bigger buffer.
            writer_threads: 2,
            writer_memory_bytes: 256 << 20,
            ..IndexOptions::default()
        },
    )?;
    say(format!("rebuilding the search index at {}", dir.display()));
    let ticket = index.claim_rebuild()?;
    let started = Instant::now();
    let mut last_said = Instant::now();
    let report = index
        .rebuild(ticket, db, |n| {
            if last_said.elapsed() >= Duration::from_secs(1) {
                last_said = Instant::now();
                let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-3);
                say(format!("  indexed {n} documents ({rate:.0}/s)"));
            }
        })
        .await?;
    say(format!(
        "reindexed {} users and {} organizations in {:.1}s; consistent with change feed position {}",
        report.users, report.organizations, report.seconds, report.seq
    ));
    Ok(report)
}

/// `data[list][*][field]` as strings (Clerk's email_addresses / phone_numbers).
fn list_of<'a>(data: &'a Value, list: &str, field: &'a str) -> impl Iterator<Item = &'a str> {
    data.get(list)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(move |e| e.get(field).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

/// The search index's feed consumer.
pub struct SearchConsumer {
    pub index: Arc<SearchIndex>,
    pub db: Database,
}

#[async_trait]
impl FeedConsumer for SearchConsumer {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    async fn handle(&self, batch: &[FeedEntry]) -> Result<(), FeedError> {
        self.index
            .apply_feed(&self.db, batch)
            .await
            .map_err(|e| FeedError::Consumer(e.to_string()))
    }
}

/// The search consumer's task: reconcile the checkpoint with the index (which
/// may rebuild it), then follow the feed until `cancel`.
pub async fn run(
    index: Arc<SearchIndex>,
    db: Database,
    applied: tokio::sync::watch::Receiver<u64>,
    lag: prometheus_client::metrics::gauge::Gauge,
    clock: Arc<dyn crate::clock::Clock>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let r = tokio::select! {
            r = index.reconcile(&db, clock.now_ms()) => r,
            _ = cancel.cancelled() => return,
        };
        match r {
            Ok(Reconciled::UpToDate) => break,
            Ok(r) => {
                tracing::info!(index = index.location(), outcome = ?r, "search index reconciled with the change feed");
                break;
            }
            Err(e) => {
                tracing::warn!(index = index.location(), error = %e, "search index start-up failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    }
    let consumer = Arc::new(SearchConsumer {
        index,
        db: db.clone(),
    });
    feed::run_consumer(db, consumer, applied, lag, clock, 500, cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_words_never_syntax() {
        let q = parse_query(r#"  "Ada" AND (love*~2^3) name:x  "#).unwrap();
        assert_eq!(q.words, ["ada", "and", "love", "2", "3", "name", "x"]);
        assert_eq!(q.digits, None);
        assert_eq!(parse_query(" \t ").unwrap_err(), BadQuery::Empty);
        assert_eq!(
            parse_query(&"a".repeat(513)).unwrap_err(),
            BadQuery::TooLong
        );
        assert_eq!(
            parse_query(&"é".repeat(512)).unwrap().words.len(),
            0,
            "one over-long token is dropped"
        );
        assert_eq!(
            parse_query(&"a ".repeat(17)).unwrap_err(),
            BadQuery::TooManyWords
        );
        assert_eq!(parse_query("Zoë").unwrap().words, ["zoe"]);
        assert_eq!(
            parse_query("+1 (555) 010-9999").unwrap().digits.as_deref(),
            Some("15550109999")
        );
        assert!(parse_query("🦀🦀 \u{202e} \u{200d}")
            .unwrap()
            .words
            .is_empty());
    }
}
