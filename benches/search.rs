//! Search index at scale (issue 5): bulk indexing throughput and query latency
//! over N synthetic users (default 1,000,000; `SEARCH_BENCH_USERS=N` to change).
//!
//! Owns: these measurements only. Must never: touch the network, or measure
//! anything but the code the server runs: users go into a real SQLite store,
//! the index is built by `SearchIndex::rebuild` (what `clerksync reindex` and a
//! lost index directory run), and queries go through `parse_query` and
//! `SearchIndex::search`, as `GET /v1/search` does.
//!
//! Prints bulk throughput (documents/s, store paging included) and p50/p99/max
//! per query type from an HDR histogram of 2,000 varied queries each, then
//! runs the criterion groups. The store is filled with plain INSERTs (the
//! apply path would take an hour for a million users; it is benched elsewhere).

use clerksync::config::DatabaseUrl;
use clerksync::search::{parse_query, IndexOptions, SearchIndex};
use clerksync::store::db::Database;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FIRST: &[&str] = &[
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
    "Edsger",
    "Radia",
    "Donald",
    "Hedy",
    "Tim",
    "Katherine",
    "John",
    "Mary",
    "Claude",
    "Sophie",
    "Niklaus",
    "Anita",
    "Leslie",
    "Shafi",
    "Whitfield",
    "Adele",
    "Fernando",
    "Jean",
    "Karen",
    "Robin",
    "Yukihiro",
    "Guido",
    "Bjarne",
    "Joan",
    "Ivan",
    "Evelyn",
    "Carl",
    "Lynn",
    "Tony",
    "Annie",
    "Peter",
    "Ruth",
    "Martin",
    "Elena",
    "Mateo",
    "Zoë",
    "Åsa",
    "Chloé",
    "José",
    "Noah",
    "Liam",
    "Emma",
    "Olivia",
    "Ava",
    "Mia",
    "Lucas",
    "Hugo",
    "Léa",
    "Yuki",
    "Priya",
    "Arjun",
    "Fatima",
    "Omar",
    "Ines",
];
const SYLLABLES: &[&str] = &[
    "ka", "ro", "mi", "lo", "ven", "dar", "sel", "tho", "bri", "gan", "wel", "son", "ber", "ma",
    "ri", "ton", "ley", "ham", "ford", "field", "stein", "berg", "ski", "ov", "ez", "li", "chen",
    "zu", "na", "por",
];
const DOMAINS: &[&str] = &[
    "gmail.com",
    "outlook.com",
    "example.org",
    "acme.io",
    "navy.mil",
    "uni.edu",
    "proton.me",
    "fastmail.com",
    "corp.example",
    "startup.dev",
];

struct Person {
    first: String,
    last: String,
    email: String,
}

fn person(rng: &mut StdRng, n: usize) -> Person {
    let first = FIRST[rng.gen_range(0..FIRST.len())].to_string();
    let k = rng.gen_range(2..=3);
    let mut last: String = (0..k)
        .map(|_| SYLLABLES[rng.gen_range(0..SYLLABLES.len())])
        .collect();
    last[..1].make_ascii_uppercase();
    let domain = DOMAINS[rng.gen_range(0..DOMAINS.len())];
    let email = format!(
        "{}.{}{n}@{domain}",
        first.to_lowercase(),
        last.to_lowercase()
    );
    Person { first, last, email }
}

fn user_json(rng: &mut StdRng, n: usize, p: &Person) -> String {
    let username = rng
        .gen_bool(0.5)
        .then(|| format!("{}_{}{n}", p.first.to_lowercase(), p.last.to_lowercase()));
    let phones = if rng.gen_bool(0.3) {
        json!([{"id": "idn_p", "phone_number": format!("+1555{:07}", n % 10_000_000)}])
    } else {
        json!([])
    };
    json!({
        "id": format!("user_{n:010}"), "object": "user",
        "first_name": p.first, "last_name": p.last, "username": username,
        "primary_email_address_id": "idn_e",
        "email_addresses": [{"id": "idn_e", "email_address": p.email, "object": "email_address"}],
        "phone_numbers": phones, "created_at": 1, "updated_at": 1,
    })
    .to_string()
}

/// Fills the users table of a fresh store, in transactions of 10,000 rows.
async fn fill_store(db: &Database, n: usize) -> Vec<Person> {
    let Some(path) = db.file_path() else {
        unreachable!("the bench uses SQLite")
    };
    let pool = &sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("a pool on the bench's database");
    let mut rng = StdRng::seed_from_u64(5);
    let mut people = Vec::with_capacity(n);
    const ROWS: usize = 500;
    let mut i = 0;
    while i < n {
        let mut tx = pool.begin().await.expect("begin");
        for _ in 0..20 {
            let m = ROWS.min(n - i);
            if m == 0 {
                break;
            }
            let values = vec!["(?, 1, 'k', 0, NULL, NULL, ?, 1)"; m].join(", ");
            let sql = format!(
                "INSERT INTO users (id, version, version_key, deleted, user_id, organization_id, data, synced_at) VALUES {values}"
            );
            let mut q = sqlx::query(&sql);
            for j in i..i + m {
                let p = person(&mut rng, j);
                q = q
                    .bind(format!("user_{j:010}"))
                    .bind(user_json(&mut rng, j, &p));
                people.push(p);
            }
            q.execute(&mut *tx).await.expect("insert");
            i += m;
        }
        tx.commit().await.expect("commit");
    }
    people
}

/// One edit a typist makes: two neighbouring letters swapped.
fn typo(s: &str) -> String {
    let mut c: Vec<char> = s.chars().collect();
    if c.len() >= 4 {
        c.swap(1, 2);
    }
    c.into_iter().collect()
}

type QueryGen = fn(&Person) -> String;

fn query_kinds() -> Vec<(&'static str, QueryGen)> {
    vec![
        ("exact email", |p| p.email.clone()),
        ("prefix: first name + start of last", |p| {
            format!("{} {}", p.first, &p.last[..3])
        }),
        ("prefix: one short word", |p| p.last[..3].to_string()),
        ("fuzzy: misspelled last name", |p| typo(&p.last)),
        ("fuzzy: first + misspelled last", |p| {
            format!("{} {}", p.first, typo(&p.last))
        }),
        ("partial email", |p| {
            let (local, domain) = p.email.split_once('@').unwrap_or((&p.email, ""));
            format!("{local}@{}", &domain[..domain.len().min(4)])
        }),
    ]
}

fn bench(c: &mut Criterion) {
    // `cargo test --all-targets` runs benches once, without `--bench`, as a
    // smoke test: a small index keeps that quick; `cargo bench` gets the full size.
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("SEARCH_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1_000_000 } else { 2_000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = DatabaseUrl::parse(&format!("sqlite://{}/bench.db", dir.path().display())).unwrap();
    let (db, people) = rt.block_on(async {
        let db = Database::open(&url).await.expect("store");
        let t = Instant::now();
        let people = fill_store(&db, n).await;
        eprintln!(
            "store: {n} users inserted in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        (db, people)
    });

    let index = Arc::new(
        SearchIndex::open(
            Some(&dir.path().join("search")),
            IndexOptions {
                writer_threads: 2,
                writer_memory_bytes: 256 << 20,
                ..IndexOptions::default()
            },
        )
        .expect("index"),
    );
    let report = rt.block_on(async {
        let ticket = index.claim_rebuild().expect("rebuild slot");
        index.rebuild(ticket, &db, |_| {}).await.expect("rebuild")
    });
    assert_eq!(report.users as usize, n);
    eprintln!(
        "bulk index: {} documents in {:.1}s = {:.0} documents/s (store paging included; 2 indexing threads)",
        report.users,
        report.seconds,
        report.users as f64 / report.seconds
    );
    assert_eq!(index.num_docs() as usize, n);
    // Measure the steady state: let background merges finish first (a search
    // visits every segment), as they would a while after a reindex.
    let t = Instant::now();
    let (mut segments, mut since) = (index.segment_count(), Instant::now());
    while since.elapsed() < Duration::from_secs(15) && t.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_secs(1));
        if index.segment_count() != segments {
            (segments, since) = (index.segment_count(), Instant::now());
        }
    }
    eprintln!(
        "merges: {segments} segments after {:.0}s",
        t.elapsed().as_secs_f64()
    );

    // Latency distributions: 2,000 different queries of each kind, after a warm-up.
    let mut rng = StdRng::seed_from_u64(7);
    let kinds = query_kinds();
    for (name, make) in &kinds {
        let queries: Vec<_> = (0..2_000)
            .map(|_| parse_query(&make(&people[rng.gen_range(0..n)])).expect("valid query"))
            .collect();
        let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
        let mut empty = 0;
        rt.block_on(async {
            for q in queries.iter().take(200) {
                index.search(q, None, 20).await.expect("search");
            }
            for q in &queries {
                let t = Instant::now();
                let hits = index.search(q, None, 20).await.expect("search");
                hist.record(t.elapsed().as_micros() as u64).expect("record");
                empty += usize::from(hits.is_empty());
            }
        });
        eprintln!(
            "query {name:<38} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms  (no hits: {empty}/2000)",
            hist.value_at_quantile(0.50) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
            hist.max() as f64 / 1000.0,
        );
    }

    let mut g = c.benchmark_group(format!("search/{n}_users"));
    g.measurement_time(Duration::from_secs(5));
    for (name, make) in &kinds {
        let queries: Vec<_> = (0..256)
            .map(|_| parse_query(&make(&people[rng.gen_range(0..n)])).expect("valid query"))
            .collect();
        let mut i = 0usize;
        g.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % queries.len();
                let q = &queries[i];
                let index = &index;
                async move { black_box(index.search(q, None, 20).await.expect("search")) }
            })
        });
    }
    g.finish();
    rt.block_on(db.close());
}

criterion_group!(benches, bench);
criterion_main!(benches);
