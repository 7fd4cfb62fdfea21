//! `wait_ms` waiters: read-API requests held until an entity is synced.
//!
//! Owns: the registry of the ids being waited for, and waking exactly their
//! waiters after an apply commit that changed them (the processor hands over
//! the committed entity ids). Must never: read the store (a woken waiter
//! re-reads once, itself), or wake the waiters of an id a commit did not touch:
//! a thousand waiters cost nothing per commit but a map lookup per changed id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

#[derive(Default)]
pub struct Waiters {
    /// id -> bumped when a commit changes it; one sender shared by its waiters.
    ids: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Waiters woken so far (one per waiter per commit that changed its id).
    wakeups: AtomicU64,
}

/// One request waiting for one id; deregisters when dropped.
pub struct Waiter {
    id: String,
    rx: watch::Receiver<u64>,
    owner: Arc<Waiters>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // Plain maps stay usable after a panic elsewhere.
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a wait for `id`. Register before reading the store, so a
    /// commit that lands after the read wakes the waiter.
    pub fn wait_for(self: &Arc<Self>, id: &str) -> Waiter {
        let rx = self
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Waiter {
            id: id.to_string(),
            rx,
            owner: self.clone(),
        }
    }

    /// After a commit: wakes the waiters of the changed ids, and only those.
    pub fn wake<'a>(&self, changed: impl IntoIterator<Item = &'a str>) {
        let ids = self.lock();
        if ids.is_empty() {
            return;
        }
        for id in changed {
            if let Some(tx) = ids.get(id) {
                self.wakeups
                    .fetch_add(tx.receiver_count() as u64, Ordering::Relaxed);
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// Waiters woken so far.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Ids being waited for.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Waiter {
    /// Marks what has been seen: only a later change wakes [`Self::changed`].
    pub fn seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Resolves when a commit changes the id (at once if one did since [`Self::seen`]).
    pub async fn changed(&mut self) {
        // The sender lives in the map while this waiter does: no error.
        let _ = self.rx.changed().await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut ids = self.owner.lock();
        // This waiter's receiver is still alive here: the last one counts 1.
        if ids.get(&self.id).is_some_and(|tx| tx.receiver_count() <= 1) {
            ids.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_commit_wakes_only_the_waiters_of_its_ids() {
        let w = Arc::new(Waiters::default());
        let mut on_a: Vec<Waiter> = (0..1000).map(|_| w.wait_for("user_a")).collect();
        let mut on_b: Vec<Waiter> = (0..1000).map(|_| w.wait_for("user_b")).collect();
        for x in on_a.iter_mut().chain(on_b.iter_mut()) {
            x.seen();
        }
        w.wake(["user_a", "user_c"]);
        assert_eq!(w.wakeups(), 1000);
        for x in &mut on_a {
            tokio::time::timeout(Duration::from_secs(10), x.changed())
                .await
                .expect("woken");
        }
        for x in &mut on_b {
            assert!(!x.rx.has_changed().unwrap(), "a waiter on another id woke");
        }
        drop(on_a);
        assert_eq!(w.len(), 1);
        drop(on_b);
        assert!(w.is_empty());
    }
}
