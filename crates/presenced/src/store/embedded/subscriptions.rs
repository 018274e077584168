//! The in-memory subscription table: by id, by owner (for paged listing and the per-owner
//! limit), counted per application and per watched user (the other limits), and by next
//! lifecycle deadline (so the lifecycle worker never scans). Only the writer thread changes it,
//! after the batch holding the change is durable.
use crate::store::{Owner, Stored};
use crate::subscription::Subscription;
use jiff::Timestamp;
use presence_core::{TenantId, UserKey};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

#[derive(Default)]
pub struct SubscriptionIndex {
    by_id: HashMap<String, Stored>,
    by_owner: BTreeMap<Owner, BTreeSet<String>>,
    per_application: HashMap<(TenantId, String), usize>,
    per_watched_user: HashMap<UserKey, usize>,
    by_deadline: BTreeSet<(Timestamp, String)>,
}

/// The users a subscription watches, as keys.
pub fn watched(s: &Subscription) -> impl Iterator<Item = UserKey> + '_ {
    s.users.iter().map(|u| UserKey::new(s.tenant.clone(), u.clone()))
}

fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K, up: bool) {
    if up {
        *map.entry(key).or_insert(0) += 1;
    } else if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

impl SubscriptionIndex {
    pub fn put(&mut self, stored: Stored) {
        self.remove(&stored.subscription.id);
        let s = &stored.subscription;
        self.by_owner.entry(Owner::of(s)).or_default().insert(s.id.clone());
        bump(
            &mut self.per_application,
            (s.tenant.clone(), s.application_id.clone()),
            true,
        );
        for key in watched(s) {
            bump(&mut self.per_watched_user, key, true);
        }
        self.by_deadline.insert((s.lifecycle_deadline(), s.id.clone()));
        self.by_id.insert(s.id.clone(), stored);
    }

    pub fn remove(&mut self, id: &str) -> Option<Stored> {
        let old = self.by_id.remove(id)?;
        let s = &old.subscription;
        let key = Owner::of(s);
        if let Some(ids) = self.by_owner.get_mut(&key) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_owner.remove(&key);
            }
        }
        bump(
            &mut self.per_application,
            (s.tenant.clone(), s.application_id.clone()),
            false,
        );
        for key in watched(s) {
            bump(&mut self.per_watched_user, key, false);
        }
        self.by_deadline.remove(&(s.lifecycle_deadline(), s.id.clone()));
        Some(old)
    }

    pub fn get(&self, id: &str) -> Option<Stored> {
        self.by_id.get(id).cloned()
    }

    pub fn count(&self, owner: &Owner) -> usize {
        self.by_owner.get(owner).map_or(0, BTreeSet::len)
    }

    pub fn count_application(&self, tenant: &TenantId, application_id: &str) -> usize {
        self.per_application
            .get(&(tenant.clone(), application_id.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub fn watchers(&self, key: &UserKey) -> usize {
        self.per_watched_user.get(key).copied().unwrap_or(0)
    }

    pub fn page(&self, owner: &Owner, after: Option<&str>, limit: usize) -> Vec<Stored> {
        let Some(ids) = self.by_owner.get(owner) else {
            return Vec::new();
        };
        let start = match after {
            Some(a) => Bound::Excluded(a.to_owned()),
            None => Bound::Unbounded,
        };
        ids.range((start, Bound::Unbounded))
            .take(limit)
            .filter_map(|id| self.get(id))
            .collect()
    }

    pub fn all(&self) -> Vec<Stored> {
        self.by_id.values().cloned().collect()
    }

    pub fn due(&self, now: Timestamp, limit: usize) -> Vec<Stored> {
        self.by_deadline
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .filter_map(|(_, id)| self.get(id))
            .collect()
    }

    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.by_id.keys()
    }
}

/// A subscription record shared by the index and every reader.
pub fn stored(version: u64, subscription: Subscription) -> Stored {
    Stored {
        version,
        subscription: Arc::new(subscription),
    }
}
