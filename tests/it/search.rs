//! Search (`GET /v1/search`, `/admin/reindex`, `clerksync reindex`), black-box.
//!
//! The index follows the change feed asynchronously, so every expectation is
//! polled until it holds or a generous deadline passes (a hang guard, never a
//! timing assertion).

use crate::backends::{postgres_server, sqlite_server, start, Server};
use clerksync::config::Token;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::process::Command;

const DEADLINE: Duration = Duration::from_secs(30);
const ADMIN: &str = "search-admin";

fn user(id: &str, first: &str, last: &str, username: Option<&str>, email: &str, at: i64) -> Value {
    json!({"type": "user.updated", "object": "event", "timestamp": at, "data": {
        "id": id, "object": "user", "first_name": first, "last_name": last, "username": username,
        "primary_email_address_id": format!("idn_{id}"),
        "email_addresses": [{"id": format!("idn_{id}"), "email_address": email, "object": "email_address"}],
        "phone_numbers": [],
        "created_at": 1, "updated_at": at}})
}

fn with_phone(mut u: Value, phone: &str) -> Value {
    u["data"]["phone_numbers"] = json!([{"id": "idn_phone", "phone_number": phone}]);
    u
}

fn org(id: &str, name: &str, slug: &str, at: i64) -> Value {
    json!({"type": "organization.updated", "object": "event", "timestamp": at, "data": {
        "id": id, "object": "organization", "name": name, "slug": slug,
        "created_at": 1, "updated_at": at}})
}

fn deleted(kind: &str, id: &str, at: i64) -> Value {
    json!({"type": format!("{kind}.deleted"), "object": "event", "timestamp": at,
           "data": {"deleted": true, "id": id, "object": kind}})
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn search(s: &Server, q: &str, extra: &str) -> (u16, Value) {
    let (st, v) = s
        .get_json(&format!("/v1/search?q={}{extra}", enc(q)), None)
        .await;
    (st.as_u16(), v)
}

fn ids(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls a search until `ok` holds for its result ids; returns the last answer.
async fn wait_search(s: &Server, q: &str, extra: &str, ok: impl Fn(&[String]) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (st, v) = search(s, q, extra).await;
        assert_eq!(st, 200, "q={q:?}: {v}");
        if ok(&ids(&v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "q={q:?}{extra}: still {:?}",
            ids(&v)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn post_all(s: &Server, prefix: &str, events: &[Value]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(s.post(&format!("msg_{prefix}_{i:04}"), e).await, 200);
    }
    s.settle().await;
}

fn people() -> Vec<Value> {
    vec![
        user(
            "user_ada",
            "Ada",
            "Lovelace",
            Some("countess"),
            "ada.lovelace@analytical.engine",
            10,
        ),
        with_phone(
            user(
                "user_grace",
                "Grace",
                "Hopper",
                Some("amazing_grace"),
                "grace@navy.mil",
                10,
            ),
            "+15550109999",
        ),
        // Username exactly "grace": must rank above the Grace whose first name matches.
        user(
            "user_alan",
            "Alan",
            "Turing",
            Some("grace"),
            "alan@bletchley.uk",
            10,
        ),
        user("user_zoe", "Zoë", "Ångström", None, "zoe@example.org", 10),
    ]
}

async fn admin_status(s: &Server) -> Value {
    let (st, v) = s.get_json("/admin/reindex", Some(ADMIN)).await;
    assert_eq!(st, 200, "{v}");
    v
}

/// Waits until the index itself (not the store-filtered API) holds `n` documents.
async fn wait_docs(s: &Server, n: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let v = admin_status(s).await;
        if v["documents"] == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "index holds {} documents, want {n}",
            v["documents"]
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn finds_users_by_fragment_typo_and_exact_handle() {
    let s = sqlite_server(|_| {}).await;
    post_all(&s, "people", &people()).await;

    // A fragment of an email, across its punctuation.
    let v = wait_search(&s, "lovelace@analyt", "", |r| r == ["user_ada"]).await;
    assert_eq!(
        v["data"][0]["primary_email_address"],
        "ada.lovelace@analytical.engine"
    );
    assert_eq!(v["data"][0]["first_name"], "Ada");
    wait_search(&s, "ada.love", "", |r| r == ["user_ada"]).await;
    // Misspelled names (one and two edits).
    wait_search(&s, "Lovleace", "", |r| r == ["user_ada"]).await;
    wait_search(&s, "grase hoper", "", |r| r == ["user_grace"]).await;
    wait_search(&s, "Turnig", "", |r| r == ["user_alan"]).await;
    // Prefix of the last word.
    wait_search(&s, "ada lov", "", |r| r == ["user_ada"]).await;
    // Accents either way.
    wait_search(&s, "zoe angstrom", "", |r| r == ["user_zoe"]).await;
    wait_search(&s, "Zoë", "", |r| r == ["user_zoe"]).await;
    // An exact username ranks first; the first-name match follows.
    wait_search(&s, "grace", "", |r| {
        r.first().map(String::as_str) == Some("user_alan") && r.contains(&"user_grace".to_string())
    })
    .await;
    // An exact email ranks first.
    wait_search(&s, "grace@navy.mil", "", |r| {
        r.first().map(String::as_str) == Some("user_grace")
    })
    .await;
    // Phone numbers, formatted any way, with or without the country code.
    wait_search(&s, "+1 555 010 9999", "", |r| r == ["user_grace"]).await;
    wait_search(&s, "555-010-9999", "", |r| r == ["user_grace"]).await;
    // kind and limit.
    wait_search(&s, "grace", "&kind=organizations", |r| r.is_empty()).await;
    wait_search(&s, "grace", "&kind=users&limit=1", |r| r == ["user_alan"]).await;
    // Nothing matches: an empty list, not an error.
    wait_search(&s, "nobody-by-this-name", "", |r| r.is_empty()).await;
    s.stop().await;
}

#[tokio::test]
async fn finds_organizations_by_name_and_slug_prefix() {
    let s = sqlite_server(|_| {}).await;
    organizations_by_name_and_slug_prefix(&s).await;
    s.stop().await;
}

/// The index is fed from the store on PostgreSQL too (its batch read differs).
#[tokio::test]
async fn finds_organizations_by_name_and_slug_prefix_postgres() {
    if let Some(s) = postgres_server(|_| {}).await {
        organizations_by_name_and_slug_prefix(&s).await;
        s.stop().await;
    }
}

async fn organizations_by_name_and_slug_prefix(s: &Server) {
    let mut events = vec![
        org(
            "org_engines",
            "Analytical Engines Ltd",
            "analytical-engines",
            10,
        ),
        org("org_acme", "Acme Corporation", "acme", 10),
    ];
    events.extend(people());
    post_all(s, "orgs", &events).await;
    let v = wait_search(s, "analyt", "&kind=organizations", |r| r == ["org_engines"]).await;
    assert_eq!(v["data"][0]["name"], "Analytical Engines Ltd");
    assert_eq!(v["data"][0]["slug"], "analytical-engines");
    wait_search(s, "acm", "&kind=organizations", |r| r == ["org_acme"]).await;
    wait_search(s, "engines ltd", "&kind=organizations", |r| {
        r == ["org_engines"]
    })
    .await;
    wait_search(s, "acme", "", |r| r == ["org_acme"]).await;
    // Users matching "analyt" (Ada's email) are not organizations, and vice versa.
    wait_search(s, "analyt", "&kind=users", |r| r == ["user_ada"]).await;
    wait_search(s, "analyt", "&kind=user", |r| r == ["user_ada"]).await;
}

#[tokio::test]
async fn forgets_deleted_users_and_organizations() {
    let s = sqlite_server(|c| c.admin_token = Some(Token::new(ADMIN))).await;
    let mut events = people();
    events.push(org("org_acme", "Acme Corporation", "acme", 10));
    post_all(&s, "before", &events).await;
    wait_docs(&s, 5).await;
    wait_search(&s, "lovelace", "", |r| r == ["user_ada"]).await;
    wait_search(&s, "acme", "", |r| r == ["org_acme"]).await;

    post_all(
        &s,
        "after",
        &[
            deleted("user", "user_ada", 20),
            deleted("organization", "org_acme", 20),
        ],
    )
    .await;
    // Gone from the answers at once (rows are re-read from the store)...
    let (st, v) = search(&s, "lovelace", "").await;
    assert_eq!((st, ids(&v)), (200, vec![]));
    // ...and from the index itself once the consumer has the deletes.
    wait_docs(&s, 3).await;
    wait_search(&s, "acme", "", |r| r.is_empty()).await;
    // A late update never brings a deleted user back.
    post_all(
        &s,
        "late",
        &[user("user_ada", "Ada", "Lovelace", None, "ada@late.io", 15)],
    )
    .await;
    wait_docs(&s, 3).await;
    wait_search(&s, "ada", "", |r| r.is_empty()).await;
    // An update of a live user is seen, and the old words are forgotten.
    post_all(
        &s,
        "rename",
        &[user(
            "user_alan",
            "Alan",
            "Mathison",
            Some("grace"),
            "alan@bletchley.uk",
            30,
        )],
    )
    .await;
    wait_search(&s, "mathison", "", |r| r == ["user_alan"]).await;
    wait_search(&s, "turing", "", |r| r.is_empty()).await;
    s.stop().await;
}

#[tokio::test]
async fn bad_queries_are_clear_400s_or_sensible_results_never_500() {
    let s = sqlite_server(|c| c.api_token = Some(Token::new("read-token"))).await;
    post_all(&s, "people", &people()).await;
    let get = |path: String| {
        let s = &s;
        async move { s.get_json(&path, Some("read-token")).await }
    };
    // Same bearer rule as the rest of /v1.
    let (st, _) = s.get_json("/v1/search?q=ada", None).await;
    assert_eq!(st, 401);
    wait_search_token(&s, "lovelace").await;

    let long = "x".repeat(10 * 1024);
    let words = "ada ".repeat(17);
    let four_hundred = [
        "/v1/search".to_string(),
        "/v1/search?q=".to_string(),
        format!("/v1/search?q={}", enc("   \t ")),
        format!("/v1/search?q={}", enc(&long)),
        format!("/v1/search?q={}", enc(&"é".repeat(513))),
        format!("/v1/search?q={}", enc(&words)),
        "/v1/search?q=ada&limit=0".to_string(),
        "/v1/search?q=ada&limit=101".to_string(),
        "/v1/search?q=ada&limit=-1".to_string(),
        "/v1/search?q=ada&limit=ten".to_string(),
        "/v1/search?q=ada&kind=sessions".to_string(),
    ];
    for path in four_hundred {
        let (st, v) = get(path.clone()).await;
        assert_eq!(st, 400, "{}: {v}", &path[..path.len().min(80)]);
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    let sensible = [
        "\"ada\"",
        "ada:lovelace",
        "first_name:ada",
        "(ada",
        "ada)",
        "ada*",
        "*",
        "?",
        "ada~2",
        "ada^10",
        "ada AND lovelace",
        "ada OR grace",
        "NOT ada",
        "-ada",
        "+ada",
        "ada || grace",
        "[a TO z]",
        "{* TO *}",
        "\\",
        "/.*/",
        "'; DROP TABLE users; --",
        "%",
        "🦀🦀🦀",
        "\u{202e}ecalevol",
        "a\u{0301}\u{0301}\u{0301}da",
        "ｌｏｖｅｌａｃｅ",
        "Ада Лавлейс",
        "エイダ・ラブレス",
        "😀 ada 😀",
        "\u{0}",
        &"🦀".repeat(512),
        &"漢".repeat(512),
        &"a".repeat(512),
        &"ab ".repeat(16),
    ];
    for q in sensible {
        let (st, v) = get(format!("/v1/search?q={}", enc(q))).await;
        assert_eq!(st, 200, "q={q:?}: {v}");
        assert!(v["data"].is_array(), "q={q:?}: {v}");
    }
    // Query syntax is only punctuation: the words still find the user.
    for q in [
        "\"lovelace\"",
        "lovelace*",
        "(lovelace)",
        "lovelace~",
        "lovelace^",
        "email:lovelace",
    ] {
        let (st, v) = get(format!("/v1/search?q={}", enc(q))).await;
        assert_eq!(st, 200, "q={q:?}: {v}");
        if q != "email:lovelace" {
            assert_eq!(ids(&v), ["user_ada"], "q={q:?}");
        }
    }
    s.stop().await;
}

/// `wait_search` with the read token.
async fn wait_search_token(s: &Server, q: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (st, v) = s
            .get_json(&format!("/v1/search?q={}", enc(q)), Some("read-token"))
            .await;
        assert_eq!(st, 200, "{v}");
        if !ids(&v).is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{q} never found");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}/t.db", dir.display())
}

async fn start_with_index(dir: &Path, index: Option<&Path>) -> Server {
    let index = index.map(Path::to_path_buf);
    start(&sqlite_url(dir), Box::new(()), move |c| {
        c.search_dir = index;
        c.admin_token = Some(Token::new(ADMIN));
    })
    .await
}

#[tokio::test]
async fn index_catches_up_from_its_checkpoint_after_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("search");

    // Run 1: the index directory gets Ada.
    let s = start_with_index(dir.path(), Some(&index)).await;
    post_all(&s, "r1", &people()[..1]).await;
    wait_search(&s, "lovelace", "", |r| r == ["user_ada"]).await;
    s.stop().await;

    // Run 2 without that directory: the feed (and the consumer's checkpoint)
    // moves on while the directory misses Grace, like a crash after the
    // commit and before the index update.
    let s = start_with_index(dir.path(), None).await;
    post_all(&s, "r2", &people()[1..2]).await;
    wait_search(&s, "hopper", "", |r| r == ["user_grace"]).await;
    // Checkpoints are saved at most every 250 ms while the feed moves.
    s.wait_for(
        "SELECT COUNT(*) FROM feed_checkpoints WHERE consumer = 'search' AND seq >= 2",
        1,
    )
    .await;
    s.stop().await;

    // Run 3 with the directory again: it notices it is behind the checkpoint
    // and replays the feed from its own position.
    let s = start_with_index(dir.path(), Some(&index)).await;
    wait_search(&s, "hopper", "", |r| r == ["user_grace"]).await;
    wait_search(&s, "lovelace", "", |r| r == ["user_ada"]).await;
    wait_docs(&s, 2).await;
    assert_eq!(
        admin_status(&s).await["status"]["run"],
        0,
        "replayed, not rebuilt"
    );
    post_all(&s, "r3", &people()[2..]).await;
    wait_docs(&s, 4).await;
    s.stop().await;

    // The consumer's checkpoint behind the index (a crash after the index
    // commit, before the checkpoint save): replayed, and idempotent.
    {
        let s = start_with_index(dir.path(), Some(&index)).await;
        s.exec("UPDATE feed_checkpoints SET seq = 0 WHERE consumer = 'search'")
            .await;
        s.stop().await;
    }
    let s = start_with_index(dir.path(), Some(&index)).await;
    wait_search(&s, "turing", "", |r| r == ["user_alan"]).await;
    s.wait_for(
        "SELECT COUNT(*) FROM feed_checkpoints WHERE consumer = 'search' AND seq >= 4",
        1,
    )
    .await;
    wait_docs(&s, 4).await;
    s.stop().await;

    // The directory lost entirely: rebuilt from the store at start-up.
    std::fs::remove_dir_all(&index).unwrap();
    let s = start_with_index(dir.path(), Some(&index)).await;
    wait_docs(&s, 4).await;
    wait_search(&s, "grace", "", |r| r.len() == 2).await;
    assert_eq!(
        admin_status(&s).await["status"]["run"],
        1,
        "rebuilt from the store"
    );
    s.stop().await;
}

#[tokio::test]
async fn admin_reindex_rebuilds_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_index(dir.path(), None).await;
    let (st, _) = s.post_json("/admin/reindex", None).await;
    assert_eq!(st, 401);
    let mut events = people();
    events.push(org("org_acme", "Acme Corporation", "acme", 10));
    post_all(&s, "p", &events).await;
    wait_docs(&s, 5).await;

    let (st, v) = s.post_json("/admin/reindex", Some(ADMIN)).await;
    assert_eq!(st, 202, "{v}");
    let run = v["run"].as_u64().unwrap();
    // Search answers throughout.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (st, r) = search(&s, "lovelace", "").await;
        assert_eq!((st, ids(&r)), (200, vec!["user_ada".to_string()]));
        let v = admin_status(&s).await;
        if v["status"]["run"] == run && v["status"]["running"] == false {
            assert_eq!(v["status"]["error"], Value::Null, "{v}");
            assert_eq!(v["status"]["finished"]["users"], 4, "{v}");
            assert_eq!(v["status"]["finished"]["organizations"], 1, "{v}");
            assert_eq!(v["documents"], 5, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "reindex did not finish: {v}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    wait_search(&s, "acme", "", |r| r == ["org_acme"]).await;
    s.stop().await;
}

/// Runs the real binary; async, so the in-process server keeps serving meanwhile.
async fn clerksync(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clerksync"));
    cmd.args(args).current_dir(dir);
    crate::helpers::without_inherited_settings(cmd.as_std_mut());
    cmd.output().await.expect("run clerksync")
}

#[tokio::test]
async fn reindex_command_offline_and_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("search");
    let url = sqlite_url(dir.path());
    let index_s = index.display().to_string();
    let s = start_with_index(dir.path(), Some(&index)).await;
    post_all(&s, "p", &people()).await;
    wait_docs(&s, 4).await;

    // The server holds the directory: offline reindex refuses, and says what to do.
    let out = clerksync(
        dir.path(),
        &["reindex", "--database-url", &url, "--search-dir", &index_s],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("in use") && stderr.contains("--url"),
        "{stderr}"
    );

    // --url: the server rebuilds itself.
    let base = s.url("");
    let out = clerksync(
        dir.path(),
        &["reindex", "--url", &base, "--admin-token", ADMIN],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("reindexed 4 users and 0 organizations"),
        "{stdout}"
    );
    let out = clerksync(
        dir.path(),
        &["reindex", "--url", &base, "--admin-token", "wrong"],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin token"));
    s.stop().await;

    // Server down: the command rebuilds the directory itself...
    std::fs::remove_dir_all(&index).unwrap();
    let out = clerksync(
        dir.path(),
        &["reindex", "--database-url", &url, "--search-dir", &index_s],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("reindexed 4 users and 0 organizations"),
        "{stdout}"
    );
    // ...and the next server uses it as is (no rebuild needed to find users).
    let s = start_with_index(dir.path(), Some(&index)).await;
    wait_docs(&s, 4).await;
    wait_search(&s, "hopper", "", |r| r == ["user_grace"]).await;
    s.stop().await;
}

/// People type the start of an address, username or name, and stop anywhere,
/// inside a word or on punctuation (`kwame.h`). Over generated people, every
/// prefix of two characters or more (a seeded random sample) finds its entity.
#[tokio::test]
async fn any_prefix_of_an_email_username_or_name_finds_the_entity() {
    use rand::{Rng, SeedableRng};
    let s = sqlite_server(|_| {}).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let firsts = [
        "Kwame",
        "Radia",
        "Arjun",
        "Amara",
        "Anne-Marie",
        "Seán",
        "Li",
        "O'Neil",
    ];
    let lasts = [
        "Haddad",
        "Lovelace",
        "Varga",
        "Smith-Jones",
        "Ng",
        "d'Arcy",
        "Sørensen",
    ];
    let seps = [".", "_", "-", "+", ""];
    let mut people = Vec::new();
    let mut events = Vec::new();
    for i in 0..40 {
        let first = firsts[rng.gen_range(0..firsts.len())];
        let last = lasts[rng.gen_range(0..lasts.len())];
        let sep = seps[rng.gen_range(0..seps.len())];
        let local: String = format!("{first}{sep}{last}{}", rng.gen_range(1..999))
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || ".-_+".contains(*c))
            .collect::<String>()
            .to_lowercase();
        let email = format!("{local}@mail{}.test", i % 3);
        let username = format!(
            "{}_{}{}",
            first.to_lowercase(),
            &last[..1].to_lowercase(),
            i
        );
        let id = format!("user_p{i:03}");
        events.push(user(&id, first, last, Some(&username), &email, 10));
        people.push((id, vec![email, username, format!("{first} {last}")]));
    }
    post_all(&s, "prefix", &events).await;
    // Indexing follows the feed in batches: wait until every person is in.
    for (id, values) in &people {
        wait_search(&s, &values[0], "", |ids| ids.contains(id)).await;
    }
    let mut checked = 0;
    for (id, values) in &people {
        for value in values {
            let chars: Vec<char> = value.chars().collect();
            // Every prefix of the first value of a few people, a sample of the rest.
            for n in 2..=chars.len() {
                if checked > 40 && !rng.gen_bool(0.15) {
                    continue;
                }
                let typed: String = chars[..n].iter().collect();
                if typed.trim().chars().count() < 2 {
                    continue;
                }
                checked += 1;
                let (st, v) = search(&s, &typed, "&limit=100").await;
                assert_eq!(st, 200, "{v}");
                assert!(
                    ids(&v).contains(id),
                    "q={typed:?} (a prefix of {value:?}) does not find {id}: {:?}",
                    ids(&v)
                );
            }
        }
    }
    assert!(checked > 100, "only {checked} prefixes checked");
    // The issue's own example: a prefix that stops inside the second word.
    let (_, v) = search(&s, "kwame.h", "").await;
    let expected: Vec<&String> = people
        .iter()
        .filter(|(_, vals)| vals[0].starts_with("kwame.h"))
        .map(|(id, _)| id)
        .collect();
    for id in expected {
        assert!(ids(&v).contains(id), "kwame.h: {:?}", ids(&v));
    }
}
