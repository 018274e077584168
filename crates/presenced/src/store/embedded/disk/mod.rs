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
//!
//! Module map:
//! - this file: the [`Disk`] the writer uses: open (replay, load), `write_batch`, closing segments.
//! - [`checkpoint`]: the redb file and the checkpoint thread that writes closed segments into it.
//! - [`tables`]: redb's tables, the schema version and its upgrades, reading everything at start.
//! - [`frame`]: how a batch is encoded as one log frame (operations on tables), and decoded.
mod checkpoint;
mod frame;
mod tables;

use super::wal::{self, Wal};
use crate::store::LifecycleNotice;
use crate::subscription::Subscription;
use checkpoint::*;
use frame::*;
use presence_core::{ChangeEvent, UserKey, UserPresence};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
pub use tables::FILE_NAME;
use tables::*;

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
    #[error(transparent)]
    Unsafe(#[from] crate::data_dir::UnsafeDataDir),
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
        crate::data_dir::prepare(dir)?;
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
            copy_buffer: Mutex::new(Vec::new()),
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
        redb.prepare_copy_buffer(SPARE_MIN_BYTES);
        log.keep_frames_in(redb.take_copy_buffer());
        redb.prepare_copy_buffer(SPARE_MIN_BYTES);
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
        next.keep_frames_in(self.redb.take_copy_buffer());
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

#[cfg(test)]
mod tests;
