//! Convergence: any permutation and duplication of a set of deliveries reaches
//! the state of delivering them once, in order — on SQLite and on PostgreSQL.
//!
//! These drive `sync::apply` through real databases (one transaction per
//! delivery, as the processor does) rather than over HTTP, so proptest can try
//! many histories quickly.

use crate::backends::{postgres_db, sqlite_db};
use clerksync::queue::{append_batch, NewDelivery};
use clerksync::store::db::Database;
use clerksync::store::tx::begin;
use clerksync::sync::{apply, apply_parsed, parse, plan_batch, Delivery};
use proptest::prelude::*;
use serde_json::{json, Value};

/// One generated event: which entity, what happens, at which version.
#[derive(Debug, Clone)]
pub enum Ev {
    User {
        u: usize,
        name: u8,
        v: i64,
        delete: bool,
    },
    Org {
        o: usize,
        name: u8,
        v: i64,
        delete: bool,
    },
    Member {
        u: usize,
        o: usize,
        role: u8,
        v: i64,
        delete: bool,
    },
    /// A Billing subscription item: a child of its payer (a user or an
    /// organization, fixed per item), never deleted by an event of its own.
    Billing { s: usize, status: u8, v: i64 },
}

/// The payer of billing item `s`: even items are paid by a user, odd ones by
/// an organization.
fn payer(s: usize) -> Value {
    if s.is_multiple_of(2) {
        json!({"object": "commerce_payer", "id": format!("cpayer_u{s}"), "user_id": uid(s / 2)})
    } else {
        json!({"object": "commerce_payer", "id": format!("cpayer_o{s}"), "organization_id": oid(s / 2)})
    }
}

fn uid(u: usize) -> String {
    format!("user_{u}")
}
fn oid(o: usize) -> String {
    format!("org_{o}")
}

fn body(ev: &Ev) -> (String, Value) {
    match ev {
        Ev::User { u, name, v, delete } => {
            if *delete {
                (
                    "user.deleted".into(),
                    json!({"deleted": true, "id": uid(*u), "object": "user"}),
                )
            } else {
                (
                    "user.updated".into(),
                    json!({
                        "id": uid(*u), "object": "user", "first_name": format!("N{name}"), "last_name": "L",
                        "username": format!("u{u}"), "primary_email_address_id": "idn_1",
                        "email_addresses": [{"id": "idn_1", "email_address": format!("u{u}-{name}@x.io"), "object": "email_address"}],
                        "phone_numbers": [], "updated_at": v, "created_at": 1,
                    }),
                )
            }
        }
        Ev::Org { o, name, v, delete } => {
            if *delete {
                (
                    "organization.deleted".into(),
                    json!({"deleted": true, "id": oid(*o), "object": "organization"}),
                )
            } else {
                (
                    "organization.updated".into(),
                    json!({"id": oid(*o), "object": "organization", "name": format!("Org {name}"), "slug": format!("o{o}"), "updated_at": v, "created_at": 1}),
                )
            }
        }
        Ev::Member {
            u,
            o,
            role,
            v,
            delete,
        } => {
            let t = if *delete {
                "organizationMembership.deleted"
            } else {
                "organizationMembership.updated"
            };
            (
                t.into(),
                json!({
                    "id": format!("orgmem_{u}_{o}"), "object": "organization_membership",
                    "role": if *role % 2 == 0 { "org:admin" } else { "basic_member" },
                    "organization": {"id": oid(*o), "name": "snapshot", "slug": "s"},
                    "public_user_data": {"user_id": uid(*u), "first_name": format!("Snap{role}"), "identifier": "old@x.io"},
                    "updated_at": v, "created_at": 1,
                }),
            )
        }
        Ev::Billing { s, status, .. } => {
            let statuses = ["active", "past_due", "canceled", "ended"];
            // Subscription items carry no updated_at: the version is the
            // envelope timestamp.
            (
                "subscriptionItem.updated".into(),
                json!({
                    "id": format!("csubi_{s}"), "object": "commerce_subscription_item",
                    "status": statuses[*status as usize % 4], "plan_period": "month",
                    "payer": payer(*s),
                }),
            )
        }
    }
}

fn delivery(i: usize, ev: &Ev) -> NewDelivery {
    let (ty, data) = body(ev);
    // Deletes carry no updated_at: their version is the envelope timestamp.
    let v = match ev {
        Ev::User { v, .. } | Ev::Org { v, .. } | Ev::Member { v, .. } | Ev::Billing { v, .. } => *v,
    };
    let b = json!({"type": ty, "object": "event", "timestamp": v, "data": data});
    NewDelivery {
        svix_id: format!("msg_{i:06}"),
        svix_timestamp: 1_700_000_000,
        event_type: ty,
        entity_key: None,
        object_id: None,
        event_timestamp_ms: Some(v),
        received_at_ms: 0,
        body: b.to_string(),
        user_id: None,
        contacts: Vec::new(),
    }
}

fn ev_strategy() -> impl Strategy<Value = Ev> {
    // Few entities and versions so that ties, stale events and cascades are common.
    let v = 1i64..8;
    let del = prop::bool::weighted(0.15);
    prop_oneof![
        (0usize..3, any::<u8>(), v.clone(), del).prop_map(|(u, name, v, delete)| {
            Ev::User {
                u,
                name: name % 4,
                v,
                delete,
            }
        }),
        (0usize..2, any::<u8>(), v.clone(), del).prop_map(|(o, name, v, delete)| Ev::Org {
            o,
            name: name % 4,
            v,
            delete
        }),
        (0usize..3, 0usize..2, any::<u8>(), v.clone(), del).prop_map(|(u, o, role, v, delete)| {
            Ev::Member {
                u,
                o,
                role: role % 4,
                v,
                delete,
            }
        }),
        (0usize..4, any::<u8>(), v).prop_map(|(s, status, v)| Ev::Billing {
            s,
            status: status % 4,
            v
        }),
    ]
}

const TABLES: &[&str] = &[
    "users",
    "organizations",
    "memberships",
    "invitations",
    "domains",
    "roles",
    "permissions",
    "sessions",
    "emails",
    "sms_messages",
    "waitlist_entries",
    "billing_subscriptions",
    "billing_subscription_items",
    "billing_payment_attempts",
    "user_emails",
    "user_phones",
    "user_external_accounts",
    "archive",
    "audit",
    "change_feed",
    "inbox",
];

pub async fn reset(db: &Database) {
    for t in TABLES {
        let sql = format!("DELETE FROM {t}");
        match db {
            Database::Sqlite(..) => {
                let p = &crate::helpers::sqlite_pool(db).await;
                sqlx::query(&sql).execute(p).await.map(|_| ())
            }
            Database::Postgres(p) => sqlx::query(&sql).execute(p).await.map(|_| ()),
        }
        .unwrap();
    }
}

/// Every entity row and contact row, minus the sync time.
pub async fn dump(db: &Database) -> Vec<String> {
    let mut out = Vec::new();
    for t in [
        "users",
        "organizations",
        "memberships",
        "invitations",
        "domains",
        "roles",
        "permissions",
        "sessions",
        "billing_subscription_items",
    ] {
        let sql = format!(
            "SELECT id, version, version_key, deleted, user_id, organization_id, data FROM {t} ORDER BY id"
        );
        type Row = (
            String,
            i64,
            String,
            bool,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = match db {
            Database::Sqlite(..) => {
                let p = &crate::helpers::sqlite_pool(db).await;
                sqlx::query_as(&sql).fetch_all(p).await.unwrap()
            }
            Database::Postgres(p) => sqlx::query_as(&sql).fetch_all(p).await.unwrap(),
        };
        out.extend(rows.into_iter().map(|r| format!("{t}: {r:?}")));
    }
    let sql = "SELECT user_id, id, email_address, is_primary FROM user_emails ORDER BY user_id, id";
    let rows: Vec<(String, String, String, bool)> = match db {
        Database::Sqlite(..) => {
            let p = &crate::helpers::sqlite_pool(db).await;
            sqlx::query_as(sql).fetch_all(p).await.unwrap()
        }
        Database::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
    };
    out.extend(rows.into_iter().map(|r| format!("user_emails: {r:?}")));
    out
}

/// Empties the database and stores the deliveries of `evs`, in order.
async fn store(db: &Database, evs: &[Ev]) -> Vec<Delivery> {
    reset(db).await;
    let rows: Vec<NewDelivery> = evs
        .iter()
        .enumerate()
        .map(|(i, e)| delivery(i, e))
        .collect();
    append_batch(db, &rows).await.unwrap();
    // Bodies are stored compressed: read as bytes, decoded by the store's codec.
    type Row = (
        i64,
        String,
        String,
        Option<String>,
        i64,
        Option<i64>,
        i64,
        Vec<u8>,
        i32,
    );
    let sql = "SELECT seq, svix_id, event_type, entity_key, svix_timestamp, event_timestamp, received_at, \
               BODY, attempts FROM inbox JOIN inbox_bodies USING (seq) ORDER BY seq";
    let stored: Vec<Row> = match db {
        Database::Sqlite(..) => {
            let p = &crate::helpers::sqlite_pool(db).await;
            let sql = sql.replace("BODY", "CAST(COALESCE(body_zstd, body) AS BLOB)");
            sqlx::query_as(&sql).fetch_all(p).await.unwrap()
        }
        Database::Postgres(p) => {
            let sql = sql.replace("BODY", "COALESCE(body_zstd, convert_to(body, 'UTF8'))");
            sqlx::query_as(&sql).fetch_all(p).await.unwrap()
        }
    };
    stored
        .into_iter()
        .map(|r| Delivery {
            seq: r.0,
            svix_id: r.1,
            event_type: r.2,
            entity_key: r.3,
            svix_timestamp: r.4,
            event_timestamp: r.5,
            received_at: r.6,
            body: clerksync::store::body::decode(Some(&r.7)),
            attempts: r.8,
        })
        .collect()
}

/// Stores the deliveries, then applies them in `order` (indexes into `evs`;
/// repeats are duplicate deliveries), one transaction each.
pub async fn run(db: &Database, evs: &[Ev], order: &[usize]) -> Vec<String> {
    let stored = store(db, evs).await;
    for &i in order {
        let mut tx = begin(db).await.unwrap();
        apply(tx.as_mut(), &stored[i], 1).await.expect("apply");
        tx.commit().await.unwrap();
    }
    dump(db).await
}

/// [`run`], but `chunk` events per transaction, the way the processor applies
/// a batch: bodies parsed first, the batch's locks and rows taken up front,
/// writes kept until commit (PostgreSQL), so reads inside the batch must see
/// the batch's own writes.
pub async fn run_batched(db: &Database, evs: &[Ev], order: &[usize], chunk: usize) -> Vec<String> {
    let stored = store(db, evs).await;
    for part in order.chunks(chunk) {
        let parsed: Vec<_> = part.iter().map(|&i| parse(&stored[i])).collect();
        let plan = plan_batch(&parsed);
        let mut tx = begin(db).await.unwrap();
        let seqs: Vec<i64> = part.iter().map(|&i| stored[i].seq).collect();
        plan.prepare(tx.as_mut(), &seqs).await.unwrap();
        for (&i, p) in part.iter().zip(parsed) {
            apply_parsed(tx.as_mut(), &stored[i], p, 1)
                .await
                .expect("apply");
        }
        tx.commit().await.unwrap();
    }
    dump(db).await
}

fn history() -> impl Strategy<Value = (Vec<Ev>, Vec<usize>)> {
    prop::collection::vec(ev_strategy(), 1..24).prop_flat_map(|evs| {
        let n = evs.len();
        let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        let dups = prop::collection::vec(0..n, 0..6);
        (Just(evs), order, dups).prop_map(|(evs, mut order, dups)| {
            // Duplicates go anywhere after... or before: Svix may redeliver at any time.
            for (k, d) in dups.into_iter().enumerate() {
                let at = (k * 7 + d) % (order.len() + 1);
                order.insert(at, d);
            }
            (evs, order)
        })
    })
}

fn check(db: Database, cases: u32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // CLERKSYNC_PROPTEST_CASES=N runs a deeper search than CI's default.
    let cases = std::env::var("CLERKSYNC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    runner
        .run(&history(), |(evs, order)| {
            let in_order: Vec<usize> = (0..evs.len()).collect();
            let expected = rt.block_on(run(&db, &evs, &in_order));
            let got = rt.block_on(run(&db, &evs, &order));
            prop_assert_eq!(&expected, &got);
            let chunk = 2 + order.len() % 7;
            let batched = rt.block_on(run_batched(&db, &evs, &order, chunk));
            prop_assert_eq!(&expected, &batched, "in batches of {}", chunk);
            Ok(())
        })
        .unwrap();
}

#[test]
fn permutations_converge_on_sqlite() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (db, _dir) = rt.block_on(sqlite_db());
    drop(rt);
    check(db, 64);
}

#[test]
fn permutations_converge_on_postgres() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some((db, _schema)) = rt.block_on(postgres_db()) else {
        return;
    };
    drop(rt);
    check(db, 48);
}

/// The cases the design calls out, spelled out.
#[tokio::test]
async fn named_rules_hold() {
    let (db, _dir) = sqlite_db().await;
    let u = |name, v, delete| Ev::User {
        u: 0,
        name,
        v,
        delete,
    };
    let m = |v, delete| Ev::Member {
        u: 0,
        o: 0,
        role: 0,
        v,
        delete,
    };
    // A late update never resurrects a deleted user.
    let s = run(
        &db,
        &[u(1, 5, false), u(2, 9, true), u(3, 20, false)],
        &[1, 2, 0],
    )
    .await;
    assert!(
        s.iter()
            .any(|r| r.starts_with("users: (\"user_0\"") && r.contains("true, None, None, None)")),
        "{s:?}"
    );
    // Stale update changes nothing.
    let s = run(&db, &[u(1, 5, false), u(2, 3, false)], &[0, 1]).await;
    assert!(
        s.iter().any(|r| r.contains("N1")) && !s.iter().any(|r| r.contains("N2")),
        "{s:?}"
    );
    // A membership for an already-deleted user is not created; a user deletion
    // removes existing memberships.
    let s = run(&db, &[u(1, 5, true), m(6, false)], &[0, 1]).await;
    assert!(
        s.iter()
            .any(|r| r.starts_with("memberships") && r.contains("true,")),
        "{s:?}"
    );
    let s = run(&db, &[m(2, false), u(1, 5, true)], &[0, 1]).await;
    assert!(
        s.iter()
            .any(|r| r.starts_with("memberships") && r.contains("true,")),
        "{s:?}"
    );
    // User updated: the copy of its public data on memberships follows.
    let s = run(&db, &[m(2, false), u(3, 5, false)], &[0, 1]).await;
    let mem = s.iter().find(|r| r.starts_with("memberships")).unwrap();
    assert!(mem.contains("N3") && mem.contains("u0-3@x.io"), "{mem}");
}
