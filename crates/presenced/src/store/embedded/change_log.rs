//! The change log's retained window, in memory: what followers and snapshots read.
//!
//! The writer thread appends each durable batch's changes here (one lock, one push per change),
//! then publishes the new head. Readers copy out reference-counted changes under a read lock
//! held for at most [`READ_CHUNK`] entries, so a reader never holds the writer up for longer
//! than that copy. The same changes are in the log's durable table (redb's `outbox`), which
//! refills this window at start.
use crate::store::{Change, LogError, Position};
use jiff::{SignedDuration, Timestamp};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::watch;

/// Most changes one read copies under the lock: a reader wanting more calls again.
pub const READ_CHUNK: usize = 1024;
/// The window never shrinks below this many changes, whatever the retention settings say: a
/// snapshot reads the last batch or two from it (a batch holds up to 4,096 changes).
pub const MIN_RETAINED: usize = 10_000;

/// How much of the log is kept, in memory and on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At most this many changes...
    pub count: usize,
    /// ...and none older than this.
    pub age: SignedDuration,
}

impl Default for Retention {
    /// Enough for an hour of a busy team's changes; a subscriber whose endpoint is down longer
    /// than the window covers gets a `missed` notice instead (docs/decisions.md, "Change log").
    fn default() -> Self {
        Self {
            count: 100_000,
            age: SignedDuration::from_hours(4),
        }
    }
}

pub struct LogWindow {
    entries: RwLock<VecDeque<Arc<Change>>>,
    /// The position of the newest appended change (appended, maybe not yet published).
    appended: AtomicU64,
    /// The newest published position: its change and state are visible to every reader.
    head: watch::Sender<Position>,
    retention: Retention,
}

impl LogWindow {
    /// A window holding `changes` (oldest first, contiguous positions) whose newest durable
    /// position is `head` (changes may have been pruned up to it).
    pub fn new(changes: Vec<Change>, head: Position, retention: Retention) -> Self {
        let entries: VecDeque<Arc<Change>> = changes.into_iter().map(Arc::new).collect();
        Self {
            entries: RwLock::new(entries),
            appended: AtomicU64::new(head.sequence()),
            head: watch::Sender::new(head),
            retention: Retention {
                count: retention.count.max(MIN_RETAINED),
                ..retention
            },
        }
    }

    pub fn head(&self) -> Position {
        self.head.borrow().clone()
    }

    pub fn appended(&self) -> Position {
        Position::from_sequence(self.appended.load(Ordering::Acquire))
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn wait_past(&self, position: &Position) {
        let mut rx = self.head.subscribe();
        // Only errs when the sender is gone (the store closed): then nothing more will come.
        let _ = rx.wait_for(|head| head > position).await;
    }

    /// Add a durable batch's changes (positions contiguous after the last one). Writer only.
    pub fn append(&self, changes: Vec<Arc<Change>>) {
        let Some(last) = changes.last().map(|c| c.position.clone()) else {
            return;
        };
        self.write().extend(changes);
        self.appended.store(last.sequence(), Ordering::Release);
    }

    /// Make everything appended visible to followers. Writer only, after the states are in memory.
    pub fn publish(&self) {
        let appended = self.appended();
        self.head.send_if_modified(|head| {
            let moved = *head < appended;
            *head = appended;
            moved
        });
    }

    /// Drop what the retention no longer covers; returns the oldest position kept (everything
    /// below it may go from disk too), if anything was dropped.
    pub fn prune(&self, now: Timestamp) -> Option<u64> {
        let cutoff = now - self.retention.age;
        let mut entries = self.write();
        let mut dropped = false;
        while entries.len() > MIN_RETAINED {
            let front = &entries[0];
            if entries.len() > self.retention.count || front.event.at < cutoff {
                entries.pop_front();
                dropped = true;
            } else {
                break;
            }
        }
        dropped.then(|| {
            entries
                .front()
                .map_or(self.appended.load(Ordering::Acquire) + 1, |c| c.position.sequence())
        })
    }

    /// Published changes after `position`, oldest first, at most `limit` (and [`READ_CHUNK`]).
    pub fn after(&self, position: &Position, limit: usize) -> Result<Vec<Arc<Change>>, LogError> {
        let head = self.head().sequence();
        let entries = self.read();
        if !position.is_sequence() {
            // Another backend's position (a token carried over from it): resynchronise.
            let oldest = entries.front().map_or(head, |c| c.position.sequence() - 1);
            return Err(LogError::Expired {
                oldest: Position::from_sequence(oldest),
            });
        }
        self.range(&entries, position.sequence(), head, limit)
    }

    /// Appended changes after `position` up to `through`, whether published yet or not: a
    /// snapshot's catch-up.
    pub fn appended_between(&self, position: Position, through: Position) -> Result<Vec<Arc<Change>>, LogError> {
        let entries = self.read();
        let mut out = Vec::new();
        let mut from = position.sequence();
        loop {
            let chunk = self.range(&entries, from, through.sequence(), usize::MAX)?;
            match chunk.last() {
                Some(last) if last.position < through => from = last.position.sequence(),
                _ => {
                    out.extend(chunk);
                    return Ok(out);
                }
            }
            out.extend(chunk);
        }
    }

    fn range(
        &self,
        entries: &VecDeque<Arc<Change>>,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Change>>, LogError> {
        let first = match entries.front() {
            Some(c) => c.position.sequence(),
            // Nothing retained: anything at or after the head is answerable (with nothing).
            None => through + 1,
        };
        if after + 1 < first && after < through {
            return Err(LogError::Expired {
                oldest: Position::from_sequence(first - 1),
            });
        }
        if after >= through {
            return Ok(Vec::new());
        }
        let start = (after + 1 - first) as usize;
        let end = ((through - first + 1) as usize).min(entries.len());
        let take = limit.min(READ_CHUNK).min(end.saturating_sub(start));
        Ok(entries.range(start..start + take).cloned().collect())
    }

    fn read(&self) -> RwLockReadGuard<'_, VecDeque<Arc<Change>>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, VecDeque<Arc<Change>>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}
