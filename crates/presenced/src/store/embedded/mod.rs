//! The embedded backend (the default): state in memory, made durable in the data directory.
//!
//! Reads are served from memory without touching the disk. Writes go through one writer thread
//! ([`writer`]) that group-commits them to [`disk`] and only then publishes them: to the
//! [`change_log`] window, to [`memory`] and the [`deadlines`] index, so a `200` always means
//! fsynced and readers never see a state a crash could take back. A batch is durable once its
//! frame in the write-ahead log ([`wal`]) is fdatasync'd; a background thread checkpoints closed
//! log segments into redb and deletes them.
//!
//! Module map:
//! - [`writer`]: the writer thread: compare-and-set checks, group commit, publication.
//! - [`disk`]: the durable files (log segments and the redb file), checkpoints, start-up replay.
//! - [`wal`]: log segments, preallocated from zero-filled spares.
//! - [`records`]: the state and change records every write logs, as JSON.
//! - [`memory`], [`key_hash`]: every user's state, sharded, under one hash per key.
//! - [`deadlines`]: the users' next transitions, ordered.
//! - [`change_log`]: the log's retained window in memory, followed by readers.
//! - [`subscriptions`], [`deliveries`]: subscription records, delivery positions, lifecycle notices.
//! - [`upgrade`]: records of older builds, read once when their files are upgraded.
pub mod change_log;
pub mod deadlines;
pub mod deliveries;
pub mod disk;
pub mod key_hash;
pub mod memory;
pub mod records;
pub mod subscriptions;
pub mod upgrade;
pub mod wal;
pub mod writer;

use crate::clock::Clock;
use crate::metrics::StoreMetrics;
use crate::store::{
    Change, ChangeLog, CommitError, CreateError, Deadlines, Deliveries, LifecycleNotice, Limits, LogError,
    NewLifecycle, Owner, Position, PresenceState, Snapshot, StoreError, Stored, SubscriptionWrite, Subscriptions,
    TenantSnapshot, Versioned, WriteError,
};
use crate::subscription::Subscription;
use change_log::{LogWindow, Retention};
use deadlines::DeadlineIndex;
use deliveries::DeliveryBook;
use disk::{Disk, OpenError};
use jiff::{SignedDuration, Timestamp};
use key_hash::KeyHasher;
use memory::{Entry, Memory};
use presence_core::{PresenceView, TenantId, UserKey, UserPresence};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use subscriptions::SubscriptionIndex;
use tokio::sync::{mpsc, oneshot, Notify};

/// How many requests may queue for the writer before callers wait: bounds memory under overload
/// while staying far above one batch, so the writer never idles for lack of work.
const QUEUE_DEPTH: usize = 16_384;

/// How the embedded store is opened.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// How much of the change log is kept.
    pub retention: Retention,
    /// What the store reads the time from (the change log's age limit, delivery leases).
    pub clock: Clock,
}

/// State shared between the async side and the writer thread.
pub struct Shared {
    pub memory: Memory,
    pub deadlines: DeadlineIndex,
    pub deadline_moved: Notify,
    pub log: LogWindow,
    pub ready: AtomicBool,
    /// Set by [`EmbeddedStore::crash`]: the writer stops without its final checkpoint.
    pub crashing: AtomicBool,
    /// Number of durable transactions (group commits) so far.
    pub commits: AtomicU64,
    // Read by the API and the dispatcher, written only by the writer thread after a commit.
    pub subscriptions: RwLock<SubscriptionIndex>,
    // Positions and notices are written by the writer after a commit; leases by claims. Each
    // hold is a map operation or a short walk, never I/O.
    pub deliveries: Mutex<DeliveryBook>,
    pub subscriptions_changed: Notify,
    pub lifecycle_added: Notify,
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

    pub fn deliveries(&self) -> MutexGuard<'_, DeliveryBook> {
        self.deliveries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn deliveries_mut(&self) -> MutexGuard<'_, DeliveryBook> {
        self.deliveries()
    }
}

#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    clock: Clock,
    tx: mpsc::Sender<writer::Request>,
    writer_thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// What start-up found, for the log line operators read after a restart.
#[derive(Debug, Clone, Copy)]
pub struct OpenReport {
    pub users: usize,
    pub pending_deadlines: usize,
    pub log_retained: usize,
}

impl EmbeddedStore {
    /// Open (or create) the store in `dir`, load every user and rebuild the deadline index and
    /// the change log's window. Blocking: call before serving, or from `spawn_blocking`.
    pub fn open(dir: &Path, options: Options) -> Result<(Self, OpenReport), OpenError> {
        let (disk, loaded) = Disk::open(dir)?;
        let head = Position::from_sequence(loaded.outbox_next - 1);
        let changes = loaded
            .outbox
            .into_iter()
            .map(|(position, key, event)| Change {
                position: Position::from_sequence(position),
                key,
                event,
            })
            .collect();
        let shared = Arc::new(Shared {
            memory: Memory::new(KeyHasher::new()),
            deadlines: DeadlineIndex::default(),
            deadline_moved: Notify::new(),
            log: LogWindow::new(changes, head, options.retention),
            ready: AtomicBool::new(false),
            crashing: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            subscriptions: RwLock::new(SubscriptionIndex::default()),
            deliveries: Mutex::new(DeliveryBook::default()),
            subscriptions_changed: Notify::new(),
            lifecycle_added: Notify::new(),
            metrics: StoreMetrics::default(),
            sessions: std::sync::atomic::AtomicI64::new(0),
        });
        let progress: HashMap<String, u64> = loaded.progress.into_iter().collect();
        for subscription in loaded.subscriptions {
            // A subscription with no recorded position (written by an older build) is owed what
            // the log still holds: re-sent rather than lost.
            let at = progress
                .get(&subscription.id)
                .copied()
                .unwrap_or_else(|| loaded.outbox_first.saturating_sub(1));
            shared.deliveries().start(&subscription.id, at);
            shared.subscriptions_mut().put(subscriptions::stored(1, subscription));
        }
        let notice_next = loaded.notices.last().map_or(1, |n| n.id + 1);
        for notice in loaded.notices {
            shared.deliveries().queue(notice);
        }
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
        let w = writer::Writer::new(
            disk.clone(),
            shared.clone(),
            options.clock.clone(),
            loaded.outbox_next,
            notice_next,
        );
        let thread = writer::spawn(w, rx).map_err(|source| OpenError::Directory {
            path: dir.into(),
            source,
        })?;
        shared.ready.store(true, Ordering::Release);
        let report = OpenReport {
            users,
            pending_deadlines: shared.deadlines.len(),
            log_retained: shared.log.len(),
        };
        Ok((
            Self {
                shared,
                clock: options.clock,
                tx,
                writer_thread: Arc::new(std::sync::Mutex::new(Some(thread))),
            },
            report,
        ))
    }

    /// Stop the writer and close the files cleanly (the next start has nothing to replay). Call
    /// on the last clone only: the writer stops when every sender is gone.
    pub fn close(self) {
        let Self { tx, writer_thread, .. } = self;
        drop(tx);
        let handle = writer_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Stop as a crash after the last acknowledged write would: no final checkpoint, so the next
    /// open replays the write-ahead log. For tests of the recovery path.
    pub fn crash(self) {
        self.shared.crashing.store(true, Ordering::Release);
        self.close();
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

    pub fn log_retained(&self) -> usize {
        self.shared.log.len()
    }

    pub fn lifecycle_queued(&self) -> usize {
        self.shared.deliveries().notices()
    }

    /// Hand a request to the writer and wait for its answer.
    // An `async` block rather than an `async fn`: an `async fn` keeps its arguments twice in its
    // future (as arguments and as locals), and this future is part of every write's, which is
    // allocated and copied per request.
    #[allow(clippy::manual_async_fn)]
    fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> writer::Request + Send + 'static,
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
            answer.await.map_err(|_| gone())
        }
    }

    fn versioned(&self, key: &UserKey) -> Versioned {
        self.shared
            .memory
            .get(key)
            .map(|e| Versioned {
                version: e.version,
                state: e.state,
            })
            .unwrap_or_default()
    }
}

impl PresenceState for EmbeddedStore {
    async fn load(&self, key: &UserKey) -> Result<Versioned, StoreError> {
        Ok(self.versioned(key))
    }

    async fn load_many(&self, keys: &[UserKey]) -> Result<Vec<Versioned>, StoreError> {
        Ok(keys.iter().map(|k| self.versioned(k)).collect())
    }

    async fn view(&self, key: &UserKey, now: Timestamp) -> Result<PresenceView, StoreError> {
        // Folded under the shard's read lock: no clone of the shared `Arc` (whose count every
        // core would otherwise bounce) for a read that only needs the view.
        Ok(self
            .shared
            .memory
            .read(key, |e| e.state.view_at(now))
            .unwrap_or_else(|| UserPresence::default().view_at(now)))
    }

    async fn view_many(&self, keys: &[UserKey], now: Timestamp) -> Result<Vec<PresenceView>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.view(key, now).await?);
        }
        Ok(out)
    }

    fn commit(
        &self,
        commit: crate::store::Commit,
    ) -> impl std::future::Future<Output = Result<u64, CommitError>> + Send {
        // Not an `async fn`, for the reason given at `request`.
        let hash = self.shared.memory.hash(&commit.key);
        let commit = writer::Commit::encode(commit, hash);
        async move {
            self.request(|reply| writer::Request::Commit { commit, reply })
                .await
                .unwrap_or_else(|e| Err(CommitError::Store(e)))
        }
    }

    async fn commit_many(&self, commits: Vec<crate::store::Commit>) -> Vec<Result<u64, CommitError>> {
        if commits.is_empty() {
            return Vec::new();
        }
        let n = commits.len();
        let commits: Vec<writer::Commit> = commits
            .into_iter()
            .map(|commit| {
                let hash = self.shared.memory.hash(&commit.key);
                writer::Commit::encode(commit, hash)
            })
            .collect();
        match self
            .request(|reply| writer::Request::CommitMany { commits, reply })
            .await
        {
            Ok(results) => results,
            Err(e) => vec![Err(CommitError::Store(e)); n],
        }
    }

    async fn users_with_connected_clients(&self) -> Result<Vec<UserKey>, StoreError> {
        let mut keys = Vec::new();
        self.shared.memory.for_each(|key, entry| {
            let connected = entry
                .state
                .sessions()
                .iter()
                .any(|s| s.client().is_some_and(|l| l.connected));
            if connected {
                keys.push(key.clone());
            }
        });
        Ok(keys)
    }

    fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }
}

impl Deadlines for EmbeddedStore {
    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<UserKey>, StoreError> {
        Ok(self.shared.deadlines.due(now, limit))
    }

    async fn next_deadline(&self) -> Option<Timestamp> {
        self.shared.deadlines.earliest()
    }

    async fn deadline_moved(&self) {
        self.shared.deadline_moved.notified().await
    }
}

impl ChangeLog for EmbeddedStore {
    fn head(&self) -> Position {
        self.shared.log.head()
    }

    async fn wait_past(&self, position: &Position) {
        self.shared.log.wait_past(position).await
    }

    async fn changes_after(&self, position: &Position, limit: usize) -> Result<Vec<Arc<Change>>, LogError> {
        self.shared.log.after(position, limit)
    }

    /// Exact without stopping the writer. The writer appends a batch's changes to the window,
    /// then puts its states in memory, then publishes the head. So with `published` read first,
    /// memory holds every change up to it, and every state read from memory has its change in
    /// the window at or before `appended` (read last). A user's state at `appended` is then
    /// its latest change in (published, appended] if it has one, else what memory showed.
    async fn snapshot(&self, keys: &[UserKey]) -> Result<Snapshot, StoreError> {
        let published = self.shared.log.head();
        let mut views: Vec<PresenceView> = keys
            .iter()
            .map(|k| {
                self.shared
                    .memory
                    .read(k, |e| e.state.view())
                    .unwrap_or_else(|| UserPresence::default().view())
            })
            .collect();
        let appended = self.shared.log.appended();
        let catch_up = self
            .shared
            .log
            .appended_between(published, appended.clone())
            .map_err(|e| StoreError::Unavailable(format!("snapshot: {e}")))?;
        if !catch_up.is_empty() {
            let index: HashMap<&UserKey, usize> = keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
            for change in &catch_up {
                if let Some(&i) = index.get(&change.key) {
                    views[i] = change.event.view.clone();
                }
            }
        }
        Ok(Snapshot {
            position: appended,
            views,
        })
    }

    /// As `snapshot`, over every user of the tenant memory holds.
    async fn snapshot_tenant(&self, tenant: &TenantId) -> Result<TenantSnapshot, StoreError> {
        let published = self.shared.log.head();
        let mut presences = Vec::new();
        let mut index: HashMap<UserKey, usize> = HashMap::new();
        self.shared.memory.for_each_in_tenant(tenant, |key, entry| {
            index.insert(key.clone(), presences.len());
            presences.push((key.clone(), entry.state.view()));
        });
        let appended = self.shared.log.appended();
        let catch_up = self
            .shared
            .log
            .appended_between(published, appended.clone())
            .map_err(|e| StoreError::Unavailable(format!("snapshot: {e}")))?;
        for change in catch_up.iter().filter(|c| c.key.tenant == *tenant) {
            match index.get(&change.key) {
                Some(&i) => presences[i].1 = change.event.view.clone(),
                None => {
                    index.insert(change.key.clone(), presences.len());
                    presences.push((change.key.clone(), change.event.view.clone()));
                }
            }
        }
        Ok(TenantSnapshot {
            position: appended,
            presences,
        })
    }
}

impl Subscriptions for EmbeddedStore {
    async fn subscription(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        Ok(self.shared.subscriptions().get(id))
    }

    async fn create(&self, subscription: Subscription, limits: Limits) -> Result<Stored, CreateError> {
        self.request(move |reply| writer::Request::CreateSubscription {
            subscription,
            limits,
            reply,
        })
        .await?
    }

    async fn write(&self, write: SubscriptionWrite) -> Result<Option<Stored>, WriteError> {
        self.request(move |reply| writer::Request::WriteSubscription { write, reply })
            .await?
    }

    async fn page(&self, owner: &Owner, after: Option<&str>, limit: usize) -> Result<Vec<Stored>, StoreError> {
        Ok(self.shared.subscriptions().page(owner, after, limit))
    }

    async fn count(&self, owner: &Owner) -> Result<(usize, usize), StoreError> {
        let index = self.shared.subscriptions();
        Ok((
            index.count(owner),
            index.count_application(&owner.tenant, &owner.application_id),
        ))
    }

    async fn all(&self) -> Result<Vec<Stored>, StoreError> {
        Ok(self.shared.subscriptions().all())
    }

    async fn lifecycle_due(&self, now: Timestamp, limit: usize) -> Result<Vec<Stored>, StoreError> {
        Ok(self.shared.subscriptions().due(now, limit))
    }

    async fn next_lifecycle_deadline(&self) -> Option<Timestamp> {
        self.shared.subscriptions().next_deadline()
    }

    async fn subscriptions_changed(&self) {
        self.shared.subscriptions_changed.notified().await
    }
}

impl Deliveries for EmbeddedStore {
    async fn claim(
        &self,
        consumer: &str,
        now: Timestamp,
        lease: SignedDuration,
    ) -> Result<Vec<(String, Position)>, StoreError> {
        let ids: Vec<String> = self.shared.subscriptions().ids().cloned().collect();
        Ok(self.shared.deliveries().claim(ids.iter(), consumer, now, now + lease))
    }

    async fn release(&self, consumer: &str, ids: Vec<String>) -> Result<(), StoreError> {
        self.shared.deliveries().release(consumer, &ids);
        Ok(())
    }

    async fn acknowledge(&self, _consumer: &str, progress: Vec<(String, Position)>) -> Result<(), StoreError> {
        if progress.is_empty() {
            return Ok(());
        }
        let progress = progress.into_iter().map(|(id, p)| (id, p.sequence())).collect();
        self.request(move |reply| writer::Request::Acknowledge { progress, reply })
            .await?
    }

    async fn skip(&self, subscription_id: &str, to: Position, missed: Option<NewLifecycle>) -> Result<(), StoreError> {
        let subscription_id = subscription_id.to_owned();
        self.request(move |reply| writer::Request::Skip {
            subscription_id,
            to: to.sequence(),
            missed,
            reply,
        })
        .await?
    }

    async fn claim_lifecycle(
        &self,
        consumer: &str,
        now: Timestamp,
        lease: SignedDuration,
        limit: usize,
    ) -> Result<Vec<LifecycleNotice>, StoreError> {
        Ok(self
            .shared
            .deliveries()
            .claim_notices(consumer, now, now + lease, limit))
    }

    async fn finish_lifecycle(&self, ids: Vec<u64>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.request(move |reply| writer::Request::FinishLifecycle { ids, reply })
            .await?
    }

    async fn lifecycle_added(&self) {
        self.shared.lifecycle_added.notified().await
    }
}

impl crate::store::Membership for EmbeddedStore {
    async fn live_epochs(&self) -> Result<Option<Vec<String>>, StoreError> {
        Ok(None)
    }

    async fn fenced(&self) {
        std::future::pending().await
    }

    async fn leave(&self) {}
}

/// A store in a fresh temporary directory, reading `clock`: for tests. The directory goes when
/// the returned guard is dropped.
#[cfg(test)]
pub fn temporary(clock: Clock) -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options = Options {
        clock,
        ..Options::default()
    };
    let (store, _) = EmbeddedStore::open(dir.path(), options).expect("a new store opens");
    (dir, store)
}

impl EmbeddedStore {
    /// Whether a `missed` notice for this subscription is queued and not yet sent.
    pub fn missed_pending(&self, subscription_id: &str) -> bool {
        self.shared.deliveries().missed_pending(subscription_id)
    }

    /// The clock the store was opened with.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }
}
