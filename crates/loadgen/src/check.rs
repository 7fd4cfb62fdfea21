//! `clerksync loadgen --check FILE`: compares a running server's read API with the
//! state a correct sync must reach (the `--expect` file).
//!
//! Owns: reading the expected state and asking the server about every entity in
//! it. Must never: read the server's database directly (the read API is what a
//! user sees), or stop at the first mismatch (the report lists them).

use super::expect::ExpectedState;
use clerksync::clerk::model::normalize_role;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
}

/// How many entities matched, and the first mismatches.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub total: usize,
    pub matches: usize,
    pub mismatches: Vec<String>,
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "check: {}/{} entities match", self.matches, self.total)?;
        for m in self.mismatches.iter().take(20) {
            writeln!(f, "  mismatch: {m}")?;
        }
        if self.mismatches.len() > 20 {
            writeln!(f, "  ... and {} more", self.mismatches.len() - 20)?;
        }
        Ok(())
    }
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    async fn get(&self, path: &str) -> Result<(u16, Value), CheckError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.client.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|source| CheckError::Http {
            url: url.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        if status == 401 || status >= 500 {
            return Err(CheckError::Status { url, status });
        }
        Ok((status, body))
    }
}

fn field_eq(
    what: &str,
    id: &str,
    name: &str,
    got: &Value,
    want: &Value,
    out: &mut Vec<String>,
) -> bool {
    if got == want {
        true
    } else {
        out.push(format!("{what} {id}: {name} is {got}, expected {want}"));
        false
    }
}

/// `base_url` is the server's root (`http://host:port`).
pub async fn check(
    expect: &Path,
    base_url: &str,
    token: Option<String>,
) -> Result<CheckReport, CheckError> {
    let text = std::fs::read_to_string(expect).map_err(|e| CheckError::Read {
        path: expect.display().to_string(),
        message: e.to_string(),
    })?;
    let state: ExpectedState = serde_json::from_str(&text).map_err(|e| CheckError::Read {
        path: expect.display().to_string(),
        message: e.to_string(),
    })?;
    let api = Api {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client"),
        base: base_url.trim_end_matches('/').to_string(),
        token,
    };
    let mut r = CheckReport::default();
    for (id, u) in &state.users {
        r.total += 1;
        let (status, body) = api.get(&format!("/v1/users/{id}")).await?;
        let ok = match (u.deleted, status) {
            (true, 410) => true,
            (false, 200) => {
                let mut ok = true;
                ok &= field_eq(
                    "user",
                    id,
                    "first_name",
                    &body["first_name"],
                    &serde_json::json!(u.first_name),
                    &mut r.mismatches,
                );
                ok &= field_eq(
                    "user",
                    id,
                    "last_name",
                    &body["last_name"],
                    &serde_json::json!(u.last_name),
                    &mut r.mismatches,
                );
                ok &= field_eq(
                    "user",
                    id,
                    "username",
                    &body["username"],
                    &serde_json::json!(u.username),
                    &mut r.mismatches,
                );
                ok &= field_eq(
                    "user",
                    id,
                    "primary_email_address",
                    &body["primary_email_address"],
                    &serde_json::json!(u.primary_email_address),
                    &mut r.mismatches,
                );
                ok &= field_eq(
                    "user",
                    id,
                    "updated_at",
                    &body["updated_at"],
                    &serde_json::json!(u.updated_at),
                    &mut r.mismatches,
                );
                ok
            }
            (deleted, s) => {
                r.mismatches.push(format!(
                    "user {id}: status {s}, expected {}",
                    if deleted { 410 } else { 200 }
                ));
                false
            }
        };
        r.matches += ok as usize;
    }
    // Live memberships as the server lists them, per organization.
    let mut listed: HashMap<String, Value> = HashMap::new();
    for (id, o) in &state.organizations {
        r.total += 1;
        let (status, body) = api.get(&format!("/v1/organizations/{id}")).await?;
        let ok = match (o.deleted, status) {
            (true, 410) => true,
            (false, 200) => {
                let mut ok = true;
                ok &= field_eq(
                    "organization",
                    id,
                    "name",
                    &body["name"],
                    &serde_json::json!(o.name),
                    &mut r.mismatches,
                );
                ok &= field_eq(
                    "organization",
                    id,
                    "slug",
                    &body["slug"],
                    &serde_json::json!(o.slug),
                    &mut r.mismatches,
                );
                ok &= field_eq(
                    "organization",
                    id,
                    "updated_at",
                    &body["updated_at"],
                    &serde_json::json!(o.updated_at),
                    &mut r.mismatches,
                );
                let mut cursor = String::new();
                loop {
                    let (_, page) = api
                        .get(&format!(
                            "/v1/organizations/{id}/memberships?limit=500&cursor={cursor}"
                        ))
                        .await?;
                    for m in page["data"].as_array().into_iter().flatten() {
                        if let Some(mid) = m["id"].as_str() {
                            listed.insert(mid.to_string(), m.clone());
                        }
                    }
                    match page["next_cursor"].as_str() {
                        Some(c) => cursor = c.to_string(),
                        None => break,
                    }
                }
                ok
            }
            (deleted, s) => {
                r.mismatches.push(format!(
                    "organization {id}: status {s}, expected {}",
                    if deleted { 410 } else { 200 }
                ));
                false
            }
        };
        r.matches += ok as usize;
    }
    for (id, m) in &state.memberships {
        r.total += 1;
        let ok = match (m.deleted, listed.get(id)) {
            (true, None) => true,
            (true, Some(_)) => {
                r.mismatches
                    .push(format!("membership {id}: listed, expected deleted"));
                false
            }
            (false, None) => {
                r.mismatches.push(format!("membership {id}: missing"));
                false
            }
            (false, Some(got)) => {
                let mut ok = true;
                let role = m.role.as_deref().map(normalize_role);
                ok &= field_eq(
                    "membership",
                    id,
                    "role",
                    &got["role"],
                    &serde_json::json!(role),
                    &mut r.mismatches,
                );
                ok &= field_eq(
                    "membership",
                    id,
                    "user_id",
                    &got["user_id"],
                    &serde_json::json!(m.user_id),
                    &mut r.mismatches,
                );
                ok &= field_eq(
                    "membership",
                    id,
                    "organization_id",
                    &got["organization_id"],
                    &serde_json::json!(m.organization_id),
                    &mut r.mismatches,
                );
                ok
            }
        };
        r.matches += ok as usize;
    }
    Ok(r)
}
