//! Start-up: one [`App::build`] used by `main` and by the tests.
//!
//! Owns: wiring config, database, committer, processor and router together, and
//! the shutdown order. Must never: bind a port or install a signal handler itself
//! (the caller passes a bound listener and a shutdown future).

use crate::alerts::{AlertSender, Alerter};
use crate::api;
use crate::clock::{self, Clock};
use crate::config::Config;
use crate::feed::cache::{CacheConsumer, EntityCache};
use crate::processor::Processor;
use crate::queue::GroupCommitter;
use crate::realtime::RealtimeHub;
use crate::search::{SearchError, SearchIndex};
use crate::store::db::{Database, DbError};
use crate::telemetry::metrics::Metrics;
use crate::webhook::handler::BodyBudget;
use crate::webhook::SecretSet;
use axum::routing::post;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Everything a request handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub secrets: SecretSet,
    pub clock: Arc<dyn Clock>,
    pub max_body_bytes: usize,
    /// Webhook body bytes that may be held in memory at once (webhook/handler.rs).
    pub body_budget: BodyBudget,
    pub committer: GroupCommitter,
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    /// `config.realtime`, shared by every realtime connection's tasks (which
    /// see no other setting).
    pub realtime_config: Arc<crate::realtime::RealtimeConfig>,
    /// Notified after each inbox commit that stored new deliveries.
    pub inbox_committed: Arc<Notify>,
    /// Changes after every apply commit (change-feed consumers watch it).
    pub applied: watch::Receiver<u64>,
    /// Read API `wait_ms` waiters, woken by the ids a commit changed.
    pub waiters: Arc<crate::feed::waiters::Waiters>,
    pub cache: Arc<EntityCache>,
    /// Search index over users and organizations, fed by the change feed.
    pub search: Arc<SearchIndex>,
    /// WebSocket fan-out of committed changes (`/v1/realtime`).
    pub realtime: Arc<RealtimeHub>,
    /// Operator alerts (a no-op without an alert URL).
    pub alerts: Arc<Alerter>,
    /// Reconciliation passes: scheduled, or asked for by `POST /admin/reconcile`.
    pub reconcile: Arc<crate::backfill::schedule::Reconciler>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot read the listener address: {0}")]
    Listener(std::io::Error),
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Cache(#[from] crate::feed::cache::CacheError),
    /// A server verifies deliveries: it cannot run without a signing secret.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    state: AppState,
    writer: JoinHandle<()>,
    processor: Processor,
    alert_sender: Option<AlertSender>,
    cancel: CancellationToken,
}

/// How long shutdown waits for in-flight requests before giving up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

impl App {
    pub async fn build(config: Config, listener: TcpListener) -> Result<App, BuildError> {
        Self::build_with_clock(config, listener, clock::system()).await
    }

    pub async fn build_with_clock(
        config: Config,
        listener: TcpListener,
        clock: Arc<dyn Clock>,
    ) -> Result<App, BuildError> {
        let secrets = config
            .secrets
            .clone()
            .ok_or(crate::config::ConfigError::MissingSecret)?;
        let addr = listener.local_addr().map_err(BuildError::Listener)?;
        let db = Database::open(&config.database_url).await?;
        let inbox_committed = Arc::new(Notify::new());
        let (committer, writer) = GroupCommitter::start(db.clone(), inbox_committed.clone());
        let (applied_tx, applied) = watch::channel(0u64);
        let cache = EntityCache::open(
            &config.cache_backend,
            crate::feed::cache::Capacity {
                entries: config.cache_max_entries,
                bytes: config.cache_max_bytes,
            },
            config.cache_strategy,
            config.cache_invalidation,
        )
        .await?;
        let search = Arc::new(SearchIndex::open(
            config.search_dir.as_deref(),
            config.search.clone(),
        )?);
        // Realtime is live-only plus resume: it starts at today's feed head.
        let realtime = Arc::new(RealtimeHub::new(
            db.clone(),
            crate::feed::last_seq(&db).await.map_err(DbError::from)?,
            config.realtime.queue,
        ));
        let waiters = Arc::new(crate::feed::waiters::Waiters::default());
        let mut metrics = Metrics::new();
        metrics.register_cache(&cache.hits, &cache.misses, &cache.errors);
        let metrics = Arc::new(metrics);
        let (alerts, alert_sender) =
            Alerter::new(config.alerts.clone(), metrics.clone(), clock.clone());
        // The alerter hears of dead letters (and applied lag) as the processor's observer.
        let observer: Option<Arc<dyn crate::processor::EventObserver>> =
            alerts.enabled().then(|| alerts.clone() as _);
        let cancel = CancellationToken::new();
        let reconcile = crate::backfill::schedule::Reconciler::new(
            db.clone(),
            config.reconcile.clone(),
            metrics.clone(),
            alerts.clone(),
            clock.clone(),
            cancel.child_token(),
        );
        let processor = Processor {
            db: db.clone(),
            clock: clock.clone(),
            metrics: metrics.clone(),
            config: config.processor(),
            wake: inbox_committed.clone(),
            applied: applied_tx,
            observer,
            cache: Some(cache.clone()),
            waiters: Some(waiters.clone()),
        };
        let state = AppState {
            db,
            secrets,
            clock,
            max_body_bytes: config.max_body_bytes,
            body_budget: BodyBudget::new(
                config.http.max_buffered_body_bytes,
                metrics.http.body_bytes_reserved.clone(),
            ),
            committer,
            metrics,
            realtime_config: Arc::new(config.realtime.clone()),
            config: Arc::new(config),
            inbox_committed,
            applied,
            waiters,
            cache,
            search,
            realtime,
            alerts,
            reconcile,
        };
        let router = router(state.clone());
        Ok(App {
            listener,
            addr,
            router,
            state,
            writer,
            processor,
            alert_sender,
            cancel,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// requests finish (up to [`SHUTDOWN_GRACE`]), drains the inbox writer and
    /// closes the database.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let App {
            listener,
            router,
            state,
            writer,
            processor,
            alert_sender,
            cancel,
            ..
        } = self;
        let processing = tokio::spawn(processor.run(cancel.child_token()));
        // Alert delivery and the lag check stop with the app (queued alerts are dropped).
        let mut alerting = vec![tokio::spawn(
            state
                .alerts
                .clone()
                .watch_lag(state.db.clone(), cancel.child_token()),
        )];
        if let Some(sender) = alert_sender {
            alerting.push(tokio::spawn(sender.run(cancel.child_token())));
        }
        let consumers = spawn_consumers(&state, cancel.child_token());
        // Stops with the app (the Reconciler holds a child of `cancel`).
        let reconcile = state.reconcile.clone();
        let schedule = tokio::spawn(reconcile.clone().run_schedule());
        let signal = cancel.clone();
        tokio::spawn(async move {
            shutdown.await;
            signal.cancel();
        });
        let server = crate::serve::serve(
            listener,
            router,
            state.config.http,
            state.metrics.http.clone(),
            cancel.clone(),
        );
        let server = async move {
            let grace = async {
                cancel.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            tokio::select! {
                r = server => r,
                _ = grace => {
                    tracing::warn!("in-flight requests did not finish within the grace period");
                    Ok(())
                }
            }
        };
        let result = server.await;
        let db = state.db.clone();
        drop(state);
        // The writer ends once every committer handle is gone; waiting for it
        // means every accepted delivery has its answer.
        let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
        // Workers finish the batch in hand and give back what is queued.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, processing).await;
        for c in consumers.into_iter().chain(alerting) {
            let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
        }
        // A pass in progress stops and gives its lease back (its checkpoints
        // let the next pass, on any node, resume it).
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            let _ = schedule.await;
            reconcile.stopped().await;
        })
        .await;
        drop(reconcile);
        db.close().await;
        result
    }
}

/// Starts every change-feed consumer.
fn spawn_consumers(state: &AppState, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
    use crate::feed::{run_consumer, FeedConsumer};
    use crate::telemetry::metrics::ConsumerLabels;
    let consumers: Vec<Arc<dyn FeedConsumer>> = vec![Arc::new(CacheConsumer {
        cache: state.cache.clone(),
        db: state.db.clone(),
        staleness_ms: state.metrics.cache_staleness_ms.clone(),
        clock: state.clock.clone(),
    })];
    let search_lag = state
        .metrics
        .consumer_lag
        .get_or_create(&ConsumerLabels {
            consumer: crate::search::CONSUMER.to_string(),
        })
        .clone();
    let mut handles: Vec<JoinHandle<()>> = consumers
        .into_iter()
        .map(|c| {
            let lag = state
                .metrics
                .consumer_lag
                .get_or_create(&ConsumerLabels {
                    consumer: c.name().to_string(),
                })
                .clone();
            tokio::spawn(run_consumer(
                state.db.clone(),
                c,
                state.applied.clone(),
                lag,
                state.clock.clone(),
                500,
                cancel.clone(),
            ))
        })
        .collect();
    // Realtime keeps its position in memory, not in a checkpoint (realtime/hub.rs).
    let realtime_lag = state
        .metrics
        .consumer_lag
        .get_or_create(&ConsumerLabels {
            consumer: crate::realtime::hub::CONSUMER.to_string(),
        })
        .clone();
    handles.push(tokio::spawn(state.realtime.clone().run(
        state.applied.clone(),
        realtime_lag,
        cancel.clone(),
    )));
    // The search consumer first reconciles its checkpoint with the index directory.
    handles.push(tokio::spawn(crate::search::run(
        state.search.clone(),
        state.db.clone(),
        state.applied.clone(),
        search_lag,
        state.clock.clone(),
        cancel,
    )));
    handles
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhooks/clerk", post(crate::webhook::handler::receive))
        .merge(api::health::routes())
        .merge(api::openapi::routes())
        .merge(api::read::routes(state.clone()))
        .merge(api::search::routes(state.clone()))
        .merge(api::realtime::routes())
        .merge(api::admin::routes(state.clone()))
        .merge(api::reconcile::routes(state.clone()))
        .merge(api::dashboard::routes(state.clone()))
        .with_state(state)
}
