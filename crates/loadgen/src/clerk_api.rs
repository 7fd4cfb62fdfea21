//! A stand-in for Clerk's Backend API: what `clerksync backfill` lists, for the
//! tests and for `clerksync demo`.
//!
//! Owns: an instance's users, organizations and memberships (and, empty unless
//! filled, organization invitations and domains, roles, permissions and
//! waitlist entries) served in Clerk's exact shapes — `GET /v1/users` a bare
//! array with `GET /v1/users/count`
//! `{"object":"total_count","total_count":N}`, every other list
//! `{"data":[...],"total_count":N}`, `limit` 1..=500 (else 422), offset
//! paging ordered by `[+|-]created_at`, errors `{"errors":[{message,
//! long_message,code}]}`, 401 on a wrong key, 404 `resource_not_found` for a
//! deleted object — and faults a test can inject (429 with `Retry-After`,
//! 500s, slow pages, a listing that suddenly returns nothing). The state is
//! mutable while it serves, so a test can make Clerk change during a pass.
//!
//! Must never: keep anything on disk, or answer with a shape Clerk does not.
//! It is a tool, not a model of Clerk's rules: deleting a user or an
//! organization removes its memberships, and an organization its invitations
//! and domains (as Clerk does); nothing else cascades.

// Handlers' helpers return the error answer itself (a Response): it is sent
// as it is, once per request, so boxing it would buy nothing.
#![expect(clippy::result_large_err)]

use crate::generate::{generate_each, Event, GenConfig};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The collections the stand-in holds, by Clerk's list name.
pub const COLLECTIONS: [&str; 8] = [
    "users",
    "organizations",
    "organization_memberships",
    // Clerk lists invitations instance-wide (`GET /v1/organization_invitations`)
    // and per organization; domains only per organization
    // (`GET /v1/organizations/{id}/domains`): the stand-in serves both
    // collections under their organization, and invitations instance-wide too.
    "organization_invitations",
    "organization_domains",
    "organization_roles",
    "organization_permissions",
    "waitlist_entries",
];

/// One collection in creation order: (created_at, id) -> record.
#[derive(Default)]
struct Collection {
    by_order: BTreeMap<(i64, String), Arc<str>>,
    created: HashMap<String, i64>,
    /// `by_order`'s records in ascending order, built by the first page after
    /// a change: a page is then a slice, not a walk from the first record (a
    /// walk made listing 1M users quadratic). Any write drops it.
    ordered: Option<Vec<Arc<str>>>,
    /// Memberships only: the ids of the records each user or organization id
    /// is referenced by, and each record's (user_id, organization_id), so a
    /// cascade reads its own memberships instead of parsing all of them.
    by_ref: HashMap<String, HashSet<String>>,
    refs: HashMap<String, (String, String)>,
}

impl Collection {
    fn upsert(
        &mut self,
        id: &str,
        created_at: i64,
        record: &Value,
        refs: Option<(String, String)>,
    ) {
        let created_at = *self.created.entry(id.to_string()).or_insert(created_at);
        self.by_order
            .insert((created_at, id.to_string()), record.to_string().into());
        self.ordered = None;
        self.unref(id);
        if let Some((user, org)) = refs {
            for parent in [&user, &org] {
                self.by_ref
                    .entry(parent.clone())
                    .or_default()
                    .insert(id.to_string());
            }
            self.refs.insert(id.to_string(), (user, org));
        }
    }

    fn unref(&mut self, id: &str) {
        if let Some((user, org)) = self.refs.remove(id) {
            for parent in [user, org] {
                if let Some(set) = self.by_ref.get_mut(&parent) {
                    set.remove(id);
                    if set.is_empty() {
                        self.by_ref.remove(&parent);
                    }
                }
            }
        }
    }

    fn remove(&mut self, id: &str) -> bool {
        self.unref(id);
        match self.created.remove(id) {
            Some(c) => {
                self.ordered = None;
                self.by_order.remove(&(c, id.to_string())).is_some()
            }
            None => false,
        }
    }

    fn get(&self, id: &str) -> Option<&Arc<str>> {
        let c = self.created.get(id)?;
        self.by_order.get(&(*c, id.to_string()))
    }

    /// Every record in ascending creation order.
    fn ordered(&mut self) -> &[Arc<str>] {
        self.ordered
            .get_or_insert_with(|| self.by_order.values().cloned().collect())
    }
}

/// What a test makes the stand-in do wrong, request by request.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// The next N requests answer 429 with `Retry-After: retry_after_secs`.
    pub throttle_next: u32,
    pub retry_after_secs: u32,
    /// The next N requests answer 500.
    pub fail_next: u32,
    /// Every list page waits this long first.
    pub page_delay: Duration,
    /// Lists answer empty (total 0) while set: an instance that "lost" everything.
    pub list_nothing: bool,
}

#[derive(Default)]
struct Inner {
    collections: HashMap<&'static str, Collection>,
    faults: Faults,
    requests: u64,
}

/// The stand-in's state; clones share it.
#[derive(Clone)]
pub struct ClerkApi {
    secret: Arc<str>,
    inner: Arc<Mutex<Inner>>,
}

/// The collection of an event family.
fn collection_of(family: &str) -> Option<&'static str> {
    Some(match family {
        "user" => "users",
        "organization" => "organizations",
        "organizationMembership" => "organization_memberships",
        "organizationInvitation" => "organization_invitations",
        "organizationDomain" => "organization_domains",
        "role" => "organization_roles",
        "permission" => "organization_permissions",
        "waitlistEntry" => "waitlist_entries",
        _ => return None,
    })
}

fn clerk_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"errors": [{"message": message, "long_message": message, "code": code}]});
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl ClerkApi {
    /// An empty instance that accepts `secret` as its key.
    pub fn new(secret: &str) -> ClerkApi {
        ClerkApi {
            secret: secret.into(),
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes Clerk's state what these events say happened (in order): the
    /// last record of each entity, without the deleted ones.
    pub fn apply_events<'a>(&self, events: impl IntoIterator<Item = &'a Event>) {
        for e in events {
            let body: Value = serde_json::from_slice(&e.body).expect("generated events are JSON");
            self.apply_event_json(&e.event_type, &body["data"]);
        }
    }

    /// One event: `<family>.deleted` removes, anything else writes the record.
    pub fn apply_event_json(&self, event_type: &str, data: &Value) {
        let (family, action) = event_type.split_once('.').unwrap_or((event_type, ""));
        let Some(coll) = collection_of(family) else {
            return;
        };
        let Some(id) = data.get("id").and_then(Value::as_str) else {
            return;
        };
        if action == "deleted" || data.get("deleted") == Some(&Value::Bool(true)) {
            self.delete(coll, id);
        } else {
            self.upsert(coll, data.clone());
        }
    }

    /// Creates or replaces a record (`id` and `created_at` read from it).
    pub fn upsert(&self, collection: &'static str, record: Value) {
        let id = record["id"]
            .as_str()
            .expect("a record has an id")
            .to_string();
        let created = record
            .get("created_at")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let refs = (collection == "organization_memberships")
            .then(|| membership_refs_of(&record))
            .flatten();
        self.lock()
            .collections
            .entry(collection)
            .or_default()
            .upsert(&id, created, &record, refs);
    }

    /// Deletes a record; a user's or organization's memberships go with it.
    pub fn delete(&self, collection: &str, id: &str) -> bool {
        let mut inner = self.lock();
        let Some(c) = inner.collections.get_mut(collection) else {
            return false;
        };
        let removed = c.remove(id);
        if collection == "organizations" {
            for child in ["organization_invitations", "organization_domains"] {
                if let Some(c) = inner.collections.get_mut(child) {
                    let gone: Vec<String> = c
                        .by_order
                        .iter()
                        .filter(|(_, r)| organization_of(r).as_deref() == Some(id))
                        .map(|((_, cid), _)| cid.clone())
                        .collect();
                    for cid in gone {
                        c.remove(&cid);
                    }
                }
            }
        }
        if matches!(collection, "users" | "organizations") {
            if let Some(m) = inner.collections.get_mut("organization_memberships") {
                let gone: Vec<String> = m
                    .by_ref
                    .get(id)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                for mid in gone {
                    m.remove(&mid);
                }
            }
        }
        removed
    }

    /// A record as Clerk would answer `GET /v1/<collection>/<id>`.
    pub fn get(&self, collection: &str, id: &str) -> Option<Value> {
        let inner = self.lock();
        let r = inner.collections.get(collection)?.get(id)?;
        serde_json::from_str(r).ok()
    }

    /// (id, updated_at) of every record of a collection, in creation order.
    pub fn versions(&self, collection: &str) -> Vec<(String, i64)> {
        let inner = self.lock();
        let Some(c) = inner.collections.get(collection) else {
            return Vec::new();
        };
        c.by_order
            .iter()
            .map(|((_, id), r)| {
                let v: Value = serde_json::from_str(r).unwrap_or(Value::Null);
                (id.clone(), v["updated_at"].as_i64().unwrap_or(0))
            })
            .collect()
    }

    pub fn len(&self, collection: &str) -> usize {
        self.lock()
            .collections
            .get(collection)
            .map_or(0, |c| c.by_order.len())
    }

    pub fn is_empty(&self) -> bool {
        COLLECTIONS.iter().all(|c| self.len(c) == 0)
    }

    /// Requests answered so far (faults included).
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    pub fn set_faults(&self, f: Faults) {
        self.lock().faults = f;
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// The router, for embedding (`/v1/...`).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/users", get(list_users))
            .route("/v1/users/count", get(count_users))
            .route(
                "/v1/organizations/{id}/memberships",
                get(list_org_memberships),
            )
            .route(
                "/v1/organizations/{id}/invitations",
                get(list_org_invitations),
            )
            .route(
                "/v1/organizations/{id}/invitations/{invitation_id}",
                get(get_org_invitation),
            )
            .route("/v1/organizations/{id}/domains", get(list_org_domains))
            // Every other collection: `{data, total_count}` lists and single objects.
            .route("/v1/{collection}", get(list_collection))
            .route("/v1/{collection}/{id}", get(get_one))
            .fallback(|| async {
                clerk_error(StatusCode::NOT_FOUND, "resource_not_found", "not found")
            })
            .with_state(self.clone())
    }

    /// Serves on `127.0.0.1:port` (0: any) until the task is aborted; returns
    /// the base URL to give `CLERKSYNC_CLERK_API_URL`.
    pub async fn spawn(&self, port: u16) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let addr = listener.local_addr()?;
        let app = self.router();
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((format!("http://{addr}"), handle))
    }

    /// Authorization and injected faults, before any answer.
    fn gate(&self, headers: &HeaderMap) -> Result<Duration, Response> {
        let mut inner = self.lock();
        inner.requests += 1;
        let expected = format!("Bearer {}", self.secret);
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            return Err(clerk_error(
                StatusCode::UNAUTHORIZED,
                "authentication_invalid",
                "The provided secret key is invalid. Make sure that your secret key is correct.",
            ));
        }
        let f = &mut inner.faults;
        if f.throttle_next > 0 {
            f.throttle_next -= 1;
            let mut r = clerk_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "Too many requests",
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(f.retry_after_secs));
            return Err(r);
        }
        if f.fail_next > 0 {
            f.fail_next -= 1;
            return Err(clerk_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_clerk_error",
                "Oops, something went wrong",
            ));
        }
        Ok(f.page_delay)
    }
}

/// `(user_id, organization_id)` of a stored membership.
fn membership_refs(r: &str) -> Option<(String, String)> {
    membership_refs_of(&serde_json::from_str(r).ok()?)
}

fn membership_refs_of(v: &Value) -> Option<(String, String)> {
    Some((
        v["public_user_data"]["user_id"].as_str()?.to_string(),
        v["organization"]["id"].as_str()?.to_string(),
    ))
}

/// `organization_id` of a stored invitation or domain.
fn organization_of(r: &str) -> Option<String> {
    let v: Value = serde_json::from_str(r).ok()?;
    Some(v["organization_id"].as_str()?.to_string())
}

#[derive(Debug, serde::Deserialize)]
struct ListQuery {
    limit: Option<String>,
    offset: Option<String>,
    order_by: Option<String>,
    user_id: Option<String>,
}

/// `limit` 1..=500 (default 10), `offset` >= 0, `order_by` `[+|-]created_at`
/// (default descending, as Clerk's).
fn paging(q: &ListQuery) -> Result<(usize, usize, bool), Response> {
    let bad = |m: &str| {
        clerk_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "form_param_value_invalid",
            m,
        )
    };
    let limit = match q.limit.as_deref() {
        None => 10,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=500).contains(&n) => n as usize,
            _ => return Err(bad("limit must be between 1 and 500")),
        },
    };
    let offset = match q.offset.as_deref() {
        None => 0,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 0 => n as usize,
            _ => return Err(bad("offset must be 0 or greater")),
        },
    };
    let ascending = match q.order_by.as_deref().map(str::trim) {
        None | Some("-created_at") => false,
        Some("+created_at") | Some("created_at") => true,
        Some(_) => return Err(bad("order_by is not supported by the stand-in")),
    };
    Ok((limit, offset, ascending))
}

fn json_response(body: String) -> Response {
    ([("content-type", "application/json")], body).into_response()
}

/// One page of a collection, filtered (`keep`: None for all); (records, total).
fn page(
    api: &ClerkApi,
    collection: &str,
    q: &ListQuery,
    keep: Option<&(dyn Fn(&str) -> bool + Sync)>,
) -> Result<(Vec<Arc<str>>, usize), Response> {
    let (limit, offset, ascending) = paging(q)?;
    let mut inner = api.lock();
    if inner.faults.list_nothing {
        return Ok((Vec::new(), 0));
    }
    let Some(c) = inner.collections.get_mut(collection) else {
        return Ok((Vec::new(), 0));
    };
    let Some(keep) = keep else {
        // Unfiltered: a slice of the ordered snapshot, whatever the offset.
        let all = c.ordered();
        let total = all.len();
        let range = if ascending {
            offset.min(total)..offset.saturating_add(limit).min(total)
        } else {
            let end = total.saturating_sub(offset);
            end.saturating_sub(limit)..end
        };
        let mut records = all[range].to_vec();
        if !ascending {
            records.reverse();
        }
        return Ok((records, total));
    };
    let all: Box<dyn Iterator<Item = &Arc<str>>> = if ascending {
        Box::new(c.by_order.values())
    } else {
        Box::new(c.by_order.values().rev())
    };
    let matching: Vec<&Arc<str>> = all.filter(|r| keep(r)).collect();
    let total = matching.len();
    let records = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .cloned()
        .collect();
    Ok((records, total))
}

fn join(records: &[Arc<str>]) -> String {
    let mut s = String::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    s.push('[');
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(r);
    }
    s.push(']');
    s
}

async fn list_paginated(
    api: ClerkApi,
    headers: HeaderMap,
    collection: &str,
    q: ListQuery,
    keep: Option<&(dyn Fn(&str) -> bool + Sync)>,
) -> Response {
    let delay = match api.gate(&headers) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match page(&api, collection, &q, keep) {
        Ok((records, total)) => json_response(format!(
            r#"{{"data":{},"total_count":{total}}}"#,
            join(&records)
        )),
        Err(r) => r,
    }
}

async fn list_users(
    State(api): State<ClerkApi>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let delay = match api.gate(&headers) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match page(&api, "users", &q, None) {
        Ok((records, _)) => json_response(join(&records)),
        Err(r) => r,
    }
}

async fn count_users(State(api): State<ClerkApi>, headers: HeaderMap) -> Response {
    if let Err(r) = api.gate(&headers) {
        return r;
    }
    let n = if api.lock().faults.list_nothing {
        0
    } else {
        api.len("users")
    };
    json_response(json!({"object": "total_count", "total_count": n}).to_string())
}

/// The stand-in's name of a collection in a request path, if it has it.
fn known(collection: &str) -> Option<&'static str> {
    COLLECTIONS.into_iter().find(|c| *c == collection)
}

async fn get_one(
    State(api): State<ClerkApi>,
    headers: HeaderMap,
    Path((collection, id)): Path<(String, String)>,
) -> Response {
    if let Err(r) = api.gate(&headers) {
        return r;
    }
    let inner = api.lock();
    let found = known(&collection)
        .and_then(|c| inner.collections.get(c))
        .and_then(|c| c.get(&id));
    match found {
        Some(r) => json_response(r.to_string()),
        None => clerk_error(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            "Resource not found",
        ),
    }
}

async fn list_collection(
    State(api): State<ClerkApi>,
    headers: HeaderMap,
    Path(collection): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    match known(&collection) {
        Some(c) => list_paginated(api, headers, c, q, None).await,
        None => clerk_error(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            "Resource not found",
        ),
    }
}

async fn list_org_memberships(
    State(api): State<ClerkApi>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if api.get("organizations", &org).is_none() {
        if let Err(r) = api.gate(&headers) {
            return r;
        }
        return clerk_error(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            "Resource not found",
        );
    }
    let user = q.user_id.clone();
    let keep = move |r: &str| {
        membership_refs(r)
            .is_some_and(|(u, o)| o == org && user.as_ref().is_none_or(|want| *want == u))
    };
    list_paginated(api, headers, "organization_memberships", q, Some(&keep)).await
}

/// The flags of `clerksync clerk-stand-in` (hidden): the stand-in alone, in
/// its own process, so a backfill's memory and CPU can be measured apart
/// from the instance it lists.
#[derive(Debug, Clone, clap::Args)]
pub struct StandInArgs {
    /// Port on 127.0.0.1 (0: any; the URL is printed).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Events of the generated stream whose final state the instance holds
    /// (about a fifth as many users: 5,000,000 for 1M users).
    #[arg(long, default_value_t = 50_000)]
    pub events: usize,
    /// Seed of the generated stream (the demo's import uses 4242).
    #[arg(long, default_value_t = 4242)]
    pub seed: u64,
    /// The secret key the stand-in accepts (give it to the backfill as
    /// CLERKSYNC_CLERK_SECRET_KEY).
    #[arg(long, default_value = "sk_test_stand_in")]
    pub key: String,
}

/// The instance `clerksync demo` imports: `events` of the classic stream, one
/// update per entity, folded into the stand-in one event at a time (the
/// stream is never held whole).
pub fn seeded(key: &str, events: usize, seed: u64) -> ClerkApi {
    let api = ClerkApi::new(key);
    generate_each(
        &GenConfig {
            seed,
            events,
            max_updates: 1,
            ..GenConfig::default()
        },
        |e| api.apply_events([&e]),
    );
    api
}

/// Seeds the instance and starts serving it: one line saying where and what
/// it holds, and the server task (it runs until aborted or the process ends).
pub async fn start_stand_in(
    args: StandInArgs,
) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    let started = std::time::Instant::now();
    let api = seeded(&args.key, args.events, args.seed);
    let (url, task) = api.spawn(args.port).await?;
    let line = format!(
        "stand-in for Clerk's Backend API at {url} (key {}): {} users, {} organizations, {} memberships, seeded in {:.1} s",
        args.key,
        api.len("users"),
        api.len("organizations"),
        api.len("organization_memberships"),
        started.elapsed().as_secs_f64()
    );
    Ok((line, task))
}

/// A 404 for an organization the stand-in does not have (after the gate, so
/// it counts as a request and a wrong key is still a 401).
fn no_organization(api: &ClerkApi, headers: &HeaderMap, org: &str) -> Option<Response> {
    if api.get("organizations", org).is_some() {
        return None;
    }
    Some(match api.gate(headers) {
        Err(r) => r,
        Ok(_) => clerk_error(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            "Resource not found",
        ),
    })
}

/// `GET /v1/organizations/{id}/invitations`: the organization's invitations,
/// `{data, total_count}`.
async fn list_org_invitations(
    State(api): State<ClerkApi>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    list_of_organization(api, headers, &org, q, "organization_invitations").await
}

/// `GET /v1/organizations/{id}/invitations/{invitation_id}`: one invitation
/// of that organization.
async fn get_org_invitation(
    State(api): State<ClerkApi>,
    headers: HeaderMap,
    Path((org, id)): Path<(String, String)>,
) -> Response {
    if let Some(r) = no_organization(&api, &headers, &org) {
        return r;
    }
    if let Err(r) = api.gate(&headers) {
        return r;
    }
    match api.get("organization_invitations", &id) {
        Some(v) if v["organization_id"].as_str() == Some(org.as_str()) => {
            json_response(v.to_string())
        }
        _ => clerk_error(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            "Resource not found",
        ),
    }
}

/// `GET /v1/organizations/{id}/domains`: the organization's domains,
/// `{data, total_count}` (Clerk documents no `order_by` for it; the client
/// sends none).
async fn list_org_domains(
    State(api): State<ClerkApi>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    list_of_organization(api, headers, &org, q, "organization_domains").await
}

/// One organization's records of `collection` (those whose `organization_id`
/// is `org`), `{data, total_count}`; Clerk's 404 for an organization it does
/// not have.
async fn list_of_organization(
    api: ClerkApi,
    headers: HeaderMap,
    org: &str,
    q: ListQuery,
    collection: &str,
) -> Response {
    if let Some(r) = no_organization(&api, &headers, org) {
        return r;
    }
    let keep = |r: &str| organization_of(r).as_deref() == Some(org);
    list_paginated(api, headers, collection, q, Some(&keep)).await
}
