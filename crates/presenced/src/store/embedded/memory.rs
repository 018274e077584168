//! The in-memory copy of every user's state, the one readers use.
//!
//! Sharded so readers on different users never contend; each shard's lock is held only for a
//! hash-map lookup or insert, never across I/O. Only the writer thread inserts, after the batch
//! holding the new state is durable, so readers never see a state that could still be lost.
use presence_core::{UserKey, UserPresence};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};

const SHARDS: usize = 64;

#[derive(Debug, Clone)]
pub struct Entry {
    pub version: u64,
    pub state: Arc<UserPresence>,
}

pub struct Memory {
    hasher: RandomState,
    shards: Box<[RwLock<HashMap<UserKey, Entry>>]>,
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
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &UserKey) -> &RwLock<HashMap<UserKey, Entry>> {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        &self.shards[index]
    }

    pub fn get(&self, key: &UserKey) -> Option<Entry> {
        // A poisoned lock only means another thread panicked mid-lookup; the map itself is intact.
        let shard = self.shard(key).read().unwrap_or_else(|e| e.into_inner());
        shard.get(key).cloned()
    }

    pub fn version(&self, key: &UserKey) -> u64 {
        self.get(key).map_or(0, |e| e.version)
    }

    /// Store `entry`; returns the one it replaces.
    pub fn put(&self, key: UserKey, entry: Entry) -> Option<Entry> {
        let mut shard = self.shard(&key).write().unwrap_or_else(|e| e.into_inner());
        shard.insert(key, entry)
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
