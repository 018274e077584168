//! The store: what the services need from persistence, as small ports with one job each, and the
//! backends that implement them.
//!
//! Module map:
//! - [`presence_state`]: users' states; load, batched load and view, compare-and-set commit.
//! - [`deadlines`]: which users have a fade, expiry or other transition due.
//! - [`change_log`]: every committed change of a user's visible presence, with a [`Position`];
//!   followed by the webhook dispatcher (and later streams).
//! - [`subscriptions`]: change-notification subscriptions, versioned, with their lifecycle index.
//! - [`deliveries`]: how far each subscription's notifications went out, and the lifecycle
//!   notices owed, claimed and acknowledged by whoever sends them.
//! - [`position`]: the opaque, ordered place of a change in the log.
//! - [`membership`]: which nodes are alive (leases), and whether this one is fenced.
//! - [`embedded`]: the default backend (memory, a write-ahead log with group commit, redb).
//! - [`redis`]: several nodes sharing one Redis or Valkey, standalone or Cluster.
//! - [`conformance`] (tests): one test per behaviour, generated for every backend.
//!
//! No contract assumes one process or a global order: a commit is a compare-and-set that returns
//! the current state on conflict, positions are only compared, deliveries are claimed before they
//! are sent. [`Store`] is the backend chosen at run time; everything above it names only ports.
pub mod change_log;
pub mod deadlines;
pub mod deliveries;
pub mod embedded;
pub mod membership;
pub mod position;
pub mod presence_state;
pub mod redis;
pub mod subscriptions;

#[cfg(test)]
pub(crate) mod conformance;

pub use change_log::{Change, ChangeLog, LogError, Snapshot, TenantSnapshot};
pub use deadlines::Deadlines;
pub use deliveries::{Deliveries, LifecycleEvent, LifecycleNotice, NewLifecycle};
pub use membership::Membership;
pub use position::Position;
pub use presence_state::{Commit, CommitError, PresenceState, Versioned};
pub use subscriptions::{CreateError, Limit, Limits, Owner, Stored, SubscriptionWrite, Subscriptions, WriteError};

use self::redis::RedisStore;
use crate::subscription::Subscription;
use embedded::EmbeddedStore;
use jiff::Timestamp;
use presence_core::{PresenceView, TenantId, UserKey};
use std::future::Future;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The operation could not be made durable or read (disk full, I/O error, store shut down).
    /// Nothing was acknowledged.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Every port, for code that wires a whole server (the services take only what they use).
pub trait Backend:
    PresenceState + Deadlines + ChangeLog + Subscriptions + Deliveries + Membership + Clone + Send + Sync + 'static
{
}

impl<T> Backend for T where
    T: PresenceState + Deadlines + ChangeLog + Subscriptions + Deliveries + Membership + Clone + Send + Sync + 'static
{
}

/// Which backend a server runs on, chosen at start (`--store`). One variant per backend; each
/// port below forwards to it, so adding a backend adds a variant and its arms, nothing above.
#[derive(Clone)]
pub enum Store {
    Embedded(EmbeddedStore),
    Redis(RedisStore),
}

macro_rules! forward {
    ($self:ident, $s:ident => $body:expr) => {
        match $self {
            Store::Embedded($s) => $body,
            Store::Redis($s) => $body,
        }
    };
}

/// What a backend holds, for the gauges `/metrics` shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub users: usize,
    pub sessions: i64,
    pub deadlines: usize,
    pub subscriptions: usize,
    pub log_retained: usize,
    pub lifecycle_queued: usize,
}

impl Store {
    pub async fn counts(&self) -> Counts {
        match self {
            Store::Embedded(s) => Counts {
                users: s.user_count(),
                sessions: s.session_count(),
                deadlines: s.pending_deadlines(),
                subscriptions: s.subscription_count(),
                log_retained: s.log_retained(),
                lifecycle_queued: s.lifecycle_queued(),
            },
            Store::Redis(s) => s.counts().await,
        }
    }

    /// The store's own metrics (commits, fsync latency), registered once at start.
    pub fn metrics(&self) -> &crate::metrics::StoreMetrics {
        forward!(self, s => s.metrics())
    }

    /// Stop the backend cleanly (the embedded one: nothing to replay on the next start). Call on
    /// the last handle.
    pub fn close(self) {
        match self {
            Store::Embedded(s) => s.close(),
            Store::Redis(_) => {}
        }
    }
}

/// The backend a `--store` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// The default: memory, a write-ahead log with group commit and redb, in the data directory.
    Embedded,
    /// Redis or Valkey: `redis://`, `rediss://`, or `redis+cluster://host:port,host:port`.
    Redis(self::redis::connection::Target),
}

impl std::str::FromStr for StoreChoice {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.trim() {
            "embedded" => Ok(StoreChoice::Embedded),
            other if other.starts_with("redis") => {
                self::redis::connection::Target::parse(other).map(StoreChoice::Redis)
            }
            other => Err(format!(
                "{other:?} is not a store this build knows; the choices are: embedded, redis://…, \
                 rediss://…, redis+cluster://host:port,host:port"
            )),
        }
    }
}

impl PresenceState for Store {
    async fn load(&self, key: &UserKey) -> Result<Versioned, StoreError> {
        forward!(self, s => s.load(key).await)
    }
    async fn load_many(&self, keys: &[UserKey]) -> Result<Vec<Versioned>, StoreError> {
        forward!(self, s => s.load_many(keys).await)
    }
    async fn load_to_write(&self, key: &UserKey) -> Result<(Versioned, bool), StoreError> {
        forward!(self, s => s.load_to_write(key).await)
    }
    async fn view(&self, key: &UserKey, now: Timestamp) -> Result<PresenceView, StoreError> {
        forward!(self, s => s.view(key, now).await)
    }
    async fn view_many(&self, keys: &[UserKey], now: Timestamp) -> Result<Vec<PresenceView>, StoreError> {
        forward!(self, s => s.view_many(keys, now).await)
    }
    fn commit(&self, commit: Commit) -> impl Future<Output = Result<u64, CommitError>> + Send {
        // Not an `async fn`: the embedded commit's future is part of every write's and kept small.
        match self {
            Store::Embedded(s) => futures_util::future::Either::Left(s.commit(commit)),
            Store::Redis(s) => futures_util::future::Either::Right(s.commit(commit)),
        }
    }
    async fn commit_many(&self, commits: Vec<Commit>) -> Vec<Result<u64, CommitError>> {
        forward!(self, s => s.commit_many(commits).await)
    }
    async fn users_with_connected_clients(&self) -> Result<Vec<UserKey>, StoreError> {
        forward!(self, s => s.users_with_connected_clients().await)
    }
    fn is_ready(&self) -> bool {
        forward!(self, s => s.is_ready())
    }
}

impl Deadlines for Store {
    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<UserKey>, StoreError> {
        forward!(self, s => s.due(now, limit).await)
    }
    async fn next_deadline(&self) -> Option<Timestamp> {
        forward!(self, s => s.next_deadline().await)
    }
    async fn deadline_moved(&self) {
        forward!(self, s => s.deadline_moved().await)
    }
}

impl ChangeLog for Store {
    fn head(&self) -> Position {
        forward!(self, s => s.head())
    }
    async fn wait_past(&self, position: &Position) {
        forward!(self, s => s.wait_past(position).await)
    }
    async fn changes_after(&self, position: &Position, limit: usize) -> Result<Vec<Arc<Change>>, LogError> {
        forward!(self, s => s.changes_after(position, limit).await)
    }
    async fn snapshot(&self, keys: &[UserKey]) -> Result<Snapshot, StoreError> {
        forward!(self, s => s.snapshot(keys).await)
    }
    async fn snapshot_tenant(&self, tenant: &TenantId) -> Result<TenantSnapshot, StoreError> {
        forward!(self, s => s.snapshot_tenant(tenant).await)
    }
}

impl Subscriptions for Store {
    async fn subscription(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        forward!(self, s => s.subscription(id).await)
    }
    async fn create(&self, subscription: Subscription, limits: Limits) -> Result<Stored, CreateError> {
        forward!(self, s => s.create(subscription, limits).await)
    }
    async fn write(&self, write: SubscriptionWrite) -> Result<Option<Stored>, WriteError> {
        forward!(self, s => s.write(write).await)
    }
    async fn page(&self, owner: &Owner, after: Option<&str>, limit: usize) -> Result<Vec<Stored>, StoreError> {
        forward!(self, s => s.page(owner, after, limit).await)
    }
    async fn count(&self, owner: &Owner) -> Result<(usize, usize), StoreError> {
        forward!(self, s => s.count(owner).await)
    }
    async fn all(&self) -> Result<Vec<Stored>, StoreError> {
        forward!(self, s => s.all().await)
    }
    async fn lifecycle_due(&self, now: Timestamp, limit: usize) -> Result<Vec<Stored>, StoreError> {
        forward!(self, s => s.lifecycle_due(now, limit).await)
    }
    async fn next_lifecycle_deadline(&self) -> Option<Timestamp> {
        forward!(self, s => s.next_lifecycle_deadline().await)
    }
    async fn subscriptions_changed(&self) {
        forward!(self, s => s.subscriptions_changed().await)
    }
}

impl Membership for Store {
    async fn live_epochs(&self) -> Result<Option<Vec<String>>, StoreError> {
        forward!(self, s => s.live_epochs().await)
    }
    async fn fenced(&self) {
        forward!(self, s => s.fenced().await)
    }
    async fn leave(&self) {
        forward!(self, s => s.leave().await)
    }
}

impl Deliveries for Store {
    async fn claim(
        &self,
        consumer: &str,
        now: Timestamp,
        lease: jiff::SignedDuration,
    ) -> Result<Vec<(String, Position)>, StoreError> {
        forward!(self, s => s.claim(consumer, now, lease).await)
    }
    async fn release(&self, consumer: &str, ids: Vec<String>) -> Result<(), StoreError> {
        forward!(self, s => s.release(consumer, ids).await)
    }
    async fn acknowledge(&self, consumer: &str, progress: Vec<(String, Position)>) -> Result<(), StoreError> {
        forward!(self, s => s.acknowledge(consumer, progress).await)
    }
    async fn skip(&self, subscription_id: &str, to: Position, missed: Option<NewLifecycle>) -> Result<(), StoreError> {
        forward!(self, s => s.skip(subscription_id, to, missed).await)
    }
    async fn claim_lifecycle(
        &self,
        consumer: &str,
        now: Timestamp,
        lease: jiff::SignedDuration,
        limit: usize,
    ) -> Result<Vec<LifecycleNotice>, StoreError> {
        forward!(self, s => s.claim_lifecycle(consumer, now, lease, limit).await)
    }
    async fn finish_lifecycle(&self, ids: Vec<u64>) -> Result<(), StoreError> {
        forward!(self, s => s.finish_lifecycle(ids).await)
    }
    async fn lifecycle_added(&self) {
        forward!(self, s => s.lifecycle_added().await)
    }
}
