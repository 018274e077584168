//! The deadline index: for every user with a pending transition, when it falls due.
//!
//! One ordered set for the whole store, so the sweeper needs a single `sleep_until` for the
//! earliest deadline rather than a timer per session (which does not scale: tokio's timer wheel
//! contends on a lock with millions of entries).
use super::key_hash::KeyHash;
use hashbrown::HashTable;
use jiff::Timestamp;
use presence_core::UserKey;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

/// An instant as nanoseconds since the Unix epoch: half the size of a `Timestamp`, which matters
/// at millions of users (each is held three times: `due`, `filed`, and the tree's key). Instants
/// past the year 2262 are held as 2262; nothing falls due that late that could not wait.
type Nanos = i64;

fn nanos(at: Timestamp) -> Nanos {
    at.as_nanosecond().clamp(Nanos::MIN.into(), Nanos::MAX.into()) as Nanos
}

fn timestamp(at: Nanos) -> Timestamp {
    Timestamp::from_nanosecond(at.into()).unwrap_or(Timestamp::MAX)
}

/// A user's place in the index.
struct Slot {
    hash: u64,
    /// Shared with `by_time`: millions of users are indexed, and a second copy of the tenant and
    /// user strings cost ~100 B per user (BENCHMARKS.md §5).
    key: Arc<UserKey>,
    /// When the user's next transition falls due.
    due: Nanos,
    /// Where `by_time` files the user: never after `due`, and earlier when a renewal moved `due`
    /// later and the tree entry was left where it was (see `DeadlineIndex::set`).
    filed: Nanos,
}

#[derive(Default)]
struct Inner {
    /// Ordered by filing time, then by the shared key's address, which is fixed while the key is
    /// indexed. So every comparison is between integers (ties on the deadline used to compare
    /// tenant and user strings), and a removal searches without cloning the key. One entry per
    /// indexed user.
    by_time: BTreeMap<(Nanos, usize), (u64, Arc<UserKey>)>,
    by_key: HashTable<Slot>,
}

/// Most stale entries refiled under one hold of the lock, which the writer waits for on every
/// commit. Past it, `earliest` answers early and `due` short, and the sweeper comes back.
const REFILE_LIMIT: usize = 256;

fn address(key: &Arc<UserKey>) -> usize {
    Arc::as_ptr(key) as usize
}

impl Slot {
    /// Whether this is `key`'s slot (`hash` is its hash): the hash first, the ids only on a match.
    fn is(&self, hash: u64, key: &UserKey) -> bool {
        self.hash == hash && *self.key == *key
    }
}

impl Inner {
    fn slot(&mut self, hash: u64, key: &UserKey) -> Option<&mut Slot> {
        self.by_key.find_mut(hash, |s| s.is(hash, key))
    }

    /// Refile a user whose tree entry lies before its deadline at that deadline. Returns false
    /// if the entry at `filed` was already where it belongs.
    fn refile(&mut self, filed: Nanos, addr: usize, hash: u64) -> bool {
        let Inner { by_time, by_key } = self;
        let Some(slot) = by_key.find_mut(hash, |s| s.hash == hash && address(&s.key) == addr) else {
            return false;
        };
        if slot.due == filed {
            return false;
        }
        if let Some(entry) = by_time.remove(&(filed, addr)) {
            by_time.insert((slot.due, addr), entry);
        }
        slot.filed = slot.due;
        true
    }

    /// The earliest deadline, refiling the stale entries before it; if there are more than
    /// `REFILE_LIMIT` of those, the filing time of the first one left (an earlier time).
    fn first_due(&mut self) -> Option<Timestamp> {
        for _ in 0..REFILE_LIMIT {
            let (&(at, addr), &(hash, _)) = self.by_time.first_key_value()?;
            if !self.refile(at, addr, hash) {
                return Some(timestamp(at));
            }
        }
        self.by_time.first_key_value().map(|((at, _), _)| timestamp(*at))
    }
}

/// Renewals are lazy. A keep-alive write moves its user's deadline later, and most writes are
/// keep-alives; each such move used to be a removal and an insertion in the tree, on the writer
/// thread between its `fdatasync` and its replies (~1,400 instructions, with cache misses, per
/// write). Now a later deadline only updates the user's slot, and the tree entry stays at the
/// earlier time until the sweeper reaches it: `due` and `earliest` refile such entries as they
/// meet them, so `due` never reports a user whose deadline is not real, and `earliest` is never
/// later than the real earliest deadline. A deadline that moves earlier is refiled at once, since
/// the sweeper must wake for it.
#[derive(Default)]
pub struct DeadlineIndex {
    // One mutex: updates are a couple of tree operations and happen at commit rate, far below
    // what a single lock sustains; the sweeper holds it only to copy out a batch of keys.
    inner: Mutex<Inner>,
}

impl DeadlineIndex {
    /// Record `key`'s next deadline (`None` removes it); `hash` is the store's hash of `key`.
    /// Returns true if this deadline is now the earliest of all, which is when a sleeping sweeper
    /// must wake to re-plan.
    pub fn set(&self, hash: KeyHash, key: &UserKey, deadline: Option<Timestamp>) -> bool {
        let hash = hash.0;
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *guard;
        let Some(at) = deadline.map(nanos) else {
            if let Ok(slot) = inner.by_key.find_entry(hash, |s| s.is(hash, key)) {
                let (slot, _) = slot.remove();
                inner.by_time.remove(&(slot.filed, address(&slot.key)));
            }
            return false;
        };
        if let Some(slot) = inner.slot(hash, key) {
            slot.due = at;
            if at >= slot.filed {
                // Lazy: the sweeper still wakes no later than it must, at `filed`.
                return false;
            }
            let (filed, shared) = (slot.filed, slot.key.clone());
            slot.filed = at;
            let addr = address(&shared);
            let entry = inner.by_time.remove(&(filed, addr)).unwrap_or((hash, shared));
            inner.by_time.insert((at, addr), entry);
        } else {
            let shared = Arc::new(key.clone());
            inner.by_time.insert((at, address(&shared)), (hash, shared.clone()));
            inner.by_key.insert_unique(
                hash,
                Slot {
                    hash,
                    key: shared,
                    due: at,
                    filed: at,
                },
                |s| s.hash,
            );
        }
        inner
            .by_time
            .first_key_value()
            .is_some_and(|((first, _), _)| *first == at)
    }

    /// Up to `limit` users whose deadline is at or before `now`, earliest first. Fewer, even
    /// none, when it met more than `REFILE_LIMIT` stale entries; then `earliest` is in the past.
    pub fn due(&self, now: Timestamp, limit: usize) -> Vec<UserKey> {
        let now = nanos(now);
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *guard;
        let mut keys = Vec::new();
        let mut after: Option<(Nanos, usize)> = None;
        let mut refiled = 0;
        while keys.len() < limit && refiled < REFILE_LIMIT {
            let next = match after {
                None => inner.by_time.first_key_value(),
                Some(position) => inner
                    .by_time
                    .range((Bound::Excluded(position), Bound::Unbounded))
                    .next(),
            };
            let Some((&(at, addr), &(hash, ref key))) = next else {
                break;
            };
            if at > now {
                break;
            }
            let key = UserKey::clone(key);
            // A refiled entry moves later, so the scan goes on from the same place.
            if inner.refile(at, addr, hash) {
                refiled += 1;
            } else {
                keys.push(key);
                after = Some((at, addr));
            }
        }
        keys
    }

    /// The earliest deadline, or an earlier time (see `first_due`): a sweeper woken early finds
    /// nothing due and asks again.
    pub fn earliest(&self) -> Option<Timestamp> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).first_due()
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
    use super::super::key_hash::KeyHasher;
    use super::*;
    use jiff::SignedDuration;
    use presence_core::{TenantId, UserId};

    fn key(u: &str) -> UserKey {
        UserKey::new(TenantId::parse("t").unwrap(), UserId::parse(u).unwrap())
    }

    /// An index and the hasher that feeds it, as the store pairs them.
    struct Fixture {
        index: DeadlineIndex,
        hasher: KeyHasher,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                index: DeadlineIndex::default(),
                hasher: KeyHasher::new(),
            }
        }

        fn set(&self, user: &str, at: Option<Timestamp>) -> bool {
            let k = key(user);
            self.index.set(self.hasher.hash(&k), &k, at)
        }
    }

    fn t0() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn secs(n: i64) -> Timestamp {
        t0() + SignedDuration::from_secs(n)
    }

    #[test]
    fn orders_renews_and_removes() {
        let f = Fixture::new();
        assert!(f.set("a", Some(secs(10))));
        assert!(f.set("b", Some(secs(5))));
        assert!(!f.set("c", Some(secs(20))));
        assert_eq!(f.index.due(secs(10), 10), vec![key("b"), key("a")]);
        f.set("b", Some(secs(30)));
        assert_eq!(f.index.due(secs(10), 10), vec![key("a")]);
        f.set("a", None);
        assert_eq!(f.index.earliest(), Some(secs(20)));
        assert_eq!(f.index.len(), 2);
    }

    #[test]
    fn keys_due_at_the_same_instant_are_kept_and_moved_apart() {
        let f = Fixture::new();
        for u in ["a", "b", "c"] {
            f.set(u, Some(t0()));
        }
        let mut due = f.index.due(t0(), 10);
        due.sort();
        assert_eq!(due, vec![key("a"), key("b"), key("c")]);
        // Renew one and remove another: each finds its own entry among the tied ones.
        assert!(!f.set("b", Some(secs(1))));
        f.set("c", None);
        assert_eq!(f.index.due(t0(), 10), vec![key("a")]);
        assert_eq!(f.index.due(secs(1), 10), vec![key("a"), key("b")]);
        assert_eq!(f.index.len(), 2);
    }

    /// Renewals to a later deadline leave the tree entry behind; nothing the index reports may
    /// show it.
    #[test]
    fn lazily_renewed_deadlines_are_reported_where_they_now_are() {
        let f = Fixture::new();
        f.set("a", Some(secs(10)));
        f.set("b", Some(secs(20)));
        for n in [15, 25, 40] {
            assert!(!f.set("a", Some(secs(n))), "a later deadline is never the new earliest");
        }
        assert_eq!(
            f.index.earliest(),
            Some(secs(20)),
            "a's old entry is refiled, not reported"
        );
        assert_eq!(f.index.due(secs(39), 10), vec![key("b")]);
        assert_eq!(f.index.due(secs(40), 10), vec![key("b"), key("a")]);
        assert_eq!(f.index.len(), 2);

        // Moved earlier than where it is filed: refiled at once, and the sweeper is told.
        assert!(f.set("a", Some(secs(3))));
        assert_eq!(f.index.earliest(), Some(secs(3)));
        assert_eq!(f.index.due(secs(3), 10), vec![key("a")]);

        // Removed while a later renewal is pending: the entry goes, wherever it is filed.
        f.set("a", Some(secs(50)));
        f.set("a", None);
        assert_eq!(f.index.due(secs(100), 10), vec![key("b")]);
        assert_eq!(f.index.earliest(), Some(secs(20)));
        assert_eq!(f.index.len(), 1);
    }

    /// However many entries are stale, each answer is safe (never later than the truth), and
    /// asking again converges on the truth.
    #[test]
    fn refiling_is_bounded_per_call_and_converges() {
        let f = Fixture::new();
        let n = 3 * REFILE_LIMIT as i64;
        let users: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
        for (i, u) in users.iter().enumerate() {
            f.set(u, Some(secs(i as i64)));
        }
        for (i, u) in users.iter().enumerate() {
            f.set(u, Some(secs(10_000 + i as i64)));
        }
        let first = f.index.earliest().unwrap();
        assert!(first <= secs(10_000));
        assert_ne!(first, secs(10_000), "one call refiles at most REFILE_LIMIT entries");
        let answers: Vec<Timestamp> = (0..3).map(|_| f.index.earliest().unwrap()).collect();
        assert!(answers.iter().all(|at| *at <= secs(10_000)));
        assert_eq!(answers.last(), Some(&secs(10_000)));
        assert!(f.index.due(secs(9_999), 10).is_empty());
        assert_eq!(f.index.due(secs(10_001), 10), vec![key("u0"), key("u1")]);
        assert_eq!(f.index.len(), n as usize);
    }

    /// `limit` counts due users, not the stale entries refiled on the way.
    #[test]
    fn due_skips_refiled_entries_and_honours_the_limit() {
        let f = Fixture::new();
        for (i, u) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            f.set(u, Some(secs(10 * i as i64)));
        }
        f.set("a", Some(secs(1000)));
        f.set("c", Some(secs(35)));
        f.set("b", Some(secs(45)));
        // Filed: a@0 (due 1000), b@10 (due 45), c@20 (due 35), d@30, e@40.
        assert_eq!(f.index.due(secs(45), 3), vec![key("d"), key("c"), key("e")]);
        assert_eq!(f.index.due(secs(45), 10), vec![key("d"), key("c"), key("e"), key("b")]);
        assert_eq!(f.index.due(secs(999), 10).len(), 4);
        assert_eq!(f.index.due(secs(1000), 10).len(), 5);
    }
}
