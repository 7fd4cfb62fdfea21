//! `clerksync replay`: rebuild a store from the stored event log, into an
//! empty database or on top of the live one from a point in time.

use super::db::DbArgs;
use super::out;
use clerksync::config::{default_batch_max, Config, DatabaseUrl, Settings};

/// Arguments of `clerksync replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
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
}

impl ReplayArgs {
    /// The settings these flags give (the config file may give the rest).
    pub fn settings(&self) -> Settings {
        Settings {
            batch_max: self.batch_max,
            max_concurrent: self.max_concurrent,
            ..self.db.settings()
        }
    }
}

pub async fn run(config: Config, args: ReplayArgs) -> anyhow::Result<()> {
    use clerksync::processor::replay;
    let source = clerksync::store::Database::open_existing(&config.database_url).await?;
    let mut pc = config.processor();
    // Replay is asked for by name: `apply_paused` pauses the server's apply only.
    pc.paused = false;
    let clock = clerksync::clock::system();
    let (n, report) = match (args.into, args.since) {
        (Some(into), None) => {
            let url = DatabaseUrl::parse(&into)?;
            // The batch bound left at its default follows the target's backend.
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
                args.confirm,
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
}
