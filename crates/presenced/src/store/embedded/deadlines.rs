//! The deadline index: for every user with a pending transition, when it falls due.
//!
//! One ordered set for the whole store, so the sweeper needs a single `sleep_until` for the
//! earliest deadline rather than a timer per session (which does not scale: tokio's timer wheel
//! contends on a lock with millions of entries).
use jiff::Timestamp;
use presence_core::UserKey;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// Both tables share one copy of each key: millions of users are indexed, and a second copy of
/// the tenant and user strings cost ~100 B per user (BENCHMARKS.md §5).
#[derive(Default)]
struct Inner {
    by_time: BTreeSet<(Timestamp, Arc<UserKey>)>,
    by_key: HashMap<Arc<UserKey>, Timestamp>,
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
        let current = by_key.get_key_value(key).map(|(shared, at)| (shared.clone(), *at));
        match (current, deadline) {
            (Some((shared, old)), Some(at)) => {
                // A renewal (every write to a user with a session) moves the shared key to its new
                // slot: no allocation on the writer's hot path.
                if old != at {
                    by_time.remove(&(old, shared.clone()));
                    by_time.insert((at, shared));
                    if let Some(slot) = by_key.get_mut(key) {
                        *slot = at;
                    }
                }
            }
            (Some((shared, old)), None) => {
                by_time.remove(&(old, shared));
                by_key.remove(key);
                return false;
            }
            (None, Some(at)) => {
                let shared = Arc::new(key.clone());
                by_key.insert(shared.clone(), at);
                by_time.insert((at, shared));
            }
            (None, None) => return false,
        }
        by_time
            .first()
            .is_some_and(|(first, _)| Some(first) == deadline.as_ref())
    }

    pub fn due(&self, now: Timestamp, limit: usize) -> Vec<UserKey> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .by_time
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|(_, k)| UserKey::clone(k))
            .collect()
    }

    pub fn earliest(&self) -> Option<Timestamp> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_time.first().map(|(at, _)| *at)
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
}
