//! The embedded backend (the default): state in memory, made durable in a redb file.
//!
//! Reads are served from memory without touching the disk. Writes go through one writer thread
//! ([`writer`]) that group-commits them to [`disk`] and only then publishes them to [`memory`] and
//! the [`deadlines`] index, so a `200` always means fsynced and readers never see a state a crash
//! could take back. A batch is durable once its frame in the write-ahead log ([`wal`]) is
//! fdatasync'd; a background thread checkpoints closed log segments into redb and deletes them. [`subscriptions`] indexes change-notification
//! subscriptions for fan-out at commit time. [`direct_io`] writes preallocated segments past the
//! page cache where the filesystem allows; [`key_hash`] is the one hash of a user's key that every
//! table a write touches shares.
pub mod deadlines;
pub mod direct_io;
pub mod disk;
pub mod key_hash;
pub mod memory;
pub mod records;
pub mod subscriptions;
pub mod wal;
pub mod writer;

use super::{Commit, Delivery, NewDelivery, OutboxEntry, PresenceStore, StoreError, Versioned};
use crate::metrics::StoreMetrics;
use crate::notify::subscription::Subscription;
use deadlines::DeadlineIndex;
use disk::{Disk, OpenError};
use jiff::Timestamp;
use key_hash::KeyHasher;
use memory::{Entry, Memory};
use presence_core::TenantId;
use presence_core::UserKey;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use subscriptions::SubscriptionIndex;
use tokio::sync::{mpsc, oneshot, Notify};

/// How many commits may queue for the writer before callers wait: bounds memory under overload
/// while staying far above one batch, so the writer never idles for lack of work.
const QUEUE_DEPTH: usize = 16_384;

/// State shared between the async side and the writer thread.
pub struct Shared {
    pub memory: Memory,
    pub deadlines: DeadlineIndex,
    pub deadline_moved: Notify,
    pub ready: AtomicBool,
    /// Number of durable transactions (group commits) so far.
    pub commits: AtomicU64,
    // Read on every fan-out and API lookup, written only by the writer thread after a commit.
    pub subscriptions: RwLock<SubscriptionIndex>,
    pub metrics: StoreMetrics,
    /// Sessions across all users, kept by the writer as it publishes states.
    pub sessions: std::sync::atomic::AtomicI64,
}

impl Shared {
    pub fn subscriptions(&self) -> RwLockReadGuard<'_, SubscriptionIndex> {
        self.subscriptions.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscriptions_mut(&self) -> RwLockWriteGuard<'_, SubscriptionIndex> {
        self.subscriptions.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    disk: Arc<Disk>,
    tx: mpsc::Sender<writer::Request>,
    writer_thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    feed: Arc<Mutex<Option<mpsc::UnboundedReceiver<Vec<Delivery>>>>>,
}

/// What start-up found, for the log line operators read after a restart.
#[derive(Debug, Clone, Copy)]
pub struct OpenReport {
    pub users: usize,
    pub pending_deadlines: usize,
}

impl EmbeddedStore {
    /// Open (or create) the store in `dir`, load every user and rebuild the deadline index.
    /// Blocking: call before serving, or from `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<(Self, OpenReport), OpenError> {
        let (disk, loaded) = Disk::open(dir)?;
        let shared = Arc::new(Shared {
            memory: Memory::new(KeyHasher::new()),
            deadlines: DeadlineIndex::default(),
            deadline_moved: Notify::new(),
            ready: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            subscriptions: RwLock::new(SubscriptionIndex::default()),
            metrics: StoreMetrics::default(),
            sessions: std::sync::atomic::AtomicI64::new(0),
        });
        for subscription in loaded.subscriptions {
            shared.subscriptions_mut().put(Arc::new(subscription));
        }
        let delivery_next = loaded.deliveries.last().map_or(1, |d| d.id + 1);
        let users = loaded.users.len();
        let loaded_sessions: usize = loaded.users.iter().map(|(_, s)| s.sessions().len()).sum();
        shared.sessions.store(loaded_sessions as i64, Ordering::Relaxed);
        for (key, state) in loaded.users {
            let hash = shared.memory.hash(&key);
            shared.deadlines.set(hash, &key, state.next_deadline());
            shared.memory.put_hashed(
                hash,
                key,
                Entry {
                    version: 1,
                    state: Arc::new(state),
                },
            );
        }
        let disk = Arc::new(disk);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (feed_tx, feed_rx) = mpsc::unbounded_channel();
        let w = writer::Writer::new(disk.clone(), shared.clone(), loaded.outbox_next, delivery_next, feed_tx);
        let thread = writer::spawn(w, rx).map_err(|source| OpenError::Directory {
            path: dir.into(),
            source,
        })?;
        shared.ready.store(true, Ordering::Release);
        let report = OpenReport {
            users,
            pending_deadlines: shared.deadlines.len(),
        };
        let writer_thread = Arc::new(std::sync::Mutex::new(Some(thread)));
        Ok((
            Self {
                shared,
                disk,
                tx,
                writer_thread,
                feed: Arc::new(Mutex::new(Some(feed_rx))),
            },
            report,
        ))
    }

    /// Stop the writer and close the file cleanly (redb then skips its repair pass on the next
    /// open). Call on the last clone only: the writer stops when every sender is gone.
    pub fn close(self) {
        let Self { tx, writer_thread, .. } = self;
        drop(tx);
        let handle = writer_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    pub fn user_count(&self) -> usize {
        self.shared.memory.len()
    }

    pub fn pending_deadlines(&self) -> usize {
        self.shared.deadlines.len()
    }

    pub fn commit_count(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    pub fn session_count(&self) -> i64 {
        self.shared.sessions.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.shared.metrics
    }

    pub fn subscription_count(&self) -> usize {
        self.shared.subscriptions().len()
    }

    /// Hand a request to the writer and wait until it is durable (or failed).
    // An `async` block rather than an `async fn`: an `async fn` keeps its arguments twice in its
    // future (as arguments and as locals), and this future is part of every write's, which is
    // allocated and copied per request.
    #[allow(clippy::manual_async_fn)]
    fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> writer::Request + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + Send + '_
    where
        T: Send + 'static,
    {
        async move {
            let gone = || StoreError::Unavailable("the writer has stopped".into());
            // A queue slot first, then the request: a request held inside `send`'s future across
            // its await made the future larger by the request's size.
            let slot = self.tx.reserve().await.map_err(|_| gone())?;
            let (reply, answer) = oneshot::channel();
            slot.send(make(reply));
            answer.await.map_err(|_| gone())?
        }
    }
}

impl PresenceStore for EmbeddedStore {
    async fn load(&self, key: &UserKey) -> Result<Versioned, StoreError> {
        Ok(self
            .shared
            .memory
            .get(key)
            .map(|e| Versioned {
                version: e.version,
                state: e.state,
            })
            .unwrap_or_default())
    }

    async fn view(&self, key: &UserKey, now: Timestamp) -> Result<presence_core::PresenceView, StoreError> {
        // Folded under the shard's read lock: no clone of the shared `Arc` (whose count every
        // core would otherwise bounce) for a read that only needs the view.
        Ok(self
            .shared
            .memory
            .read(key, |e| e.state.view_at(now))
            .unwrap_or_else(|| presence_core::UserPresence::default().view_at(now)))
    }

    fn commit(&self, commit: Commit) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send {
        // Not an `async fn`, for the reason given at `request`.
        let encoded = writer::Encoded::of(&commit, self.shared.memory.hash(&commit.key));
        async move {
            self.request(|reply| writer::Request::Commit { commit, encoded, reply })
                .await
        }
    }

    async fn commit_many(&self, commits: Vec<Commit>) -> Vec<Result<u64, StoreError>> {
        if commits.is_empty() {
            return Vec::new();
        }
        let n = commits.len();
        let commits: Vec<(Commit, writer::Encoded)> = commits
            .into_iter()
            .map(|commit| {
                let encoded = writer::Encoded::of(&commit, self.shared.memory.hash(&commit.key));
                (commit, encoded)
            })
            .collect();
        match self
            .request(|reply| writer::Request::CommitMany { commits, reply })
            .await
        {
            Ok(results) => results,
            Err(e) => vec![Err(e); n],
        }
    }

    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<UserKey>, StoreError> {
        Ok(self.shared.deadlines.due(now, limit))
    }

    async fn next_deadline(&self) -> Option<Timestamp> {
        self.shared.deadlines.earliest()
    }

    async fn deadline_moved(&self) {
        self.shared.deadline_moved.notified().await
    }

    async fn outbox_after(&self, after_id: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let disk = self.disk.clone();
        tokio::task::spawn_blocking(move || disk.outbox_after(after_id, limit))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .map_err(StoreError::Unavailable)
    }

    fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    async fn put_subscription(&self, subscription: Subscription) -> Result<(), StoreError> {
        self.request(|reply| writer::Request::PutSubscription { subscription, reply })
            .await
    }

    async fn delete_subscription(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        let id = id.to_owned();
        self.request(|reply| writer::Request::DeleteSubscription { id, reply })
            .await
    }

    async fn subscription(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        Ok(self.shared.subscriptions().get(id).map(|s| (*s).clone()))
    }

    async fn subscriptions(&self, tenant: Option<&TenantId>) -> Result<Vec<Subscription>, StoreError> {
        Ok(self
            .shared
            .subscriptions()
            .all(tenant)
            .into_iter()
            .map(|s| (*s).clone())
            .collect())
    }

    async fn enqueue(&self, deliveries: Vec<NewDelivery>) -> Result<Vec<Delivery>, StoreError> {
        self.request(|reply| writer::Request::Enqueue { deliveries, reply })
            .await
    }

    async fn finish(&self, ids: Vec<u64>) -> Result<(), StoreError> {
        self.request(|reply| writer::Request::Finish { ids, reply }).await
    }

    async fn pending_deliveries(&self) -> Result<Vec<Delivery>, StoreError> {
        let disk = self.disk.clone();
        tokio::task::spawn_blocking(move || disk.deliveries())
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .map_err(StoreError::Unavailable)
    }

    fn take_delivery_feed(&self) -> Option<mpsc::UnboundedReceiver<Vec<Delivery>>> {
        self.feed.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
