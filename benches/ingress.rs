//! Ingress CPU cost per delivery: Svix signature verification and envelope parse
//! of a typical ~2 KB `user.updated` (issue 2 target: both together ≤ 5 µs).
//!
//! Owns: these micro-benchmarks only. Must never: touch the network or a database
//! (that is `clerksync loadgen`'s job), or bench a body unlike what Clerk sends
//! (the body comes from the load generator, which follows the real fixtures).

use clerksync::clerk::envelope::parse_head;
use clerksync::webhook::verify::{verify, DeliveryHeaders, SecretSet, WebhookSecret};
use clerksync_loadgen::generate::{generate, GenConfig};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A fixed "now": verification is pure given the clock, so the bench is too.
const NOW: i64 = 1_735_689_600;

/// The generated `user.updated` whose size is closest to 2 KB (deterministic).
fn typical_user_updated() -> (String, Vec<u8>) {
    let events = generate(&GenConfig {
        seed: 2,
        events: 2_000,
        ..GenConfig::default()
    });
    let e = events
        .iter()
        .filter(|e| e.event_type == "user.updated")
        .min_by_key(|e| e.body.len().abs_diff(2048))
        .expect("the stream has user.updated events");
    (e.svix_id.to_string(), e.body.to_vec())
}

fn ingress(c: &mut Criterion) {
    let secret = WebhookSecret::parse(SECRET).expect("valid secret");
    let secrets = SecretSet::new(vec![secret.clone()]);
    let (id, body) = typical_user_updated();
    let timestamp = NOW.to_string();
    let signature = secret.sign(&id, NOW, &body);
    let headers = DeliveryHeaders {
        id: Some(&id),
        timestamp: Some(&timestamp),
        signature: Some(&signature),
    };
    // Guard against benchmarking the error path.
    verify(&secrets, headers, &body, NOW, true).expect("genuine delivery");
    parse_head(&body).expect("envelope");

    // A stable group name keeps criterion's saved baselines comparable.
    eprintln!("ingress bench body: user.updated, {} bytes", body.len());
    let mut g = c.benchmark_group("ingress/user.updated_2KB");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("verify+parse_head", |b| {
        b.iter(|| {
            let v = verify(&secrets, black_box(headers), black_box(&body), NOW, true);
            let h = parse_head(black_box(&body));
            black_box((v, h))
        })
    });
    g.bench_function("verify", |b| {
        b.iter(|| verify(&secrets, black_box(headers), black_box(&body), NOW, true))
    });
    g.bench_function("parse_head", |b| b.iter(|| parse_head(black_box(&body))));
    g.finish();
}

criterion_group!(benches, ingress);
criterion_main!(benches);
