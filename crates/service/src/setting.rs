//! What a bad setting is, for the modules that check their own settings.
//!
//! Owns: the one error a subsystem's settings check returns, naming the
//! setting by its environment variable (`config.rs` renames it to the flag or
//! file key it came from). Must never: depend on another module of the crate:
//! every subsystem's settings use it, and `config.rs` uses every subsystem.

/// A setting's value that its subsystem refuses, and why.
#[derive(Debug, thiserror::Error)]
#[error("{name} is invalid: {message}")]
pub struct Invalid {
    /// The setting's environment variable, e.g. `CLERKSYNC_REALTIME_QUEUE`.
    pub name: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(name: &'static str, message: impl Into<String>) -> Self {
        Self {
            name,
            message: message.into(),
        }
    }
}

/// Hides a password in a URL so it can be shown in errors and logs.
pub fn redact_url(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => s.to_string(),
    }
}
