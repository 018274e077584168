//! One SipHash of a user's key per write, shared by every table the write touches.
//!
//! A write used to hash its tenant and user ids five times: the memory map on load, then on the
//! writer thread for the version check, the batch's version table, the memory map's insert and
//! the deadline index. SipHash over both ids was ~3% of a write's instructions, and four of the
//! five ran on the writer, whose serial cycle sets the write throughput. Now the worker that
//! queues a commit hashes its key once, and the writer's tables take that hash.
//!
//! SipHash with a per-process random key stays: the ids come from clients, so a weaker hash
//! would let a client choose colliding ids.
use presence_core::UserKey;
use std::hash::{BuildHasher, RandomState};

/// A key's hash under one [`KeyHasher`]. Tables that take one must all be fed by the same hasher
/// (the store's); the tables keep it next to each key, so they never need the hasher to grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub(crate) u64);

#[derive(Debug, Clone, Default)]
pub struct KeyHasher(RandomState);

impl KeyHasher {
    pub fn new() -> Self {
        Self(RandomState::new())
    }

    pub fn hash(&self, key: &UserKey) -> KeyHash {
        KeyHash(self.0.hash_one(key))
    }
}
