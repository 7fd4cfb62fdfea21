//! `GET /metrics` after a loadgen run: it parses as Prometheus text (with a
//! parser crate, not line matching), its counters agree with `/admin/stats` and
//! with what was sent, the scrape-time gauges are there with sane values, and
//! every metric the Grafana dashboard in `deploy/` queries is exposed.

use crate::backends::{sqlite_server, Server};
use crate::helpers::{sign, TEST_KEY};
use clerksync::config::Token;
use clerksync_loadgen::expect::ExpectedState;
use clerksync_loadgen::report::Report;
use prometheus_parse::{Scrape, Value as PValue};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const TOKEN: &str = "metrics-admin-token";

use crate::helpers::loadgen_args;

async fn scrape(s: &Server) -> (String, Scrape) {
    let text = s.metrics_text().await;
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text");
    (text, parsed)
}

fn number(v: &PValue) -> f64 {
    match v {
        PValue::Counter(x) | PValue::Gauge(x) | PValue::Untyped(x) => *x,
        other => panic!("not a single number: {other:?}"),
    }
}

/// Sum of the samples named `name` whose labels include every `(k, v)` of `with`.
fn sum(m: &Scrape, name: &str, with: &[(&str, &str)]) -> f64 {
    m.samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| with.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| number(&s.value))
        .sum()
}

/// The one sample named `name`; panics when absent.
fn one<'a>(m: &'a Scrape, name: &str) -> &'a prometheus_parse::Sample {
    let found: Vec<_> = m.samples.iter().filter(|s| s.metric == name).collect();
    assert_eq!(found.len(), 1, "{name}: {found:?}");
    found[0]
}

/// Every sample name of a scrape (histograms also by their `_bucket` name).
fn names(m: &Scrape) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in &m.samples {
        if matches!(s.value, PValue::Histogram(_)) {
            out.insert(format!("{}_bucket", s.metric));
        }
        out.insert(s.metric.clone());
    }
    out
}

/// Polls /metrics until `name` (summed) equals `want`; returns the last scrape.
async fn scrape_until(s: &Server, name: &str, want: f64) -> (String, Scrape) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (text, m) = scrape(s).await;
        let got = sum(&m, name, &[]);
        if got == want {
            return (text, m);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {name} = {want} (last {got})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_signed(s: &Server, svix_id: &str, key: &[u8], body: &str) -> u16 {
    let ts = crate::helpers::system_now_secs().to_string();
    s.client
        .post(s.url("/webhooks/clerk"))
        .header("svix-id", svix_id)
        .header("svix-timestamp", &ts)
        .header("svix-signature", sign(key, svix_id, &ts, body.as_bytes()))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_agree_with_admin_stats_after_a_loadgen_run() {
    let s = sqlite_server(|c| c.admin_token = Some(Token::new(TOKEN))).await;
    let dir = tempfile::tempdir().unwrap();
    let expect_path = dir.path().join("expect.json");
    let url = s.url("/webhooks/clerk");
    let secret = crate::helpers::whsec(TEST_KEY);
    let expect_s = expect_path.display().to_string();
    let report = clerksync_loadgen::run(loadgen_args(&[
        "--url",
        &url,
        "--secret",
        &secret,
        "--events",
        "800",
        "--seed",
        "11",
        "--out-of-order",
        "0.1",
        "--duplicates",
        "0.05",
        "--forged",
        "0.03",
        "--connections",
        "8",
        "--json",
        "-q",
        "--expect",
        &expect_s,
    ]))
    .await
    .expect("loadgen runs");
    let report: Report = serde_json::from_str(report.trim()).expect("a JSON report");
    assert!(report.duplicates > 0 && report.forged > 0, "{report:?}");
    assert_eq!(report.transport_errors, 0, "{report:?}");
    assert_eq!(
        report.forged_by_status.get(&401),
        Some(&(report.forged as u64))
    );

    // One delivery that can never apply (a typed field of the wrong type): it
    // dead-letters at once. One signed body that is not an envelope: 400.
    let poison = json!({"type": "user.updated", "object": "event", "timestamp": 1,
                        "data": {"id": "user_poison", "object": "user", "first_name": 42}});
    assert_eq!(
        post_signed(&s, "msg_poison", TEST_KEY, &poison.to_string()).await,
        200
    );
    assert_eq!(
        post_signed(&s, "msg_garbage", TEST_KEY, "not json").await,
        400
    );
    s.settle().await;
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'dead'", 1)
        .await;

    // The search consumer catches up on its own schedule: wait for its gauge.
    let expected: ExpectedState =
        serde_json::from_slice(&std::fs::read(&expect_path).unwrap()).unwrap();
    let live_docs = expected.users.values().filter(|u| !u.deleted).count()
        + expected
            .organizations
            .values()
            .filter(|o| !o.deleted)
            .count();
    let (text, m) = scrape_until(&s, "clerksync_search_index_documents", live_docs as f64).await;
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );

    let (st, stats) = s.get_json("/admin/stats", Some(TOKEN)).await;
    assert_eq!(st, 200);
    let stat = |k: &str| stats[k].as_i64().unwrap_or_else(|| panic!("{k}: {stats}")) as f64;

    // Deliveries, by outcome, against what was sent and what was stored.
    let deliveries = |outcome: &str| {
        sum(
            &m,
            "clerksync_webhook_deliveries_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(deliveries("accepted"), (report.events + 1) as f64);
    assert_eq!(deliveries("accepted"), stat("received"));
    assert_eq!(deliveries("duplicate"), report.duplicates as f64);
    assert_eq!(deliveries("bad_signature"), report.forged as f64);
    assert_eq!(deliveries("malformed"), 1.0);
    assert_eq!(
        sum(&m, "clerksync_webhook_deliveries_total", &[]),
        (report.deliveries + 2) as f64,
        "every delivery sent is counted once"
    );
    // Acknowledged (2xx) deliveries only.
    assert_eq!(
        sum(&m, "clerksync_webhook_ack_duration_seconds_count", &[]),
        deliveries("accepted") + deliveries("duplicate")
    );

    // Queue gauges (read at scrape time) and processing counters.
    assert_eq!(sum(&m, "clerksync_events_pending", &[]), stat("pending"));
    assert_eq!(sum(&m, "clerksync_events_failed", &[]), stat("failed"));
    assert_eq!(sum(&m, "clerksync_events_dead", &[]), stat("dead"));
    assert_eq!(stat("dead"), 1.0);
    assert_eq!(stat("pending") + stat("failed"), 0.0);
    let processed = ["applied", "unchanged", "ignored"]
        .iter()
        .map(|st| sum(&m, "clerksync_events_processed_total", &[("status", st)]))
        .sum::<f64>();
    assert_eq!(processed, stat("processed"));
    assert_eq!(processed, report.events as f64);
    assert_eq!(
        sum(
            &m,
            "clerksync_events_processed_total",
            &[("status", "dead")]
        ),
        stat("dead")
    );
    assert_eq!(
        sum(
            &m,
            "clerksync_events_processed_total",
            &[("event_type", "user.updated"), ("status", "dead")]
        ),
        1.0
    );
    // Each processed event is in both lag histograms and the apply histogram
    // (the poison one only in the last: it was tried).
    assert_eq!(sum(&m, "clerksync_sync_lag_seconds_count", &[]), processed);
    assert_eq!(
        sum(&m, "clerksync_clerk_sync_lag_seconds_count", &[]),
        processed
    );
    assert!(sum(&m, "clerksync_apply_duration_seconds_count", &[]) >= processed);
    assert!(
        sum(
            &m,
            "clerksync_apply_duration_seconds_count",
            &[("event_type", "organizationMembership.created")]
        ) > 0.0
    );
    match &one(&m, "clerksync_sync_lag_seconds").value {
        PValue::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
            assert_eq!(inf.count, processed);
        }
        other => panic!("sync lag is not a histogram: {other:?}"),
    }

    // The gauges added for operators.
    let build = one(&m, "clerksync_build_info");
    assert_eq!(build.value, PValue::Gauge(1.0));
    assert_eq!(build.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    assert!(build.labels.get("commit").is_some_and(|c| !c.is_empty()));
    let in_use = number(&one(&m, "clerksync_db_pool_connections_in_use").value);
    let idle = number(&one(&m, "clerksync_db_pool_connections_idle").value);
    assert!(in_use >= 0.0 && idle >= 0.0, "{in_use} {idle}");
    assert!((1.0..=64.0).contains(&(in_use + idle)), "{in_use} + {idle}");
    assert!(live_docs > 0);
    assert_eq!(
        one(&m, "clerksync_search_index_documents").value,
        PValue::Gauge(live_docs as f64)
    );
    // Every change-feed consumer reports its lag.
    for consumer in ["cache", "search", "realtime"] {
        assert!(
            m.samples
                .iter()
                .any(|s| s.metric == "clerksync_feed_consumer_lag_entries"
                    && s.labels.get("consumer") == Some(consumer)),
            "no lag for consumer {consumer}"
        );
    }
    assert!(names(&m).contains("clerksync_cache_hits_total"));
    assert!(names(&m).contains("clerksync_cache_misses_total"));
}

/// Metric names in a PromQL expression: identifiers starting with `clerksync_`.
fn metric_names(expr: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("clerksync_") {
        // Only at the start of an identifier (not inside another name or a string).
        let starts = rest[..i].chars().next_back().is_none_or(|c| !ident(c));
        let tail = &rest[i..];
        let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        if starts {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

fn panel_exprs(panels: &[Value], out: &mut Vec<(String, String)>) {
    for p in panels {
        let title = p["title"].as_str().unwrap_or("").to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((title.clone(), e.to_string()));
            }
        }
        if let Some(inner) = p["panels"].as_array() {
            panel_exprs(inner, out);
        }
    }
}

#[tokio::test]
async fn grafana_dashboard_queries_only_exposed_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");
    let dash: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).expect("valid JSON");
    assert!(dash["schemaVersion"].as_i64().unwrap() >= 36);
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let mut exprs = Vec::new();
    panel_exprs(dash["panels"].as_array().unwrap(), &mut exprs);
    assert!(exprs.len() >= 15, "{exprs:?}");
    // Panel ids are unique (Grafana keys panels by id).
    let ids: Vec<i64> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len());

    // A server that has done a little of everything, so labelled families exist.
    let s = sqlite_server(|c| c.admin_token = Some(Token::new(TOKEN))).await;
    let ev = json!({"type": "user.created", "object": "event", "timestamp": 1,
                    "data": {"id": "user_g", "object": "user", "first_name": "G"}});
    assert_eq!(s.post("msg_g", &ev).await, 200);
    s.settle().await;
    // One read through the cache, so the cache counters have moved.
    s.get_json("/v1/users/user_g", None).await;
    let (_, m) = scrape(&s).await;
    let exposed = names(&m);

    let mut used = BTreeSet::new();
    for (title, e) in &exprs {
        let found = metric_names(e);
        assert!(!found.is_empty(), "{title}: no clerksync metric in {e}");
        used.extend(found);
    }
    let mut missing = Vec::new();
    for name in &used {
        if exposed.contains(name) {
            continue;
        }
        missing.push(name.clone());
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not expose: {missing:?}\nexposed: {exposed:?}"
    );
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(clerksync_x_bucket{instance=~\"$instance\"}[5m]))) \
             / clerksync_y_total + notclerksync_z"
        ),
        vec!["clerksync_x_bucket", "clerksync_y_total"]
    );
}
