//! The OpenAPI 3.1 document of the HTTP API (`GET /openapi.json`,
//! `clerksync openapi`, and `openapi.json` at the repository root).
//!
//! Owns: the document's assembly: which handlers it lists (each one carries
//! its own `#[utoipa::path]` next to its code, with its query parameters
//! derived from the struct it parses them into), the response shapes the
//! handlers build as JSON, and the two bearer schemes. Must never: describe a
//! route that is not served, or a status a handler cannot answer (the contract
//! test, schemathesis in `.ci/run`, checks every answer against this).
//!
//! The realtime protocol's frames are a JSON Schema beside the document:
//! `clients/realtime.schema.json`.

use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

pub use crate::http_error::ErrorBody;

/// 410: the entity was deleted.
#[derive(Serialize, ToSchema)]
pub struct GoneBody {
    pub id: String,
    pub deleted: bool,
}

/// A synced user: Clerk's user object (its field names; fields Clerk adds
/// appear too) plus `primary_email_address`.
#[derive(Serialize, ToSchema)]
pub struct User {
    pub id: String,
    pub object: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub image_url: Option<String>,
    /// The primary email address as a string; null when there is none.
    #[schema(required = true)]
    pub primary_email_address: Option<String>,
    pub public_metadata: Option<Value>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

/// A synced organization, as Clerk names its fields.
#[derive(Serialize, ToSchema)]
pub struct Organization {
    pub id: String,
    pub object: Option<String>,
    pub name: Option<String>,
    pub slug: Option<String>,
    pub image_url: Option<String>,
    pub members_count: Option<i64>,
    pub public_metadata: Option<Value>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

/// An organization membership (Clerk's object) with its ends and its role
/// in today's keys (`org:admin`, `org:member`, ...; legacy `admin` and
/// `basic_member` are renamed).
#[derive(Serialize, ToSchema)]
pub struct Membership {
    pub id: Option<String>,
    #[schema(required = true)]
    pub user_id: Option<String>,
    #[schema(required = true)]
    pub organization_id: Option<String>,
    #[schema(required = true)]
    pub role: Option<String>,
    pub public_user_data: Option<Value>,
    pub organization: Option<Value>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

/// One of a user's organizations: the organization plus the membership's role and id.
#[derive(Serialize, ToSchema)]
pub struct UserOrganization {
    #[schema(required = true)]
    pub id: Option<String>,
    pub name: Option<String>,
    pub slug: Option<String>,
    #[schema(required = true)]
    pub role: Option<String>,
    pub membership_id: String,
}

/// One applied change of an entity.
#[derive(Serialize, ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub svix_id: String,
    pub kind: String,
    pub entity_id: String,
    /// `create`, `update`, `delete` or `refresh`.
    pub operation: String,
    pub version: i64,
    /// When it was applied (unix ms).
    pub at: i64,
    /// Per changed field: `{"before": .., "after": ..}`; a field of an object
    /// under its path (`public_user_data.first_name`). A `create`'s is `{}`:
    /// every field is new, and its values are the entity's first version.
    pub changes: Value,
}

impl From<&crate::store::read::AuditEntry> for AuditEntry {
    fn from(a: &crate::store::read::AuditEntry) -> Self {
        AuditEntry {
            seq: a.seq,
            svix_id: a.svix_id.clone(),
            kind: a.kind.clone(),
            entity_id: a.entity_id.clone(),
            operation: a.operation.clone(),
            version: a.version,
            at: a.at,
            // Stored as JSON text by the apply that wrote it.
            changes: serde_json::from_str(&a.changes).unwrap_or(Value::Null),
        }
    }
}

macro_rules! page {
    ($name:ident, $item:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Serialize, ToSchema)]
        pub struct $name {
            pub data: Vec<$item>,
            /// The cursor of the next page; null on the last one.
            #[schema(required = true)]
            pub next_cursor: Option<String>,
        }
    };
}

page!(UserPage, User, "A page of users.");
page!(OrganizationPage, Organization, "A page of organizations.");
page!(MembershipPage, Membership, "A page of memberships.");
page!(
    UserOrganizationPage,
    UserOrganization,
    "A page of a user's organizations."
);
page!(
    AuditPage,
    AuditEntry,
    "A page of audit entries, oldest first."
);
page!(
    EventPage,
    crate::store::events::EventRecord,
    "A page of stored events, newest first."
);

/// Search hits: users or organizations (each as `/v1/users/{id}` or
/// `/v1/organizations/{id}` renders it), best first.
#[derive(Serialize, ToSchema)]
pub struct SearchResults {
    pub data: Vec<Value>,
}

/// `GET /healthz`, `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `unavailable`.
    pub status: String,
    pub error: Option<String>,
}

pub use crate::webhook::handler::WebhookAck;

/// One stored event with its delivered body.
#[derive(Serialize, ToSchema)]
pub struct EventDetail {
    #[serde(flatten)]
    pub record: crate::store::events::EventRecord,
    /// The delivered body (JSON, or its text when it is not JSON).
    pub body: Value,
}

/// The answer of a retry or a discard.
#[derive(Serialize, ToSchema)]
pub struct Transition {
    /// `queued` or `discarded`.
    pub status: String,
}

/// `POST /admin/events/retry-dead`.
#[derive(Serialize, ToSchema)]
pub struct RetriedDead {
    pub queued: i64,
}

/// A user or organization as stored, with its audit history.
#[derive(Serialize, ToSchema)]
pub struct EntityDetail {
    pub id: String,
    /// `user` or `organization`.
    pub kind: String,
    pub deleted: bool,
    #[schema(required = true)]
    pub version: Option<i64>,
    #[schema(required = true)]
    pub synced_at: Option<i64>,
    /// The record as `/v1` renders it; null once deleted.
    #[schema(required = true)]
    pub record: Option<Value>,
    pub audit: Vec<EntityAuditEntry>,
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One entry of an entity's audit history.
#[derive(Serialize, ToSchema)]
pub struct EntityAuditEntry {
    pub seq: i64,
    pub svix_id: String,
    pub operation: String,
    pub version: i64,
    pub at: i64,
    /// As in the audit endpoint's entries: `{}` for a `create`.
    pub changes: Value,
}

/// `GET /admin/reindex`.
#[derive(Serialize, ToSchema)]
pub struct ReindexStatus {
    pub status: crate::search::RebuildStatus,
    pub documents: u64,
    /// Where the index lives.
    pub index: String,
}

/// `POST /admin/reindex`.
#[derive(Serialize, ToSchema)]
pub struct ReindexStarted {
    pub run: u64,
    /// `started`.
    pub status: String,
}

/// Adds the two bearer schemes: the read API's and the admin API's tokens.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what))
                    .build(),
            )
        };
        components.add_security_scheme(
            "api_token",
            bearer("CLERKSYNC_API_TOKEN (a token-less server on loopback needs none)"),
        );
        components.add_security_scheme("admin_token", bearer("CLERKSYNC_ADMIN_TOKEN"));
        components.add_security_scheme(
            "session_token",
            bearer("A Clerk session token (the realtime stream only)"),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "clerksync",
        description = "Clerk webhooks in, a local read API and a realtime change stream out. \
            The realtime stream's frames are described by clients/realtime.schema.json.",
        license(name = "MIT"),
    ),
    paths(
        crate::webhook::handler::receive,
        crate::api::health::healthz,
        crate::api::health::readyz,
        crate::api::health::metrics,
        openapi_json,
        crate::api::read::get_user,
        crate::api::read::list_users,
        crate::api::read::user_organizations,
        crate::api::read::get_org,
        crate::api::read::list_orgs,
        crate::api::read::org_memberships,
        crate::api::read::audit,
        crate::api::search::search,
        crate::api::realtime::connect,
        crate::api::admin::stats,
        crate::api::admin::throughput,
        crate::api::admin::list,
        crate::api::admin::show,
        crate::api::admin::retry,
        crate::api::admin::discard,
        crate::api::admin::retry_dead,
        crate::api::admin::entity,
        crate::api::search::reindex_status,
        crate::api::search::start_reindex,
        crate::api::reconcile::status,
        crate::api::reconcile::start,
    ),
    modifiers(&Security),
    tags(
        (name = "webhooks", description = "Clerk's deliveries, signed by Svix"),
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "read", description = "The read API: bearer CLERKSYNC_API_TOKEN"),
        (name = "realtime", description = "The WebSocket change stream"),
        (name = "admin", description = "Operations: bearer CLERKSYNC_ADMIN_TOKEN; 404 without one configured"),
    )
)]
pub struct ApiDoc;

/// The document, pretty-printed with a final newline (as `openapi.json` is committed).
pub fn json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    s.push('\n');
    s
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json(),
    )
}

pub fn routes() -> axum::Router<crate::app::AppState> {
    axum::Router::new().route("/openapi.json", axum::routing::get(openapi_json))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed `openapi.json` is what the handlers describe today.
    #[test]
    fn committed_document_is_current() {
        let committed = include_str!("../../../../openapi.json");
        assert!(
            committed == json(),
            "openapi.json is stale: run `cargo run -- openapi > openapi.json`"
        );
    }

    #[test]
    fn every_route_family_is_described() {
        let doc: Value = serde_json::from_str(&json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/webhooks/clerk",
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/users/{id}",
            "/v1/organizations/{id}/memberships",
            "/v1/search",
            "/v1/audit",
            "/v1/realtime",
            "/admin/stats",
            "/admin/events/{svix_id}/retry",
            "/admin/entities/{id}",
            "/admin/reindex",
            "/admin/reconcile",
        ] {
            assert!(paths.contains_key(p), "{p} is not in the document");
        }
    }
}
