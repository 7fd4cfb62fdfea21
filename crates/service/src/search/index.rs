//! The index itself: opening it, writing batches, committing with the feed
//! position, rebuilding from the store, and reconciling at start-up.
//!
//! Owns: the one writer and its lock (held from reading rows from the store
//! until they are written, see [`WriterState`]), commit pacing, the rebuild
//! slot, and what the last commit records. Must never: let the consumer's
//! checkpoint run ahead of a commit that changes documents (entries skipped
//! because they change none may be recorded later: the index already reflects
//! them), or write a document from a row read before it took the writer lock.
//! See ARCHITECTURE.md.

use super::consumer::CONSUMER;
use super::schema::{analyzer, schema, searchable, touches_index, Fields, ANALYZER};
use crate::clerk::kind::Search;
use crate::clerk::model::Kind;
use crate::feed::{self, FeedEntry};
use crate::store::db::Database;
use crate::store::read;
use crate::store::tx::EntityRow;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};
use tantivy::directory::{MmapDirectory, INDEX_WRITER_LOCK};
use tantivy::query::RangeQuery;
use tantivy::tokenizer::TokenizerManager;
use tantivy::{Directory, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Rows per store page during a rebuild (and per writer-lock hold).
const REBUILD_PAGE: i64 = 1000;
/// A batch that changes no document commits only to record its feed position,
/// and at most this often: a restart replays what came after (idempotent).
const POSITION_COMMIT_EVERY: Duration = Duration::from_secs(10);
/// Segments holding deleted documents are merged away at most this often.
const PURGE_DELETED_EVERY: Duration = Duration::from_secs(60);

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
    Db(#[from] crate::store::StoreError),
    #[error("a search index rebuild is already running")]
    RebuildRunning,
    #[error("search task failed: {0}")]
    Task(String),
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

/// Default of `search_commit_interval_ms`. Each commit writes a segment that
/// is merged later, and sets up a fresh in-memory segment (its term hash table
/// is allocated zeroed, sized from the memory budget): at 50 ms the index took
/// about 13% of the server's CPU under a 3,500 events/s load, at 250 ms still
/// 27% on the realistic stream. A change is searchable within this interval
/// (plus the batch).
pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 1000;
/// Default of `search_writer_memory_mb`: tantivy's smallest budget (15 MB per
/// indexing thread). A commit flushes long before a feed batch fills it, and a
/// bigger budget only makes each new segment's zeroed tables bigger.
pub const DEFAULT_WRITER_MEMORY_MB: usize = 15;
/// tantivy refuses a per-thread budget below this (its `MEMORY_BUDGET_NUM_BYTES_MIN`).
pub const MIN_WRITER_MEMORY_BYTES: usize = 15_000_000;
/// Segments of one size class merged at once. tantivy's default is 8; a wider
/// fan-in rewrites each document fewer times while the feed keeps adding small
/// segments (a query visits a few more segments meanwhile).
const MERGE_FAN_IN: usize = 16;

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_millis(DEFAULT_COMMIT_INTERVAL_MS),
            writer_threads: 1,
            writer_memory_bytes: DEFAULT_WRITER_MEMORY_MB * 1_000_000,
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
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RebuildStatus {
    /// Rebuilds started since the process started (the latest one's number).
    pub run: u64,
    pub running: bool,
    /// Documents written so far by the latest rebuild.
    pub indexed: u64,
    pub finished: Option<RebuildReport>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    pub(super) reader: IndexReader,
    pub(super) fields: Fields,
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
                (opts.writer_memory_bytes / opts.writer_threads.max(1))
                    .max(MIN_WRITER_MEMORY_BYTES),
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
        let mut merge_policy = tantivy::indexer::LogMergePolicy::default();
        merge_policy.set_min_num_segments(MERGE_FAN_IN);
        writer.set_merge_policy(Box::new(merge_policy));
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
}

impl SearchIndex {
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
            .filter(|e| touches_index(e))
            .map(|e| (e.kind, e.entity_id.as_str()))
            .filter(|t| seen.insert(*t))
            .collect();
        let guard = self.writer.clone().lock_owned().await;
        if targets.is_empty() {
            // Nothing in the batch changes a document: the index already
            // reflects it. Its position is recorded by the next commit, and
            // by an empty commit when none came for POSITION_COMMIT_EVERY (so
            // a restart replays little of the feed, not a rebuild).
            if guard.last_commit.elapsed() < POSITION_COMMIT_EVERY {
                return Ok(());
            }
            let (_guard, r) = Self::blocking(guard, move |st| {
                let payload = Payload {
                    seq: st.committed.map_or(last, |p| p.seq.max(last)),
                    gen: st.gen,
                };
                Self::commit(st, payload)
            })
            .await?;
            r?;
            return Ok(());
        }
        let wait = self
            .opts
            .commit_interval
            .saturating_sub(guard.last_commit.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let mut rows: HashMap<(Kind, String), EntityRow> = HashMap::with_capacity(targets.len());
        for kind in searchable() {
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
        let (mut users, mut organizations) = (0u64, 0u64);
        for kind in searchable() {
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
                match kind.spec().search {
                    Search::User => users += n,
                    Search::Organization => organizations += n,
                    Search::No => {}
                }
                let done = users + organizations;
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
            users,
            organizations,
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
}
