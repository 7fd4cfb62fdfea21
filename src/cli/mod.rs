//! The `clerksync` command line: the commands, where each setting came from,
//! and how an error is shown. One file per command group: `db.rs` (where the
//! database is, `migrate`), `serve.rs`, `events.rs`, `replay.rs`,
//! `reindex.rs`, `backfill.rs`; `demo`, `loadgen` and `wsbench` call into their own modules.
//!
//! Must never: print with `println!` (it panics on a closed pipe, `| head`):
//! use [`out`]; give an operator command the server's settings as flags (each
//! command's `--help` shows only what it uses; the config file still supplies
//! any key); or show an error on more than one line.

mod backfill;
mod db;
mod events;
mod reindex;
mod replay;
mod serve;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use clerksync::config::{Config, Layers, Origin, Settings};
use db::DbArgs;
use std::path::PathBuf;

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
    Demo(crate::demo::DemoArgs),
    /// The stand-in for Clerk's Backend API alone, holding a generated
    /// instance (to time `backfill` against it as a separate process).
    #[command(hide = true)]
    ClerkStandIn(clerksync_loadgen::clerk_api::StandInArgs),
    /// Print the HTTP API's OpenAPI 3.1 document (`clerksync openapi > openapi.json`).
    Openapi,
    /// Inspect and operate on stored events (works with the server stopped).
    Events {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        action: events::EventsAction,
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
    Reindex(reindex::ReindexArgs),
    /// Import what Clerk already has (users, organizations, memberships) through
    /// its Backend API, and delete what it no longer has (CLERKSYNC_CLERK_SECRET_KEY).
    Backfill(backfill::BackfillArgs),
    /// Rebuild a store from the stored event log.
    Replay(replay::ReplayArgs),
}

/// Parses the command line, runs the command, and exits 2 with one line on
/// stderr when it fails.
pub fn main() {
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|e| exit_on(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let sources = Sources {
        matches,
        file: cli.config.clone(),
    };
    if let Err(e) = rt.block_on(run(cli.command, &sources)) {
        // One line that says what went wrong and, for config, what to set.
        fail(&one_line(&e));
    }
}

async fn run(command: Command, sources: &Sources) -> anyhow::Result<()> {
    match command {
        Command::Serve { settings } => {
            let config = sources.config(settings, Secret::Required)?;
            clerksync::telemetry::init_logging(config.log_format);
            serve::serve(config).await
        }
        Command::Migrate { db } => {
            db::migrate(sources.config(db.settings(), Secret::Unused)?).await
        }
        Command::Events { db, action } => {
            events::run(sources.config(db.settings(), Secret::Unused)?, action).await
        }
        Command::Replay(args) => {
            let config = sources.config(args.settings(), Secret::Unused)?;
            clerksync::telemetry::init_logging(config.log_format);
            replay::run(config, args).await
        }
        Command::Reindex(args) => {
            let config = sources.config(args.settings(), Secret::Unused)?;
            clerksync::telemetry::init_logging(config.log_format);
            reindex::run(config, args.url).await
        }
        Command::Backfill(args) => {
            let config = sources.config(args.db.settings(), Secret::Unused)?;
            clerksync::telemetry::init_logging(config.log_format);
            let status = match &args.url {
                // The server runs the pass: no database or Clerk key here.
                Some(url) => backfill::remote(&args, url).await,
                None => {
                    let db = clerksync::store::Database::open(&config.database_url).await?;
                    let status = backfill::run(&db, &args).await;
                    db.close().await;
                    status
                }
            };
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
        Command::Openapi => {
            // The committed openapi.json is this output (a test compares them).
            out(clerksync::api::openapi::json().trim_end());
            Ok(())
        }
        Command::ClerkStandIn(args) => {
            let (line, task) = clerksync_loadgen::clerk_api::start_stand_in(args).await?;
            out(line);
            // Serves until the process is stopped.
            let _ = task.await;
            Ok(())
        }
        Command::Demo(args) => {
            clerksync::telemetry::init_logging(clerksync::config::LogFormat::Human);
            crate::demo::run(args, serve::shutdown_signal()).await?;
            Ok(())
        }
    }
}

/// Whether a command verifies deliveries, and so needs the signing secret.
enum Secret {
    Required,
    Unused,
}

/// Where each setting came from, to name it in errors as the user gave it.
struct Sources {
    matches: ArgMatches,
    file: Option<PathBuf>,
}

impl Sources {
    /// The command's settings (`given` by its flags and variables) over the
    /// config file, checked; a bad one is named as the user gave it.
    fn config(&self, given: Settings, secret: Secret) -> anyhow::Result<Config> {
        let layers = Layers::new(&given, self.file.as_deref())?;
        let settings = layers.settings()?;
        let config = match secret {
            Secret::Required => Config::from_settings(settings),
            Secret::Unused => Config::without_secret(settings),
        };
        Ok(config.map_err(|e| e.named_by(|key| self.origin(key, &layers)))?)
    }

    fn origin(&self, key: &str, layers: &Layers) -> Option<Origin> {
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
        layers.file_of(key).map(|p| Origin::File(p.to_path_buf()))
    }
}

/// Exits on a command line clap refused: a value it could not parse in one
/// line that names the flag or the variable it came from, like the other
/// settings' errors; anything else (help, version, a typo) as clap shows it.
fn exit_on(e: clap::Error) -> ! {
    match invalid_value(&e) {
        Some(line) => fail(&line),
        None => e.exit(),
    }
}

/// `--cache-backend is invalid: 'memcached': use moka or redis`, or
/// `CLERKSYNC_CACHE_BACKEND ...` when the variable gave it.
fn invalid_value(e: &clap::Error) -> Option<String> {
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        e.get(ContextKind::InvalidArg),
        e.get(ContextKind::InvalidValue),
    ) else {
        return None;
    };
    let flag = arg.split_whitespace().next()?;
    let key = flag.strip_prefix("--")?;
    let var = format!("CLERKSYNC_{}", key.replace('-', "_").to_ascii_uppercase());
    let on_line = std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    let name = if !on_line && std::env::var_os(&var).is_some() {
        var
    } else {
        flag.to_string()
    };
    let why = match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => {
            let valid: Vec<&str> = valid.iter().map(String::as_str).collect();
            format!("use {}", or_list(&valid))
        }
        _ => std::error::Error::source(e).map_or_else(|| "not valid".into(), |s| s.to_string()),
    };
    Some(format!("{name} is invalid: '{value}': {why}"))
}

fn fail(line: &str) -> ! {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "error: {line}");
    std::process::exit(2);
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

/// "a, b or c".
fn or_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_value_clap_refuses_is_one_line_naming_the_flag() {
        let parse = |args: &[&str]| {
            let argv = [&["clerksync", "serve"][..], args].concat();
            invalid_value(&Cli::command().try_get_matches_from(argv).err().unwrap())
        };
        assert_eq!(
            parse(&["--cache-backend", "memcached"]).unwrap(),
            "--cache-backend is invalid: 'memcached': use moka or redis"
        );
        let e = parse(&["--max-body-bytes", "lots"]).unwrap();
        assert!(
            e.starts_with("--max-body-bytes is invalid: 'lots': "),
            "{e}"
        );
        assert_eq!(parse(&["--no-such-flag"]), None, "clap shows the rest");
    }
}
