//! Backfill and reconciliation against a stand-in for Clerk's Backend API
//! (`clerksync_loadgen::clerk_api`), holding a generated instance.
//!
//! The stand-in's state is the generated stream folded (last record of each
//! entity, deleted ones gone); "the store equals Clerk" means the live users,
//! organizations and memberships of the store are exactly the stand-in's,
//! each at the stand-in's `updated_at`.

use crate::backends::{postgres_db, sqlite_db, sqlite_server};
use crate::helpers::{wait_exit, without_inherited_settings};
use clerksync::backfill::client::{ClerkClient, ClientConfig, ClientError, SecretKey};
use clerksync::backfill::{self, Ending, Options, Progress, Report};
use clerksync::store::db::Database;
use clerksync_loadgen::clerk_api::{ClerkApi, Faults};
use clerksync_loadgen::generate::{generate, Event, GenConfig};
use std::process::{Command, Stdio};
use std::time::Duration;

pub(crate) const KEY: &str = "sk_test_backfill_TOPSECRET_4242";

/// A generated stream of `events` (about a fifth as many users).
pub(crate) fn stream(events: usize, seed: u64) -> Vec<Event> {
    generate(&GenConfig {
        seed,
        events,
        max_updates: 1,
        delete_share: 0.1,
        users_per_org: 10,
        ..GenConfig::default()
    })
}

pub(crate) async fn stand_in(events: &[Event]) -> (ClerkApi, String) {
    let api = ClerkApi::new(KEY);
    api.apply_events(events);
    let (url, _task) = api.spawn(0).await.expect("stand-in binds");
    (api, url)
}

fn client(url: &str) -> ClerkClient {
    let mut c = ClientConfig::new(url, SecretKey::parse(KEY).unwrap()).unwrap();
    c.rate = None;
    c.retry_base = Duration::from_millis(10);
    ClerkClient::new(c).unwrap()
}

async fn run(db: &Database, url: &str, opts: &Options) -> Report {
    backfill::run(db, &client(url), opts, &|_: &Progress| {})
        .await
        .expect("backfill runs")
}

async fn rows<T>(db: &Database, sql: &str) -> Vec<T>
where
    T: Send
        + Unpin
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    match db {
        Database::Sqlite(..) => {
            let pool = crate::helpers::sqlite_pool(db).await;
            let out = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            out
        }
        Database::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
    }
}

async fn scalar(db: &Database, sql: &str) -> i64 {
    let r: Vec<(i64,)> = rows(db, sql).await;
    r[0].0
}

/// Live (id, version) of a table, sorted.
async fn live(db: &Database, table: &str) -> Vec<(String, i64)> {
    rows(
        db,
        &format!("SELECT id, version FROM {table} WHERE NOT deleted ORDER BY id"),
    )
    .await
}

fn sorted(mut v: Vec<(String, i64)>) -> Vec<(String, i64)> {
    v.sort();
    v
}

pub(crate) async fn assert_store_equals(db: &Database, api: &ClerkApi) {
    for (table, coll) in [
        ("users", "users"),
        ("organizations", "organizations"),
        ("memberships", "organization_memberships"),
    ] {
        let want = sorted(api.versions(coll));
        let got = live(db, table).await;
        assert!(!want.is_empty(), "the stand-in has {coll}");
        if got != want {
            let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(5).collect();
            let lacking: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(5).collect();
            panic!(
                "{table}: store has {} live, Clerk {}; extra {extra:?}, lacking {lacking:?}",
                got.len(),
                want.len()
            );
        }
    }
}

async fn audit_rows(db: &Database) -> i64 {
    scalar(db, "SELECT COUNT(*) FROM audit").await
}

async fn into_empty_store_then_nothing(db: &Database) {
    let events = stream(24_000, 17);
    let (api, url) = stand_in(&events).await;
    let users = api.len("users") as i64;
    let first = run(db, &url, &Options::default()).await;
    assert_store_equals(db, &api).await;
    let u = &first.resources[0];
    assert_eq!((u.resource, u.seen, u.created), ("users", users, users));
    assert!(first.resources.iter().all(|r| r.ending == Ending::Complete));
    // Every record came in as a `create` from the backfill source.
    let created: i64 = first.resources.iter().map(|r| r.created).sum();
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) FROM audit WHERE svix_id = 'backfill' AND operation = 'create'"
        )
        .await,
        created
    );
    assert!(
        scalar(
            db,
            "SELECT COUNT(*) FROM change_feed WHERE svix_id = 'backfill'"
        )
        .await
            >= created
    );
    let audit = audit_rows(db).await;
    let second = run(db, &url, &Options::default()).await;
    for r in &second.resources {
        assert_eq!((r.created, r.updated, r.deleted), (0, 0, 0), "{r:?}");
        assert_eq!(r.ending, Ending::Complete);
    }
    assert_eq!(
        audit_rows(db).await,
        audit,
        "a second run writes no audit rows"
    );
    assert_store_equals(db, &api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_into_an_empty_store_equals_clerk_and_a_second_run_changes_nothing() {
    let (db, _dir) = sqlite_db().await;
    into_empty_store_then_nothing(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_into_an_empty_postgres_store_equals_clerk() {
    let Some((db, _schema)) = postgres_db().await else {
        return;
    };
    into_empty_store_then_nothing(&db).await;
}

/// Half of the stream delivered as webhooks, the other half lost: the
/// backfill brings the store to Clerk's state, deletions included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_webhooks_are_repaired_including_deletions() {
    let events = stream(8_000, 5);
    let server = sqlite_server(|_| {}).await;
    let half = events.len() / 2;
    for e in &events[..half] {
        let body: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(server.post(&e.svix_id, &body).await, 200);
    }
    server.settle().await;
    let lost_deletes = events[half..]
        .iter()
        .filter(|e| e.event_type == "user.deleted")
        .count();
    assert!(lost_deletes > 0, "the lost half deletes users");
    let (api, url) = stand_in(&events).await;
    let opts = Options {
        max_delete_share: 0.5,
        ..Options::default()
    };
    let report = run(&server.db, &url, &opts).await;
    assert_store_equals(&server.db, &api).await;
    let users = &report.resources[0];
    assert!(users.deleted >= 1, "{users:?}");
    assert!(
        scalar(&server.db, "SELECT COUNT(*) FROM audit WHERE svix_id = 'reconcile: not in Clerk' AND operation = 'delete'").await
            >= users.deleted
    );
    server.stop().await;
}

/// Webhooks keep coming while the pass pages (slowly): some older than the
/// pages (stale re-deliveries), some newer. The result is Clerk's final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_during_the_pass_converge_to_clerks_final_state() {
    let events = stream(8_000, 9);
    let server = sqlite_server(|_| {}).await;
    let split = events.len() * 6 / 10;
    let (api, url) = stand_in(&events[..split]).await;
    api.set_faults(Faults {
        page_delay: Duration::from_millis(40),
        ..Faults::default()
    });
    let opts = Options {
        page_size: 100,
        pages_ahead: 1,
        ..Options::default()
    };
    let db = server.db.clone();
    let pass =
        tokio::spawn(
            async move { backfill::run(&db, &client(&url), &opts, &|_: &Progress| {}).await },
        );
    for (i, e) in events[split..].iter().enumerate() {
        // Clerk changes, then tells us.
        let body: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        api.apply_event_json(&e.event_type, &body["data"]);
        assert_eq!(server.post(&e.svix_id, &body).await, 200);
        // Now and then a late delivery of an old event about an entity Clerk
        // still has: older than what the pages carry.
        let old = &events[i % split];
        let coll = match old.event_type.split('.').next() {
            Some("user") => "users",
            Some("organization") => "organizations",
            _ => "organization_memberships",
        };
        if i % 7 == 0 && api.get(coll, &old.entity_id).is_some() {
            let body: serde_json::Value = serde_json::from_slice(&old.body).unwrap();
            assert_eq!(server.post(&old.svix_id, &body).await, 200);
        }
    }
    let report = pass.await.unwrap().expect("the pass completes");
    assert!(
        report
            .resources
            .iter()
            .all(|r| r.ending == Ending::Complete),
        "{report:?}"
    );
    server.settle().await;
    assert_store_equals(&server.db, &api).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_errors_are_retried_and_bad_requests_are_not() {
    let events = stream(2_000, 3);
    let (db, _dir) = sqlite_db().await;
    let (api, url) = stand_in(&events).await;
    api.set_faults(Faults {
        throttle_next: 2,
        retry_after_secs: 1,
        fail_next: 2,
        ..Faults::default()
    });
    let report = run(&db, &url, &Options::default()).await;
    assert_eq!(report.throttled, 2);
    assert_store_equals(&db, &api).await;
    let c = client(&url);
    match c.list("/organizations", false, 0, 501).await {
        Err(ClientError::Rejected { status: 422, .. }) => {}
        other => panic!("limit 501: {other:?}"),
    }
    let mut wrong = ClientConfig::new(&url, SecretKey::parse("sk_test_wrong").unwrap()).unwrap();
    wrong.rate = None;
    match ClerkClient::new(wrong).unwrap().count("/users/count").await {
        Err(ClientError::Unauthorized { status: 401 }) => {}
        other => panic!("wrong key: {other:?}"),
    }
}

fn backfill_cmd(db_url: &str, api_url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clerksync"));
    without_inherited_settings(&mut cmd);
    cmd.arg("backfill")
        .args(args)
        .env("CLERKSYNC_DATABASE_URL", db_url)
        .env("CLERKSYNC_CLERK_API_URL", api_url)
        .env("CLERKSYNC_CLERK_SECRET_KEY", KEY)
        .env("CLERKSYNC_CLERK_RATE", "off")
        .env("RUST_LOG", "debug");
    cmd
}

/// Runs the command to its end: (exit code, stdout + stderr). The output goes
/// to a file, not a pipe: debug logs would fill a pipe nobody reads until exit.
fn finish(mut cmd: Command) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.log");
    let file = std::fs::File::create(&path).unwrap();
    cmd.stdout(file.try_clone().unwrap()).stderr(file);
    let mut child = cmd.spawn().expect("clerksync starts");
    let status = wait_exit(&mut child, "clerksync backfill hung");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(KEY),
        "the secret key appears in the output:\n{text}"
    );
    (status.code().unwrap_or(-1), text)
}

/// `kill -9` halfway, then a rerun: it continues from the checkpoint and ends
/// in the same state, with no audit row written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_sigkill_a_rerun_resumes_from_the_checkpoint() {
    let events = stream(8_000, 21);
    let (api, url) = stand_in(&events).await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/t.db", dir.path().display());
    api.set_faults(Faults {
        page_delay: Duration::from_millis(300),
        ..Faults::default()
    });
    // Migrated here first: two processes migrating one new file at once race.
    let db = Database::open(&clerksync::config::DatabaseUrl::parse(&db_url).unwrap())
        .await
        .unwrap();
    let mut child = backfill_cmd(&db_url, &url, &["--page-size", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a checkpoint past the first page, then kill it mid-pass.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let at: Vec<(i64,)> = rows(
            &db,
            "SELECT next_offset FROM backfill_checkpoints WHERE resource = 'users'",
        )
        .await;
        if at.first().is_some_and(|r| r.0 >= 300) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let users_before = scalar(&db, "SELECT COUNT(*) FROM users").await;
    assert!(
        users_before > 0 && (users_before as usize) < api.len("users"),
        "killed mid-pass ({users_before})"
    );
    api.set_faults(Faults::default());
    let (code, text) = finish(backfill_cmd(&db_url, &url, &[]));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("users: ") && text.contains("(resumed at offset"),
        "{text}"
    );
    assert_store_equals(&db, &api).await;
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) - COUNT(DISTINCT entity_id) FROM audit WHERE operation = 'create'"
        )
        .await,
        0,
        "an entity was created twice in the audit"
    );
}

/// The guard refuses when Clerk suddenly lists nothing; `--dry-run` prints the
/// drift and touches nothing; the key never shows (RUST_LOG=debug).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_refuses_a_mass_delete_and_a_dry_run_changes_nothing() {
    let events = stream(4_000, 8);
    let (api, url) = stand_in(&events).await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/t.db", dir.path().display());
    let (code, text) = finish(backfill_cmd(&db_url, &url, &[]));
    assert_eq!(code, 0, "{text}");
    let db = Database::open(&clerksync::config::DatabaseUrl::parse(&db_url).unwrap())
        .await
        .unwrap();
    assert_store_equals(&db, &api).await;
    let audit = audit_rows(&db).await;

    api.set_faults(Faults {
        list_nothing: true,
        ..Faults::default()
    });
    let (code, text) = finish(backfill_cmd(&db_url, &url, &["--resources", "users"]));
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("REFUSED"), "{text}");
    assert_eq!(
        audit_rows(&db).await,
        audit,
        "the refused pass deleted something"
    );
    api.set_faults(Faults::default());

    // Drift: one user gone, one changed, one new.
    let gone = api.versions("users")[0].0.clone();
    api.delete("users", &gone);
    let (changed, _) = api.versions("users")[1].clone();
    let mut rec = api.get("users", &changed).unwrap();
    rec["first_name"] = "Changed".into();
    rec["updated_at"] = (rec["updated_at"].as_i64().unwrap() + 1).into();
    api.upsert("users", rec);
    let mut new = api.get("users", &changed).unwrap();
    new["id"] = "user_2zzzzzzzzzzzzzzzzzzzzzzzzzz".into();
    new["created_at"] = (new["created_at"].as_i64().unwrap() + 10_000_000_000).into();
    api.upsert("users", new);
    let checkpoints: Vec<(String, String)> = rows(
        &db,
        "SELECT resource, pass_id FROM backfill_checkpoints ORDER BY resource",
    )
    .await;
    let (code, text) = finish(backfill_cmd(
        &db_url,
        &url,
        &["--dry-run", "--resources", "users"],
    ));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("would create 1, update 1, delete 1"),
        "{text}"
    );
    assert_eq!(audit_rows(&db).await, audit, "the dry run wrote");
    let after: Vec<(String, String)> = rows(
        &db,
        "SELECT resource, pass_id FROM backfill_checkpoints ORDER BY resource",
    )
    .await;
    assert_eq!(after, checkpoints, "the dry run moved a checkpoint");

    // A wrong key: one clear line, no key.
    let mut cmd = backfill_cmd(&db_url, &url, &[]);
    cmd.env("CLERKSYNC_CLERK_SECRET_KEY", "sk_test_wrong_SECRET_0000");
    let (code, text) = finish(cmd);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("CLERKSYNC_CLERK_SECRET_KEY") && !text.contains("sk_test_wrong_SECRET_0000"),
        "{text}"
    );
}

/// The instance size: about 93k users, 9k organizations and 112k
/// memberships (500k generated events), imported whole and equal to the
/// stand-in. About four minutes in a debug build (105 s of it the backfill);
/// `cargo test --release --test it backfill::large -- --nocapture` prints the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_instance_100k_users() {
    let events = stream(500_000, 1);
    let (db, _dir) = sqlite_db().await;
    let (api, url) = stand_in(&events).await;
    drop(events);
    let report = run(&db, &url, &Options::default()).await;
    eprintln!(
        "backfill of {} users, {} organizations, {} memberships: {:.1} s, {:.0} records/s",
        api.len("users"),
        api.len("organizations"),
        api.len("organization_memberships"),
        report.elapsed_ms as f64 / 1000.0,
        report.per_second()
    );
    assert_store_equals(&db, &api).await;
}

/// An organization's invitation as Clerk lists it (`OrganizationInvitationJSON`
/// with its `public_organization_data`, as the instance-wide list answers).
fn invitation(id: &str, org: &str, n: i64, status: &str, updated_at: i64) -> serde_json::Value {
    serde_json::json!({
        "object": "organization_invitation", "id": id,
        "email_address": format!("invitee{n}@example.org"),
        "role": "org:member", "role_name": "Member", "organization_id": org,
        "public_organization_data": {"id": org, "name": "Acme", "slug": format!("acme-{org}"), "has_image": false},
        "status": status, "public_metadata": {}, "private_metadata": {}, "url": null,
        "created_at": 1_752_000_000_000 + n, "updated_at": updated_at,
        "expires_at": 1_752_000_000_000 + n + 30 * 86_400_000_i64,
    })
}

/// An organization's domain as Clerk lists it (`OrganizationDomainJSON`).
fn domain(id: &str, org: &str, n: i64, updated_at: i64) -> serde_json::Value {
    serde_json::json!({
        "object": "organization_domain", "id": id, "name": format!("d{n}.example.org"),
        "organization_id": org, "enrollment_mode": "automatic_invitation",
        "verification": {"status": "verified", "strategy": "email_code", "attempts": 1, "expires_at": 1_752_100_000_000_i64},
        "affiliation_email_address": format!("admin@d{n}.example.org"),
        "created_at": 1_752_000_000_000 + n, "updated_at": updated_at,
        "total_pending_invitations": 0, "total_pending_suggestions": 0,
    })
}

/// Gives the stand-in's organizations invitations and domains: some have
/// none, the first has 25 domains (more than a page of 10). Returns the
/// organizations' ids in creation order.
fn fill_invitations_and_domains(api: &ClerkApi) -> Vec<String> {
    let orgs: Vec<String> = api
        .versions("organizations")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(orgs.len() > 20, "{} organizations", orgs.len());
    let mut n = 0;
    for (i, org) in orgs.iter().enumerate() {
        // Some organizations have none; the first has more than a page.
        let domains = if i == 0 { 25 } else { i % 3 };
        for _ in 0..domains {
            n += 1;
            api.upsert(
                "organization_domains",
                domain(&format!("orgdmn_{n}"), org, n, 10 + n),
            );
        }
        for _ in 0..(i % 4) {
            n += 1;
            let inv = invitation(&format!("orginv_{n}"), org, n, "pending", 10 + n);
            api.upsert("organization_invitations", inv);
        }
    }
    orgs
}

/// Organization invitations (Clerk's instance-wide list) and domains (listed
/// organization by organization, paged): imported, then Clerk's changes
/// (an invitation revoked, one deleted, a domain deleted, an organization
/// deleted with its invitations and domains) reconciled.
async fn invitations_and_domains(db: &Database) {
    let events = stream(3_000, 21);
    let (api, url) = stand_in(&events).await;
    let orgs = fill_invitations_and_domains(&api);
    let opts = Options {
        resources: vec![
            backfill::Resource::Organizations,
            backfill::Resource::Invitations,
            backfill::Resource::Domains,
        ],
        // Pages of 10: the first organization's domains take three.
        page_size: 10,
        ..Options::default()
    };
    let first = run(db, &url, &opts).await;
    assert!(
        first.resources.iter().all(|r| r.ending == Ending::Complete),
        "{first:?}"
    );
    for (table, coll) in [
        ("invitations", "organization_invitations"),
        ("domains", "organization_domains"),
    ] {
        let want = sorted(api.versions(coll));
        assert!(!want.is_empty());
        assert_eq!(live(db, table).await, want, "{table}");
    }
    // The references the cascades and the read side use.
    assert_eq!(
        scalar(
            db,
            &format!(
                "SELECT COUNT(*) FROM domains WHERE organization_id = '{}' AND NOT deleted",
                orgs[0]
            )
        )
        .await,
        25
    );

    // Clerk changes while nobody listens.
    let invs = api.versions("organization_invitations");
    let (revoked, dropped) = (&invs[0].0, &invs[1].0);
    let mut r = api.get("organization_invitations", revoked).unwrap();
    r["status"] = "revoked".into();
    r["updated_at"] = serde_json::Value::from(1_800_000_000_000_i64);
    api.upsert("organization_invitations", r);
    api.delete("organization_invitations", dropped);
    api.delete("organization_domains", "orgdmn_3");
    // An organization with invitations and domains (index 7: one domain,
    // three invitations).
    let gone_org = &orgs[7];
    assert!(api.delete("organizations", gone_org));
    let second_opts = Options {
        max_delete_share: 0.5,
        ..opts
    };
    let second = run(db, &url, &second_opts).await;
    assert!(
        second
            .resources
            .iter()
            .all(|r| r.ending == Ending::Complete),
        "{second:?}"
    );
    for (table, coll) in [
        ("invitations", "organization_invitations"),
        ("domains", "organization_domains"),
    ] {
        assert_eq!(live(db, table).await, sorted(api.versions(coll)), "{table}");
    }
    let status: Vec<(String,)> = rows(
        db,
        &format!("SELECT data FROM invitations WHERE id = '{revoked}'"),
    )
    .await;
    let data: serde_json::Value = serde_json::from_str(&status[0].0).unwrap();
    assert_eq!(data["status"], "revoked");
    for (table, id) in [("invitations", dropped.as_str()), ("domains", "orgdmn_3")] {
        assert_eq!(
            scalar(
                db,
                &format!("SELECT COUNT(*) FROM {table} WHERE id = '{id}' AND deleted")
            )
            .await,
            1,
            "{table} {id} is a tombstone"
        );
    }
    assert_eq!(
        scalar(
            db,
            &format!(
                "SELECT COUNT(*) FROM invitations WHERE organization_id = '{gone_org}' AND NOT deleted"
            )
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_and_domains_are_backfilled_and_reconciled_sqlite() {
    let (db, _dir) = sqlite_db().await;
    invitations_and_domains(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_and_domains_are_backfilled_and_reconciled_postgres() {
    let Some((db, _schema)) = postgres_db().await else {
        return;
    };
    invitations_and_domains(&db).await;
}

/// A per-organization listing (domains) that fails halfway resumes from the
/// organizations it had done, and ends in Clerk's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_domain_listing_resumes_from_the_organizations_done() {
    let events = stream(6_000, 23);
    let (api, url) = stand_in(&events).await;
    let orgs = fill_invitations_and_domains(&api);
    let (db, _dir) = sqlite_db().await;
    let opts = Options {
        resources: vec![backfill::Resource::Organizations],
        ..Options::default()
    };
    run(&db, &url, &opts).await;
    let opts = Options {
        resources: vec![backfill::Resource::Domains],
        page_size: 10,
        pages_ahead: 1,
        ..Options::default()
    };
    // Clerk starts failing for good once the pass is well under way.
    let before = api.requests();
    let half = before + orgs.len() as u64 / 2;
    let watcher = {
        let api = api.clone();
        tokio::spawn(async move {
            while api.requests() < half {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            api.set_faults(Faults {
                fail_next: u32::MAX,
                ..Faults::default()
            });
        })
    };
    api.set_faults(Faults {
        page_delay: Duration::from_millis(2),
        ..Faults::default()
    });
    let failed = backfill::run(&db, &client(&url), &opts, &|_: &Progress| {}).await;
    assert!(failed.is_err(), "the pass fails while Clerk does");
    watcher.await.unwrap();
    api.set_faults(Faults::default());
    let at_rerun = api.requests();
    let report = run(&db, &url, &opts).await;
    let domains = &report.resources[0];
    assert!(domains.resumed_at > 0, "{domains:?}");
    assert_eq!(domains.ending, Ending::Complete, "{domains:?}");
    // Only the organizations not done (and a few before them) were listed again.
    let requests = api.requests() - at_rerun;
    assert!(
        requests < orgs.len() as u64 * 3 / 4,
        "{requests} requests for {} organizations",
        orgs.len()
    );
    assert_eq!(
        live(&db, "domains").await,
        sorted(api.versions("organization_domains"))
    );
}
