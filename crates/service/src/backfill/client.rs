//! A client of Clerk's Backend API, just enough to list what an instance holds.
//!
//! Owns: the secret key (sent as a bearer token, never logged or shown in
//! `Debug`), Clerk's rate limit (a token bucket sized from the key's prefix),
//! retries (429 after `Retry-After`; 5xx, timeouts and resets with exponential
//! backoff and jitter), a bound on requests in flight, and Clerk's two list
//! shapes (`/users` is a bare array, every other list is `{data, total_count}`).
//! Must never: log a key, a record or an email; retry a request Clerk refused
//! for good (401, 403, 404, 422); hold a database transaction (it knows none).

use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
// tokio's clock: the bucket's tests run on paused time.
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Clerk's default API base; the client appends `/v1/...`.
pub const DEFAULT_API_URL: &str = "https://api.clerk.com";

/// A Clerk secret key (`sk_live_...` / `sk_test_...`). `Debug` and `Display`
/// never show it: it only leaves the process in the `Authorization` header.
#[derive(Clone)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn parse(s: &str) -> Result<SecretKey, ClientError> {
        let s = s.trim();
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ClientError::BadKey);
        }
        Ok(SecretKey(s.to_string()))
    }

    /// Clerk's per-instance limit for this kind of key: production keys get
    /// 1,000 requests per 10 s, development keys 100 (Clerk's rate-limit docs).
    pub fn default_rate(&self) -> Rate {
        if self.0.starts_with("sk_live_") {
            Rate::per_10s(1000)
        } else {
            Rate::per_10s(100)
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Requests allowed per window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub requests: u32,
    pub per: Duration,
}

impl Rate {
    pub fn per_10s(requests: u32) -> Rate {
        Rate {
            requests,
            per: Duration::from_secs(10),
        }
    }

    /// `N/10s`, `N/1s`, `N/60s`, or `off` (no limit: a local stand-in).
    pub fn parse(s: &str) -> Result<Option<Rate>, ClientError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let bad = || ClientError::BadRate(s.to_string());
        let (n, per) = s.split_once('/').ok_or_else(bad)?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        let secs: u64 = per
            .trim()
            .strip_suffix('s')
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())?;
        if n == 0 || secs == 0 {
            return Err(bad());
        }
        Ok(Some(Rate {
            requests: n,
            per: Duration::from_secs(secs),
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "CLERKSYNC_CLERK_SECRET_KEY is empty or malformed (expected sk_live_... or sk_test_...)"
    )]
    BadKey,
    #[error("the rate {0:?} is not N/<seconds>s (e.g. 1000/10s) or off")]
    BadRate(String),
    #[error("CLERKSYNC_CLERK_API_URL {0:?} is not an http(s) URL")]
    BadUrl(String),
    #[error("Clerk refused the secret key ({status}): check CLERKSYNC_CLERK_SECRET_KEY")]
    Unauthorized { status: u16 },
    #[error("Clerk has no {path}: {code}")]
    NotFound { path: String, code: String },
    #[error("Clerk rejected {path} ({status} {code}): {message}")]
    Rejected {
        path: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("Clerk did not answer {path} successfully after {attempts} attempts: {last}")]
    GaveUp {
        path: String,
        attempts: u32,
        last: String,
    },
    #[error("Clerk's answer to {path} is not the expected JSON: {message}")]
    Shape { path: String, message: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

impl ClientError {
    /// Whether the listed object is gone (`resource_not_found`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::NotFound { .. })
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Without a trailing `/v1`.
    pub base_url: String,
    pub secret: SecretKey,
    /// None: no limit (a local stand-in).
    pub rate: Option<Rate>,
    /// Requests in flight at once.
    pub max_concurrent: usize,
    /// Per request, connect to last byte.
    pub timeout: Duration,
    /// Attempts per request for 5xx, timeouts and resets (429s do not count).
    pub max_attempts: u32,
    /// First backoff; doubles per attempt (±25% jitter), up to 30 s.
    pub retry_base: Duration,
}

impl ClientConfig {
    pub fn new(base_url: &str, secret: SecretKey) -> Result<ClientConfig, ClientError> {
        let base = base_url.trim().trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        match url::Url::parse(base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => return Err(ClientError::BadUrl(base_url.to_string())),
        }
        Ok(ClientConfig {
            base_url: base.to_string(),
            rate: Some(secret.default_rate()),
            secret,
            max_concurrent: 8,
            timeout: Duration::from_secs(30),
            max_attempts: 6,
            retry_base: Duration::from_millis(250),
        })
    }
}

/// Requests and throttles so far (for progress and metrics).
#[derive(Debug, Default)]
pub struct ClientStats {
    pub requests: AtomicU64,
    pub throttled: AtomicU64,
    pub retried: AtomicU64,
}

/// A continuous token bucket: `requests` tokens at most, refilled at
/// `requests / per`. Starts full, as Clerk's window does.
struct Bucket {
    rate: Rate,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: Rate) -> Bucket {
        Bucket {
            rate,
            state: Mutex::new((rate.requests as f64, Instant::now())),
        }
    }

    async fn take(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let per_sec = self.rate.requests as f64 / self.rate.per.as_secs_f64();
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * per_sec)
                    .min(self.rate.requests as f64);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - s.0) / per_sec)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Clerk's error body: `{"errors":[{"message","long_message","code"}]}`.
#[derive(Deserialize)]
struct ErrorBody {
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    message: String,
    #[serde(default)]
    long_message: Option<String>,
    #[serde(default)]
    code: String,
}

fn error_of(text: &str) -> (String, String) {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(b) if !b.errors.is_empty() => {
            let e = &b.errors[0];
            let msg = e.long_message.clone().unwrap_or_else(|| e.message.clone());
            (e.code.clone(), msg)
        }
        _ => (String::new(), String::from("(no Clerk error body)")),
    }
}

/// `{data, total_count}`; the records stay raw JSON text (applied as they came).
#[derive(Deserialize)]
struct Paginated {
    data: Vec<Box<RawValue>>,
    #[serde(default)]
    total_count: Option<u64>,
}

#[derive(Deserialize)]
struct TotalCount {
    total_count: u64,
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    pub records: Vec<Box<RawValue>>,
    /// The list's total when Clerk says it (every list but `/users`).
    pub total: Option<u64>,
}

/// A client of one Clerk instance's Backend API.
pub struct ClerkClient {
    http: reqwest::Client,
    config: ClientConfig,
    bucket: Option<Bucket>,
    in_flight: Semaphore,
    pub stats: Arc<ClientStats>,
}

impl fmt::Debug for ClerkClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClerkClient")
            .field("base_url", &self.config.base_url)
            .field("rate", &self.config.rate)
            .finish_non_exhaustive()
    }
}

impl ClerkClient {
    pub fn new(config: ClientConfig) -> Result<ClerkClient, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("clerksync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::Build)?;
        Ok(ClerkClient {
            http,
            bucket: config.rate.map(Bucket::new),
            in_flight: Semaphore::new(config.max_concurrent.max(1)),
            config,
            stats: Arc::new(ClientStats::default()),
        })
    }

    /// GET `/v1{path}` and its body, after the rate limit and retries.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<String, ClientError> {
        let url = format!("{}/v1{}", self.config.base_url, path);
        let _permit = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut attempts = 0u32;
        loop {
            if let Some(b) = &self.bucket {
                b.take().await;
            }
            attempts += 1;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let sent = self
                .http
                .get(&url)
                .query(query)
                .bearer_auth(&self.config.secret.0)
                .send()
                .await;
            let last = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok());
                    let body = resp.text().await;
                    match (status.as_u16(), body) {
                        (200..=299, Ok(text)) => return Ok(text),
                        (429, _) => {
                            // Clerk's window: wait as told, and this does not
                            // count as a failed attempt (it is not one).
                            self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                            attempts -= 1;
                            let wait = retry_after.unwrap_or(1.0).clamp(0.0, 600.0);
                            tracing::info!(
                                path,
                                retry_after_s = wait,
                                "Clerk rate limit hit; waiting"
                            );
                            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                            continue;
                        }
                        (s @ (401 | 403), _) => {
                            return Err(ClientError::Unauthorized { status: s })
                        }
                        (404, body) => {
                            let (code, _) = error_of(&body.unwrap_or_default());
                            return Err(ClientError::NotFound {
                                path: path.to_string(),
                                code,
                            });
                        }
                        (s @ 400..=499, body) => {
                            let (code, message) = error_of(&body.unwrap_or_default());
                            return Err(ClientError::Rejected {
                                path: path.to_string(),
                                status: s,
                                code,
                                message,
                            });
                        }
                        (s, Ok(_)) => format!("HTTP {s}"),
                        (s, Err(e)) => format!("HTTP {s}, body cut off: {e}"),
                    }
                }
                // Timeouts, refused or reset connections: worth another try.
                Err(e) => without_url(&e),
            };
            if attempts >= self.config.max_attempts {
                return Err(ClientError::GaveUp {
                    path: path.to_string(),
                    attempts,
                    last,
                });
            }
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
            let wait = backoff(self.config.retry_base, attempts);
            tracing::info!(path, attempts, error = %last, wait_ms = wait.as_millis() as u64, "Clerk request failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// One page of a list, ascending by creation time: rows Clerk adds while
    /// we page append at the end instead of shifting what is still to come.
    pub async fn list(
        &self,
        path: &str,
        bare_array: bool,
        offset: u64,
        limit: u32,
    ) -> Result<Page, ClientError> {
        let q = [
            ("limit", limit.to_string()),
            ("offset", offset.to_string()),
            ("order_by", "+created_at".to_string()),
        ];
        let text = self.get(path, &q).await?;
        let shape = |e: serde_json::Error| ClientError::Shape {
            path: path.to_string(),
            message: e.to_string(),
        };
        if bare_array {
            let records: Vec<Box<RawValue>> = serde_json::from_str(&text).map_err(shape)?;
            Ok(Page {
                records,
                total: None,
            })
        } else {
            let p: Paginated = serde_json::from_str(&text).map_err(shape)?;
            Ok(Page {
                records: p.data,
                total: p.total_count,
            })
        }
    }

    /// `GET {path}` answering `{"object":"total_count","total_count":N}`.
    pub async fn count(&self, path: &str) -> Result<u64, ClientError> {
        let text = self.get(path, &[]).await?;
        serde_json::from_str::<TotalCount>(&text)
            .map(|t| t.total_count)
            .map_err(|e| ClientError::Shape {
                path: path.to_string(),
                message: e.to_string(),
            })
    }
}

/// reqwest's error text without the URL (it may carry query values).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    let mut text = kind.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text = format!("{text}: {s}");
        src = s.source();
    }
    text
}

/// Exponential backoff with ±25% jitter, so retries of concurrent pages spread.
fn backoff(base: Duration, attempts: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(Duration::from_secs(30));
    exp.mul_f64(rand::random::<f64>() * 0.5 + 0.75)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_from_key_prefix_and_overrides() {
        let live = SecretKey::parse("sk_live_abc").unwrap();
        assert_eq!(live.default_rate(), Rate::per_10s(1000));
        let test = SecretKey::parse("sk_test_abc").unwrap();
        assert_eq!(test.default_rate(), Rate::per_10s(100));
        assert_eq!(
            Rate::parse("50/1s").unwrap(),
            Some(Rate {
                requests: 50,
                per: Duration::from_secs(1)
            })
        );
        assert_eq!(Rate::parse("off").unwrap(), None);
        assert!(Rate::parse("0/10s").is_err());
        assert!(Rate::parse("10").is_err());
        assert!(SecretKey::parse(" ").is_err());
        assert_eq!(format!("{live:?}"), "SecretKey(<redacted>)");
    }

    #[test]
    fn base_url_takes_or_drops_v1() {
        let k = SecretKey::parse("sk_test_x").unwrap();
        let c = ClientConfig::new("http://127.0.0.1:9/v1/", k.clone()).unwrap();
        assert_eq!(c.base_url, "http://127.0.0.1:9");
        assert!(ClientConfig::new("ftp://x", k.clone()).is_err());
        assert!(ClientConfig::new("not a url", k).is_err());
    }

    #[test]
    fn clerk_errors_are_read() {
        let (code, msg) = error_of(
            r#"{"errors":[{"message":"bad","long_message":"limit must be <= 500","code":"form_param_value_invalid"}]}"#,
        );
        assert_eq!(code, "form_param_value_invalid");
        assert_eq!(msg, "limit must be <= 500");
        assert_eq!(error_of("<html>").0, "");
    }
}
