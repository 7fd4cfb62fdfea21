//! `clerksync events`: list, show, retry and discard stored events, and count
//! them by status (works with the server stopped).

use super::{or_list, out};
use clap::Subcommand;
use clerksync::config::Config;

#[derive(Subcommand)]
pub enum EventsAction {
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

/// Runs one `events` action against the database of `config`.
pub async fn run(config: Config, action: EventsAction) -> anyhow::Result<()> {
    let db = clerksync::store::Database::open_existing(&config.database_url).await?;
    let r = events(&db, action).await;
    db.close().await;
    r
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
