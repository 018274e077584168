//! The deadline index: for every user with a pending transition, when it falls due.
//!
//! One ordered set for the whole store, so the sweeper needs a single `sleep_until` for the
//! earliest deadline rather than a timer per session (which does not scale: tokio's timer wheel
//! contends on a lock with millions of entries).
use jiff::Timestamp;
use presence_core::UserKey;
use std::collections::BTreeMap;
use std::hash::RandomState;
use std::sync::{Arc, Mutex};

/// Both tables share one copy of each key: millions of users are indexed, and a second copy of
/// the tenant and user strings cost ~100 B per user (BENCHMARKS.md §5).
#[derive(Default)]
struct Inner {
    /// Ordered by deadline, then by the shared key's address, which is fixed while the key is
    /// indexed. So every comparison is between integers (ties on the deadline used to compare
    /// tenant and user strings), and a removal searches without cloning the key. This runs on the
    /// writer thread for every write, between its `fdatasync` and its replies.
    by_time: BTreeMap<(Timestamp, usize), Arc<UserKey>>,
    by_key: hashbrown::HashMap<Arc<UserKey>, Timestamp, RandomState>,
}

fn address(key: &Arc<UserKey>) -> usize {
    Arc::as_ptr(key) as usize
}

#[derive(Default)]
pub struct DeadlineIndex {
    // One mutex: updates are a couple of tree operations and happen at commit rate, far below
    // what a single lock sustains; the sweeper holds it only to copy out a batch of keys.
    inner: Mutex<Inner>,
}

impl DeadlineIndex {
    /// Record `key`'s next deadline (`None` removes it). Returns true if this deadline is now the
    /// earliest of all, which is when a sleeping sweeper must wake to re-plan.
    pub fn set(&self, key: &UserKey, deadline: Option<Timestamp>) -> bool {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner { by_time, by_key } = &mut *guard;
        let Some(at) = deadline else {
            if let Some((shared, old)) = by_key.remove_entry(key) {
                by_time.remove(&(old, address(&shared)));
            }
            return false;
        };
        // One hash lookup whether the key is new or renewed.
        if let Some((shared, slot)) = by_key.get_key_value_mut(key) {
            // A renewal (every write to a user with a session) moves the shared key to its new
            // slot: no allocation on the writer's hot path.
            if *slot != at {
                let shared = by_time
                    .remove(&(*slot, address(shared)))
                    .unwrap_or_else(|| shared.clone());
                by_time.insert((at, address(&shared)), shared);
                *slot = at;
            }
        } else {
            let shared = Arc::new(key.clone());
            by_time.insert((at, address(&shared)), shared.clone());
            by_key.insert(shared, at);
        }
        by_time.first_key_value().is_some_and(|((first, _), _)| *first == at)
    }

    pub fn due(&self, now: Timestamp, limit: usize) -> Vec<UserKey> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .by_time
            .iter()
            .take_while(|((at, _), _)| *at <= now)
            .take(limit)
            .map(|(_, k)| UserKey::clone(k))
            .collect()
    }

    pub fn earliest(&self) -> Option<Timestamp> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_time.first_key_value().map(|((at, _), _)| *at)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::{TenantId, UserId};

    fn key(u: &str) -> UserKey {
        UserKey::new(TenantId::parse("t").unwrap(), UserId::parse(u).unwrap())
    }

    #[test]
    fn orders_renews_and_removes() {
        let index = DeadlineIndex::default();
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert!(index.set(&key("a"), Some(t + jiff::SignedDuration::from_secs(10))));
        assert!(index.set(&key("b"), Some(t + jiff::SignedDuration::from_secs(5))));
        assert!(!index.set(&key("c"), Some(t + jiff::SignedDuration::from_secs(20))));
        assert_eq!(
            index.due(t + jiff::SignedDuration::from_secs(10), 10),
            vec![key("b"), key("a")]
        );
        index.set(&key("b"), Some(t + jiff::SignedDuration::from_secs(30)));
        assert_eq!(index.due(t + jiff::SignedDuration::from_secs(10), 10), vec![key("a")]);
        index.set(&key("a"), None);
        assert_eq!(index.earliest(), Some(t + jiff::SignedDuration::from_secs(20)));
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn keys_due_at_the_same_instant_are_kept_and_moved_apart() {
        let index = DeadlineIndex::default();
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        for u in ["a", "b", "c"] {
            index.set(&key(u), Some(t));
        }
        let mut due = index.due(t, 10);
        due.sort();
        assert_eq!(due, vec![key("a"), key("b"), key("c")]);
        // Renew one and remove another: each finds its own entry among the tied ones.
        assert!(!index.set(&key("b"), Some(t + jiff::SignedDuration::from_secs(1))));
        index.set(&key("c"), None);
        assert_eq!(index.due(t, 10), vec![key("a")]);
        assert_eq!(
            index.due(t + jiff::SignedDuration::from_secs(1), 10),
            vec![key("a"), key("b")]
        );
        assert_eq!(index.len(), 2);
    }
}
