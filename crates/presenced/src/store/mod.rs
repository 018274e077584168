//! The store port: what the presence service needs from persistence, and nothing more.
//!
//! The contract is written so that a shared, multi-process backend (Redis) can implement it:
//! - `load` returns a user's state with an opaque version;
//! - `commit` writes the new state *and* its change event atomically, only if the version is still
//!   the one loaded (compare-and-set), and returns once both are durable;
//! - the deadline index answers "which users have a transition due by `now`", updated by `commit`.
//!
//! No method assumes the caller is the only writer: the service retries on `Conflict`.
//!
//! Backends: [`embedded`] (memory + redb file, group commit).
pub mod embedded;

use jiff::Timestamp;
use presence_core::{ChangeEvent, UserKey, UserPresence};
use std::future::Future;
use std::sync::Arc;

/// A user's state as loaded; version 0 means "no record yet".
#[derive(Debug, Clone, Default)]
pub struct Versioned {
    pub version: u64,
    pub state: Arc<UserPresence>,
}

/// One user's new state and the change event it produced, to be made durable together.
#[derive(Debug, Clone)]
pub struct Commit {
    pub key: UserKey,
    pub expected_version: u64,
    pub state: UserPresence,
    pub event: Option<ChangeEvent>,
}

/// A change event as it sits in the outbox, in commit order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxEntry {
    pub id: u64,
    pub key: UserKey,
    pub event: ChangeEvent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Someone else committed this user since it was loaded; reload and retry.
    #[error("concurrent update")]
    Conflict,
    /// The write could not be made durable (disk full, I/O error, store shut down). Nothing was acknowledged.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

pub trait PresenceStore: Send + Sync + 'static {
    fn load(&self, key: &UserKey) -> impl Future<Output = Result<Versioned, StoreError>> + Send;

    fn commit(&self, commit: Commit) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Users whose next deadline is at or before `now`, earliest first, at most `limit`.
    fn due(&self, now: Timestamp, limit: usize) -> impl Future<Output = Result<Vec<UserKey>, StoreError>> + Send;

    /// The earliest deadline pending across all users.
    fn next_deadline(&self) -> impl Future<Output = Option<Timestamp>> + Send;

    /// Resolves when a commit may have moved the earliest deadline earlier, so a sleeping sweeper
    /// can re-plan instead of oversleeping a fresh, short deadline.
    fn deadline_moved(&self) -> impl Future<Output = ()> + Send;

    /// Change events after `after_id`, oldest first: the outbox the notifier drains.
    fn outbox_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send;

    /// Whether the store can accept writes (for `/readyz`).
    fn is_ready(&self) -> bool;
}

#[cfg(test)]
pub(crate) mod conformance;
