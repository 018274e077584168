//! The single writer thread: batches concurrent commits into one redb transaction (group commit).
//!
//! redb admits one write transaction at a time, and an fsync costs the same for one record as
//! for a thousand, so every commit waiting when the previous fsync finishes rides the next one.
//! The writer is also the only code that mutates the in-memory map and the deadline index, which
//! makes the compare-and-set check exact without further locking.
use super::disk::{Disk, Record};
use super::memory::Entry;
use super::Shared;
use crate::store::{Commit, StoreError};
use presence_core::UserKey;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Upper bound of one batch: keeps a single transaction's memory and latency bounded under load.
const MAX_BATCH: usize = 4096;
/// How many change events the outbox keeps once delivered history is no longer needed. Until a
/// notifier consumes the outbox this is the retention window; it bounds the file either way.
pub const OUTBOX_RETAIN: u64 = 100_000;

pub struct Request {
    pub commit: Commit,
    pub reply: oneshot::Sender<Result<u64, StoreError>>,
}

pub struct Writer {
    disk: Arc<Disk>,
    shared: Arc<Shared>,
    outbox_next: u64,
}

impl Writer {
    pub fn new(disk: Arc<Disk>, shared: Arc<Shared>, outbox_next: u64) -> Self {
        Self {
            disk,
            shared,
            outbox_next,
        }
    }

    /// Runs until every sender is gone; then nothing is in flight, as each sender awaits its reply.
    pub fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.process(batch);
        }
        self.shared.ready.store(false, Ordering::Release);
    }

    fn process(&mut self, batch: Vec<Request>) {
        let mut versions: HashMap<UserKey, u64> = HashMap::new();
        let mut accepted = Vec::with_capacity(batch.len());
        let mut records = Vec::with_capacity(batch.len());
        let first_outbox_id = self.outbox_next;
        for request in batch {
            let key = &request.commit.key;
            let current = versions
                .get(key)
                .copied()
                .unwrap_or_else(|| self.shared.memory.version(key));
            if current != request.commit.expected_version {
                let _ = request.reply.send(Err(StoreError::Conflict));
                continue;
            }
            match self.encode(&request.commit) {
                Ok(record) => {
                    versions.insert(key.clone(), current + 1);
                    records.push(record);
                    accepted.push((request, current + 1));
                }
                Err(e) => {
                    let _ = request.reply.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        let prune_below = self.outbox_next.saturating_sub(OUTBOX_RETAIN);
        if let Err(e) = self.disk.write_batch(&records, prune_below) {
            // Nothing in this batch is durable: undo the outbox ids and fail every request, so
            // no client is told "200" for a write that a crash could lose.
            self.outbox_next = first_outbox_id;
            tracing::error!(error = %e, batch = accepted.len(), "commit failed");
            for (request, _) in accepted {
                let _ = request.reply.send(Err(StoreError::Unavailable(e.to_string())));
            }
            return;
        }
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        for (request, version) in accepted {
            let Commit { key, state, .. } = request.commit;
            let deadline = state.next_deadline();
            self.shared.memory.put(
                key.clone(),
                Entry {
                    version,
                    state: Arc::new(state),
                },
            );
            if self.shared.deadlines.set(&key, deadline) {
                self.shared.deadline_moved.notify_one();
            }
            let _ = request.reply.send(Ok(version));
        }
    }

    fn encode(&mut self, commit: &Commit) -> Result<Record, StoreError> {
        let encode_err = |e: serde_json::Error| StoreError::Unavailable(format!("encoding failed: {e}"));
        let state_json = serde_json::to_vec(&commit.state).map_err(encode_err)?;
        let outbox = match &commit.event {
            Some(event) => {
                let json = serde_json::to_vec(&(&commit.key, event)).map_err(encode_err)?;
                let id = self.outbox_next;
                self.outbox_next += 1;
                Some((id, json))
            }
            None => None,
        };
        Ok(Record {
            storage_key: commit.key.storage_key(),
            state_json,
            outbox,
        })
    }
}

pub const THREAD_NAME: &str = "presenced-writer";

pub fn spawn(writer: Writer, rx: mpsc::Receiver<Request>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || writer.run(rx))
}
