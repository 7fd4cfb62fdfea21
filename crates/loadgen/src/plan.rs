//! Delivery order: how Svix would actually hand the generated events over.
//!
//! Owns: turning the event stream into a delivery sequence with a share of
//! deliveries displaced (out of order), a share delivered again later (same
//! svix-id, same body: an at-least-once retry) and, optionally, forged copies
//! (same id and body, signed with a key the server does not know).
//!
//! Must never: change an event's id or body (a duplicate is byte-identical to its
//! original, which is what idempotency is keyed on), drop an event, or put a
//! duplicate before its original. Deterministic from its seed, and independent of
//! the generator's RNG, so changing these shares never changes the events or the
//! expected final state.

use super::generate::Event;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct PlanConfig {
    pub seed: u64,
    /// Share (0..=1) of events delivered 2..=40 positions away from their place.
    pub out_of_order: f64,
    /// Share (0..=1) of events delivered a second time, later in the sequence.
    pub duplicates: f64,
    /// Share (0..=1) of events that also get a forged delivery near their place.
    pub forged: f64,
}

/// One HTTP request to make.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Index of the event in the generated stream.
    pub event: usize,
    pub svix_id: Arc<str>,
    pub body: Bytes,
    /// A second (or later) delivery of an event.
    pub duplicate: bool,
    /// Must be signed with a wrong key at send time: the server must refuse it.
    pub forged: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub deliveries: Vec<Delivery>,
    pub duplicates: usize,
    pub displaced: usize,
    pub forged: usize,
}

/// Displacements are "a few to tens of positions": enough to reorder events of one
/// entity (see `generate::ACTIVE_TARGET`), small enough to stay realistic for
/// concurrent Svix workers.
const MAX_DISPLACEMENT: i64 = 40;
/// Half of the retries come back while the original may still be in flight
/// (concurrent dedup), half much later (dedup against the stored row).
const NEAR_RETRY: i64 = 64;

/// Distinct from the generator's stream so the two never correlate.
const PLAN_SEED_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

pub fn plan(events: &[Event], cfg: &PlanConfig) -> Plan {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ PLAN_SEED_SALT);
    let n = events.len() as i64;
    let far = (n / 4).max(NEAR_RETRY + 1);
    // Every delivery gets a position key; a stable sort by (key, kind, index) is the
    // send order. Keys are scaled by 4 so a displaced or added delivery never ties
    // with an original: originals sit on multiples of 4.
    let mut keyed: Vec<(i64, u8, usize, Delivery)> = Vec::with_capacity(events.len() * 11 / 10);
    let mut out = Plan::default();
    for (i, e) in events.iter().enumerate() {
        let home = i as i64 * 4;
        let mut key = home;
        if rng.gen_bool(cfg.out_of_order) {
            let d = rng.gen_range(2..=MAX_DISPLACEMENT);
            // +2 lands between two originals, right after the one `d` places away.
            key = if rng.gen_bool(0.5) {
                home + d * 4 + 2
            } else {
                home - d * 4 - 2
            };
            out.displaced += 1;
        }
        let delivery = |duplicate, forged| Delivery {
            event: i,
            svix_id: e.svix_id.clone(),
            body: e.body.clone(),
            duplicate,
            forged,
        };
        keyed.push((key, 0, i, delivery(false, false)));
        if rng.gen_bool(cfg.duplicates) {
            let delay = if rng.gen_bool(0.5) {
                rng.gen_range(1..=NEAR_RETRY)
            } else {
                rng.gen_range(NEAR_RETRY..=far)
            };
            // Strictly after the original's key, wherever the original went.
            keyed.push((key + delay * 4 + 1, 1, i, delivery(true, false)));
            out.duplicates += 1;
        }
        if rng.gen_bool(cfg.forged) {
            // A forgery may arrive before the genuine delivery: the server must
            // refuse it without letting it poison the svix-id.
            let d = rng.gen_range(-NEAR_RETRY..=NEAR_RETRY);
            keyed.push((home + d * 4 + 3, 2, i, delivery(false, true)));
            out.forged += 1;
        }
    }
    keyed.sort_by_key(|(key, kind, i, _)| (*key, *kind, *i));
    out.deliveries = keyed.into_iter().map(|(.., d)| d).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{generate, GenConfig};
    use std::collections::HashMap;

    fn events() -> Vec<Event> {
        generate(&GenConfig {
            seed: 21,
            events: 3000,
            ..GenConfig::default()
        })
    }

    fn cfg(ooo: f64, dup: f64, forged: f64) -> PlanConfig {
        PlanConfig {
            seed: 21,
            out_of_order: ooo,
            duplicates: dup,
            forged,
        }
    }

    #[test]
    fn no_shares_means_event_order() {
        let ev = events();
        let p = plan(&ev, &cfg(0.0, 0.0, 0.0));
        assert_eq!(p.deliveries.len(), ev.len());
        assert!(p.deliveries.iter().enumerate().all(|(i, d)| d.event == i));
    }

    #[test]
    fn duplicates_keep_id_and_body_and_come_later() {
        let ev = events();
        let p = plan(&ev, &cfg(0.1, 0.2, 0.05));
        assert!(
            p.duplicates > 400 && p.displaced > 200 && p.forged > 50,
            "{p:?}"
        );
        let genuine = p.deliveries.iter().filter(|d| !d.forged).count();
        assert_eq!(genuine, ev.len() + p.duplicates);
        assert_eq!(p.deliveries.len(), genuine + p.forged);
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        let mut dups = 0;
        for (pos, d) in p.deliveries.iter().enumerate() {
            // Same id, same bytes as the event: a retry or forgery is the same message.
            assert_eq!(d.svix_id, ev[d.event].svix_id);
            assert_eq!(d.body, ev[d.event].body);
            if d.forged {
                continue;
            }
            if d.duplicate {
                dups += 1;
                let orig = first_seen
                    .get(&*d.svix_id)
                    .expect("original before duplicate");
                assert!(*orig < pos);
            } else {
                assert!(
                    first_seen.insert(&d.svix_id, pos).is_none(),
                    "one original per event"
                );
            }
        }
        assert_eq!(dups, p.duplicates);
        assert_eq!(first_seen.len(), ev.len(), "every event is delivered");
    }

    #[test]
    fn displacement_is_bounded_and_deterministic() {
        let ev = events();
        let a = plan(&ev, &cfg(0.3, 0.0, 0.0));
        let b = plan(&ev, &cfg(0.3, 0.0, 0.0));
        let order = |p: &Plan| p.deliveries.iter().map(|d| d.event).collect::<Vec<_>>();
        assert_eq!(order(&a), order(&b));
        let mut moved = 0;
        for (pos, d) in a.deliveries.iter().enumerate() {
            let shift = pos.abs_diff(d.event);
            // Neighbours displaced towards it can push it a few more places.
            assert!(
                shift <= 2 * MAX_DISPLACEMENT as usize,
                "event {} at {pos}",
                d.event
            );
            moved += usize::from(shift > 0);
        }
        assert!(moved >= a.displaced);
    }
}
