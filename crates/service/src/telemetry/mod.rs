//! Metrics and tracing set-up.
//!
//! Owns: the per-app metric registry (no process-global recorder, so two apps in
//! one test process never mix their counters) and the log subscriber. Must never:
//! label a metric with an unbounded value (raw paths, ids) or log secrets.

pub mod history;
pub mod metrics;

use crate::config::LogFormat;

/// Installs the global tracing subscriber (only `main` calls this).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
