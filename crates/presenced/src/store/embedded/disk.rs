//! The durable files: the write-ahead log and the redb file it is checkpointed into.
//!
//! A batch is durable once its frame is fdatasync'd in the log ([`wal`]). The writer thread only
//! appends, keeping a copy of its frames in memory; when the current segment is big or old enough
//! it starts a new one and hands the closed one (with that copy) to the checkpoint thread, which
//! writes its contents to redb in one transaction. So a checkpoint never stalls the writer (on the
//! writer thread a 2 s checkpoint was a ~50 ms stall, the p99 of every write).
//!
//! Nor does it compete with the writer for the disk more than it must: it neither reads the
//! segment back nor syncs redb. Checkpoint commits are unsynced, and their segments stay on disk
//! until a synced commit covers them, every [`SYNC_EVERY_SEGMENTS`] segments: a crash forgets the
//! unsynced commits and the next start replays those segments again. Each commit records the
//! number of the segment it came from, so the start skips a segment that redb already holds and
//! whose deletion a crash undid: replaying it onto newer state would roll its keys back.
//!
//! Values are JSON: a few bytes more than a binary encoding, but a record written by one version
//! of presenced stays readable by the next, and a damaged file can be inspected by hand.
use super::direct_io::IoMode;
use super::upgrade::legacy_lifecycle_notice;
use super::wal::{self, Wal};
use crate::store::LifecycleNotice;
use crate::subscription::Subscription;
use presence_core::{ChangeEvent, UserKey, UserPresence};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// Close the log segment and checkpoint it when it grows past this...
const CHECKPOINT_BYTES: u64 = 32 * 1024 * 1024;
/// ...or when it is this old and not empty. Bounds the replay after a crash; each checkpoint
/// writes every key changed in its segment once, so longer means less work per write.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);
/// Pause before retrying a failed checkpoint (a full disk, say); the log keeps everything.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);
/// Size bounds of a spare (a preallocated segment). Each spare is sized from the segment it
/// follows, so a busy log gets big ones and an idle one does not write megabytes of zeros every
/// checkpoint interval; a segment that outgrows its spare just grows the file.
const SPARE_MIN_BYTES: u64 = 256 * 1024;
const SPARE_MAX_BYTES: u64 = CHECKPOINT_BYTES + 1024 * 1024;
/// A checkpoint commits to redb without a sync and leaves its segment on disk; every this many
/// segments (or bytes of them) one synced commit covers them all and they are deleted. A synced
/// checkpoint's writes queued in front of the log's cache flushes, and cost every write ~10%
/// and its p99 (BENCHMARKS.md §1); the price is a replay of up to this much after a crash.
const SYNC_EVERY_SEGMENTS: usize = 8;
const SYNC_EVERY_BYTES: u64 = 128 * 1024 * 1024;

struct WalState {
    log: Wal,
    opened: Instant,
}

/// The latest value per key in a run of log frames: what one checkpoint writes to redb, each key
/// once however often it changed.
/// Values are borrowed from the segment being checkpointed.
#[derive(Default)]
struct Pending<'a> {
    users: std::collections::HashMap<&'a str, &'a [u8]>,
    outbox: std::collections::BTreeMap<u64, &'a [u8]>,
    prune_outbox_below: u64,
    subscriptions: std::collections::HashMap<&'a str, Option<&'a [u8]>>,
    deliveries: std::collections::BTreeMap<u64, Option<&'a [u8]>>,
    progress: std::collections::HashMap<&'a str, Option<u64>>,
}

impl<'a> Pending<'a> {
    fn merge(&mut self, ops: &[Op<'a>]) {
        for op in ops {
            match *op {
                Op::UserPut(k, v) => drop(self.users.insert(k, v)),
                Op::OutboxPut(id, v) => drop(self.outbox.insert(id, v)),
                Op::PruneOutbox(below) => {
                    self.prune_outbox_below = self.prune_outbox_below.max(below);
                    self.outbox.retain(|id, _| *id >= below);
                }
                Op::SubscriptionPut(k, v) => drop(self.subscriptions.insert(k, Some(v))),
                Op::SubscriptionDelete(k) => drop(self.subscriptions.insert(k, None)),
                Op::DeliveryPut(id, v) => drop(self.deliveries.insert(id, Some(v))),
                Op::DeliveryDelete(id) => drop(self.deliveries.insert(id, None)),
                Op::ProgressPut(k, at) => drop(self.progress.insert(k, Some(at))),
                Op::ProgressDelete(k) => drop(self.progress.insert(k, None)),
            }
        }
    }

    fn apply(&self, txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
        let mut users = txn.open_table(USERS)?;
        // In key order: redb's B-tree then visits each leaf once, in sequence. In hash order, a
        // checkpoint of a timer storm (every user once) measured ~9x slower per user.
        let mut sorted: Vec<(&str, &[u8])> = self.users.iter().map(|(k, v)| (*k, *v)).collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, v) in sorted {
            users.insert(k, v)?;
        }
        let mut outbox = txn.open_table(OUTBOX)?;
        for (id, v) in &self.outbox {
            outbox.insert(*id, *v)?;
        }
        if self.prune_outbox_below > 0 {
            outbox.retain_in(..self.prune_outbox_below, |_, _| false)?;
        }
        let mut subscriptions = txn.open_table(SUBSCRIPTIONS)?;
        for (k, v) in &self.subscriptions {
            match v {
                Some(v) => drop(subscriptions.insert(*k, *v)?),
                None => drop(subscriptions.remove(*k)?),
            }
        }
        let mut deliveries = txn.open_table(DELIVERIES)?;
        for (id, v) in &self.deliveries {
            match v {
                Some(v) => drop(deliveries.insert(*id, *v)?),
                None => drop(deliveries.remove(*id)?),
            }
        }
        let mut progress = txn.open_table(PROGRESS)?;
        for (k, v) in &self.progress {
            match v {
                Some(at) => drop(progress.insert(*k, *at)?),
                None => drop(progress.remove(*k)?),
            }
        }
        Ok(())
    }
}

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SUBSCRIPTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("subscriptions");
/// Queued lifecycle notices, by id.
const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
/// Each subscription's acknowledged change-log position.
const PROGRESS: TableDefinition<&str, u64> = TableDefinition::new("progress");
const SCHEMA_KEY: &str = "schema_version";
const CHECKPOINTS_KEY: &str = "checkpoints";
/// The number of the newest log segment a checkpoint wrote to redb: the start skips (and deletes)
/// segments at or below it, so segments can be deleted in any order and without syncs.
const LOG_APPLIED_THROUGH_KEY: &str = "log_applied_through";
/// 2 since segments are skipped by number at start ([`LOG_APPLIED_THROUGH_KEY`]): a version-1
/// build would number its log from 1 again, and this one would then skip those segments as held.
/// 3 since change notifications are derived from the change log (`deliveries` holds lifecycle
/// notices only, `progress` each subscription's position): a version-2 build would read neither.
/// So a file this build opened must stop older builds, and does. Older files are upgraded.
const SCHEMA_VERSION: u64 = 3;
/// redb's page cache. Reads are served from memory, so redb is only written (at checkpoints)
/// and read at start; its default 1 GiB cache held ~600 B per user at 1M users for nothing.
const REDB_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// How the redb file is opened (and reopened after a failure): [`open_database`], except in tests
/// that inject I/O errors.
type OpenDatabase = fn(&Path) -> Result<Database, redb::DatabaseError>;

fn open_database(path: &Path) -> Result<Database, redb::DatabaseError> {
    redb::Builder::new().set_cache_size(REDB_CACHE_BYTES).create(path)
}
pub const FILE_NAME: &str = "presence.redb";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create or read the data directory {path}: {source}")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("cannot open the database {path}: {reason}. Nothing in it was repaired, replaced or deleted; restore it from a backup or move it aside to start empty.")]
    Database { path: PathBuf, reason: String },
    #[error("the database {path} is corrupt ({reason}). Nothing in it was repaired, replaced or deleted; restore it from a backup or move it aside to start empty.")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the database {path} has schema version {found}, this presenced understands {SCHEMA_VERSION}; refusing to start")]
    Schema { path: PathBuf, found: u64 },
}

/// Everything read at start-up.
pub struct Loaded {
    pub users: Vec<(UserKey, UserPresence)>,
    /// The change log's retained entries, oldest first.
    pub outbox: Vec<(u64, UserKey, ChangeEvent)>,
    pub outbox_first: u64,
    pub outbox_next: u64,
    pub subscriptions: Vec<Subscription>,
    pub notices: Vec<LifecycleNotice>,
    pub progress: Vec<(String, u64)>,
}

pub struct Disk {
    dir: PathBuf,
    redb: Arc<Redb>,
    // Only the writer thread appends; the mutex is uncontended and only satisfies `Sync`.
    wal: Mutex<WalState>,
    checkpoints: Arc<Checkpoints>,
    checkpoint_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The redb file, shared by the writer side and the checkpoint thread.
struct Redb {
    path: PathBuf,
    open_database: OpenDatabase,
    /// A write failed; redb must be reopened before the next one.
    broken: AtomicBool,
    // Read-locked by every transaction; write-locked only to reopen the file after a failed
    // commit (redb must be reopened to rebuild its allocator state, e.g. after the disk was full).
    db: RwLock<Option<Database>>,
    /// The memory for the next segment's copy of its frames (or the next read of a segment):
    /// the last checkpoint's, recycled and prepared ([`Redb::prepare_spare_buffer`]). A fresh
    /// buffer of up to 33 MiB per checkpoint was mapped and zeroed by the kernel each time: ~2%
    /// of the server's CPU under a steady write load. Empty when the checkpoint lags: the next
    /// segment then keeps no copy.
    spare_buffer: Mutex<Vec<u8>>,
    /// Segments checkpointed by commits redb has not synced yet, oldest first.
    unsynced: Mutex<Unsynced>,
}

/// What a crash would make the next start replay: segments in redb only by unsynced commits,
/// which a crash (or a reopen after an I/O error) forgets. Each stays on disk until a synced commit covers it.
#[derive(Default)]
struct Unsynced {
    /// Number and path, oldest first.
    segments: Vec<(u64, PathBuf)>,
    bytes: u64,
}

/// A closed segment waiting for its checkpoint.
struct Closed {
    seq: u64,
    path: PathBuf,
    /// The segment's frames as the writer kept them, so the checkpoint need not read the file.
    /// `None` means read it: after a restart or a failed checkpoint, when the segment outgrew
    /// its buffer or had none ready, or when checkpoints lag and holding every queued segment's
    /// frames would let memory grow without bound.
    frames: Option<Vec<u8>>,
}

/// Hands closed segments from the writer to the checkpoint thread, oldest first. The writer
/// closes a segment when it is old and nothing is waiting, or when it is big whatever is waiting:
/// so a lagging checkpoint (a storm of distinct users) queues bounded segments on disk instead of
/// growing one without limit, which the checkpoint would then have to read into memory at once.
#[derive(Default)]
struct Checkpoints {
    state: Mutex<CheckpointState>,
    changed: Condvar,
}

#[derive(Default)]
struct CheckpointState {
    /// Closed segments waiting for (or, after a failure, waiting again for) their checkpoint.
    queued: std::collections::VecDeque<Closed>,
    /// The checkpoint thread is writing a segment to redb.
    busy: bool,
    stop: bool,
    /// The writer used (or never had) the spare and wants one of this size.
    spare_wanted: Option<u64>,
    /// A spare is durable and ready for the next segment, to be written in this mode.
    spare_ready: Option<IoMode>,
}

impl Checkpoints {
    fn lock(&self) -> MutexGuard<'_, CheckpointState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn idle(&self) -> bool {
        let s = self.lock();
        s.queued.is_empty() && !s.busy
    }

    /// Queue a closed segment, keeping its frames only if none are queued yet: besides the
    /// writer's own copy, at most two are then held, the one being checkpointed and the next.
    fn queue(&self, mut closed: Closed) {
        let mut s = self.lock();
        if !s.queued.is_empty() {
            closed.frames = None;
        }
        s.queued.push_back(closed);
        drop(s);
        self.changed.notify_all();
    }

    /// Put segments whose checkpoint failed back in front of the queue, in order, to be read
    /// from disk when retried (their kept frames went with the attempt).
    fn requeue(&self, failed: impl DoubleEndedIterator<Item = (u64, PathBuf)>) {
        let mut s = self.lock();
        for (seq, path) in failed.rev() {
            s.queued.push_front(Closed {
                seq,
                path,
                frames: None,
            });
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Wait until the checkpoint thread is not writing, then take what is queued (oldest first),
    /// so the caller can checkpoint it itself.
    fn take_when_not_busy(&self) -> std::collections::VecDeque<Closed> {
        let mut s = self.lock();
        while s.busy {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        std::mem::take(&mut s.queued)
    }

    /// Make segment `seq` from the spare, if one is ready. The rename happens under the lock,
    /// which the checkpoint thread also holds when it starts filling a new spare: so a spare is
    /// never renamed into place while zeros are still being written to it.
    fn take_spare(&self, dir: &Path, seq: u64) -> Option<std::io::Result<Wal>> {
        let mut s = self.lock();
        s.spare_ready.take().map(|mode| Wal::from_spare(dir, seq, mode))
    }

    /// Ask the checkpoint thread for a new spare of about `bytes`.
    fn want_spare(&self, bytes: u64) {
        self.lock().spare_wanted = Some(bytes.clamp(SPARE_MIN_BYTES, SPARE_MAX_BYTES));
        self.changed.notify_all();
    }

    /// Prepare the spare the writer asked for (outside the lock: it writes and syncs megabytes).
    /// Comes before checkpoints, which can take seconds: the writer needs the spare sooner.
    /// A failure (a full disk) only means the next segment grows as it is written.
    fn prepare_spare(&self, dir: &Path, bytes: u64) {
        let prepared = wal::prepare_spare(dir, bytes);
        if let Err(e) = &prepared {
            tracing::warn!(error = %e, "cannot preallocate the next log segment; it will grow as written");
            let _ = wal::remove_spare(dir);
        }
        self.lock().spare_ready = prepared.ok();
    }

    /// The checkpoint thread: write each closed segment to redb (deleting segments once a synced
    /// commit covers them). A failure (a full disk, say) leaves the segment queued and is
    /// retried; the data is safe in the log.
    fn run(&self, redb: &Redb, dir: &Path) {
        // The size of the last spare asked for: what the segment after next is expected to fill.
        let mut spare_bytes = SPARE_MIN_BYTES;
        loop {
            let closed = {
                let mut s = self.lock();
                loop {
                    if s.stop {
                        return;
                    }
                    // A spare already waiting serves the next segment too, whatever its size.
                    if let Some(bytes) = s.spare_wanted.take().filter(|_| s.spare_ready.is_none()) {
                        drop(s);
                        spare_bytes = bytes;
                        self.prepare_spare(dir, bytes);
                        s = self.lock();
                        continue;
                    }
                    if let Some(closed) = s.queued.pop_front() {
                        s.busy = true;
                        break closed;
                    }
                    s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                }
            };
            let result = redb.checkpoint_segment(closed.seq, &closed.path, closed.frames);
            if let Err(e) = result {
                tracing::warn!(error = %e, segment = %closed.path.display(), "checkpoint failed; will retry");
                self.requeue(std::iter::once((closed.seq, closed.path)));
                let mut s = self.lock();
                s.busy = false;
                self.changed.notify_all();
                let (guard, _) = self
                    .changed
                    .wait_timeout(s, CHECKPOINT_RETRY)
                    .unwrap_or_else(|e| e.into_inner());
                drop(guard);
                continue;
            }
            // For the next segment (after a failure, segments are read from disk until one
            // succeeds, so there is nothing to prepare for).
            redb.prepare_spare_buffer(spare_bytes);
            self.lock().busy = false;
            self.changed.notify_all();
        }
    }
}

/// One user's record in a batch, already encoded.
pub struct Record {
    pub storage_key: String,
    pub state_json: Vec<u8>,
    pub outbox: Option<(u64, Vec<u8>)>,
}

/// Everything one transaction writes.
#[derive(Default)]
pub struct Batch {
    pub records: Vec<Record>,
    pub subscriptions_put: Vec<(String, Vec<u8>)>,
    pub subscriptions_delete: Vec<String>,
    /// Lifecycle notices queued and sent.
    pub deliveries_put: Vec<(u64, Vec<u8>)>,
    pub deliveries_delete: Vec<u64>,
    /// Subscriptions' delivery positions set and forgotten.
    pub progress_put: Vec<(String, u64)>,
    pub progress_delete: Vec<String>,
    pub prune_outbox_below: u64,
    /// False only for batches that merely record deliveries: losing those to a crash means a
    /// re-send, which at-least-once allows, so they skip the fsync.
    pub durable: bool,
}

impl Disk {
    pub fn open(dir: &Path) -> Result<(Self, Loaded), OpenError> {
        Self::open_with(dir, open_database)
    }

    fn open_with(dir: &Path, open_database: OpenDatabase) -> Result<(Self, Loaded), OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
            path: dir.into(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let dir_err = |source| OpenError::Directory {
            path: dir.into(),
            source,
        };
        let db_err = |e: &dyn std::fmt::Display| OpenError::Database {
            path: path.clone(),
            reason: e.to_string(),
        };
        let corrupt = |reason: String| OpenError::Corrupt {
            path: path.clone(),
            reason,
        };
        // `create` opens an existing valid file and only initialises a missing or empty one; it
        // refuses anything else, so a damaged file is reported, never silently replaced.
        let mut db = open_database(&path).map_err(|e| db_err(&e))?;
        // Verify every page checksum before trusting the file: a flipped bit in a page must stop
        // the server, not be served (or, worse, be written back) as if it were data.
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => tracing::warn!(path = %path.display(), "database was repaired after an unclean shutdown"),
            Err(e) => return Err(corrupt(format!("integrity check failed: {e}"))),
        }
        let redb = Arc::new(Redb {
            path: path.clone(),
            open_database,
            broken: AtomicBool::new(false),
            db: RwLock::new(Some(db)),
            spare_buffer: Mutex::new(Vec::new()),
            unsynced: Mutex::new(Unsynced::default()),
        });
        redb.init_schema().map_err(|e| db_err(&e))?;
        let found = redb.schema_version().map_err(|e| db_err(&e))?;
        if found != SCHEMA_VERSION && found != 2 {
            return Err(OpenError::Schema { path, found });
        }
        let next_segment = redb.replay(dir).map_err(|e| match e {
            CheckpointError::Wal(e) => match &e {
                wal::WalError::Io { path, .. } | wal::WalError::Corrupt { path, .. } => OpenError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                },
            },
            CheckpointError::Frame(segment, reason) => OpenError::Corrupt { path: segment, reason },
            CheckpointError::Io(e) => dir_err(e),
            CheckpointError::Db(e) => db_err(&e),
        })?;
        if found == 2 {
            redb.upgrade_to_3().map_err(|e| match e {
                LoadError::Db(e) => db_err(&e),
                LoadError::Record(reason) => corrupt(reason),
            })?;
        }
        let loaded = redb.load().map_err(|e| match e {
            LoadError::Db(e) => db_err(&e),
            LoadError::Record(reason) => corrupt(reason),
        })?;
        wal::remove_spare(dir).map_err(dir_err)?;
        let mut log = Wal::create(dir, next_segment).map_err(dir_err)?;
        // One buffer for this segment's copy of its frames, one ready for the next segment's.
        redb.prepare_spare_buffer(SPARE_MIN_BYTES);
        log.keep_frames_in(redb.take_spare_buffer());
        redb.prepare_spare_buffer(SPARE_MIN_BYTES);
        let checkpoints = Arc::new(Checkpoints::default());
        checkpoints.want_spare(SPARE_MIN_BYTES);
        let thread = {
            let (redb, checkpoints, dir) = (redb.clone(), checkpoints.clone(), dir.to_path_buf());
            std::thread::Builder::new()
                .name("presenced-checkpoint".into())
                .spawn(move || checkpoints.run(&redb, &dir))
                .map_err(dir_err)?
        };
        let disk = Self {
            dir: dir.to_path_buf(),
            redb,
            wal: Mutex::new(WalState {
                log,
                opened: Instant::now(),
            }),
            checkpoints,
            checkpoint_thread: Mutex::new(Some(thread)),
        };
        Ok((disk, loaded))
    }
}

impl Redb {
    /// The open database (read guard). Errors only if a reopen after a failure also failed.
    fn db(&self) -> Result<DbGuard<'_>, redb::Error> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(redb::Error::Corrupted(
                "the database could not be reopened after an I/O error".into(),
            ));
        }
        Ok(DbGuard(guard))
    }

    /// Close and reopen redb after a failed checkpoint: redb must be reopened to rebuild its
    /// allocator state. Nothing is lost: the pending changes are still in memory and in the log.
    fn reopen_db(&self) -> Result<(), redb::Error> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        drop(slot.take());
        *slot = Some((self.open_database)(&self.path)?);
        Ok(())
    }

    fn init_schema(&self) -> Result<(), redb::Error> {
        let txn = self.db()?.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get(SCHEMA_KEY)?.map(|v| v.value());
            // A new file, or a version-1 one (upgraded to 2 by the log numbering alone); version 2
            // is upgraded to 3 after its log is replayed (`upgrade_to_3`).
            if found.is_none() {
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
            } else if found == Some(1) {
                meta.insert(SCHEMA_KEY, 2)?;
            }
            txn.open_table(USERS)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(SUBSCRIPTIONS)?;
            txn.open_table(DELIVERIES)?;
            txn.open_table(PROGRESS)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn schema_version(&self) -> Result<u64, redb::Error> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(SCHEMA_KEY)?.map_or(0, |v| v.value()))
    }

    fn load(&self) -> Result<Loaded, LoadError> {
        let txn = self.db()?.begin_read()?;
        let users_table = txn.open_table(USERS)?;
        let mut users = Vec::new();
        for row in users_table.iter()? {
            let (k, v) = row?;
            let raw_key = k.value();
            let key = UserKey::from_storage_key(raw_key)
                .ok_or_else(|| LoadError::Record(format!("invalid user key {raw_key:?}")))?;
            let state: UserPresence = serde_json::from_slice(v.value())
                .map_err(|e| LoadError::Record(format!("record for {raw_key:?} does not decode: {e}")))?;
            users.push((key, state));
        }
        let outbox_table = txn.open_table(OUTBOX)?;
        let outbox_next = outbox_table.last()?.map_or(1, |(k, _)| k.value() + 1);
        let outbox_first = outbox_table.first()?.map_or(outbox_next, |(k, _)| k.value());
        let mut outbox = Vec::new();
        for row in outbox_table.iter()? {
            let (k, v) = row?;
            let (key, event): (UserKey, ChangeEvent) = serde_json::from_slice(v.value())
                .map_err(|e| LoadError::Record(format!("change-log entry {} does not decode: {e}", k.value())))?;
            outbox.push((k.value(), key, event));
        }
        let mut subscriptions = Vec::new();
        for row in txn.open_table(SUBSCRIPTIONS)?.iter()? {
            let (k, v) = row?;
            let sub: Subscription = serde_json::from_slice(v.value())
                .map_err(|e| LoadError::Record(format!("subscription {:?} does not decode: {e}", k.value())))?;
            subscriptions.push(sub);
        }
        let mut notices = Vec::new();
        for row in txn.open_table(DELIVERIES)?.iter()? {
            let (k, v) = row?;
            let notice: LifecycleNotice = serde_json::from_slice(v.value())
                .map_err(|e| LoadError::Record(format!("lifecycle notice {} does not decode: {e}", k.value())))?;
            notices.push(notice);
        }
        let mut progress = Vec::new();
        for row in txn.open_table(PROGRESS)?.iter()? {
            let (k, v) = row?;
            progress.push((k.value().to_owned(), v.value()));
        }
        Ok(Loaded {
            users,
            outbox,
            outbox_first,
            outbox_next,
            subscriptions,
            notices,
            progress,
        })
    }

    /// Version 2 kept one delivery record per notification owed. Change notifications are now
    /// derived from the change log, so those go, and each subscription instead gets the position
    /// before the oldest retained change: what the old records owed is re-sent from the log (at
    /// least once, as before). Lifecycle deliveries become lifecycle notices. One transaction.
    fn upgrade_to_3(&self) -> Result<(), LoadError> {
        let txn = self.db()?.begin_write()?;
        {
            let outbox = txn.open_table(OUTBOX)?;
            let start = outbox.first()?.map_or_else(
                || outbox.last().map(|l| l.map_or(0, |(k, _)| k.value())),
                |(k, _)| Ok(k.value() - 1),
            )?;
            drop(outbox);
            let mut deliveries = txn.open_table(DELIVERIES)?;
            let old: Vec<(u64, Vec<u8>)> = deliveries
                .iter()?
                .map(|row| row.map(|(k, v)| (k.value(), v.value().to_vec())))
                .collect::<Result<_, _>>()?;
            for (id, bytes) in old {
                deliveries.remove(id)?;
                if let Some(notice) = legacy_lifecycle_notice(id, &bytes) {
                    deliveries.insert(id, notice.as_slice())?;
                }
            }
            let ids: Vec<String> = txn
                .open_table(SUBSCRIPTIONS)?
                .iter()?
                .map(|row| row.map(|(k, _)| k.value().to_owned()))
                .collect::<Result<_, _>>()?;
            let mut progress = txn.open_table(PROGRESS)?;
            for id in ids {
                progress.insert(id.as_str(), start)?;
            }
            txn.open_table(META)?.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
        }
        txn.commit()?;
        tracing::info!("upgraded the database to schema version {SCHEMA_VERSION}");
        Ok(())
    }

    /// Apply every segment left in `dir` that redb does not hold yet (oldest first), make it
    /// durable, and delete them all. Returns the number the next segment takes: numbers only grow,
    /// even across restarts, because redb records the newest segment it holds by number.
    fn replay(&self, dir: &Path) -> Result<u64, CheckpointError> {
        let segments = wal::segments(dir).map_err(CheckpointError::Io)?;
        let held = self.log_applied_through()?;
        let mut replayed = 0;
        for (seq, segment) in &segments {
            if holds(held, *seq) {
                // A synced commit covers it; only its deletion was lost to the crash.
                self.lock_unsynced().segments.push((*seq, segment.clone()));
            } else {
                self.checkpoint_segment(*seq, segment, None)?;
                replayed += 1;
            }
        }
        self.sync()?;
        if replayed > 0 {
            tracing::info!(segments = replayed, "replayed the write-ahead log");
        }
        let newest = segments.last().map(|(seq, _)| *seq).max(held);
        Ok(newest.map_or(1, |seq| seq + 1))
    }

    /// The number of the newest log segment whose frames redb holds, if any.
    fn log_applied_through(&self) -> Result<Option<u64>, redb::Error> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(LOG_APPLIED_THROUGH_KEY)?.map(|v| v.value()))
    }

    /// Write closed segment `seq` to redb in one transaction: `frames` if the writer kept them,
    /// else what the file holds. The commit is synced (and the segments it covers deleted) only
    /// every [`SYNC_EVERY_SEGMENTS`] segments or [`SYNC_EVERY_BYTES`]; until then a crash forgets
    /// it and the next start replays the segment.
    fn checkpoint_segment(&self, seq: u64, segment: &Path, frames: Option<Vec<u8>>) -> Result<(), CheckpointError> {
        let mut unsynced = self.lock_unsynced();
        self.reopen_if_broken(&unsynced)?;
        let frames = self.load_segment(segment, frames)?;
        let bytes = frames.bytes_used() as u64;
        let sync = unsynced.segments.len() + 1 >= SYNC_EVERY_SEGMENTS || unsynced.bytes + bytes >= SYNC_EVERY_BYTES;
        self.apply_segment(seq, segment, frames, sync)?;
        unsynced.segments.push((seq, segment.to_path_buf()));
        unsynced.bytes += bytes;
        if sync {
            delete_synced(&mut unsynced);
        }
        Ok(())
    }

    /// Make every checkpoint so far durable and delete the segments they came from: on clean
    /// shutdown, after a replay, and before reading redb's tables directly.
    fn sync(&self) -> Result<(), CheckpointError> {
        let mut unsynced = self.lock_unsynced();
        if unsynced.segments.is_empty() {
            return Ok(());
        }
        self.reopen_if_broken(&unsynced)?;
        self.commit(&Pending::default(), None, true)?;
        delete_synced(&mut unsynced);
        Ok(())
    }

    fn lock_unsynced(&self) -> MutexGuard<'_, Unsynced> {
        self.unsynced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a failed commit, reopen redb; the reopened file is at its last synced commit, so the
    /// segments checkpointed since are written again first, in order. Only those: a listed one
    /// the synced commit already covers (its deletion failed) would roll back newer state.
    fn reopen_if_broken(&self, unsynced: &Unsynced) -> Result<(), CheckpointError> {
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        self.reopen_db()?;
        let held = self.log_applied_through()?;
        for (seq, segment) in &unsynced.segments {
            if !holds(held, *seq) {
                let frames = self.load_segment(segment, None)?;
                self.apply_segment(*seq, segment, frames, false)?;
            }
        }
        // Only now: if any of that failed, the next attempt reopens and starts over.
        self.broken.store(false, Ordering::Release);
        Ok(())
    }

    /// The frames of `segment`: from the writer's copy if it kept one, else read from the file.
    fn load_segment(&self, segment: &Path, kept: Option<Vec<u8>>) -> Result<wal::Segment, CheckpointError> {
        match kept {
            Some(bytes) => wal::parse_frames(segment, bytes),
            None => wal::read_frames_into(segment, self.take_spare_buffer()),
        }
        .map_err(CheckpointError::Wal)
    }

    /// Merge segment `seq`'s frames (each key once, its latest value) and commit them, with the
    /// segment's number.
    fn apply_segment(&self, seq: u64, segment: &Path, frames: wal::Segment, sync: bool) -> Result<(), CheckpointError> {
        let mut pending = Pending::default();
        for frame in frames.frames() {
            let ops = decode_ops(frame).map_err(|reason| CheckpointError::Frame(segment.to_path_buf(), reason))?;
            pending.merge(&ops);
        }
        self.commit(&pending, Some(seq), sync)?;
        // `pending` borrowed from the buffer; written, it is done with it. It goes back for a
        // later segment (the larger of it and one already waiting; `prepare_spare_buffer` sizes it).
        drop(pending);
        let buffer = frames.into_buffer();
        let mut spare = self.spare_buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.capacity() > spare.capacity() {
            *spare = buffer;
        }
        Ok(())
    }

    fn take_spare_buffer(&self) -> Vec<u8> {
        std::mem::take(&mut *self.spare_buffer.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Give the spare buffer room for `bytes` of frames (at most a spare's), in memory the kernel
    /// has already mapped. Runs on the checkpoint thread, so that the writer, which copies each
    /// frame into it, never takes a page fault: mapping fresh memory (the kernel zeroes each
    /// page first) cost it 10-100 ms at a time on this project's virtual machine.
    fn prepare_spare_buffer(&self, bytes: u64) {
        let bytes = usize::try_from(bytes.min(SPARE_MAX_BYTES)).unwrap_or(0);
        let mut buffer = self.take_spare_buffer();
        // One far larger than needed (load fell, or a file read grew it) is replaced too: the
        // buffers held stay within twice a spare each.
        if buffer.capacity() < bytes || buffer.capacity() > 2 * bytes {
            buffer = Vec::with_capacity(bytes);
        }
        // The writer may fill it up to its capacity. Its first `len` bytes were written already
        // (a segment's frames, or a file read into it); writing the rest is what makes the
        // kernel map it.
        buffer.resize(buffer.capacity(), 0);
        buffer.clear();
        *self.spare_buffer.lock().unwrap_or_else(|e| e.into_inner()) = buffer;
    }

    /// Commit `pending` in one transaction, with the number of the segment it came from and a
    /// count of checkpoints (so there is always something to commit); synced or not. A failure
    /// marks redb for a reopen.
    fn commit(&self, pending: &Pending<'_>, segment: Option<u64>, sync: bool) -> Result<(), CheckpointError> {
        let written = (|| {
            let mut txn = self.db()?.begin_write()?;
            if !sync {
                txn.set_durability(Durability::None)?;
            }
            pending.apply(&txn)?;
            {
                let mut meta = txn.open_table(META)?;
                let n = meta.get(CHECKPOINTS_KEY)?.map_or(0, |v| v.value());
                meta.insert(CHECKPOINTS_KEY, n + 1)?;
                if let Some(seq) = segment {
                    meta.insert(LOG_APPLIED_THROUGH_KEY, seq)?;
                }
            }
            txn.commit()?;
            Ok::<(), redb::Error>(())
        })();
        written.map_err(|e| {
            self.broken.store(true, Ordering::Release);
            CheckpointError::Db(e)
        })
    }
}

/// Whether redb, having applied segments up to `held`, holds segment `seq`.
fn holds(held: Option<u64>, seq: u64) -> bool {
    held.is_some_and(|held| seq <= held)
}

/// Delete the segments a synced commit now covers. No directory sync: a deletion a crash undoes
/// is harmless, since the start skips segments numbered at or below what redb holds. One that
/// cannot be deleted stays listed for the next sync.
fn delete_synced(unsynced: &mut Unsynced) {
    unsynced.segments.retain(|(_, segment)| match std::fs::remove_file(segment) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(error = %e, segment = %segment.display(), "cannot delete a checkpointed log segment; will retry");
            true
        }
        _ => false,
    });
    // What stays listed is synced: it adds nothing to replay, so it counts no bytes.
    unsynced.bytes = 0;
}

impl Disk {
    /// Make a batch durable: append it to the write-ahead log and `fdatasync` (one small
    /// sequential write shared by every request in the batch: the group commit). Batches that
    /// only forget delivered notifications are appended without the sync: losing them to a
    /// crash means a re-send, which at-least-once allows.
    pub fn write_batch(&self, batch: &Batch) -> Result<(), redb::Error> {
        let ops = batch_ops(batch);
        let mut wal = self.lock_wal();
        wal.log.append(&encode_ops(&ops), batch.durable)?;
        let big = wal.log.len() > CHECKPOINT_BYTES;
        let old = wal.opened.elapsed() >= CHECKPOINT_INTERVAL;
        if big || (old && self.checkpoints.idle()) {
            // The batch is durable in the log whatever happens here; a segment that cannot be
            // closed now is closed on a later batch, and meanwhile the log grows.
            match self.close_segment(&mut wal) {
                Ok(Some(closed)) => self.checkpoints.queue(closed),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot start a new log segment; will retry"),
            }
        }
        Ok(())
    }

    fn lock_wal(&self) -> MutexGuard<'_, WalState> {
        self.wal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start the next segment and return the closed one (none if the current one is empty).
    fn close_segment(&self, wal: &mut WalState) -> std::io::Result<Option<Closed>> {
        wal.opened = Instant::now();
        if wal.log.is_empty() {
            return Ok(None);
        }
        let seq = wal.log.seq() + 1;
        let next = match self.checkpoints.take_spare(&self.dir, seq) {
            Some(Ok(log)) => Ok(log),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot use the preallocated log segment; creating one");
                Wal::create(&self.dir, seq)
            }
            None => Wal::create(&self.dir, seq),
        };
        let mut next = next?;
        next.keep_frames_in(self.redb.take_spare_buffer());
        // The next spare is sized for a segment like this one, with room to grow.
        self.checkpoints.want_spare(wal.log.len() + wal.log.len() / 2);
        let mut closed = std::mem::replace(&mut wal.log, next);
        Ok(Some(Closed {
            seq: closed.seq(),
            path: closed.path().to_path_buf(),
            frames: closed.take_frames(),
        }))
    }

    /// Checkpoint everything logged so far, on this thread, and make it durable in redb: on clean
    /// shutdown (nothing to replay on the next start), and before reading tables directly, so
    /// such reads see every committed change. Holds the log, so the writer waits meanwhile.
    pub fn checkpoint_now(&self) -> Result<(), String> {
        let mut wal = self.lock_wal();
        let mut queued = self.checkpoints.take_when_not_busy();
        match self.close_segment(&mut wal) {
            Ok(closed) => queued.extend(closed),
            Err(e) => {
                self.checkpoints.requeue(queued.into_iter().map(|c| (c.seq, c.path)));
                return Err(e.to_string());
            }
        }
        while let Some(closed) = queued.pop_front() {
            if let Err(e) = self.redb.checkpoint_segment(closed.seq, &closed.path, closed.frames) {
                let failed =
                    std::iter::once((closed.seq, closed.path)).chain(queued.into_iter().map(|c| (c.seq, c.path)));
                self.checkpoints.requeue(failed);
                return Err(e.to_string());
            }
        }
        self.redb.sync().map_err(|e| e.to_string())
    }
}

impl Drop for Disk {
    /// Stop the checkpoint thread, so redb is closed (and marked clean) when the store is.
    fn drop(&mut self) {
        self.checkpoints.lock().stop = true;
        self.checkpoints.changed.notify_all();
        let handle = self.checkpoint_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Db(#[from] redb::Error),
    #[error("{0}")]
    Record(String),
}

macro_rules! into_load_error {
    ($($t:ty),*) => {$(impl From<$t> for LoadError { fn from(e: $t) -> Self { LoadError::Db(e.into()) } })*};
}
into_load_error!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A read guard that derefs to the open database.
struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        // `Disk::db` returns a guard only when the slot holds a database.
        self.0.as_ref().expect("checked in Disk::db")
    }
}

#[derive(Debug, thiserror::Error)]
enum CheckpointError {
    #[error(transparent)]
    Wal(wal::WalError),
    #[error("a frame of the write-ahead log {0} does not decode: {1}")]
    Frame(PathBuf, String),
    #[error("log segment file: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Db(#[from] redb::Error),
}

/// One change to one table: what a batch is made of, and what a log frame holds.
#[derive(Debug, PartialEq, Eq)]
enum Op<'a> {
    UserPut(&'a str, &'a [u8]),
    OutboxPut(u64, &'a [u8]),
    PruneOutbox(u64),
    SubscriptionPut(&'a str, &'a [u8]),
    SubscriptionDelete(&'a str),
    DeliveryPut(u64, &'a [u8]),
    DeliveryDelete(u64),
    ProgressPut(&'a str, u64),
    ProgressDelete(&'a str),
}

fn batch_ops(batch: &Batch) -> Vec<Op<'_>> {
    let mut ops = Vec::with_capacity(batch.records.len() * 2 + batch.deliveries_put.len() + 4);
    for r in &batch.records {
        ops.push(Op::UserPut(&r.storage_key, &r.state_json));
        if let Some((id, json)) = &r.outbox {
            ops.push(Op::OutboxPut(*id, json));
        }
    }
    if batch.prune_outbox_below > 0 {
        ops.push(Op::PruneOutbox(batch.prune_outbox_below));
    }
    ops.extend(
        batch
            .subscriptions_put
            .iter()
            .map(|(id, json)| Op::SubscriptionPut(id, json)),
    );
    ops.extend(batch.subscriptions_delete.iter().map(|id| Op::SubscriptionDelete(id)));
    ops.extend(batch.deliveries_put.iter().map(|(id, json)| Op::DeliveryPut(*id, json)));
    ops.extend(batch.deliveries_delete.iter().map(|id| Op::DeliveryDelete(*id)));
    ops.extend(batch.progress_put.iter().map(|(id, at)| Op::ProgressPut(id, *at)));
    ops.extend(batch.progress_delete.iter().map(|id| Op::ProgressDelete(id)));
    ops
}

fn encode_ops(ops: &[Op<'_>]) -> Vec<u8> {
    // Sized up front: a batch frame is tens of KB, and regrowing it copies every record again.
    let size: usize = ops
        .iter()
        .map(|op| match *op {
            Op::UserPut(k, v) | Op::SubscriptionPut(k, v) => 9 + k.len() + v.len(),
            Op::OutboxPut(_, v) | Op::DeliveryPut(_, v) => 13 + v.len(),
            Op::SubscriptionDelete(k) | Op::ProgressDelete(k) => 5 + k.len(),
            Op::ProgressPut(k, _) => 13 + k.len(),
            Op::PruneOutbox(_) | Op::DeliveryDelete(_) => 9,
        })
        .sum();
    let mut out = Vec::with_capacity(size);
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    for op in ops {
        match *op {
            Op::UserPut(k, v) => {
                out.push(1);
                bytes(&mut out, k.as_bytes());
                bytes(&mut out, v);
            }
            Op::OutboxPut(id, v) => {
                out.push(2);
                out.extend_from_slice(&id.to_le_bytes());
                bytes(&mut out, v);
            }
            Op::PruneOutbox(below) => {
                out.push(3);
                out.extend_from_slice(&below.to_le_bytes());
            }
            Op::SubscriptionPut(k, v) => {
                out.push(4);
                bytes(&mut out, k.as_bytes());
                bytes(&mut out, v);
            }
            Op::SubscriptionDelete(k) => {
                out.push(5);
                bytes(&mut out, k.as_bytes());
            }
            Op::DeliveryPut(id, v) => {
                out.push(6);
                out.extend_from_slice(&id.to_le_bytes());
                bytes(&mut out, v);
            }
            Op::DeliveryDelete(id) => {
                out.push(7);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Op::ProgressPut(k, at) => {
                out.push(8);
                bytes(&mut out, k.as_bytes());
                out.extend_from_slice(&at.to_le_bytes());
            }
            Op::ProgressDelete(k) => {
                out.push(9);
                bytes(&mut out, k.as_bytes());
            }
        }
    }
    out
}

/// The inverse of `encode_ops`, bounds-checked: a frame passed its checksum, but a decoder must
/// still never panic on bytes it did not write.
fn decode_ops(frame: &[u8]) -> Result<Vec<Op<'_>>, String> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.0.len() < n {
                return Err("truncated operation".into());
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn u64(&mut self) -> Result<u64, String> {
            let b = self.take(8)?;
            Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        }
        fn bytes(&mut self) -> Result<&'a [u8], String> {
            let b = self.take(4)?;
            let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            self.take(n)
        }
        fn str(&mut self) -> Result<&'a str, String> {
            std::str::from_utf8(self.bytes()?).map_err(|_| "a key is not UTF-8".to_string())
        }
    }
    let mut r = Reader(frame);
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = r.0.split_first() {
        r.0 = rest;
        ops.push(match tag {
            1 => Op::UserPut(r.str()?, r.bytes()?),
            2 => Op::OutboxPut(r.u64()?, r.bytes()?),
            3 => Op::PruneOutbox(r.u64()?),
            4 => Op::SubscriptionPut(r.str()?, r.bytes()?),
            5 => Op::SubscriptionDelete(r.str()?),
            6 => Op::DeliveryPut(r.u64()?, r.bytes()?),
            7 => Op::DeliveryDelete(r.u64()?),
            8 => Op::ProgressPut(r.str()?, r.u64()?),
            9 => Op::ProgressDelete(r.str()?),
            other => return Err(format!("unknown operation {other}")),
        });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_roundtrip_through_a_frame() {
        let ops = vec![
            Op::UserPut("t/u", b"{}"),
            Op::OutboxPut(7, b"[1]"),
            Op::PruneOutbox(3),
            Op::SubscriptionPut("s", b"{\"a\":1}"),
            Op::SubscriptionDelete("s2"),
            Op::DeliveryPut(9, b"x"),
            Op::DeliveryDelete(4),
            Op::ProgressPut("s", 17),
            Op::ProgressDelete("s3"),
        ];
        assert_eq!(decode_ops(&encode_ops(&ops)).unwrap(), ops);
        assert!(decode_ops(&[1, 5, 0, 0, 0, b'a']).is_err());
        assert!(decode_ops(&[99]).is_err());
    }

    /// Two different states of one user, in the order a test writes them (Busy, then Away).
    fn older_and_newer() -> (Vec<u8>, Vec<u8>) {
        use presence_core::{Activity, Availability};
        let older = state_json(Availability::Busy, Activity::InACall);
        let newer = state_json(Availability::Away, Activity::Away);
        assert_ne!(older, newer);
        (older, newer)
    }

    fn state_json(availability: presence_core::Availability, activity: presence_core::Activity) -> Vec<u8> {
        let mut state = UserPresence::default();
        let command = presence_core::Command::SetPresence {
            session: presence_core::SessionId::parse("app").unwrap(),
            state: presence_core::SessionState::new(availability, activity).unwrap(),
            expiration: jiff::SignedDuration::from_mins(10),
        };
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        state.apply(command, now, &presence_core::Timing::default()).unwrap();
        serde_json::to_vec(&state).unwrap()
    }

    #[test]
    fn segments_left_by_a_crash_are_replayed_oldest_first_then_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let key = "t1/u1";
        let (older, newer) = older_and_newer();
        // Two closed segments, as a crash during a checkpoint leaves them, the newer value last.
        let mut first = Wal::create(dir.path(), 7).unwrap();
        first.append(&encode_ops(&[Op::UserPut(key, &older)]), true).unwrap();
        let mut second = Wal::create(dir.path(), 8).unwrap();
        second.append(&encode_ops(&[Op::UserPut(key, &newer)]), true).unwrap();
        let (disk, loaded) = Disk::open(dir.path()).unwrap();
        let stored: Vec<u8> = serde_json::to_vec(&loaded.users[0].1).unwrap();
        assert_eq!(stored, newer, "the later segment wins");
        let left: Vec<u64> = wal::segments(dir.path()).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(
            left,
            vec![9],
            "replayed segments are deleted; writing continues in the next one"
        );
        drop(disk);
    }

    fn put(disk: &Disk, key: &str, state: &[u8]) {
        let batch = Batch {
            records: vec![Record {
                storage_key: key.into(),
                state_json: state.to_vec(),
                outbox: None,
            }],
            durable: true,
            ..Batch::default()
        };
        disk.write_batch(&batch).unwrap();
    }

    /// [`put`], and record the value as what redb must end up holding.
    fn put_expecting(disk: &Disk, expected: &mut std::collections::BTreeMap<String, String>, key: &str, state: &[u8]) {
        put(disk, key, state);
        expected.insert(key.to_string(), String::from_utf8(state.to_vec()).unwrap());
    }

    /// Close the current segment, as the writer does every 2 s, and wait (bounded) until the
    /// checkpoint thread has written it to redb.
    fn close_and_checkpoint(disk: &Disk) {
        let closed = disk
            .close_segment(&mut disk.lock_wal())
            .unwrap()
            .expect("a segment with frames");
        assert!(closed.frames.is_some(), "the writer kept the frames");
        disk.checkpoints.queue(closed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !disk.checkpoints.idle() {
            assert!(Instant::now() < deadline, "the checkpoint did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn segment_count(dir: &Path) -> usize {
        wal::segments(dir).unwrap().len()
    }

    /// What a SIGKILL would leave now: the files as they are on disk, without whatever redb
    /// holds only in memory (its unsynced commits), opened as the next start would.
    fn open_crash_image(dir: &Path) -> (tempfile::TempDir, Loaded) {
        let image = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), image.path().join(entry.file_name())).unwrap();
        }
        let (_disk, loaded) = Disk::open(image.path()).unwrap();
        (image, loaded)
    }

    fn stored(loaded: &Loaded) -> std::collections::BTreeMap<String, String> {
        loaded
            .users
            .iter()
            .map(|(k, v)| (k.storage_key(), serde_json::to_string(v).unwrap()))
            .collect()
    }

    #[test]
    fn checkpointed_segments_stay_on_disk_until_a_synced_commit_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, _) = Disk::open(dir.path()).unwrap();
        let (busy, away) = older_and_newer();
        let mut expected = std::collections::BTreeMap::new();
        for i in 0..SYNC_EVERY_SEGMENTS - 1 {
            put_expecting(&disk, &mut expected, &format!("t1/u{i}"), &busy);
            // The last segment overwrites an earlier key: replay order decides what survives.
            put_expecting(&disk, &mut expected, "t1/u0", if i % 2 == 0 { &away } else { &busy });
            close_and_checkpoint(&disk);
        }
        assert_eq!(
            segment_count(dir.path()),
            SYNC_EVERY_SEGMENTS,
            "every checkpointed segment is kept (unsynced in redb), plus the current one"
        );
        let (_image, loaded) = open_crash_image(dir.path());
        assert_eq!(stored(&loaded), expected, "a crash now replays them all");

        put_expecting(&disk, &mut expected, "t1/last", &away);
        close_and_checkpoint(&disk);
        assert_eq!(
            segment_count(dir.path()),
            1,
            "the synced commit covers the kept segments, and they are deleted"
        );
        let (_image, loaded) = open_crash_image(dir.path());
        assert_eq!(stored(&loaded), expected, "and redb alone holds everything");

        put_expecting(&disk, &mut expected, "t1/u1", &away);
        close_and_checkpoint(&disk);
        assert_eq!(segment_count(dir.path()), 2);
        disk.checkpoint_now().unwrap();
        assert_eq!(segment_count(dir.path()), 1, "checkpoint_now syncs whatever is kept");
        let (_image, loaded) = open_crash_image(dir.path());
        assert_eq!(stored(&loaded), expected);
    }

    #[test]
    fn a_segment_redb_already_holds_is_skipped_at_start_not_replayed_over_newer_state() {
        let dir = tempfile::tempdir().unwrap();
        let (older, newer) = older_and_newer();
        let (disk, _) = Disk::open(dir.path()).unwrap();
        put(&disk, "t1/u", &older);
        let first = disk.lock_wal().log.path().to_path_buf();
        let kept_first = std::fs::read(&first).unwrap();
        close_and_checkpoint(&disk);
        put(&disk, "t1/u", &newer);
        disk.checkpoint_now().unwrap();
        assert!(!first.exists(), "synced and deleted");
        drop(disk);
        // A crash undid the first segment's deletion (deletions are not synced).
        std::fs::write(&first, &kept_first).unwrap();
        let (disk, loaded) = Disk::open(dir.path()).unwrap();
        assert_eq!(
            serde_json::to_vec(&loaded.users[0].1).unwrap(),
            newer,
            "the stale segment is not replayed"
        );
        assert!(!first.exists(), "and it is deleted");
        let (current, _) = wal::segments(dir.path()).unwrap()[0].clone();
        let held = disk.redb.log_applied_through().unwrap().unwrap();
        assert!(
            current > held,
            "new segments are numbered past what redb holds ({current} > {held})"
        );
    }

    /// Set to make every write and sync of a redb file opened with [`open_failable`] fail, as a
    /// full or failing disk does. Only the test that opens such a file reads it.
    static FAIL_REDB_IO: AtomicBool = AtomicBool::new(false);

    #[derive(Debug)]
    struct FailableBackend(redb::backends::FileBackend);

    impl FailableBackend {
        fn check() -> std::io::Result<()> {
            match FAIL_REDB_IO.load(Ordering::Acquire) {
                true => Err(std::io::Error::other("injected I/O failure")),
                false => Ok(()),
            }
        }
    }

    impl redb::StorageBackend for FailableBackend {
        fn len(&self) -> std::io::Result<u64> {
            self.0.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.0.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            Self::check()?;
            self.0.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            Self::check()?;
            self.0.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            Self::check()?;
            self.0.write(offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            self.0.close()
        }
    }

    fn open_failable(path: &Path) -> Result<Database, redb::DatabaseError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let backend = FailableBackend(redb::backends::FileBackend::new(file)?);
        redb::Builder::new()
            .set_cache_size(REDB_CACHE_BYTES)
            .create_with_backend(backend)
    }

    #[test]
    fn after_a_failed_commit_the_reopened_redb_gets_the_unsynced_segments_again() {
        use presence_core::{Activity, Availability};
        let dir = tempfile::tempdir().unwrap();
        let (disk, _) = Disk::open_with(dir.path(), open_failable).unwrap();
        let busy = state_json(Availability::Busy, Activity::InACall);
        put(&disk, "t1/a", &busy);
        close_and_checkpoint(&disk);
        put(&disk, "t1/b", &busy);
        close_and_checkpoint(&disk);
        // The synced commit fails: redb then drops its unsynced commits (a and b) with the handle.
        FAIL_REDB_IO.store(true, Ordering::Release);
        assert!(disk.checkpoint_now().is_err());
        FAIL_REDB_IO.store(false, Ordering::Release);
        assert!(disk.redb.broken.load(Ordering::Acquire));
        assert_eq!(segment_count(dir.path()), 3, "nothing synced, nothing deleted");
        // The next checkpoint reopens redb, writes a and b again from their segments, then c.
        put(&disk, "t1/c", &busy);
        close_and_checkpoint(&disk);
        assert!(!disk.redb.broken.load(Ordering::Acquire), "reopened");
        disk.checkpoint_now().unwrap();
        assert_eq!(segment_count(dir.path()), 1);
        let (_image, loaded) = open_crash_image(dir.path());
        let keys: Vec<String> = stored(&loaded).into_keys().collect();
        assert_eq!(keys, ["t1/a", "t1/b", "t1/c"]);
    }

    #[test]
    fn a_version_1_file_is_upgraded_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let set_schema = |version: u64| {
            let db = open_database(&dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(SCHEMA_KEY, version).unwrap();
            txn.commit().unwrap();
        };
        drop(Disk::open(dir.path()).unwrap());
        set_schema(1);
        let (disk, _) = Disk::open(dir.path()).unwrap();
        assert_eq!(disk.redb.schema_version().unwrap(), SCHEMA_VERSION);
        drop(disk);
        set_schema(SCHEMA_VERSION + 1);
        assert!(matches!(
            Disk::open(dir.path()),
            Err(OpenError::Schema { found, .. }) if found == SCHEMA_VERSION + 1
        ));
    }

    #[test]
    fn a_version_2_file_keeps_its_lifecycle_deliveries_and_owes_its_subscriptions_the_retained_log() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, _) = Disk::open(dir.path()).unwrap();
        let subscription = br#"{"id":"s1","tenant":"t","application_id":"app","creator_id":null,"resource":"r","users":["u"],"notification_url":"https://h/n","lifecycle_notification_url":"https://h/l","client_state":null,"expiration":"2026-11-27T10:00:00Z","renewed_at":"2026-11-27T09:00:00Z","include_resource_data":false,"encryption_certificate":null,"encryption_certificate_id":null,"latest_supported_tls_version":null}"#;
        let lifecycle = br#"{"id":7,"url":"https://h/l","subscription_id":"s1","created_at":"2026-11-27T09:00:00Z","kind":{"Lifecycle":{"event":"Missed","tenant":"t","client_state":null,"subscription_expiration":"2026-11-27T10:00:00Z"}}}"#;
        let change = br#"{"id":8,"url":"https://h/n","subscription_id":"s1","created_at":"2026-11-27T09:00:00Z","kind":{"Change":{"user":"u","availability":"Busy","activity":"InACall","sequence":5}}}"#;
        disk.write_batch(&Batch {
            subscriptions_put: vec![("s1".into(), subscription.to_vec())],
            deliveries_put: vec![(7, lifecycle.to_vec()), (8, change.to_vec())],
            durable: true,
            ..Batch::default()
        })
        .unwrap();
        disk.checkpoint_now().unwrap();
        drop(disk);
        let db = open_database(&dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(SCHEMA_KEY, 2).unwrap();
        txn.commit().unwrap();
        drop(db);
        let (disk, loaded) = Disk::open(dir.path()).unwrap();
        assert_eq!(disk.redb.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(
            loaded.notices.len(),
            1,
            "the change delivery is re-derived from the log"
        );
        assert_eq!(loaded.notices[0].id, 7);
        assert_eq!(loaded.progress, vec![("s1".to_string(), loaded.outbox_first - 1)]);
    }

    #[test]
    fn a_reopen_does_not_write_again_a_listed_segment_a_synced_commit_covers() {
        let dir = tempfile::tempdir().unwrap();
        let (older, newer) = older_and_newer();
        let (disk, _) = Disk::open(dir.path()).unwrap();
        put(&disk, "t1/u", &older);
        let (first_seq, first) = {
            let wal = disk.lock_wal();
            (wal.log.seq(), wal.log.path().to_path_buf())
        };
        let kept_first = std::fs::read(&first).unwrap();
        close_and_checkpoint(&disk);
        put(&disk, "t1/u", &newer);
        disk.checkpoint_now().unwrap();
        // The first segment as it would be had its deletion failed: still on disk, still listed.
        std::fs::write(&first, &kept_first).unwrap();
        disk.redb.lock_unsynced().segments.push((first_seq, first.clone()));
        disk.redb.broken.store(true, Ordering::Release);
        put(&disk, "t1/other", &older);
        close_and_checkpoint(&disk);
        disk.checkpoint_now().unwrap();
        let (_image, loaded) = open_crash_image(dir.path());
        let stored = stored(&loaded);
        assert_eq!(
            stored["t1/u"],
            String::from_utf8(newer).unwrap(),
            "not rolled back to the stale segment"
        );
        assert!(!first.exists(), "deleted at the next sync");
    }

    /// The writer copies frames into a buffer it is handed and never grows it (growing maps
    /// fresh memory); the checkpoint thread sizes that buffer for the spare it last prepared.
    #[test]
    fn the_checkpoint_prepares_the_next_segments_buffer_for_the_spare_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, _) = Disk::open(dir.path()).unwrap();
        let state = state_json(presence_core::Availability::Busy, presence_core::Activity::InACall);
        let mut key = 0;
        while disk.lock_wal().log.len() < SPARE_MIN_BYTES * 3 / 4 {
            key += 1;
            put(&disk, &format!("t1/u{key}"), &state);
        }
        let segment = disk.lock_wal().log.len();
        close_and_checkpoint(&disk);
        let buffer = disk.redb.take_spare_buffer();
        assert!(buffer.is_empty());
        assert!(
            buffer.capacity() as u64 >= segment + segment / 2,
            "room for the next spare ({} bytes) in {}",
            segment + segment / 2,
            buffer.capacity()
        );
        drop(disk);
    }

    #[test]
    fn a_lagging_checkpoint_holds_at_most_one_queued_segments_frames() {
        let checkpoints = Checkpoints::default();
        let closed = |n: u64| Closed {
            seq: n,
            path: PathBuf::from(format!("segment{n}")),
            frames: Some(vec![1, 2, 3]),
        };
        checkpoints.queue(closed(1));
        checkpoints.queue(closed(2));
        checkpoints.queue(closed(3));
        let kept: Vec<bool> = checkpoints.lock().queued.iter().map(|c| c.frames.is_some()).collect();
        assert_eq!(
            kept,
            [true, false, false],
            "later ones are read from disk when their turn comes"
        );
    }

    /// Wait (bounded) until the checkpoint thread has a spare ready.
    fn await_spare(disk: &Disk) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while disk.checkpoints.lock().spare_ready.is_none() {
            assert!(Instant::now() < deadline, "no spare was prepared");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn new_segments_are_made_from_zero_filled_spares_this_process_prepared() {
        let dir = tempfile::tempdir().unwrap();
        // A spare from an earlier process: its blocks may never have reached the disk, so what
        // reads as zeros now need not after a crash. It is replaced, never used.
        std::fs::write(dir.path().join(wal::SPARE_NAME), b"PWAL left by a crash").unwrap();
        let (disk, _) = Disk::open(dir.path()).unwrap();
        await_spare(&disk);
        let spare = std::fs::read(dir.path().join(wal::SPARE_NAME)).unwrap();
        assert_eq!(spare.len() as u64, SPARE_MIN_BYTES);
        assert!(
            spare.iter().all(|&b| b == 0),
            "a fresh spare, zero-filled by this process"
        );

        let state = state_json(presence_core::Availability::Busy, presence_core::Activity::InACall);
        let batch = Batch {
            records: vec![Record {
                storage_key: "t1/u1".into(),
                state_json: state.clone(),
                outbox: None,
            }],
            durable: true,
            ..Batch::default()
        };
        disk.write_batch(&batch).unwrap();
        // Closing the segment (here on demand; normally every 2 s) starts the next from the spare.
        disk.checkpoint_now().unwrap();
        let current = disk.lock_wal().log.path().to_path_buf();
        assert_eq!(std::fs::metadata(&current).unwrap().len(), SPARE_MIN_BYTES);
        disk.write_batch(&batch).unwrap();
        assert_eq!(
            std::fs::metadata(&current).unwrap().len(),
            SPARE_MIN_BYTES,
            "written in place"
        );
        assert_eq!(wal::read_frames(&current).unwrap().len(), 1);
        // And the checkpoint thread prepares the next spare.
        await_spare(&disk);
        drop(disk);
        let (_disk, loaded) = Disk::open(dir.path()).unwrap();
        assert_eq!(serde_json::to_vec(&loaded.users[0].1).unwrap(), state);
    }
}
