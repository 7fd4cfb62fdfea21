//! Where the database is (the flags every operator command takes), and
//! `clerksync migrate`.

use super::out;
use clerksync::config::{Config, Settings};
use std::path::PathBuf;

/// Where the database is: all that the operator commands take as flags (with
/// their `CLERKSYNC_*` variables); the config file still supplies any setting.
/// The server's other settings stay out of their `--help`.
#[derive(clap::Args)]
pub struct DbArgs {
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
    /// The settings these flags give (the config file may give the rest).
    pub fn settings(&self) -> Settings {
        Settings {
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            ..Settings::default()
        }
    }
}

/// Creates or upgrades the schema.
pub async fn migrate(config: Config) -> anyhow::Result<()> {
    clerksync::telemetry::init_logging(config.log_format);
    let db = clerksync::store::Database::open(&config.database_url).await?;
    db.close().await;
    out(format_args!(
        "database is up to date ({})",
        db.backend_name()
    ));
    Ok(())
}
