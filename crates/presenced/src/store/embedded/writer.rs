//! The single writer thread: batches concurrent requests into one log append (group commit).
//!
//! An fsync costs the same for one record as for a thousand, so every request waiting when the
//! previous fsync finishes rides the next one. The writer is also the only code that changes the
//! in-memory map, the deadline index, the change log's window and the subscription tables, which
//! makes every compare-and-set exact without further locking.
//!
//! It knows nothing of who reads the change log: a committed change is appended to the log once,
//! and followers (the webhook dispatcher, streams) read it from there on their own threads.
use super::disk::{Batch, Disk, Record};
use super::key_hash::KeyHash;
use super::memory::Entry;
use super::records;
use super::subscriptions::{stored, watched};
use super::Shared;
use crate::clock::Clock;
use crate::store::{
    Change, CommitError, CreateError, LifecycleNotice, Limit, Limits, NewLifecycle, Owner, Position, StoreError,
    Stored, SubscriptionWrite, Versioned, WriteError,
};
use crate::subscription::Subscription;
use hashbrown::HashTable;
use presence_core::{TenantId, UserKey, UserPresence};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Upper bound of one batch: keeps a single transaction's memory and latency bounded under load.
const MAX_BATCH: usize = 4096;

type Reply<T> = oneshot::Sender<T>;
pub type CommitResult = Result<u64, CommitError>;

pub enum Request {
    Commit {
        commit: Commit,
        reply: Reply<CommitResult>,
    },
    /// Independent commits in one request (the sweeper's batches): each is checked and applied
    /// like a `Commit`, and the answer lists every outcome in order.
    CommitMany {
        commits: Vec<Commit>,
        reply: Reply<Vec<CommitResult>>,
    },
    CreateSubscription {
        subscription: Subscription,
        limits: Limits,
        reply: Reply<Result<Stored, CreateError>>,
    },
    WriteSubscription {
        write: SubscriptionWrite,
        reply: Reply<Result<Option<Stored>, WriteError>>,
    },
    /// Delivery positions moving forward: not synced (a lost one means a re-send).
    Acknowledge {
        progress: Vec<(String, u64)>,
        reply: Reply<Result<(), StoreError>>,
    },
    Skip {
        subscription_id: String,
        to: u64,
        missed: Option<NewLifecycle>,
        reply: Reply<Result<(), StoreError>>,
    },
    /// Sent lifecycle notices: not synced (a lost one means a re-send).
    FinishLifecycle {
        ids: Vec<u64>,
        reply: Reply<Result<(), StoreError>>,
    },
}

/// A commit with its records serialised by the caller before it queues: JSON encoding is the
/// largest per-write cost, and done there it runs on every core instead of on the one writer.
pub struct Commit {
    pub key: UserKey,
    /// The store's hash of the key, so the writer hashes nothing (`key_hash`).
    pub hash: KeyHash,
    pub expected_version: u64,
    pub state: UserPresence,
    pub storage_key: String,
    pub state_json: Vec<u8>,
    /// The change this commit appends to the log (its position is set by the writer) and its record.
    pub change: Option<(Arc<Change>, Vec<u8>)>,
}

impl Commit {
    pub fn encode(commit: crate::store::Commit, hash: KeyHash) -> Commit {
        let crate::store::Commit {
            key,
            expected_version,
            state,
            event,
        } = commit;
        let change = event.map(|event| {
            let json = records::event(&key, &event);
            let change = Change {
                position: Position::ZERO,
                key: key.clone(),
                event,
            };
            (Arc::new(change), json)
        });
        Commit {
            storage_key: key.storage_key(),
            state_json: records::state(&state),
            key,
            hash,
            expected_version,
            state,
            change,
        }
    }
}

/// Where a commit's outcome goes: its own reply, or a slot in a `CommitMany`'s answer.
enum Answer {
    One(Reply<CommitResult>),
    Part { group: usize, index: usize },
}

/// The outcomes of one `CommitMany`, sent together when the batch is settled.
struct Group {
    results: Vec<CommitResult>,
    reply: Reply<Vec<CommitResult>>,
}

/// One batch as the writer assembles it.
#[derive(Default)]
struct Pass {
    batch: Batch,
    effects: Vec<Effect>,
    /// Versions as this batch changes them, before they are published: (key hash, index in
    /// `effects` of the commit that set it, version). The key is the effect's, so none is cloned.
    versions: HashTable<(u64, usize, u64)>,
    /// The batch's changes, in position order, for the log window once durable.
    changes: Vec<Arc<Change>>,
    /// Subscriptions as this batch changes them (`None`: removed), before they are published.
    subscriptions: HashMap<String, Option<Stored>>,
    /// Subscriptions this batch adds (or removes, negative) per owner, per application and per
    /// watched user, for the limits of creations later in the batch.
    owner_delta: HashMap<Owner, isize>,
    application_delta: HashMap<(TenantId, String), isize>,
    watched_delta: HashMap<UserKey, isize>,
    groups: Vec<Group>,
}

impl Pass {
    /// The version `key` has as of this point in the batch, if the batch changed it.
    fn version(&self, hash: KeyHash, key: &UserKey) -> Option<u64> {
        let effects = &self.effects;
        self.versions
            .find(hash.0, |&(h, i, _)| {
                h == hash.0 && effects[i].committed_key() == Some(key)
            })
            .map(|&(_, _, version)| version)
    }

    /// Record that the commit at `effects[index]` gave its key `version`.
    fn set_version(&mut self, hash: KeyHash, index: usize, version: u64) {
        let effects = &self.effects;
        let key = effects[index].committed_key();
        match self.versions.entry(
            hash.0,
            |&(h, i, _)| h == hash.0 && effects[i].committed_key() == key,
            |&(h, _, _)| h,
        ) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => *slot.get_mut() = (hash.0, index, version),
            hashbrown::hash_table::Entry::Vacant(slot) => drop(slot.insert((hash.0, index, version))),
        }
    }

    fn settle(&mut self, answer: Answer, result: CommitResult) {
        match answer {
            Answer::One(reply) => drop(reply.send(result)),
            Answer::Part { group, index } => self.groups[group].results[index] = result,
        }
    }

    /// Answer every `CommitMany` of the batch (after its individual outcomes were settled).
    fn send_groups(&mut self) {
        for group in self.groups.drain(..) {
            let _ = group.reply.send(group.results);
        }
    }
}

/// What to do once the batch is durable, in request order.
enum Effect {
    Commit {
        key: UserKey,
        hash: KeyHash,
        version: u64,
        // Shared from here on: the memory map stores this very allocation. It also keeps the
        // effect small, as the other effects are.
        state: Arc<UserPresence>,
        answer: Answer,
    },
    SubscriptionCreated {
        stored: Stored,
        start: u64,
        reply: Reply<Result<Stored, CreateError>>,
    },
    SubscriptionWritten {
        id: String,
        stored: Option<Stored>,
        notice: Option<LifecycleNotice>,
        reply: Reply<Result<Option<Stored>, WriteError>>,
    },
    Progress {
        progress: Vec<(String, u64)>,
        notice: Option<LifecycleNotice>,
        reply: Reply<Result<(), StoreError>>,
    },
    Finished {
        ids: Vec<u64>,
        reply: Reply<Result<(), StoreError>>,
    },
}

impl Effect {
    fn committed_key(&self) -> Option<&UserKey> {
        match self {
            Effect::Commit { key, .. } => Some(key),
            _ => None,
        }
    }
}

pub struct Writer {
    disk: Arc<Disk>,
    shared: Arc<Shared>,
    clock: Clock,
    /// The position the next change takes.
    position_next: u64,
    /// The id the next lifecycle notice takes.
    notice_next: u64,
}

impl Writer {
    pub fn new(disk: Arc<Disk>, shared: Arc<Shared>, clock: Clock, position_next: u64, notice_next: u64) -> Self {
        Self {
            disk,
            shared,
            clock,
            position_next,
            notice_next,
        }
    }

    /// Runs until every sender is gone; then nothing is in flight, as each sender awaits its reply.
    pub fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            // Sized for what is already queued: growing a vector of requests showed in profiles.
            let mut batch = Vec::with_capacity((rx.len() + 1).min(MAX_BATCH));
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.process(batch);
        }
        // A clean stop leaves nothing to replay on the next start.
        if self.shared.crashing.load(Ordering::Acquire) {
            tracing::info!("stopping without a checkpoint, as a crash would");
        } else if let Err(e) = self.disk.checkpoint_now() {
            tracing::warn!(error = %e, "final checkpoint failed; the log will be replayed on start");
        }
        self.shared.ready.store(false, Ordering::Release);
    }

    fn process(&mut self, requests: Vec<Request>) {
        let (position_start, notice_start) = (self.position_next, self.notice_next);
        let mut pass = Pass {
            effects: Vec::with_capacity(requests.len()),
            ..Pass::default()
        };
        for request in requests {
            match request {
                Request::Commit { commit, reply } => self.accept(&mut pass, commit, Answer::One(reply)),
                Request::CommitMany { commits, reply } => {
                    let group = pass.groups.len();
                    pass.groups.push(Group {
                        results: vec![
                            Err(CommitError::Store(StoreError::Unavailable("not committed".into())));
                            commits.len()
                        ],
                        reply,
                    });
                    for (index, commit) in commits.into_iter().enumerate() {
                        self.accept(&mut pass, commit, Answer::Part { group, index });
                    }
                }
                Request::CreateSubscription {
                    subscription,
                    limits,
                    reply,
                } => self.create_subscription(&mut pass, subscription, limits, reply),
                Request::WriteSubscription { write, reply } => self.write_subscription(&mut pass, write, reply),
                Request::Acknowledge { progress, reply } => {
                    let progress: Vec<(String, u64)> = progress
                        .into_iter()
                        .filter(|(id, to)| {
                            self.current_subscription(&pass, id).is_some()
                                && self.shared.deliveries().progress(id).is_some_and(|at| at < *to)
                        })
                        .collect();
                    pass.batch.progress_put.extend(progress.iter().cloned());
                    pass.effects.push(Effect::Progress {
                        progress,
                        notice: None,
                        reply,
                    });
                }
                Request::Skip {
                    subscription_id,
                    to,
                    missed,
                    reply,
                } => {
                    let mut progress = Vec::new();
                    if self.current_subscription(&pass, &subscription_id).is_some() {
                        progress.push((subscription_id, to));
                    }
                    pass.batch.progress_put.extend(progress.iter().cloned());
                    let notice = missed.map(|m| self.queue_notice(&mut pass, m));
                    pass.effects.push(Effect::Progress {
                        progress,
                        notice,
                        reply,
                    });
                }
                Request::FinishLifecycle { ids, reply } => {
                    pass.batch.deliveries_delete.extend(ids.iter().copied());
                    pass.effects.push(Effect::Finished { ids, reply });
                }
            }
        }
        if pass.effects.is_empty() {
            pass.send_groups();
            return;
        }
        if let Some(prune_below) = self.shared.log.prune(self.clock.now()) {
            pass.batch.prune_outbox_below = prune_below;
        }
        // Only acknowledgements and finished notices may skip the sync: losing them to a crash
        // means a re-send, which at-least-once allows.
        pass.batch.durable = pass.effects.iter().any(|e| match e {
            Effect::Progress { notice, .. } => notice.is_some(),
            Effect::Finished { .. } => false,
            _ => true,
        }) || !pass.batch.subscriptions_put.is_empty()
            || !pass.batch.subscriptions_delete.is_empty();
        let started = std::time::Instant::now();
        let written = self.disk.write_batch(&pass.batch);
        self.shared
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.shared.metrics.batch_size.observe(pass.effects.len() as f64);
        let effects = std::mem::take(&mut pass.effects);
        if let Err(e) = written {
            // Nothing in this batch is durable: undo the positions and ids and fail every request,
            // so no client is told "200" for a write that a crash could lose.
            (self.position_next, self.notice_next) = (position_start, notice_start);
            tracing::error!(error = %e, requests = effects.len(), "commit failed");
            for effect in effects {
                fail(&mut pass, effect, &e.to_string());
            }
            pass.send_groups();
            return;
        }
        if pass.batch.durable {
            self.shared.commits.fetch_add(1, Ordering::Relaxed);
            self.shared.metrics.commits.inc();
        }
        self.publish(&mut pass, effects);
        pass.send_groups();
    }

    /// Check one commit against the current version (as this batch has changed it) and add it to
    /// the batch with its change; a stale one is a conflict, answered with the current state.
    fn accept(&mut self, pass: &mut Pass, commit: Commit, answer: Answer) {
        let Commit {
            key,
            hash,
            expected_version,
            state,
            storage_key,
            state_json,
            change,
        } = commit;
        let current = pass
            .version(hash, &key)
            .unwrap_or_else(|| self.shared.memory.version_hashed(hash, &key));
        if current != expected_version {
            let stored = self.current_state(pass, hash, &key, current);
            pass.settle(answer, Err(CommitError::Conflict(stored)));
            return;
        }
        let outbox = change.map(|(mut change, json)| {
            let position = self.position_next;
            self.position_next += 1;
            // The caller built the change and handed it over: it is not shared yet.
            if let Some(c) = Arc::get_mut(&mut change) {
                c.position = Position::from_sequence(position);
            }
            pass.changes.push(change);
            (position, json)
        });
        pass.batch.records.push(Record {
            storage_key,
            state_json,
            outbox,
        });
        pass.effects.push(Effect::Commit {
            key,
            hash,
            version: current + 1,
            state: Arc::new(state),
            answer,
        });
        pass.set_version(hash, pass.effects.len() - 1, current + 1);
    }

    /// The state a conflicting commit lost to: as this batch left it, or as published.
    fn current_state(&self, pass: &Pass, hash: KeyHash, key: &UserKey, version: u64) -> Versioned {
        let in_batch = pass.effects.iter().rev().find_map(|e| match e {
            Effect::Commit {
                key: k,
                version: v,
                state,
                ..
            } if k == key && *v == version => Some(state.clone()),
            _ => None,
        });
        match in_batch {
            Some(state) => Versioned { version, state },
            None => self
                .shared
                .memory
                .read_hashed(hash, key, |e| Versioned {
                    version: e.version,
                    state: e.state.clone(),
                })
                .unwrap_or_default(),
        }
    }

    /// The subscription as of this point in the batch.
    fn current_subscription(&self, pass: &Pass, id: &str) -> Option<Stored> {
        match pass.subscriptions.get(id) {
            Some(s) => s.clone(),
            None => self.shared.subscriptions().get(id),
        }
    }

    fn create_subscription(
        &mut self,
        pass: &mut Pass,
        subscription: Subscription,
        limits: Limits,
        reply: Reply<Result<Stored, CreateError>>,
    ) {
        if let Some(passed) = self.limit_passed(pass, &subscription, limits) {
            let _ = reply.send(Err(CreateError::LimitReached(passed)));
            return;
        }
        if self.current_subscription(pass, &subscription.id).is_some() {
            let _ = reply.send(Err(CreateError::Store(StoreError::Unavailable(
                "a subscription with this id exists".into(),
            ))));
            return;
        }
        count(pass, &subscription, 1);
        let id = subscription.id.clone();
        pass.batch.subscriptions_put.push((id.clone(), encode(&subscription)));
        // Owed from here on: every change committed after this point in the log.
        let start = self.position_next - 1;
        pass.batch.progress_put.push((id.clone(), start));
        let stored = stored(1, subscription);
        pass.subscriptions.insert(id, Some(stored.clone()));
        pass.effects.push(Effect::SubscriptionCreated { stored, start, reply });
    }

    fn write_subscription(
        &mut self,
        pass: &mut Pass,
        write: SubscriptionWrite,
        reply: Reply<Result<Option<Stored>, WriteError>>,
    ) {
        let (id, expected, lifecycle) = match &write {
            SubscriptionWrite::Replace {
                subscription,
                expected_version,
                lifecycle,
            } => (subscription.id.clone(), *expected_version, lifecycle.clone()),
            SubscriptionWrite::Remove {
                id,
                expected_version,
                lifecycle,
            } => (id.clone(), *expected_version, lifecycle.clone()),
        };
        let current = self.current_subscription(pass, &id);
        if current.as_ref().map(|s| s.version) != Some(expected) {
            let _ = reply.send(Err(WriteError::Conflict(current)));
            return;
        }
        let new = match write {
            SubscriptionWrite::Replace { subscription, .. } => {
                pass.batch.subscriptions_put.push((id.clone(), encode(&subscription)));
                Some(stored(expected + 1, *subscription))
            }
            SubscriptionWrite::Remove { .. } => {
                if let Some(old) = &current {
                    count(pass, &old.subscription, -1);
                }
                pass.batch.subscriptions_delete.push(id.clone());
                pass.batch.progress_delete.push(id.clone());
                None
            }
        };
        let notice = lifecycle.map(|l| self.queue_notice(pass, l));
        pass.subscriptions.insert(id.clone(), new.clone());
        pass.effects.push(Effect::SubscriptionWritten {
            id,
            stored: new,
            notice,
            reply,
        });
    }

    /// The first of `limits` that `subscription` would pass, as this batch leaves the table.
    fn limit_passed(&self, pass: &Pass, subscription: &Subscription, limits: Limits) -> Option<Limit> {
        let index = self.shared.subscriptions();
        let held = |stored: usize, delta: Option<&isize>| stored as isize + delta.copied().unwrap_or(0);
        let owner = Owner::of(subscription);
        if held(index.count(&owner), pass.owner_delta.get(&owner)) >= limits.per_owner as isize {
            return Some(Limit::Owner(limits.per_owner));
        }
        let app = (subscription.tenant.clone(), subscription.application_id.clone());
        let apps = index.count_application(&app.0, &app.1);
        if held(apps, pass.application_delta.get(&app)) >= limits.per_application as isize {
            return Some(Limit::Application(limits.per_application));
        }
        for key in watched(subscription) {
            if held(index.watchers(&key), pass.watched_delta.get(&key)) >= limits.per_watched_user as isize {
                return Some(Limit::WatchedUser(key.user, limits.per_watched_user));
            }
        }
        None
    }

    fn queue_notice(&mut self, pass: &mut Pass, notice: NewLifecycle) -> LifecycleNotice {
        // Never reused, even after every notice was sent and the store restarted: the next id
        // is past both the last one and the clock's microseconds, as sequence numbers are.
        let micros = u64::try_from(self.clock.now().as_microsecond()).unwrap_or(0);
        let id = self.notice_next.max(micros);
        self.notice_next = id + 1;
        let notice = LifecycleNotice { id, notice };
        pass.batch.deliveries_put.push((id, encode(&notice)));
        notice
    }

    fn publish(&self, pass: &mut Pass, effects: Vec<Effect>) {
        // The log first, then the states, then the head: a snapshot that reads a state from
        // memory finds its change already in the log (store::embedded::snapshot relies on it).
        self.shared.log.append(std::mem::take(&mut pass.changes));
        // Replaced states are freed after every reply is out: a state's last reference frees all
        // its sessions, memory that other threads allocated.
        let mut retired = Vec::with_capacity(effects.len());
        // Answered once the head is published, so a writer that got its answer finds its change
        // in the log (and a follower starting from the head it reads next does not see it again).
        let mut answers = Vec::with_capacity(effects.len());
        let (mut subscriptions_changed, mut notices_added) = (false, false);
        for effect in effects {
            match effect {
                Effect::Commit {
                    key,
                    hash,
                    version,
                    state,
                    answer,
                } => {
                    // Before the put, which takes the key. A sweeper that sees the deadline first
                    // loads the old state and loses the compare-and-set, as in any race with a write.
                    if self.shared.deadlines.set(hash, &key, state.next_deadline()) {
                        self.shared.deadline_moved.notify_one();
                    }
                    let after = state.sessions().len() as i64;
                    let replaced = self.shared.memory.put_hashed(hash, key, Entry { version, state });
                    let before = replaced.as_ref().map_or(0, |e| e.state.sessions().len() as i64);
                    self.shared.sessions.fetch_add(after - before, Ordering::Relaxed);
                    answers.push((answer, version));
                    retired.push(replaced);
                }
                Effect::SubscriptionCreated { stored, start, reply } => {
                    self.shared.deliveries_mut().start(&stored.subscription.id, start);
                    self.shared.subscriptions_mut().put(stored.clone());
                    subscriptions_changed = true;
                    let _ = reply.send(Ok(stored));
                }
                Effect::SubscriptionWritten {
                    id,
                    stored,
                    notice,
                    reply,
                } => {
                    match &stored {
                        Some(s) => self.shared.subscriptions_mut().put(s.clone()),
                        None => {
                            self.shared.subscriptions_mut().remove(&id);
                            self.shared.deliveries_mut().forget(&id);
                        }
                    }
                    if let Some(notice) = notice {
                        self.shared.deliveries_mut().queue(notice);
                        notices_added = true;
                    }
                    subscriptions_changed = true;
                    let _ = reply.send(Ok(stored));
                }
                Effect::Progress {
                    progress,
                    notice,
                    reply,
                } => {
                    let mut book = self.shared.deliveries_mut();
                    for (id, to) in progress {
                        book.advance(&id, to);
                    }
                    if let Some(notice) = notice {
                        book.queue(notice);
                        notices_added = true;
                    }
                    let _ = reply.send(Ok(()));
                }
                Effect::Finished { ids, reply } => {
                    let mut book = self.shared.deliveries_mut();
                    for id in ids {
                        book.finish(id);
                    }
                    let _ = reply.send(Ok(()));
                }
            }
        }
        self.shared.log.publish();
        for (answer, version) in answers {
            pass.settle(answer, Ok(version));
        }
        // Hints: wake whoever waits now, and leave a permit for one that is busy and waits next.
        if subscriptions_changed {
            self.shared.subscriptions_changed.notify_waiters();
            self.shared.subscriptions_changed.notify_one();
        }
        if notices_added {
            self.shared.lifecycle_added.notify_waiters();
            self.shared.lifecycle_added.notify_one();
        }
        drop(retired);
    }
}

/// Record in the batch's tallies that `subscription` comes (+1) or goes (-1).
fn count(pass: &mut Pass, subscription: &Subscription, by: isize) {
    *pass.owner_delta.entry(Owner::of(subscription)).or_insert(0) += by;
    let app = (subscription.tenant.clone(), subscription.application_id.clone());
    *pass.application_delta.entry(app).or_insert(0) += by;
    for key in watched(subscription) {
        *pass.watched_delta.entry(key).or_insert(0) += by;
    }
}

/// Our own types always serialise; a failure here would be a bug, not an input problem.
fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialise to JSON")
}

fn fail(pass: &mut Pass, effect: Effect, message: &str) {
    let err = StoreError::Unavailable(message.to_owned());
    match effect {
        Effect::Commit { answer, .. } => pass.settle(answer, Err(CommitError::Store(err))),
        Effect::SubscriptionCreated { reply, .. } => drop(reply.send(Err(CreateError::Store(err)))),
        Effect::SubscriptionWritten { reply, .. } => drop(reply.send(Err(WriteError::Store(err)))),
        Effect::Progress { reply, .. } | Effect::Finished { reply, .. } => drop(reply.send(Err(err))),
    }
}

pub const THREAD_NAME: &str = "presenced-writer";

pub fn spawn(writer: Writer, rx: mpsc::Receiver<Request>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || writer.run(rx))
}
