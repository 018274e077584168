//! The redb file and the checkpoint thread: closed log segments are merged (each key once) and
//! written into redb in one transaction each, off the writer's thread, unsynced; every few
//! segments one synced commit covers them and they are deleted.
use super::*;
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use std::sync::atomic::Ordering;
use std::sync::{Condvar, RwLockReadGuard};

/// The redb file, shared by the writer side and the checkpoint thread.
pub(super) struct Redb {
    pub(super) path: PathBuf,
    pub(super) open_database: OpenDatabase,
    /// A write failed; redb must be reopened before the next one.
    pub(super) broken: AtomicBool,
    // Read-locked by every transaction; write-locked only to reopen the file after a failed
    // commit (redb must be reopened to rebuild its allocator state, e.g. after the disk was full).
    pub(super) db: RwLock<Option<Database>>,
    /// The memory for the next segment's copy of its frames (or the next read of a segment):
    /// the last checkpoint's, recycled and prepared ([`Redb::prepare_copy_buffer`]). A fresh
    /// buffer of up to 33 MiB per checkpoint was mapped and zeroed by the kernel each time: ~2%
    /// of the server's CPU under a steady write load. Empty when the checkpoint lags: the next
    /// segment then keeps no copy.
    pub(super) copy_buffer: Mutex<Vec<u8>>,
    /// Segments checkpointed by commits redb has not synced yet, oldest first.
    pub(super) unsynced: Mutex<Unsynced>,
}

/// What a crash would make the next start replay: segments in redb only by unsynced commits,
/// which a crash (or a reopen after an I/O error) forgets. Each stays on disk until a synced commit covers it.
#[derive(Default)]
pub(super) struct Unsynced {
    /// Number and path, oldest first.
    pub(super) segments: Vec<(u64, PathBuf)>,
    pub(super) bytes: u64,
}

/// A closed segment waiting for its checkpoint.
pub(super) struct Closed {
    pub(super) seq: u64,
    pub(super) path: PathBuf,
    /// The segment's frames as the writer kept them, so the checkpoint need not read the file.
    /// `None` means read it: after a restart or a failed checkpoint, when the segment outgrew
    /// its buffer or had none ready, or when checkpoints lag and holding every queued segment's
    /// frames would let memory grow without bound.
    pub(super) frames: Option<Vec<u8>>,
}

/// Hands closed segments from the writer to the checkpoint thread, oldest first. The writer
/// closes a segment when it is old and nothing is waiting, or when it is big whatever is waiting:
/// so a lagging checkpoint (a storm of distinct users) queues bounded segments on disk instead of
/// growing one without limit, which the checkpoint would then have to read into memory at once.
#[derive(Default)]
pub(super) struct Checkpoints {
    pub(super) state: Mutex<CheckpointState>,
    pub(super) changed: Condvar,
}

#[derive(Default)]
pub(super) struct CheckpointState {
    /// Closed segments waiting for (or, after a failure, waiting again for) their checkpoint.
    pub(super) queued: std::collections::VecDeque<Closed>,
    /// The checkpoint thread is writing a segment to redb.
    pub(super) busy: bool,
    pub(super) stop: bool,
    /// The writer used (or never had) the spare and wants one of this size.
    pub(super) spare_wanted: Option<u64>,
    /// A spare is durable and ready for the next segment, to be written in this mode.
    pub(super) spare_ready: bool,
}

impl Checkpoints {
    pub(super) fn lock(&self) -> MutexGuard<'_, CheckpointState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn idle(&self) -> bool {
        let s = self.lock();
        s.queued.is_empty() && !s.busy
    }

    /// Queue a closed segment, keeping its frames only if none are queued yet: besides the
    /// writer's own copy, at most two are then held, the one being checkpointed and the next.
    pub(super) fn queue(&self, mut closed: Closed) {
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
    pub(super) fn requeue(&self, failed: impl DoubleEndedIterator<Item = (u64, PathBuf)>) {
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
    pub(super) fn take_when_not_busy(&self) -> std::collections::VecDeque<Closed> {
        let mut s = self.lock();
        while s.busy {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        std::mem::take(&mut s.queued)
    }

    /// Make segment `seq` from the spare, if one is ready. The rename happens under the lock,
    /// which the checkpoint thread also holds when it starts filling a new spare: so a spare is
    /// never renamed into place while zeros are still being written to it.
    pub(super) fn take_spare(&self, dir: &Path, seq: u64) -> Option<std::io::Result<Wal>> {
        let mut s = self.lock();
        std::mem::take(&mut s.spare_ready).then(|| Wal::from_spare(dir, seq))
    }

    /// Ask the checkpoint thread for a new spare of about `bytes`.
    pub(super) fn want_spare(&self, bytes: u64) {
        self.lock().spare_wanted = Some(bytes.clamp(SPARE_MIN_BYTES, SPARE_MAX_BYTES));
        self.changed.notify_all();
    }

    /// Prepare the spare the writer asked for (outside the lock: it writes and syncs megabytes).
    /// Comes before checkpoints, which can take seconds: the writer needs the spare sooner.
    /// A failure (a full disk) only means the next segment grows as it is written.
    pub(super) fn prepare_spare(&self, dir: &Path, bytes: u64) {
        let prepared = wal::prepare_spare(dir, bytes);
        if let Err(e) = &prepared {
            tracing::warn!(error = %e, "cannot preallocate the next log segment; it will grow as written");
            let _ = wal::remove_spare(dir);
        }
        self.lock().spare_ready = prepared.is_ok();
    }

    /// The checkpoint thread: write each closed segment to redb (deleting segments once a synced
    /// commit covers them). A failure (a full disk, say) leaves the segment queued and is
    /// retried; the data is safe in the log.
    pub(super) fn run(&self, redb: &Redb, dir: &Path) {
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
                    if let Some(bytes) = s.spare_wanted.take().filter(|_| !s.spare_ready) {
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
            redb.prepare_copy_buffer(spare_bytes);
            self.lock().busy = false;
            self.changed.notify_all();
        }
    }
}

impl Redb {
    /// The open database (read guard). Errors only if a reopen after a failure also failed.
    pub(super) fn db(&self) -> Result<DbGuard<'_>, redb::Error> {
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
    pub(super) fn reopen_db(&self) -> Result<(), redb::Error> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        drop(slot.take());
        *slot = Some((self.open_database)(&self.path)?);
        Ok(())
    }
}

impl Redb {
    /// Apply every segment left in `dir` that redb does not hold yet (oldest first), make it
    /// durable, and delete them all. Returns the number the next segment takes: numbers only grow,
    /// even across restarts, because redb records the newest segment it holds by number.
    pub(super) fn replay(&self, dir: &Path) -> Result<u64, CheckpointError> {
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
    pub(super) fn log_applied_through(&self) -> Result<Option<u64>, redb::Error> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(LOG_APPLIED_THROUGH_KEY)?.map(|v| v.value()))
    }

    /// Write closed segment `seq` to redb in one transaction: `frames` if the writer kept them,
    /// else what the file holds. The commit is synced (and the segments it covers deleted) only
    /// every [`SYNC_EVERY_SEGMENTS`] segments or [`SYNC_EVERY_BYTES`]; until then a crash forgets
    /// it and the next start replays the segment.
    pub(super) fn checkpoint_segment(
        &self,
        seq: u64,
        segment: &Path,
        frames: Option<Vec<u8>>,
    ) -> Result<(), CheckpointError> {
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
    pub(super) fn sync(&self) -> Result<(), CheckpointError> {
        let mut unsynced = self.lock_unsynced();
        if unsynced.segments.is_empty() {
            return Ok(());
        }
        self.reopen_if_broken(&unsynced)?;
        self.commit(&Pending::default(), None, true)?;
        delete_synced(&mut unsynced);
        Ok(())
    }

    pub(super) fn lock_unsynced(&self) -> MutexGuard<'_, Unsynced> {
        self.unsynced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a failed commit, reopen redb; the reopened file is at its last synced commit, so the
    /// segments checkpointed since are written again first, in order. Only those: a listed one
    /// the synced commit already covers (its deletion failed) would roll back newer state.
    pub(super) fn reopen_if_broken(&self, unsynced: &Unsynced) -> Result<(), CheckpointError> {
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
    pub(super) fn load_segment(&self, segment: &Path, kept: Option<Vec<u8>>) -> Result<wal::Segment, CheckpointError> {
        match kept {
            Some(bytes) => wal::parse_frames(segment, bytes),
            None => wal::read_frames_into(segment, self.take_copy_buffer()),
        }
        .map_err(CheckpointError::Wal)
    }

    /// Merge segment `seq`'s frames (each key once, its latest value) and commit them, with the
    /// segment's number.
    pub(super) fn apply_segment(
        &self,
        seq: u64,
        segment: &Path,
        frames: wal::Segment,
        sync: bool,
    ) -> Result<(), CheckpointError> {
        let mut pending = Pending::default();
        for frame in frames.frames() {
            let ops = decode_ops(frame).map_err(|reason| CheckpointError::Frame(segment.to_path_buf(), reason))?;
            pending.merge(&ops);
        }
        self.commit(&pending, Some(seq), sync)?;
        // `pending` borrowed from the buffer; written, it is done with it. It goes back for a
        // later segment (the larger of it and one already waiting; `prepare_copy_buffer` sizes it).
        drop(pending);
        let buffer = frames.into_buffer();
        let mut waiting = self.copy_buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.capacity() > waiting.capacity() {
            *waiting = buffer;
        }
        Ok(())
    }

    pub(super) fn take_copy_buffer(&self) -> Vec<u8> {
        std::mem::take(&mut *self.copy_buffer.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Give the copy buffer room for `bytes` of frames (at most a spare segment's), in memory the kernel
    /// has already mapped. Runs on the checkpoint thread, so that the writer, which copies each
    /// frame into it, never takes a page fault: mapping fresh memory (the kernel zeroes each
    /// page first) cost it 10-100 ms at a time on this project's virtual machine.
    pub(super) fn prepare_copy_buffer(&self, bytes: u64) {
        let bytes = usize::try_from(bytes.min(SPARE_MAX_BYTES)).unwrap_or(0);
        let mut buffer = self.take_copy_buffer();
        // One far larger than needed (load fell, or a file read grew it) is replaced too: the
        // buffers held stay within twice a spare segment each.
        if buffer.capacity() < bytes || buffer.capacity() > 2 * bytes {
            buffer = Vec::with_capacity(bytes);
        }
        // The writer may fill it up to its capacity. Its first `len` bytes were written already
        // (a segment's frames, or a file read into it); writing the rest is what makes the
        // kernel map it.
        buffer.resize(buffer.capacity(), 0);
        buffer.clear();
        *self.copy_buffer.lock().unwrap_or_else(|e| e.into_inner()) = buffer;
    }

    /// Commit `pending` in one transaction, with the number of the segment it came from and a
    /// count of checkpoints (so there is always something to commit); synced or not. A failure
    /// marks redb for a reopen.
    pub(super) fn commit(
        &self,
        pending: &Pending<'_>,
        segment: Option<u64>,
        sync: bool,
    ) -> Result<(), CheckpointError> {
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
pub(super) fn holds(held: Option<u64>, seq: u64) -> bool {
    held.is_some_and(|held| seq <= held)
}

/// Delete the segments a synced commit now covers. No directory sync: a deletion a crash undoes
/// is harmless, since the start skips segments numbered at or below what redb holds. One that
/// cannot be deleted stays listed for the next sync.
pub(super) fn delete_synced(unsynced: &mut Unsynced) {
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

/// A read guard that derefs to the open database.
pub(super) struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        // `Disk::db` returns a guard only when the slot holds a database.
        self.0.as_ref().expect("checked in Disk::db")
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum CheckpointError {
    #[error(transparent)]
    Wal(wal::WalError),
    #[error("a frame of the write-ahead log {0} does not decode: {1}")]
    Frame(PathBuf, String),
    #[error("log segment file: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Db(#[from] redb::Error),
}
