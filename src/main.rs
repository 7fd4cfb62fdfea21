//! The `clerksync` command line: parse, load config, call into the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use clerksync::config::{Config, Settings};
use clerksync::App;
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
            let file = match cli.config.as_deref() {
                Some(p) => Settings::from_file(p)?,
                None => Settings::default(),
            };
            let config = Config::without_secret(settings.or(file))?;
            clerksync::telemetry::init_logging(config.log_format);
            let db = clerksync::store::Database::open(&config.database_url).await?;
            db.close().await;
            println!("database is up to date ({})", db.backend_name());
            Ok(())
        }
        Command::Loadgen(args) => {
            let report = clerksync::loadgen::run(args).await?;
            println!("{report}");
            Ok(())
        }
    }
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
