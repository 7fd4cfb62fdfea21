//! Recent throughput: per-second counts of deliveries received and events
//! processed over the last [`SECONDS`] seconds, for the dashboard's chart.
//!
//! Owns: a fixed ring of one slot per second of wall-clock time, fed where the
//! Prometheus counters are fed (a delivery accepted at ingress, an event that
//! reached `done` in the processor). A slot is reused when its second comes
//! round again, so memory is constant however long the server runs.
//!
//! Must never: grow, block a caller for longer than a few increments (one short
//! lock), or count a duplicate or a refused delivery as received (the chart's
//! totals match `/admin/stats`, which counts stored events).

use serde::Serialize;
use std::sync::Mutex;

/// Five minutes of one-second slots.
pub const SECONDS: usize = 300;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The unix second this slot holds; a slot of an older second reads as 0.
    second: i64,
    received: u64,
    processed: u64,
}

/// The ring (one per app, in [`super::metrics::Metrics`]).
#[derive(Debug)]
pub struct Throughput {
    slots: Mutex<[Slot; SECONDS]>,
}

/// The last [`SECONDS`] seconds, oldest first; the last entry is the current,
/// still-running second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct History {
    /// Unix second of the last entry.
    pub until: i64,
    /// Length of one entry, in seconds (always 1).
    pub interval_secs: u32,
    /// Deliveries accepted and stored (not duplicates, not refused) per second.
    pub received: Vec<u64>,
    /// Events that reached `done` per second.
    pub processed: Vec<u64>,
}

impl Default for Throughput {
    fn default() -> Self {
        Self::new()
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Throughput {
    pub fn new() -> Self {
        Throughput {
            slots: Mutex::new([Slot::default(); SECONDS]),
        }
    }

    pub fn received(&self) {
        self.add_at(now_secs(), 1, 0);
    }

    pub fn processed(&self) {
        self.add_at(now_secs(), 0, 1);
    }

    pub fn snapshot(&self) -> History {
        self.snapshot_at(now_secs())
    }

    fn add_at(&self, second: i64, received: u64, processed: u64) {
        // A poisoned lock only means another thread panicked mid-increment of
        // plain integers: the counts are still usable.
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[second.rem_euclid(SECONDS as i64) as usize];
        if slot.second != second {
            *slot = Slot {
                second,
                ..Slot::default()
            };
        }
        slot.received += received;
        slot.processed += processed;
    }

    fn snapshot_at(&self, until: i64) -> History {
        let slots = *self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = History {
            until,
            interval_secs: 1,
            received: Vec::with_capacity(SECONDS),
            processed: Vec::with_capacity(SECONDS),
        };
        for second in until - SECONDS as i64 + 1..=until {
            let slot = slots[second.rem_euclid(SECONDS as i64) as usize];
            let live = slot.second == second;
            out.received.push(if live { slot.received } else { 0 });
            out.processed.push(if live { slot.processed } else { 0 });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_second_and_expire_after_five_minutes() {
        let t = Throughput::new();
        let start = 1_700_000_000;
        t.add_at(start, 1, 0);
        t.add_at(start, 1, 1);
        t.add_at(start + 2, 0, 3);
        let h = t.snapshot_at(start + 2);
        assert_eq!(h.received.len(), SECONDS);
        assert_eq!(h.until, start + 2);
        assert_eq!(&h.received[SECONDS - 3..], &[2, 0, 0]);
        assert_eq!(&h.processed[SECONDS - 3..], &[1, 0, 3]);

        // 299 seconds later the first second is the oldest entry; at 300 it is gone.
        let h = t.snapshot_at(start + SECONDS as i64 - 1);
        assert_eq!(h.received[0], 2);
        let h = t.snapshot_at(start + SECONDS as i64);
        assert_eq!(h.received.iter().sum::<u64>(), 0);
        assert_eq!(h.processed.iter().sum::<u64>(), 3);

        // The slot of `start` is reused by `start + 300`, starting from zero.
        t.add_at(start + SECONDS as i64, 5, 0);
        let h = t.snapshot_at(start + SECONDS as i64);
        assert_eq!(h.received[SECONDS - 1], 5);
        assert_eq!(h.received.iter().sum::<u64>(), 5);
    }
}
