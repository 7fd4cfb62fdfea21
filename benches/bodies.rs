//! Stored delivery bodies: bytes per frame and CPU per body, with and without
//! the dictionary a deployment trains from its first bodies (store/body.rs).
//!
//! Owns: this micro-benchmark only. Must never: touch a database, or bench
//! bodies unlike what Clerk sends (they come from the load generator's
//! realistic stream, which follows the real payload shapes).

use clerksync::store::body::{decode, BodyCodec, SAMPLES};
use clerksync_loadgen::generate::{generate, GenConfig};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

/// A codec that has trained (and "stored") its dictionary on the stream's
/// first bodies, as a new deployment's does.
fn trained_codec(bodies: &[String]) -> BodyCodec {
    let codec = BodyCodec::default();
    for b in &bodies[..SAMPLES] {
        codec.compress(b);
    }
    for _ in 0..1000 {
        if let Some((_, dict)) = codec.take_trained(0) {
            codec.stored(&dict, 0, true);
            return codec;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no dictionary trained within 10 s");
}

fn bodies(c: &mut Criterion) {
    let events = generate(&GenConfig {
        seed: 21,
        events: 6_000,
        ..GenConfig::default()
    });
    let bodies: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8(e.body.to_vec()).expect("UTF-8 bodies"))
        .collect();
    let plain = BodyCodec::default();
    let trained = trained_codec(&bodies);
    // Bodies the dictionary was not trained on.
    let later = &bodies[SAMPLES..];
    let size = |codec: &BodyCodec| {
        later.iter().map(|b| codec.compress(b).len()).sum::<usize>() as f64 / later.len() as f64
    };
    let raw = later.iter().map(String::len).sum::<usize>() as f64 / later.len() as f64;
    eprintln!(
        "bodies: {raw:.0} bytes raw, {:.0} per frame without a dictionary, {:.0} with one",
        size(&plain),
        size(&trained)
    );
    let body = later
        .iter()
        .min_by_key(|b| b.len().abs_diff(2048))
        .expect("bodies");
    let mut g = c.benchmark_group("bodies/2KB");
    for (name, codec) in [("plain", &plain), ("dictionary", &trained)] {
        let frame = codec.compress(body);
        assert_eq!(&decode(Some(&frame)), body);
        g.bench_function(format!("compress/{name}"), |b| {
            b.iter(|| codec.compress(black_box(body)))
        });
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| decode(black_box(Some(&frame))))
        });
    }
    g.finish();
}

criterion_group!(benches, bodies);
criterion_main!(benches);
