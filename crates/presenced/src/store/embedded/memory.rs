//! The in-memory copy of every user's state, the one readers use.
//!
//! Sharded so readers on different users never contend; each shard's lock is held only for a
//! hash-map lookup or insert, never across I/O. Only the writer thread inserts, after the batch
//! holding the new state is durable, so readers never see a state that could still be lost.
use super::key_hash::{KeyHash, KeyHasher};
use hashbrown::hash_table::{Entry as Slot, HashTable};
use presence_core::{TenantId, UserKey, UserPresence};
use std::sync::{Arc, RwLock};

const SHARDS: usize = 64;

#[derive(Debug, Clone)]
pub struct Entry {
    pub version: u64,
    pub state: Arc<UserPresence>,
}

/// Each key is kept with its hash: lookups compare the hash before the ids (no string comparison
/// on a tag collision), and a table grows without hashing anything again.
type Shard = RwLock<HashTable<(u64, UserKey, Entry)>>;

/// One hash per operation picks both the shard (bits 32..38, which the table itself does not
/// use for tables under 2^32 slots) and the slot; a `HashMap` per shard hashed every key twice.
pub struct Memory {
    hasher: KeyHasher,
    shards: Box<[Shard]>,
}

impl Default for Memory {
    fn default() -> Self {
        Self::new(KeyHasher::new())
    }
}

impl Memory {
    pub fn new(hasher: KeyHasher) -> Self {
        Self {
            hasher,
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
        }
    }

    /// The hash every `_hashed` method and the store's other key tables expect for `key`.
    pub fn hash(&self, key: &UserKey) -> KeyHash {
        self.hasher.hash(key)
    }

    fn shard(&self, hash: KeyHash) -> &Shard {
        &self.shards[(hash.0 >> 32) as usize % SHARDS]
    }

    pub fn get(&self, key: &UserKey) -> Option<Entry> {
        self.read(key, Entry::clone)
    }

    /// `f` applied to the entry, under the shard's read lock (keep `f` short).
    pub fn read<R>(&self, key: &UserKey, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        self.read_hashed(self.hash(key), key, f)
    }

    pub fn read_hashed<R>(&self, hash: KeyHash, key: &UserKey, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        // A poisoned lock only means another thread panicked mid-lookup; the table is intact.
        let shard = self.shard(hash).read().unwrap_or_else(|e| e.into_inner());
        shard
            .find(hash.0, |(h, k, _)| *h == hash.0 && k == key)
            .map(|(_, _, e)| f(e))
    }

    /// The stored version of `key` (0 for a user never written). `hash` is `self.hash(key)`.
    pub fn version_hashed(&self, hash: KeyHash, key: &UserKey) -> u64 {
        // Read in place: `get` clones the state's `Arc`, two atomic updates of a count that the
        // readers of this user share; this runs on the writer thread for every write.
        self.read_hashed(hash, key, |e| e.version).unwrap_or(0)
    }

    /// Store `entry`; returns the one it replaces.
    pub fn put(&self, key: UserKey, entry: Entry) -> Option<Entry> {
        self.put_hashed(self.hash(&key), key, entry)
    }

    /// `put` with `hash` = `self.hash(&key)`, computed by the caller.
    pub fn put_hashed(&self, hash: KeyHash, key: UserKey, entry: Entry) -> Option<Entry> {
        let mut shard = self.shard(hash).write().unwrap_or_else(|e| e.into_inner());
        match shard.entry(hash.0, |(h, k, _)| *h == hash.0 && *k == key, |(h, _, _)| *h) {
            Slot::Occupied(mut slot) => Some(std::mem::replace(&mut slot.get_mut().2, entry)),
            Slot::Vacant(slot) => {
                slot.insert((hash.0, key, entry));
                None
            }
        }
    }

    /// `f` applied to every entry, one shard's read lock at a time.
    pub fn for_each(&self, mut f: impl FnMut(&UserKey, &Entry)) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            for (_, key, entry) in shard.iter() {
                f(key, entry);
            }
        }
    }

    /// `f` applied to every entry of `tenant`, one shard's read lock at a time (each shard is
    /// held only while it is walked, so writers wait at most one shard's walk).
    pub fn for_each_in_tenant(&self, tenant: &TenantId, mut f: impl FnMut(&UserKey, &Entry)) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            for (_, key, entry) in shard.iter().filter(|(_, k, _)| k.tenant == *tenant) {
                f(key, entry);
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
        let memory = Memory::default();
        for i in 0..5_000 {
            assert!(memory.put(key("t", &format!("u{i}")), entry(1)).is_none());
        }
        let replaced = memory.put(key("t", "u42"), entry(2)).expect("u42 was stored");
        assert_eq!(replaced.version, 1);
        let version = |k: UserKey| memory.version_hashed(memory.hash(&k), &k);
        assert_eq!(version(key("t", "u42")), 2);
        assert_eq!(version(key("t", "u4999")), 1);
        assert_eq!(version(key("other", "u42")), 0, "tenants are separate keys");
        assert_eq!(memory.len(), 5_000);
    }
}
