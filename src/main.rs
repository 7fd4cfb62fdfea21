//! The `clerksync` command line: parse, load config, call into the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use clerksync::config::{Config, Settings};
use clerksync::App;
use std::path::PathBuf;

// glibc's malloc took about 10% of the server's CPU under load (`perf`: many
// small short-lived allocations of JSON and rows across threads).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "clerksync",
    version,
    about = "Keeps your database in step with Clerk"
)]
struct Cli {
    /// Optional TOML file with the same keys as the flags (flags and env win).
    #[arg(long, global = true, env = "CLERKSYNC_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive webhooks and serve the API.
    Serve {
        #[command(flatten)]
        settings: Settings,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate {
        #[command(flatten)]
        settings: Settings,
    },
    /// Generate a signed Clerk event stream and send it to a running server.
    Loadgen(clerksync::loadgen::LoadgenArgs),
    /// Benchmark /v1/realtime: N WebSocket clients, webhooks at a rate, commit-to-receipt latency.
    Wsbench(clerksync::loadgen::ws::WsBenchArgs),
    /// Try it: serve a fresh demo database fed with a live stream; prints the dashboard address.
    Demo(clerksync::demo::DemoArgs),
    /// Inspect and operate on stored events (works with the server stopped).
    Events {
        #[command(flatten)]
        settings: Settings,
        #[command(subcommand)]
        action: EventsAction,
    },
    /// Rebuild the search index from the store.
    ///
    /// With --url, the running server at that address rebuilds its own index
    /// (`POST /admin/reindex`, with CLERKSYNC_ADMIN_TOKEN) and this command
    /// follows the progress: the server keeps serving, and search answers from
    /// the current index until the rebuild commits. Without --url, this command
    /// rebuilds the index directory (CLERKSYNC_SEARCH_DIR, default
    /// <data dir>/search) itself: the server must be stopped, because an index
    /// directory admits one writer (the command says so when it is in use).
    Reindex(ReindexArgs),
    /// Rebuild a store from the stored event log.
    Replay {
        #[command(flatten)]
        settings: Settings,
        /// Database URL of an EMPTY database to rebuild into (sqlite://... or postgres://...).
        #[arg(long, conflicts_with = "since")]
        into: Option<String>,
        /// Re-apply deliveries received at or after this time (unix ms or RFC 3339-ish
        /// `YYYY-MM-DDTHH:MM:SSZ`) on top of the current store.
        #[arg(long)]
        since: Option<String>,
        /// Required with --since: it re-queues events of the live database.
        #[arg(long)]
        confirm: bool,
    },
}

/// Arguments of `clerksync reindex` (its help is on `Command::Reindex`).
#[derive(clap::Args)]
struct ReindexArgs {
    #[command(flatten)]
    settings: Settings,
    /// Base URL of a running server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: Option<String>,
}

#[derive(Subcommand)]
enum EventsAction {
    /// List events, newest first.
    List {
        /// pending | done | failed | dead | discarded
        #[arg(long)]
        status: Option<String>,
        /// Event type, e.g. user.updated
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Entity (partition) key, e.g. a user or organization id
        #[arg(long)]
        entity: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one event with its body.
    Show { svix_id: String },
    /// Queue a failed, dead or discarded event for a new attempt (or every dead one).
    Retry {
        svix_id: Option<String>,
        #[arg(long, conflicts_with = "svix_id")]
        all_dead: bool,
    },
    /// Set an unprocessed event aside (kept, never applied).
    Discard { svix_id: String },
    /// Counts by status.
    Stats,
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        // One line that says what went wrong and, for config, what to set.
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { settings } => {
            let config = Config::load(settings, cli.config.as_deref())?;
            clerksync::telemetry::init_logging(config.log_format);
            serve(config).await
        }
        Command::Migrate { settings } => {
            let config =
                Config::without_secret(settings.or(file_settings(cli.config.as_deref())?))?;
            clerksync::telemetry::init_logging(config.log_format);
            let db = clerksync::store::Database::open(&config.database_url).await?;
            db.close().await;
            println!("database is up to date ({})", db.backend_name());
            Ok(())
        }
        Command::Events { settings, action } => {
            let config =
                Config::without_secret(settings.or(file_settings(cli.config.as_deref())?))?;
            let db = clerksync::store::Database::open(&config.database_url).await?;
            let r = events(&db, action).await;
            db.close().await;
            r
        }
        Command::Replay {
            settings,
            into,
            since,
            confirm,
        } => {
            let config =
                Config::without_secret(settings.or(file_settings(cli.config.as_deref())?))?;
            clerksync::telemetry::init_logging(config.log_format);
            replay(config, into, since, confirm).await
        }
        Command::Reindex(ReindexArgs { settings, url }) => {
            let config =
                Config::without_secret(settings.or(file_settings(cli.config.as_deref())?))?;
            clerksync::telemetry::init_logging(config.log_format);
            reindex(config, url).await
        }
        Command::Loadgen(args) => {
            let report = clerksync::loadgen::run(args).await?;
            println!("{report}");
            Ok(())
        }
        Command::Wsbench(args) => {
            let report = clerksync::loadgen::ws::run(args).await?;
            println!("{report}");
            Ok(())
        }
        Command::Demo(args) => {
            clerksync::telemetry::init_logging(clerksync::config::LogFormat::Human);
            clerksync::demo::run(args, shutdown_signal()).await?;
            Ok(())
        }
    }
}

fn file_settings(path: Option<&std::path::Path>) -> anyhow::Result<Settings> {
    Ok(match path {
        Some(p) => Settings::from_file(p)?,
        None => Settings::default(),
    })
}

async fn events(db: &clerksync::store::Database, action: EventsAction) -> anyhow::Result<()> {
    use clerksync::store::events::{self, EventFilter, Transition, STATUSES};
    let transition = |t: Transition, id: &str, what: &str| match t {
        Transition::Done => {
            println!("{id}: {what}");
            Ok(())
        }
        Transition::NotFound => anyhow::bail!("no event with svix id {id}"),
        Transition::Conflict => anyhow::bail!("event {id} cannot be {what} in its current status"),
    };
    match action {
        EventsAction::List {
            status,
            event_type,
            entity,
            limit,
            json,
        } => {
            if let Some(s) = status.as_deref() {
                anyhow::ensure!(
                    STATUSES.contains(&s),
                    "--status must be one of {}",
                    STATUSES.join(", ")
                );
            }
            anyhow::ensure!(
                (1..=100_000).contains(&limit),
                "--limit must be between 1 and 100000"
            );
            let filter = EventFilter {
                status,
                event_type,
                entity,
                ..Default::default()
            };
            let rows = events::list(db, &filter, None, limit).await?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                println!(
                    "{:<8} {:<32} {:<32} {:<10} {:>8}  error",
                    "seq", "svix_id", "type", "status", "attempts"
                );
                for r in &rows {
                    println!(
                        "{:<8} {:<32} {:<32} {:<10} {:>8}  {}",
                        r.seq,
                        r.svix_id,
                        r.event_type,
                        r.status,
                        r.attempts,
                        r.last_error.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        EventsAction::Show { svix_id } => {
            let (rec, body) = events::show(db, &svix_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no event with svix id {svix_id}"))?;
            let mut v = serde_json::to_value(&rec)?;
            v["body"] = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        EventsAction::Retry { svix_id, all_dead } => match (svix_id, all_dead) {
            (_, true) => {
                let n = events::retry_all_dead(db).await?;
                println!("queued {n} dead event(s); a running server applies them within a second");
                Ok(())
            }
            (Some(id), false) => transition(events::retry(db, &id).await?, &id, "queued"),
            (None, false) => anyhow::bail!("give a svix id or --all-dead"),
        },
        EventsAction::Discard { svix_id } => {
            transition(events::discard(db, &svix_id).await?, &svix_id, "discarded")
        }
        EventsAction::Stats => {
            let c = clerksync::store::inbox_counts(db).await?;
            println!("{}", serde_json::to_string_pretty(&c)?);
            Ok(())
        }
    }
}

/// Unix ms, or `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || anyhow::anyhow!("--since '{s}': use unix milliseconds or YYYY-MM-DDTHH:MM:SSZ");
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return Err(bad());
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().map_err(|_| bad());
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    anyhow::ensure!(
        (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && se < 61,
        bad()
    );
    // Days from civil (Howard Hinnant's algorithm).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 86_400) + h * 3600 + mi * 60 + se) * 1000)
}

async fn replay(
    config: Config,
    into: Option<String>,
    since: Option<String>,
    confirm: bool,
) -> anyhow::Result<()> {
    use clerksync::processor::{replay, ProcessorConfig};
    let source = clerksync::store::Database::open(&config.database_url).await?;
    let mut pc = ProcessorConfig::from_config(&config);
    let clock = clerksync::clock::system();
    let (n, report) = match (into, since) {
        (Some(into), None) => {
            let url = clerksync::config::DatabaseUrl::parse(&into)?;
            // The batch bound left at its default follows the target's backend.
            use clerksync::config::default_batch_max;
            if config.batch_max == default_batch_max(&config.database_url) {
                pc.batch_max = default_batch_max(&url);
            }
            let target = clerksync::store::Database::open(&url).await?;
            let r = replay::replay_into(&source, target.clone(), clock, pc, true).await;
            target.close().await;
            r?
        }
        (None, Some(since)) => {
            anyhow::ensure!(
                confirm,
                "replay --since re-queues events of the live database: add --confirm"
            );
            replay::replay_since(source.clone(), parse_time(&since)?, clock, pc, true).await?
        }
        _ => anyhow::bail!("give --into EMPTY_DATABASE_URL or --since TIME --confirm"),
    };
    source.close().await;
    println!(
        "replayed {n} deliveries: {} applied, {} failed in {:.1}s ({:.0} events/s)",
        report.applied,
        report.failed,
        report.elapsed.as_secs_f64(),
        report.per_second()
    );
    Ok(())
}

async fn reindex(config: Config, url: Option<String>) -> anyhow::Result<()> {
    if let Some(url) = url {
        let token = config
            .admin_token
            .as_ref()
            .context("reindex --url needs the server's admin token: set CLERKSYNC_ADMIN_TOKEN")?;
        clerksync::api::search::reindex_remote(&url, token.expose(), |l| println!("{l}")).await?;
        return Ok(());
    }
    let dir = config
        .search_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("search"));
    let db = clerksync::store::Database::open(&config.database_url).await?;
    let r = clerksync::feed::search::reindex_offline(&db, &dir, |l| println!("{l}")).await;
    db.close().await;
    r?;
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {listen} (set CLERKSYNC_LISTEN or --listen to a free address)"
            )
        })?;
    let app = App::build(config, listener).await?;
    tracing::info!(addr = %app.local_addr(), "clerksync listening");
    app.run(shutdown_signal()).await?;
    tracing::info!("clerksync stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested: finishing in-flight requests");
}
