//! The loadgen's result: one struct, printed as text or as one JSON object (`--json`).
//!
//! Owns: the report's fields and both renderings. Must never: compute anything
//! (numbers come from `send`), or rename a JSON key without a note (tests parse it).
//!
//! # JSON keys
//!
//! `mode` ("closed" | "open" | "dry-run"), `url`, `seed`, `events` (generated),
//! `deliveries` (planned requests, including duplicates and forgeries),
//! `duplicates`, `displaced`, `forged`, `connections`, `rate` (events/s or null),
//! `max_in_flight` (null in closed loop), `sent` (requests made), `status_2xx`
//! (genuine deliveries acknowledged), `non_2xx` (genuine deliveries by status,
//! `{"503": 2}`), `transport_errors`, `first_transport_error`, `forged_by_status`
//! (forged deliveries by status; all should be 401), `in_flight_limit_hits`,
//! `elapsed_s`, `throughput_acks_per_s`, `latency_ms` (`p50`, `p90`, `p99`, `max`,
//! `mean`: ack latency of 2xx answers; open loop: from the intended send time),
//! `stream_file`, `expect_file`.

use super::send::Stats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn from_stats(stats: &Stats) -> Latency {
        let h = &stats.latency_us;
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub mode: String,
    pub url: String,
    pub seed: u64,
    pub events: usize,
    pub deliveries: usize,
    pub duplicates: usize,
    pub displaced: usize,
    pub forged: usize,
    pub connections: usize,
    pub rate: Option<f64>,
    pub max_in_flight: Option<usize>,
    pub sent: u64,
    pub status_2xx: u64,
    pub non_2xx: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub first_transport_error: Option<String>,
    pub forged_by_status: BTreeMap<u16, u64>,
    pub in_flight_limit_hits: u64,
    pub elapsed_s: f64,
    pub throughput_acks_per_s: f64,
    pub latency_ms: Latency,
    pub stream_file: Option<String>,
    pub expect_file: Option<String>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }

    /// Why this run did not go as a correct server answers, for the exit status:
    /// transport errors, genuine deliveries answered non-2xx, or forged ones
    /// answered anything but 401 (401 is the expected answer to a forgery).
    /// None for a dry run or a clean run.
    pub fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.transport_errors > 0 {
            why.push(format!("{} transport errors", self.transport_errors));
        }
        let non_2xx: u64 = self.non_2xx.values().sum();
        if non_2xx > 0 {
            why.push(format!(
                "{non_2xx} genuine deliveries answered non-2xx ({})",
                by_status(&self.non_2xx)
            ));
        }
        let forged_unexpected: BTreeMap<u16, u64> = self
            .forged_by_status
            .iter()
            .filter(|(s, _)| **s != 401)
            .map(|(s, n)| (*s, *n))
            .collect();
        if !forged_unexpected.is_empty() {
            why.push(format!(
                "{} forged deliveries answered other than 401 ({})",
                forged_unexpected.values().sum::<u64>(),
                by_status(&forged_unexpected)
            ));
        }
        (!why.is_empty()).then(|| format!("loadgen: {}", why.join("; ")))
    }
}

fn by_status(m: &BTreeMap<u16, u64>) -> String {
    m.iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.mode.as_str(), self.rate) {
            ("dry-run", _) => writeln!(f, "clerksync loadgen: dry run (nothing sent)")?,
            (_, Some(rate)) => writeln!(
                f,
                "clerksync loadgen: open loop at {rate} events/s (at most {} in flight) -> {}",
                self.max_in_flight.unwrap_or(0),
                self.url
            )?,
            _ => writeln!(
                f,
                "clerksync loadgen: closed loop, {} connections -> {}",
                self.connections, self.url
            )?,
        }
        writeln!(
            f,
            "stream:           {} events (seed {}), {} deliveries: {} duplicates, {} displaced, {} forged",
            self.events, self.seed, self.deliveries, self.duplicates, self.displaced, self.forged
        )?;
        if let Some(p) = &self.stream_file {
            writeln!(f, "stream file:      {p}")?;
        }
        if let Some(p) = &self.expect_file {
            writeln!(f, "expected state:   {p}")?;
        }
        if self.mode == "dry-run" {
            return Ok(());
        }
        let non_2xx: u64 = self.non_2xx.values().sum();
        writeln!(f, "sent:             {}", self.sent)?;
        writeln!(f, "2xx:              {}", self.status_2xx)?;
        if non_2xx == 0 {
            writeln!(f, "non-2xx:          0")?;
        } else {
            writeln!(
                f,
                "non-2xx:          {non_2xx} ({})",
                by_status(&self.non_2xx)
            )?;
        }
        write!(f, "transport errors: {}", self.transport_errors)?;
        match &self.first_transport_error {
            Some(e) => writeln!(f, " (first: {e})")?,
            None => writeln!(f)?,
        }
        if self.forged > 0 {
            writeln!(f, "forged answered:  {}", by_status(&self.forged_by_status))?;
        }
        if self.rate.is_some() {
            writeln!(
                f,
                "in-flight limit:  hit {} times",
                self.in_flight_limit_hits
            )?;
        }
        writeln!(f, "elapsed:          {:.3} s", self.elapsed_s)?;
        writeln!(
            f,
            "throughput:       {:.0} acks/s",
            self.throughput_acks_per_s
        )?;
        let l = &self.latency_ms;
        write!(
            f,
            "ack latency{}: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (mean {:.2} ms)",
            if self.rate.is_some() { " (from intended send time)" } else { "" },
            l.p50,
            l.p90,
            l.p99,
            l.max,
            l.mean
        )
    }
}
