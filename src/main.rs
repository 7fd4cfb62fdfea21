//! The `clerksync` command line: parse, load config, call into the library.
//!
//! Must never: print with `println!` (it panics on a closed pipe, `| head`):
//! use [`out`]; or give an operator command the server's settings as flags
//! (each command's `--help` shows only what it uses; the config file still
//! supplies any key).

mod backfill_cmd;
mod demo;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use clerksync::config::{Config, ConfigError, Origin, Settings};
use clerksync::App;
use std::path::{Path, PathBuf};

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

// Parsed once at start-up: the size of `serve`'s settings does not matter.
#[allow(clippy::large_enum_variant)]
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
        db: DbArgs,
    },
    /// Generate a signed Clerk event stream and send it to a running server.
    Loadgen(clerksync_loadgen::LoadgenArgs),
    /// Benchmark /v1/realtime: N WebSocket clients, webhooks at a rate, commit-to-receipt latency.
    Wsbench(clerksync_loadgen::ws::WsBenchArgs),
    /// Try it: serve a fresh demo database fed with a live stream; prints the dashboard address.
    Demo(demo::DemoArgs),
    /// Inspect and operate on stored events (works with the server stopped).
    Events {
        #[command(flatten)]
        db: DbArgs,
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
    /// Import what Clerk already has (users, organizations, memberships) through
    /// its Backend API, and delete what it no longer has (CLERKSYNC_CLERK_SECRET_KEY).
    Backfill(backfill_cmd::BackfillArgs),
    /// Rebuild a store from the stored event log.
    Replay {
        #[command(flatten)]
        db: DbArgs,
        /// Most events applied in one transaction [default: 256 on SQLite, 32 on PostgreSQL].
        #[arg(long, env = "CLERKSYNC_BATCH_MAX")]
        batch_max: Option<usize>,
        /// Most events applied at once [default: 1 on SQLite, 4 per core on PostgreSQL].
        #[arg(long, env = "CLERKSYNC_MAX_CONCURRENT")]
        max_concurrent: Option<usize>,
        /// Database URL of an EMPTY database to rebuild into (sqlite://... or postgres://...).
        #[arg(long, conflicts_with = "since")]
        into: Option<String>,
        /// Re-apply deliveries received at or after this time (unix ms or RFC 3339,
        /// e.g. 2026-01-31T12:00:00Z) on top of the current store.
        #[arg(long)]
        since: Option<String>,
        /// Required with --since: it re-queues events of the live database.
        #[arg(long)]
        confirm: bool,
    },
}

/// Where the database is: all that the operator commands take as flags (with
/// their `CLERKSYNC_*` variables); the config file still supplies any setting.
/// The server's other settings stay out of their `--help`.
#[derive(clap::Args)]
struct DbArgs {
    /// Directory of the embedded database [default: data].
    #[arg(long, global = true, env = "CLERKSYNC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// sqlite://path or postgres://... [default: sqlite://<data dir>/clerksync.db].
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
}

impl DbArgs {
    fn settings_ref(&self) -> Settings {
        Settings {
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            ..Settings::default()
        }
    }

    fn settings(self) -> Settings {
        Settings {
            data_dir: self.data_dir,
            database_url: self.database_url,
            ..Settings::default()
        }
    }
}

/// Arguments of `clerksync reindex` (its help is on `Command::Reindex`).
#[derive(clap::Args)]
struct ReindexArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Directory of the search index [default: <data dir>/search].
    #[arg(long, env = "CLERKSYNC_SEARCH_DIR")]
    search_dir: Option<PathBuf>,
    /// Base URL of a running server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: Option<String>,
    /// The server's admin token (with --url).
    #[arg(long, env = "CLERKSYNC_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
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
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let sources = Sources {
        matches,
        file: cli.config.clone(),
    };
    if let Err(e) = rt.block_on(run(cli, &sources)) {
        // One line that says what went wrong and, for config, what to set.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "error: {}", one_line(&e));
        std::process::exit(2);
    }
}

/// The error and its causes as `{:#}` shows them, but each text once: sqlx
/// repeats a database's message in its own text and again as its source.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Prints a line on stdout, quietly ending on a closed pipe (`output::line`).
fn out(line: impl std::fmt::Display) {
    clerksync::output::line(line);
}

/// Where each setting came from, to name it in errors as the user gave it.
struct Sources {
    matches: ArgMatches,
    file: Option<PathBuf>,
}

impl Sources {
    fn name(&self, e: ConfigError) -> ConfigError {
        e.named_by(|key| {
            // Global flags reach the innermost subcommand's matches.
            let mut m = &self.matches;
            while let Some((_, sub)) = m.subcommand() {
                m = sub;
            }
            if m.ids().any(|id| id.as_str() == key) {
                match m.value_source(key) {
                    Some(ValueSource::CommandLine) => return Some(Origin::Flag),
                    Some(ValueSource::EnvVariable) => return Some(Origin::Env),
                    _ => {}
                }
            }
            let path = self.file.as_deref()?;
            let table: toml::Table = std::fs::read_to_string(path).ok()?.parse().ok()?;
            table
                .contains_key(key)
                .then(|| Origin::File(path.to_path_buf()))
        })
    }

    /// Validated settings of a command that verifies no delivery.
    fn without_secret(&self, flags: Settings) -> anyhow::Result<Config> {
        let merged = flags.or(file_settings(self.file.as_deref())?);
        Ok(Config::without_secret(merged).map_err(|e| self.name(e))?)
    }
}

async fn run(cli: Cli, sources: &Sources) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { settings } => {
            let config =
                Config::load(settings, cli.config.as_deref()).map_err(|e| sources.name(e))?;
            clerksync::telemetry::init_logging(config.log_format);
            serve(config).await
        }
        Command::Migrate { db } => {
            let config = sources.without_secret(db.settings())?;
            clerksync::telemetry::init_logging(config.log_format);
            let db = clerksync::store::Database::open(&config.database_url).await?;
            db.close().await;
            out(format_args!(
                "database is up to date ({})",
                db.backend_name()
            ));
            Ok(())
        }
        Command::Events { db, action } => {
            let config = sources.without_secret(db.settings())?;
            let db = clerksync::store::Database::open_existing(&config.database_url).await?;
            let r = events(&db, action).await;
            db.close().await;
            r
        }
        Command::Replay {
            db,
            batch_max,
            max_concurrent,
            into,
            since,
            confirm,
        } => {
            let config = sources.without_secret(Settings {
                batch_max,
                max_concurrent,
                ..db.settings()
            })?;
            clerksync::telemetry::init_logging(config.log_format);
            replay(config, into, since, confirm).await
        }
        Command::Reindex(ReindexArgs {
            db,
            search_dir,
            url,
            admin_token,
        }) => {
            let config = sources.without_secret(Settings {
                search_dir,
                admin_token,
                ..db.settings()
            })?;
            clerksync::telemetry::init_logging(config.log_format);
            reindex(config, url).await
        }
        Command::Backfill(args) => {
            let config = sources.without_secret(args.db.settings_ref())?;
            clerksync::telemetry::init_logging(config.log_format);
            let db = clerksync::store::Database::open(&config.database_url).await?;
            let status = backfill_cmd::run(&db, &args).await;
            db.close().await;
            match status? {
                0 => Ok(()),
                code => std::process::exit(code),
            }
        }
        Command::Loadgen(args) => {
            let (text, report) = clerksync_loadgen::execute(args).await?;
            out(text);
            // Scripts notice a run the server did not answer as it should.
            if let Some(why) = report.and_then(|r| r.failure()) {
                anyhow::bail!(why);
            }
            Ok(())
        }
        Command::Wsbench(args) => {
            let report = clerksync_loadgen::ws::run(args).await?;
            out(report);
            Ok(())
        }
        Command::Demo(args) => {
            clerksync::telemetry::init_logging(clerksync::config::LogFormat::Human);
            demo::run(args, shutdown_signal()).await?;
            Ok(())
        }
    }
}

fn file_settings(path: Option<&Path>) -> anyhow::Result<Settings> {
    Ok(match path {
        Some(p) => Settings::from_file(p)?,
        None => Settings::default(),
    })
}

async fn events(db: &clerksync::store::Database, action: EventsAction) -> anyhow::Result<()> {
    use clerksync::store::events::{self, EventFilter, Transition, STATUSES};
    use clerksync::store::events::{describe_status, DISCARDABLE, RETRYABLE};
    // `done`: what was done ("queued"); `verb`: the operation ("retried").
    let transition = |t: Transition, id: &str, done: &str, verb: &str, applies_to: &[&str]| match t
    {
        Transition::Done => {
            out(format_args!("{id}: {done}"));
            Ok(())
        }
        Transition::NotFound => anyhow::bail!("no event with svix id {id}"),
        Transition::Conflict { status } => anyhow::bail!(
            "event {id} is {}: only {} events can be {verb}",
            describe_status(&status),
            or_list(applies_to)
        ),
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
                    out(serde_json::to_string(r)?);
                }
            } else {
                out(format_args!(
                    "{:<8} {:<32} {:<32} {:<10} {:>8}  error",
                    "seq", "svix_id", "type", "status", "attempts"
                ));
                for r in &rows {
                    out(format_args!(
                        "{:<8} {:<32} {:<32} {:<10} {:>8}  {}",
                        r.seq,
                        r.svix_id,
                        r.event_type,
                        r.status,
                        r.attempts,
                        r.last_error.as_deref().unwrap_or("")
                    ));
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
            out(serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        EventsAction::Retry { svix_id, all_dead } => match (svix_id, all_dead) {
            (_, true) => {
                let n = events::retry_all_dead(db).await?;
                out(format_args!(
                    "queued {n} dead event(s); a running server applies them within a second"
                ));
                Ok(())
            }
            (Some(id), false) => {
                let t = events::retry(db, &id).await?;
                transition(t, &id, "queued", "retried", RETRYABLE)
            }
            (None, false) => anyhow::bail!("give a svix id or --all-dead"),
        },
        EventsAction::Discard { svix_id } => {
            let t = events::discard(db, &svix_id).await?;
            transition(t, &svix_id, "discarded", "discarded", DISCARDABLE)
        }
        EventsAction::Stats => {
            let c = clerksync::store::inbox_counts(db).await?;
            out(serde_json::to_string_pretty(&c)?);
            Ok(())
        }
    }
}

/// "a, b or c".
fn or_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// Unix milliseconds, or an RFC 3339 time (`2026-01-31T12:00:00Z`, any offset).
fn parse_time(s: &str) -> anyhow::Result<i64> {
    use time::format_description::well_known::Rfc3339;
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = time::OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
        anyhow::anyhow!(
            "--since '{s}': use unix milliseconds or an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"
        )
    })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

async fn replay(
    config: Config,
    into: Option<String>,
    since: Option<String>,
    confirm: bool,
) -> anyhow::Result<()> {
    use clerksync::processor::{replay, ProcessorConfig};
    let source = clerksync::store::Database::open_existing(&config.database_url).await?;
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
    out(format_args!(
        "replayed {n} deliveries: {} applied, {} failed in {:.1}s ({:.0} events/s)",
        report.applied,
        report.failed,
        report.elapsed.as_secs_f64(),
        report.per_second()
    ));
    Ok(())
}

async fn reindex(config: Config, url: Option<String>) -> anyhow::Result<()> {
    if let Some(url) = url {
        let token = config
            .admin_token
            .as_ref()
            .context(
                "reindex --url needs the server's admin token: set CLERKSYNC_ADMIN_TOKEN or --admin-token",
            )?;
        clerksync::api::search::reindex_remote(&url, token.expose(), out).await?;
        return Ok(());
    }
    let dir = config
        .search_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("search"));
    let db = clerksync::store::Database::open_existing(&config.database_url).await?;
    let r = clerksync::feed::search::reindex_offline(&db, &dir, out).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_unix_ms_or_rfc_3339() {
        assert_eq!(parse_time("1700000000123").unwrap(), 1_700_000_000_123);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(
            parse_time("2024-02-29T12:00:00.250Z").unwrap(),
            1_709_208_000_250
        );
        assert_eq!(
            parse_time("2024-02-29T13:00:00+01:00").unwrap(),
            1_709_208_000_000
        );
        for bad in ["2024-02-30T00:00:00Z", "yesterday", "2024-02-29"] {
            let e = parse_time(bad).unwrap_err().to_string();
            assert!(e.contains("RFC 3339"), "{e}");
        }
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let e = anyhow::anyhow!("no schema")
            .context("error returned from database: no schema")
            .context("cannot open the database");
        assert_eq!(
            one_line(&e),
            "cannot open the database: error returned from database: no schema"
        );
    }
}
