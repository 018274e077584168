//! The in-memory copy of every user's state, the one readers use.
//!
//! Sharded so readers on different users never contend; each shard's lock is held only for a
//! hash-map lookup or insert, never across I/O. Only the writer thread inserts, after the batch
//! holding the new state is durable, so readers never see a state that could still be lost.
use hashbrown::hash_table::{Entry as Slot, HashTable};
use presence_core::{UserKey, UserPresence};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};

const SHARDS: usize = 64;

#[derive(Debug, Clone)]
pub struct Entry {
    pub version: u64,
    pub state: Arc<UserPresence>,
}

type Shard = RwLock<HashTable<(UserKey, Entry)>>;

/// One hash per operation picks both the shard (bits 32..38, which the table itself does not
/// use for tables under 2^32 slots) and the slot; a `HashMap` per shard hashed every key twice.
pub struct Memory {
    hasher: RandomState,
    shards: Box<[Shard]>,
}

impl Default for Memory {
    fn default() -> Self {
        Self::new()
    }
}

impl Memory {
    pub fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
        }
    }

    fn locate(&self, key: &UserKey) -> (u64, &Shard) {
        let hash = self.hasher.hash_one(key);
        (hash, &self.shards[(hash >> 32) as usize % SHARDS])
    }

    pub fn get(&self, key: &UserKey) -> Option<Entry> {
        let (hash, shard) = self.locate(key);
        // A poisoned lock only means another thread panicked mid-lookup; the table is intact.
        let shard = shard.read().unwrap_or_else(|e| e.into_inner());
        shard.find(hash, |(k, _)| k == key).map(|(_, e)| e.clone())
    }

    /// `f` applied to the entry, under the shard's read lock (keep `f` short).
    pub fn read<R>(&self, key: &UserKey, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let (hash, shard) = self.locate(key);
        let shard = shard.read().unwrap_or_else(|e| e.into_inner());
        shard.find(hash, |(k, _)| k == key).map(|(_, e)| f(e))
    }

    pub fn version(&self, key: &UserKey) -> u64 {
        // Read in place: `get` clones the state's `Arc`, two atomic updates of a count that the
        // readers of this user share; this runs on the writer thread for every write.
        self.read(key, |e| e.version).unwrap_or(0)
    }

    /// Store `entry`; returns the one it replaces.
    pub fn put(&self, key: UserKey, entry: Entry) -> Option<Entry> {
        let (hash, shard) = self.locate(&key);
        let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
        match shard.entry(hash, |(k, _)| *k == key, |(k, _)| self.hasher.hash_one(k)) {
            Slot::Occupied(mut slot) => Some(std::mem::replace(&mut slot.get_mut().1, entry)),
            Slot::Vacant(slot) => {
                slot.insert((key, entry));
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::{TenantId, UserId};

    fn key(t: &str, u: &str) -> UserKey {
        UserKey::new(TenantId::parse(t).unwrap(), UserId::parse(u).unwrap())
    }

    fn entry(version: u64) -> Entry {
        Entry {
            version,
            state: Arc::new(UserPresence::default()),
        }
    }

    #[test]
    fn puts_replace_and_gets_find_across_shards_and_growth() {
        let memory = Memory::new();
        for i in 0..5_000 {
            assert!(memory.put(key("t", &format!("u{i}")), entry(1)).is_none());
        }
        let replaced = memory.put(key("t", "u42"), entry(2)).expect("u42 was stored");
        assert_eq!(replaced.version, 1);
        assert_eq!(memory.version(&key("t", "u42")), 2);
        assert_eq!(memory.version(&key("t", "u4999")), 1);
        assert_eq!(memory.version(&key("other", "u42")), 0, "tenants are separate keys");
        assert_eq!(memory.len(), 5_000);
    }
}
