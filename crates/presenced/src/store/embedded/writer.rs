//! The single writer thread: batches concurrent requests into one log append (group commit).
//!
//! An fsync costs the same for one record as for a thousand, so every request waiting when the
//! previous fsync finishes rides the next one.
//! The writer is also the only code that mutates the in-memory map, the deadline index and the
//! subscription index, which makes the compare-and-set check exact without further locking, and
//! lets it fan a change out to its subscribers inside the very transaction that records it.
use super::disk::{Batch, Disk, Record};
use super::key_hash::KeyHash;
use super::memory::Entry;
use super::records;
use super::Shared;
use crate::notify::subscription::Subscription;
use crate::store::{Commit, Delivery, DeliveryKind, NewDelivery, StoreError};
use hashbrown::HashTable;
use presence_core::{ChangeEvent, UserKey, UserPresence};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Upper bound of one batch: keeps a single transaction's memory and latency bounded under load.
const MAX_BATCH: usize = 4096;
/// How many change events the outbox keeps. The outbox is the change log (deliveries are fanned
/// out at commit time); this bounds the file.
pub const OUTBOX_RETAIN: u64 = 100_000;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub enum Request {
    Commit {
        commit: Commit,
        encoded: Encoded,
        reply: Reply<u64>,
    },
    /// Independent commits in one request (the sweeper's batches): each is checked and applied
    /// like a `Commit`, and the answer lists every outcome in order.
    CommitMany {
        commits: Vec<(Commit, Encoded)>,
        reply: Reply<Vec<Result<u64, StoreError>>>,
    },
    PutSubscription {
        subscription: Subscription,
        reply: Reply<()>,
    },
    DeleteSubscription {
        id: String,
        reply: Reply<Option<Subscription>>,
    },
    Enqueue {
        deliveries: Vec<NewDelivery>,
        reply: Reply<Vec<Delivery>>,
    },
    Finish {
        ids: Vec<u64>,
        reply: Reply<()>,
    },
}

/// A commit's records, serialised by the caller before it queues: JSON encoding is the largest
/// per-write cost, and done here it runs on every core instead of on the one writer thread.
pub struct Encoded {
    /// The store's hash of the key, so the writer hashes nothing (`key_hash`).
    hash: KeyHash,
    storage_key: String,
    state_json: Vec<u8>,
    event_json: Option<Vec<u8>>,
}

impl Encoded {
    /// `hash` is the store's hash of `commit.key` (`Memory::hash`).
    pub fn of(commit: &Commit, hash: KeyHash) -> Encoded {
        Encoded {
            hash,
            storage_key: commit.key.storage_key(),
            state_json: records::state(&commit.state),
            event_json: commit.event.as_ref().map(|event| records::event(&commit.key, event)),
        }
    }
}

/// Where a commit's outcome goes.
enum Answer {
    One(Reply<u64>),
    /// Item `index` of the `CommitMany` collected in `Pass::groups[group]`.
    Part {
        group: usize,
        index: usize,
    },
}

/// The outcomes of one `CommitMany`, sent together when the batch is settled.
struct Group {
    results: Vec<Result<u64, StoreError>>,
    reply: Reply<Vec<Result<u64, StoreError>>>,
}

/// One batch as the writer assembles it.
#[derive(Default)]
struct Pass {
    batch: Batch,
    effects: Vec<Effect>,
    new_deliveries: Vec<Delivery>,
    /// Versions as this batch changes them, before they are published: (key hash, index in
    /// `effects` of the commit that set it, version). The key is the effect's, so none is cloned.
    versions: HashTable<(u64, usize, u64)>,
    /// Subscriptions as this batch changes them, before they are published.
    subscription_overlay: HashMap<String, Option<Arc<Subscription>>>,
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

    fn settle(&mut self, answer: Answer, result: Result<u64, StoreError>) {
        match answer {
            Answer::One(reply) => drop(reply.send(result)),
            Answer::Part { group, index } => self.groups[group].results[index] = result,
        }
    }

    /// Answer every `CommitMany` of the batch (after its individual outcomes were settled).
    fn send_groups(&mut self) {
        for group in self.groups.drain(..) {
            let _ = group.reply.send(Ok(group.results));
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
    PutSubscription {
        subscription: Arc<Subscription>,
        reply: Reply<()>,
    },
    DeleteSubscription {
        id: String,
        reply: Reply<Option<Subscription>>,
    },
    Enqueue {
        deliveries: Vec<Delivery>,
        reply: Reply<Vec<Delivery>>,
    },
    Finish {
        reply: Reply<()>,
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
    outbox_next: u64,
    delivery_next: u64,
    feed: mpsc::UnboundedSender<Vec<Delivery>>,
}

impl Writer {
    pub fn new(
        disk: Arc<Disk>,
        shared: Arc<Shared>,
        outbox_next: u64,
        delivery_next: u64,
        feed: mpsc::UnboundedSender<Vec<Delivery>>,
    ) -> Self {
        Self {
            disk,
            shared,
            outbox_next,
            delivery_next,
            feed,
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
        if let Err(e) = self.disk.checkpoint_now() {
            tracing::warn!(error = %e, "final checkpoint failed; the log will be replayed on start");
        }
        self.shared.ready.store(false, Ordering::Release);
    }

    fn process(&mut self, requests: Vec<Request>) {
        let (outbox_start, delivery_start) = (self.outbox_next, self.delivery_next);
        let mut pass = Pass {
            batch: Batch {
                prune_outbox_below: self.outbox_next.saturating_sub(OUTBOX_RETAIN),
                ..Batch::default()
            },
            effects: Vec::with_capacity(requests.len()),
            ..Pass::default()
        };
        for request in requests {
            match request {
                Request::Commit { commit, encoded, reply } => {
                    self.accept(&mut pass, commit, encoded, Answer::One(reply))
                }
                Request::CommitMany { commits, reply } => {
                    let group = pass.groups.len();
                    pass.groups.push(Group {
                        results: vec![Err(StoreError::Conflict); commits.len()],
                        reply,
                    });
                    for (index, (commit, encoded)) in commits.into_iter().enumerate() {
                        self.accept(&mut pass, commit, encoded, Answer::Part { group, index });
                    }
                }
                Request::PutSubscription { subscription, reply } => {
                    pass.batch
                        .subscriptions_put
                        .push((subscription.id.clone(), encode(&subscription)));
                    let subscription = Arc::new(subscription);
                    pass.subscription_overlay
                        .insert(subscription.id.clone(), Some(subscription.clone()));
                    pass.effects.push(Effect::PutSubscription { subscription, reply });
                }
                Request::DeleteSubscription { id, reply } => {
                    pass.batch.subscriptions_delete.push(id.clone());
                    pass.subscription_overlay.insert(id.clone(), None);
                    pass.effects.push(Effect::DeleteSubscription { id, reply });
                }
                Request::Enqueue { deliveries, reply } => {
                    let assigned: Vec<Delivery> = deliveries.into_iter().map(|d| self.assign(d)).collect();
                    for d in &assigned {
                        pass.batch.deliveries_put.push((d.id, encode(d)));
                    }
                    pass.new_deliveries.extend(assigned.iter().cloned());
                    pass.effects.push(Effect::Enqueue {
                        deliveries: assigned,
                        reply,
                    });
                }
                Request::Finish { ids, reply } => {
                    pass.batch.deliveries_delete.extend(ids);
                    pass.effects.push(Effect::Finish { reply });
                }
            }
        }
        if pass.effects.is_empty() {
            pass.send_groups();
            return;
        }
        pass.batch.durable = pass.effects.iter().any(|e| !matches!(e, Effect::Finish { .. }));
        let started = std::time::Instant::now();
        let written = self.disk.write_batch(&pass.batch);
        self.shared
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.shared.metrics.batch_size.observe(pass.effects.len() as f64);
        let effects = std::mem::take(&mut pass.effects);
        if let Err(e) = written {
            // Nothing in this batch is durable: undo the ids and fail every request, so no client
            // is told "200" for a write that a crash could lose.
            (self.outbox_next, self.delivery_next) = (outbox_start, delivery_start);
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
        if !pass.new_deliveries.is_empty() {
            // The dispatcher may be gone at shutdown; the deliveries are durable and resume on start.
            let _ = self.feed.send(std::mem::take(&mut pass.new_deliveries));
        }
    }

    /// Check one commit against the current version (as this batch has changed it) and add it to
    /// the batch with its change event and the deliveries it owes; a stale one is a conflict.
    fn accept(&mut self, pass: &mut Pass, commit: Commit, encoded: Encoded, answer: Answer) {
        let key = &commit.key;
        let hash = encoded.hash;
        let current = pass
            .version(hash, key)
            .unwrap_or_else(|| self.shared.memory.version_hashed(hash, key));
        if current != commit.expected_version {
            pass.settle(answer, Err(StoreError::Conflict));
            return;
        }
        let record = self.record(encoded);
        if let Some(event) = commit.event.as_ref().filter(|e| e.availability_or_activity_changed()) {
            for delivery in self.fan_out(key, event, &pass.subscription_overlay) {
                pass.batch.deliveries_put.push((delivery.id, encode(&delivery)));
                pass.new_deliveries.push(delivery);
            }
        }
        pass.batch.records.push(record);
        let Commit { key, state, .. } = commit;
        pass.effects.push(Effect::Commit {
            key,
            hash,
            version: current + 1,
            state: Arc::new(state),
            answer,
        });
        pass.set_version(hash, pass.effects.len() - 1, current + 1);
    }

    fn publish(&self, pass: &mut Pass, effects: Vec<Effect>) {
        // Replaced states are freed after every reply is out: a state's last reference frees all
        // its sessions, memory that other threads allocated.
        let mut retired = Vec::with_capacity(effects.len());
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
                    pass.settle(answer, Ok(version));
                    retired.push(replaced);
                }
                Effect::PutSubscription { subscription, reply } => {
                    self.shared.subscriptions_mut().put(subscription);
                    let _ = reply.send(Ok(()));
                }
                Effect::DeleteSubscription { id, reply } => {
                    let removed = self.shared.subscriptions_mut().remove(&id);
                    let _ = reply.send(Ok(removed.map(|s| (*s).clone())));
                }
                Effect::Enqueue { deliveries, reply } => {
                    let _ = reply.send(Ok(deliveries));
                }
                Effect::Finish { reply } => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    /// One delivery per live subscription of this user, as of this point in the batch.
    fn fan_out(
        &mut self,
        key: &UserKey,
        event: &ChangeEvent,
        overlay: &HashMap<String, Option<Arc<Subscription>>>,
    ) -> Vec<Delivery> {
        let mut subscribers = self.shared.subscriptions().matching(&key.tenant, &key.user);
        subscribers.retain(|s| !overlay.contains_key(&s.id));
        subscribers.extend(
            overlay
                .values()
                .flatten()
                .filter(|s| s.tenant == key.tenant && s.users.contains(&key.user))
                .cloned(),
        );
        subscribers.sort_by(|a, b| a.id.cmp(&b.id));
        subscribers
            .into_iter()
            .filter(|s| s.expiration > event.at)
            .map(|s| {
                self.assign(NewDelivery {
                    url: s.notification_url.clone(),
                    subscription_id: s.id.clone(),
                    created_at: event.at,
                    kind: DeliveryKind::Change {
                        user: key.user.clone(),
                        availability: event.view.availability,
                        activity: event.view.activity,
                        sequence: event.view.sequence,
                    },
                })
            })
            .collect()
    }

    fn assign(&mut self, d: NewDelivery) -> Delivery {
        let id = self.delivery_next;
        self.delivery_next += 1;
        Delivery {
            id,
            url: d.url,
            subscription_id: d.subscription_id,
            created_at: d.created_at,
            kind: d.kind,
        }
    }

    /// The batch record of an accepted commit; its change event takes the next outbox id.
    fn record(&mut self, encoded: Encoded) -> Record {
        let outbox = encoded.event_json.map(|json| {
            let id = self.outbox_next;
            self.outbox_next += 1;
            (id, json)
        });
        Record {
            storage_key: encoded.storage_key,
            state_json: encoded.state_json,
            outbox,
        }
    }
}

/// Our own types always serialise; a failure here would be a bug, not an input problem.
fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialise to JSON")
}

fn fail(pass: &mut Pass, effect: Effect, message: &str) {
    let err = StoreError::Unavailable(message.to_owned());
    match effect {
        Effect::Commit { answer, .. } => pass.settle(answer, Err(err)),
        Effect::PutSubscription { reply, .. } => drop(reply.send(Err(err))),
        Effect::DeleteSubscription { reply, .. } => drop(reply.send(Err(err))),
        Effect::Enqueue { reply, .. } => drop(reply.send(Err(err))),
        Effect::Finish { reply } => drop(reply.send(Err(err))),
    }
}

pub const THREAD_NAME: &str = "presenced-writer";

pub fn spawn(writer: Writer, rx: mpsc::Receiver<Request>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || writer.run(rx))
}
