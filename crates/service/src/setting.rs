//! What a bad setting is, for the modules that check their own settings, and
//! the few value types settings share.
//!
//! Owns: the one error a subsystem's settings check returns, naming the
//! setting by its environment variable (`config.rs` renames it to the flag or
//! file key it came from); [`Token`]; [`redact_url`]. Must never: depend on another module of the crate:
//! every subsystem's settings use it, and `config.rs` uses every subsystem.

use std::fmt;

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

/// A bearer token; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Constant-time comparison against a presented token.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == presented.len() && bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}
