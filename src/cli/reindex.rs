//! `clerksync reindex`: rebuild the search index, offline or by the running
//! server (`--url`).

use super::db::DbArgs;
use super::out;
use anyhow::Context;
use clerksync::config::{Config, Settings};
use std::path::PathBuf;

/// Arguments of `clerksync reindex` (its help is on `Command::Reindex`).
#[derive(clap::Args)]
pub struct ReindexArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Directory of the search index [default: <data dir>/search].
    #[arg(long, env = "CLERKSYNC_SEARCH_DIR")]
    search_dir: Option<PathBuf>,
    /// Base URL of a running server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: Option<String>,
    /// The server's admin token (with --url).
    #[arg(long, env = "CLERKSYNC_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

impl ReindexArgs {
    /// The settings these flags give (the config file may give the rest).
    pub fn settings(&self) -> Settings {
        Settings {
            search_dir: self.search_dir.clone(),
            admin_token: self.admin_token.clone(),
            ..self.db.settings()
        }
    }
}

pub async fn run(config: Config, url: Option<String>) -> anyhow::Result<()> {
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
    let r = clerksync::search::reindex_offline(&db, &dir, out).await;
    db.close().await;
    r?;
    Ok(())
}
