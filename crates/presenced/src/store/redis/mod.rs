//! The Redis/Valkey backend (`--store redis://…`): every node of a deployment shares its state
//! through one Redis, standalone or Cluster.
//!
//! Module map:
//! - [`keys`]: partitions and key names (a partition's keys share one hash tag).
//! - [`connection`]: standalone or Cluster behind one handle, timeouts, the start-up checks.
//! - [`live`]: the partitions' channels, on which every commit is announced to every node.
//! - [`leaders`]: which node leads each partition's timers (rendezvous hashing over live leases).
//! - `test_servers` (tests): Redis servers and Clusters started on free loopback ports.
//! - `functions.lua`: the function library; each write is one `FCALL`, one round trip.
//! - this file: the ports.
//!
//! The change log is one stream per partition, so a [`Position`] is a cut: one sequence per
//! partition. A node learns of other nodes' changes from their announcements (its own commits
//! move its head at once); it also reads the partitions' sequences every `poll`, to fill what
//! Pub/Sub dropped. Each partition's deadlines are swept first by the node that leads it; every
//! other node sweeps what is overdue there by more than `takeover`, so a fade is late by at most
//! that when its leader died. A `200` means what the masters' persistence
//! makes it mean: at start every master must have `appendonly yes` and `appendfsync always`
//! unless the store is opened relaxed.
pub mod connection;
pub mod keys;
pub mod leaders;
pub mod live;
#[cfg(test)]
pub mod test_servers;

use crate::clock::Clock;
use crate::metrics::StoreMetrics;
use crate::store::{
    Change, ChangeLog, Commit, CommitError, CreateError, Deadlines, Deliveries, LifecycleNotice, Limit, Limits,
    LogError, NewLifecycle, Owner, Position, PresenceState, Snapshot, StoreError, Stored, SubscriptionWrite,
    Subscriptions, TenantSnapshot, Versioned, WriteError,
};
use crate::subscription::Subscription;
use connection::{Conn, Durability, Target, Timeouts};
use futures_util::future::join_all;
use jiff::{SignedDuration, Timestamp};
use keys::Keys;
use presence_core::{ChangeEvent, TenantId, UserId, UserKey, UserPresence};
use redis::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Fewest changes the window keeps, across all partitions (as the embedded backend).
const MIN_RETAINED: usize = 10_000;

/// How a Redis store is opened.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    /// The keyspace's partition count; a keyspace created with another count is refused.
    pub partitions: usize,
    /// Every key starts with this (several deployments may share one Redis).
    pub prefix: String,
    pub retain: usize,
    pub retain_for: SignedDuration,
    pub clock: Clock,
    pub timeouts: Timeouts,
    /// Accept masters that do not fsync every write (a `200` may then be lost with a master).
    pub relaxed: bool,
    /// How often the partitions' sequences are read, to catch what the live path dropped.
    pub poll: Duration,
    /// How overdue a deadline in a partition another node leads must be before this node
    /// applies it (that leader may have died).
    pub takeover: Duration,
    /// This node's epoch, when it holds a lease (a server does; tools and tests may not).
    pub node: Option<String>,
    /// How long a lease lasts unrenewed: a node silent this long is declared dead.
    pub lease: Duration,
    /// Replicas that must confirm a write (`WAIT`) before it is acknowledged; 0 for none.
    pub wait_replicas: usize,
    /// Deadlines are judged by each node's clock: a node whose clock is further than this from
    /// Redis's (read at each lease renewal) refuses to start, and warns while running.
    pub max_clock_skew: Duration,
    /// Subscriptions claimed per call: bounds how long one call holds Redis.
    pub claim_page: usize,
}

impl Options {
    pub fn new(target: Target, clock: Clock) -> Options {
        Options {
            target,
            partitions: 16,
            prefix: "presenced".into(),
            retain: 100_000,
            retain_for: SignedDuration::from_hours(4),
            clock,
            timeouts: Timeouts {
                connect: Duration::from_secs(2),
                command: Duration::from_secs(2),
            },
            relaxed: false,
            poll: Duration::from_millis(500),
            takeover: Duration::from_secs(1),
            node: None,
            lease: Duration::from_secs(30),
            wait_replicas: 0,
            max_clock_skew: Duration::from_secs(1),
            claim_page: 500,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot reach Redis: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Refused(String),
}

#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Replaced when Redis has answered nothing for a while (see `poll_heads`).
    conn: std::sync::RwLock<Conn>,
    keys: Keys,
    options: Options,
    head: watch::Sender<Position>,
    ready: AtomicBool,
    deadline_moved: Notify,
    subscriptions_changed: Notify,
    lifecycle_added: Notify,
    metrics: StoreMetrics,
    fenced: watch::Sender<bool>,
    /// The last state this node read or wrote per user, for `load_to_write`: a write whose copy
    /// is current is one round trip. Bounded; a stale copy costs a conflict and the state it
    /// returns, never a wrong write.
    recent: std::sync::Mutex<HashMap<UserKey, Versioned>>,
    /// The earliest deadline the sweeper was last told of (µs): only a commit with an earlier one
    /// wakes it, so commits do not each make it re-read every partition's index.
    earliest_told: std::sync::atomic::AtomicI64,
    /// The partitions whose deadlines this node sweeps on time (all of them without a lease).
    leads: std::sync::RwLock<Arc<[bool]>>,
    /// The subscription to the partitions' channels; replaced with the connection.
    live: std::sync::Mutex<Option<live::Subscriber>>,
    /// The live nodes' epochs, as last read: they share the subscriptions' deliveries.
    live_nodes: std::sync::RwLock<Arc<[String]>>,
    /// The counts `/metrics` showed last, kept for when Redis cannot be reached.
    last_counts: std::sync::Mutex<crate::store::Counts>,
    /// Set when this node leaves the live nodes at a clean stop: its lease is no longer renewed.
    leaving: AtomicBool,
}

/// A subscription left unclaimed this long (its leading node is not claiming it) is taken by any
/// node: longer than a dispatcher's refresh, so the leader normally takes it first.
const CLAIM_TAKEOVER: Duration = Duration::from_secs(15);

/// Users whose last known state a node keeps for writes.
const RECENT_CAPACITY: usize = 65_536;

impl Inner {
    fn remember(&self, key: &UserKey, versioned: Versioned) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= RECENT_CAPACITY && !recent.contains_key(key) {
            // Any entry: the cache only saves reads, and a miss costs one.
            if let Some(victim) = recent.keys().next().cloned() {
                recent.remove(&victim);
            }
        }
        recent.insert(key.clone(), versioned);
    }

    fn conn(&self) -> Conn {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One command, one round trip, counted.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        self.metrics.round_trips.inc();
        self.conn().run(cmd).await
    }

    fn leads(&self, p: usize) -> bool {
        self.leads
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(p)
            .copied()
            .unwrap_or(true)
    }

    /// When this node's sweeper should act on a deadline `at` (µs) in partition `p`.
    fn acts_at(&self, p: usize, at: i64) -> i64 {
        if self.leads(p) {
            at
        } else {
            at.saturating_add(self.options.takeover.as_micros() as i64)
        }
    }

    /// A commit (this node's or another's) left a deadline: wake the sweeper only if that is
    /// earlier than what it was last told.
    fn deadline_set(&self, p: usize, at: i64) {
        let at = self.acts_at(p, at);
        if at < self.earliest_told.fetch_min(at, Ordering::AcqRel) {
            self.deadline_moved.notify_waiters();
        }
    }

    fn advance_head(&self, to: &Position) {
        self.head.send_if_modified(|head| {
            let next = head.join(to);
            let moved = next != *head;
            *head = next;
            moved
        });
    }

    /// What another node announced on the live path.
    fn heard(self: &Arc<Self>, heard: live::Heard) {
        match heard {
            live::Heard::Commit(a) => {
                if a.seq > 0 {
                    self.advance_head(&Position::of_change(a.partition, self.keys.partitions(), a.seq));
                }
                if let Some(at) = a.deadline_us {
                    self.deadline_set(a.partition, at);
                }
            }
            live::Heard::Subscriptions => match self.options.node.clone() {
                // A node that left announces itself so: who is live is read again before the
                // dispatcher claims, so the others take its work at once.
                Some(epoch) => {
                    let inner = self.clone();
                    tokio::spawn(async move {
                        choose_leaders(&inner, &epoch).await;
                        inner.subscriptions_changed.notify_waiters();
                    });
                }
                None => self.subscriptions_changed.notify_waiters(),
            },
        }
    }

    /// A subscription was written through this node: tell its dispatcher, and the other nodes'.
    async fn subscriptions_written(&self) {
        self.subscriptions_changed.notify_waiters();
        let publish = if self.options.target.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let cmd = redis::cmd(publish)
            .arg(self.keys.subscriptions_channel())
            .arg(1)
            .clone();
        // Best effort: the other nodes' dispatchers also look every few seconds.
        if let Err(e) = self.run::<i64>(&cmd).await {
            tracing::debug!(error = %e, "cannot announce a subscription change");
        }
    }

    fn recalled(&self, key: &UserKey) -> Option<Versioned> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// A timestamp as a sorted-set score: microseconds since the epoch (exact in an f64 for
/// centuries).
fn score(t: Timestamp) -> i64 {
    t.as_microsecond()
}

fn from_score(s: f64) -> Option<Timestamp> {
    Timestamp::from_microsecond(s as i64).ok()
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => std::str::from_utf8(bytes(other)?).ok()?.parse().ok(),
    }
}

fn items(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(unavailable(format!("unexpected reply {other:?}"))),
    }
}

fn state_of(raw: Option<&[u8]>) -> Result<UserPresence, StoreError> {
    match raw {
        None | Some(b"") => Ok(UserPresence::default()),
        Some(b) => serde_json::from_slice(b).map_err(|e| unavailable(format!("a stored state does not parse: {e}"))),
    }
}

fn fcall(name: &str, keys: &[String]) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(name).arg(keys.len()).arg(keys);
    cmd
}

fn fcall_ro(name: &str, keys: &[String]) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL_RO");
    cmd.arg(name).arg(keys.len()).arg(keys);
    cmd
}

impl RedisStore {
    /// Connect, check every master's durability, load the functions, check the partition count.
    pub async fn open(options: Options) -> Result<RedisStore, OpenError> {
        let keys = Keys::new(&options.prefix, options.partitions).map_err(OpenError::Refused)?;
        let conn = Conn::open(&options.target, options.timeouts)
            .await
            .map_err(|e| OpenError::Unreachable(e.to_string()))?;
        let masters = conn
            .masters(&options.target)
            .await
            .map_err(|e| OpenError::Unreachable(e.to_string()))?;
        for master in &masters {
            let durability = connection::durability_of(master, options.timeouts)
                .await
                .map_err(|e| OpenError::Unreachable(format!("{master}: {e}")))?;
            if let Durability::Weaker(settings) = durability {
                if !options.relaxed {
                    return Err(OpenError::Refused(format!(
                        "{master} has {settings}: an acknowledged write could be lost with it. Set \
                         `appendonly yes` and `appendfsync always` on every master, and no \
                         `maxmemory` or `maxmemory-policy noeviction`, or start with \
                         --redis-relaxed-durability to accept that risk"
                    )));
                }
                tracing::warn!(%master, %settings, "relaxed durability: a 200 may be lost if this master fails");
            }
            connection::load_library(master, options.timeouts)
                .await
                .map_err(|e| OpenError::Unreachable(format!("loading the functions onto {master}: {e}")))?;
        }
        let recorded: Option<usize> = conn
            .run(
                redis::cmd("SET")
                    .arg(keys.meta())
                    .arg(options.partitions)
                    .arg("NX")
                    .arg("GET"),
            )
            .await
            .map_err(|e| OpenError::Unreachable(e.to_string()))?;
        if let Some(p) = recorded.filter(|p| *p != options.partitions) {
            return Err(OpenError::Refused(format!(
                "this keyspace was created with {p} partitions and this node asks for {}: every node \
                 of a keyspace must use the same --redis-partitions",
                options.partitions
            )));
        }
        let partitions = options.partitions;
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn: std::sync::RwLock::new(conn),
                keys,
                head: watch::Sender::new(Position::ZERO),
                ready: AtomicBool::new(false),
                deadline_moved: Notify::new(),
                subscriptions_changed: Notify::new(),
                lifecycle_added: Notify::new(),
                metrics: StoreMetrics::default(),
                fenced: watch::Sender::new(false),
                recent: std::sync::Mutex::new(HashMap::new()),
                earliest_told: std::sync::atomic::AtomicI64::new(i64::MIN),
                leads: std::sync::RwLock::new(vec![true; partitions].into()),
                live: std::sync::Mutex::new(None),
                live_nodes: std::sync::RwLock::new(Arc::new([])),
                last_counts: std::sync::Mutex::new(crate::store::Counts::default()),
                leaving: AtomicBool::new(false),
                options,
            }),
        };
        if let Some(epoch) = store.inner.options.node.clone() {
            renew_lease(&store.inner, &epoch, true)
                .await
                .map_err(|e| OpenError::Unreachable(format!("taking the node lease: {e}")))?;
            let skew = store.inner.metrics.clock_skew_ms.get();
            let bound = store.inner.options.max_clock_skew;
            if skew.unsigned_abs() > bound.as_millis() as u64 {
                return Err(OpenError::Refused(format!(
                    "this node's clock is {skew} ms off Redis's (more than {bound:?}): fades and \
                     expiries would be applied that much early or late. Synchronise the clocks (NTP)"
                )));
            }
            choose_leaders(&store.inner, &epoch).await;
            tokio::spawn(keep_lease(Arc::downgrade(&store.inner), epoch));
        }
        listen(&store.inner)
            .await
            .map_err(|e| OpenError::Unreachable(format!("subscribing to the partitions' channels: {e}")))?;
        let head = store
            .read_heads()
            .await
            .map_err(|e| OpenError::Unreachable(e.to_string()))?;
        store.advance_head(&head);
        store.inner.ready.store(true, Ordering::Release);
        tokio::spawn(poll_heads(Arc::downgrade(&store.inner)));
        if store.inner.options.node.is_some() {
            // The other nodes re-read who is live on this announcement: they hand this node its
            // share now rather than at their next lease renewal.
            store.inner.subscriptions_written().await;
        }
        Ok(store)
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.inner.metrics
    }

    /// What the keyspace holds, for `/metrics`: a few counters per partition and two of the
    /// subscriptions', read in one burst. Unreachable Redis gives the last counts read.
    pub async fn counts(&self) -> crate::store::Counts {
        let keys = &self.inner.keys;
        let per_partition = (0..self.p_count()).map(|p| {
            let pipe = redis::pipe()
                .cmd("HMGET")
                .arg(keys.counts(p))
                .arg("users")
                .arg("sessions")
                .cmd("ZCARD")
                .arg(keys.due(p))
                .cmd("XLEN")
                .arg(keys.log(p))
                .clone();
            async move {
                self.inner.metrics.round_trips.inc();
                pipe.query_async::<((Option<i64>, Option<i64>), i64, i64)>(&mut self.conn())
                    .await
            }
        });
        let subscriptions = async {
            let s = keys.subscriptions();
            let pipe = redis::pipe()
                .cmd("HLEN")
                .arg(format!("{s}rec"))
                .cmd("ZCARD")
                .arg(format!("{s}nord"))
                .clone();
            self.inner.metrics.round_trips.inc();
            pipe.query_async::<(i64, i64)>(&mut self.conn()).await
        };
        let (partitions, subscriptions) = tokio::join!(join_all(per_partition), subscriptions);
        let mut counts = crate::store::Counts::default();
        let read = (|| {
            for r in partitions {
                let ((users, sessions), deadlines, log) = r?;
                counts.users += users.unwrap_or(0).max(0) as usize;
                counts.sessions += sessions.unwrap_or(0);
                counts.deadlines += deadlines as usize;
                counts.log_retained += log as usize;
            }
            let (subs, notices) = subscriptions?;
            counts.subscriptions = subs as usize;
            counts.lifecycle_queued = notices as usize;
            Ok::<_, redis::RedisError>(())
        })();
        let mut last = self.inner.last_counts.lock().unwrap_or_else(|e| e.into_inner());
        match read {
            Ok(()) => *last = counts,
            Err(e) => tracing::debug!(error = %e, "cannot count the keyspace; showing the last counts"),
        }
        *last
    }

    fn conn(&self) -> Conn {
        self.inner.conn()
    }

    fn p_count(&self) -> usize {
        self.inner.keys.partitions()
    }

    fn advance_head(&self, to: &Position) {
        self.inner.advance_head(to)
    }

    /// Every partition's sequence, read now.
    async fn read_heads(&self) -> Result<Position, StoreError> {
        read_heads(&self.inner).await
    }

    /// Per-partition window sizes: the count kept, and the floor the age trimming respects.
    fn window(&self) -> (usize, usize) {
        let p = self.p_count();
        let retain = self.inner.options.retain.max(MIN_RETAINED);
        (retain.div_ceil(p), MIN_RETAINED.div_ceil(p))
    }

    async fn commit_one(&self, commit: Commit) -> Result<u64, CommitError> {
        let keys = &self.inner.keys;
        let p = keys.partition_of(&commit.key);
        let member = Keys::member(&commit.key);
        let now = self.inner.options.clock.now();
        let (maxlen, keep) = self.window();
        let connected = commit
            .state
            .sessions()
            .iter()
            .any(|s| s.client().is_some_and(|l| l.connected));
        let deadline = commit.state.next_deadline();
        let mut cmd = fcall(
            "pd_commit",
            &[
                keys.user(&commit.key),
                keys.due(p),
                keys.log(p),
                keys.seq(p),
                keys.clients(p),
                keys.tenant(p, &commit.key.tenant),
                keys.lease(p, self.inner.options.node.as_deref().unwrap_or("")),
                keys.counts(p),
            ],
        );
        cmd.arg(commit.expected_version)
            .arg(crate::store::embedded::records::state(&commit.state))
            .arg(deadline.map(|d| score(d).to_string()).unwrap_or_default())
            .arg(
                commit
                    .event
                    .as_ref()
                    .map(|e| crate::store::embedded::records::event(&commit.key, e))
                    .unwrap_or_default(),
            )
            .arg(now.as_millisecond())
            .arg(maxlen)
            .arg(&member)
            .arg(if connected { "1" } else { "0" })
            .arg((now - self.inner.options.retain_for).as_millisecond())
            .arg(keep)
            .arg(keys.channel(p))
            .arg(self.inner.options.node.as_deref().unwrap_or(""))
            .arg(if self.inner.options.target.cluster {
                "shard"
            } else {
                "plain"
            })
            .arg(commit.state.sessions().len());
        let started = std::time::Instant::now();
        // A refusal for a lapsed lease copy is answered 503; the lease keeper decides whether the
        // node was declared dead (or the copy went with a master that failed over).
        let reply: Value = self.inner.run(&cmd).await.map_err(unavailable)?;
        self.inner
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.inner.metrics.commits.inc();
        let reply = items(reply)?;
        let status = reply.first().and_then(int);
        let version = reply.get(1).and_then(int).unwrap_or(0) as u64;
        match status {
            Some(1) => {
                self.inner.remember(
                    &commit.key,
                    Versioned {
                        version,
                        state: Arc::new(commit.state),
                    },
                );
                self.wait_for_replicas(&keys.seq(p)).await?;
                let seq = reply.get(2).and_then(int).unwrap_or(0) as u64;
                if seq > 0 {
                    self.advance_head(&Position::of_change(p, self.p_count(), seq));
                }
                if let Some(at) = deadline.map(score) {
                    self.inner.deadline_set(p, at);
                }
                Ok(version)
            }
            Some(0) => {
                let current = Versioned {
                    version,
                    state: Arc::new(state_of(reply.get(2).and_then(bytes))?),
                };
                self.inner.remember(&commit.key, current.clone());
                Err(CommitError::Conflict(current))
            }
            _ => Err(CommitError::Store(unavailable("unexpected commit reply"))),
        }
    }

    /// With `wait_replicas`, hold the acknowledgement until that many replicas have the write
    /// (`key` names its slot). A write they do not confirm in time is answered as not acknowledged:
    /// it is on the master, and a retry of the same change is harmless.
    async fn wait_for_replicas(&self, key: &str) -> Result<(), StoreError> {
        let wanted = self.inner.options.wait_replicas;
        if wanted == 0 {
            return Ok(());
        }
        self.inner.metrics.round_trips.inc();
        let got = self
            .conn()
            .wait_replicas(key, wanted, self.inner.options.timeouts.command / 2)
            .await
            .map_err(unavailable)?;
        if (got.max(0) as usize) < wanted {
            return Err(unavailable(format!(
                "{got} of {wanted} replicas confirmed the write in time"
            )));
        }
        Ok(())
    }

    /// The keys asked, grouped by partition, with their places in the request.
    fn by_partition<'a>(&self, keys: &'a [UserKey]) -> HashMap<usize, Vec<(usize, &'a UserKey)>> {
        let mut groups: HashMap<usize, Vec<(usize, &UserKey)>> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            groups.entry(self.inner.keys.partition_of(k)).or_default().push((i, k));
        }
        groups
    }

    /// One partition's changes after `after`, at most `limit`: Ok(changes) or Err(oldest).
    async fn read_partition(
        &self,
        p: usize,
        after: u64,
        limit: usize,
    ) -> Result<Result<Vec<Arc<Change>>, u64>, StoreError> {
        let keys = &self.inner.keys;
        let mut cmd = fcall_ro("pd_read_log", &[keys.log(p), keys.seq(p)]);
        cmd.arg(after).arg(limit);
        let reply = items(self.inner.run(&cmd).await.map_err(unavailable)?)?;
        match reply.first().and_then(int) {
            Some(0) => Ok(Err(reply.get(1).and_then(int).unwrap_or(0) as u64)),
            Some(1) => {
                let mut out = Vec::new();
                for pair in reply[2..].chunks(2) {
                    let seq = pair.first().and_then(int).unwrap_or(0) as u64;
                    let raw = pair.get(1).and_then(bytes).unwrap_or_default();
                    let (key, event): (UserKey, ChangeEvent) = serde_json::from_slice(raw)
                        .map_err(|e| unavailable(format!("a logged change does not parse: {e}")))?;
                    out.push(Arc::new(Change {
                        position: Position::of_change(p, self.p_count(), seq),
                        key,
                        event,
                    }));
                }
                Ok(Ok(out))
            }
            _ => Err(unavailable("unexpected log reply")),
        }
    }

    fn subscription_key(&self) -> Vec<String> {
        vec![self.inner.keys.subscriptions()]
    }

    async fn sub_records(&self, cmd: redis::Cmd) -> Result<Vec<Stored>, StoreError> {
        let reply = items(self.inner.run(&cmd).await.map_err(unavailable)?)?;
        let mut out = Vec::new();
        for triple in reply.chunks(3) {
            let version = triple.get(1).and_then(int).unwrap_or(0) as u64;
            let raw = triple.get(2).and_then(bytes).unwrap_or_default();
            let subscription: Subscription =
                serde_json::from_slice(raw).map_err(|e| unavailable(format!("a subscription does not parse: {e}")))?;
            out.push(Stored {
                version,
                subscription: Arc::new(subscription),
            });
        }
        Ok(out)
    }

    fn position_text(&self, position: &Position) -> Option<String> {
        let parts = position.partitions(self.p_count())?;
        Some(parts.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
    }

    fn position_from_text(&self, text: &[u8]) -> Position {
        let parts: Vec<u64> = std::str::from_utf8(text)
            .unwrap_or_default()
            .split(',')
            .map(|n| n.parse().unwrap_or(0))
            .collect();
        let mut full = vec![0; self.p_count()];
        for (slot, n) in full.iter_mut().zip(parts) {
            *slot = n;
        }
        Position::from_partitions(&full)
    }
}

async fn read_heads(inner: &Inner) -> Result<Position, StoreError> {
    let reads = (0..inner.keys.partitions()).map(|p| {
        let cmd = redis::cmd("GET").arg(inner.keys.seq(p)).clone();
        async move { inner.run::<Option<u64>>(&cmd).await }
    });
    let mut parts = Vec::with_capacity(inner.keys.partitions());
    for r in join_all(reads).await {
        parts.push(r.map_err(unavailable)?.unwrap_or(0));
    }
    Ok(Position::from_partitions(&parts))
}

/// Take (`first`) or renew this node's lease. The node set decides: a renewal after the lease
/// there lapsed fails (returns false), and the node is fenced. Then each partition's copy is set
/// to end at the same instant, so no copy outlives the lease the survivors judge by; a copy lost
/// with a master that failed over is simply set again.
async fn renew_lease(inner: &Inner, epoch: &str, first: bool) -> Result<bool, StoreError> {
    let ttl = inner.options.lease.as_millis() as u64;
    let mut cmd = fcall("pd_node_lease", &[inner.keys.nodes()]);
    cmd.arg(epoch).arg(ttl).arg(if first { "take" } else { "renew" });
    let sent = inner.options.clock.now().as_millisecond();
    let ends: i64 = inner.run(&cmd).await.map_err(unavailable)?;
    if ends == 0 {
        return Ok(false);
    }
    // Redis's clock read in the call, against this node's halfway through it.
    let answered = inner.options.clock.now().as_millisecond();
    let skew = (ends - ttl as i64) - (sent + answered) / 2;
    inner.metrics.clock_skew_ms.set(skew);
    let sets = (0..inner.keys.partitions()).map(|p| {
        let cmd = redis::cmd("SET")
            .arg(inner.keys.lease(p, epoch))
            .arg(1)
            .arg("PXAT")
            .arg(ends)
            .clone();
        async move { inner.run::<Option<String>>(&cmd).await }
    });
    for r in join_all(sets).await {
        r.map_err(unavailable)?;
    }
    Ok(true)
}

/// Subscribe to every partition's channel (again, after the connection was replaced).
async fn listen(inner: &Arc<Inner>) -> redis::RedisResult<()> {
    let channels = live::Channels {
        partitions: (0..inner.keys.partitions()).map(|p| inner.keys.channel(p)).collect(),
        subscriptions: inner.keys.subscriptions_channel(),
    };
    let weak = Arc::downgrade(inner);
    let subscriber = live::subscribe(&inner.options.target, inner.options.timeouts, &channels, move |heard| {
        if let Some(inner) = weak.upgrade() {
            inner.heard(heard);
        }
    })
    .await?;
    *inner.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(subscriber);
    Ok(())
}

/// Recompute which partitions this node leads from the live leases; on an error the last
/// choice stands (the other nodes' takeover covers a partition nobody leads).
async fn choose_leaders(inner: &Inner, epoch: &str) {
    let cmd = fcall_ro("pd_live_nodes", &[inner.keys.nodes()]);
    match inner.run::<Vec<String>>(&cmd).await {
        Ok(live) => {
            let leads: Arc<[bool]> = leaders::led_by(epoch, &live, inner.keys.partitions()).into();
            *inner.live_nodes.write().unwrap_or_else(|e| e.into_inner()) = live.into();
            inner
                .metrics
                .partitions_led
                .set(leads.iter().filter(|l| **l).count() as i64);
            let changed = *inner.leads.read().unwrap_or_else(|e| e.into_inner()) != leads;
            *inner.leads.write().unwrap_or_else(|e| e.into_inner()) = leads;
            if changed {
                // Partitions gained are swept on time from now.
                inner.earliest_told.store(i64::MIN, Ordering::Release);
                inner.deadline_moved.notify_waiters();
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the live nodes; partition leaders unchanged"),
    }
}

/// Renews the lease a third of its length apart; a lapse found fences the node for good.
async fn keep_lease(inner: Weak<Inner>, epoch: String) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        if strong.leaving.load(Ordering::Acquire) {
            return;
        }
        let pause = strong.options.lease / 3;
        match renew_lease(&strong, &epoch, false).await {
            // Left while renewing: not a lapse.
            _ if strong.leaving.load(Ordering::Acquire) => return,
            Ok(true) => {
                let skew = strong.metrics.clock_skew_ms.get();
                if skew.unsigned_abs() > strong.options.max_clock_skew.as_millis() as u64 {
                    tracing::warn!(
                        skew_ms = skew,
                        "this node's clock drifted off Redis's; fades and expiries are that much off"
                    );
                }
                choose_leaders(&strong, &epoch).await
            }
            Ok(false) => {
                tracing::error!(%epoch, "this node's lease lapsed: it was declared dead and may no longer write");
                strong.fenced.send_replace(true);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the node lease; retrying"),
        }
        drop(strong);
        tokio::time::sleep(pause).await;
    }
}

/// Moves the head as other nodes commit, and keeps readiness current; ends with the store.
/// After this long with no answer from Redis, the connection is opened anew: a Cluster client
/// left holding a slot map from before a failover can stay stuck on the dead master.
const REOPEN_AFTER: Duration = Duration::from_secs(3);

async fn poll_heads(inner: Weak<Inner>) {
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let pause = strong.options.poll;
        match read_heads(&strong).await {
            Ok(head) => {
                failing_since = None;
                strong.ready.store(true, Ordering::Release);
                strong.head.send_if_modified(|h| {
                    let next = h.join(&head);
                    let moved = next != *h;
                    *h = next;
                    moved
                });
            }
            Err(e) => {
                if strong.ready.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "Redis is unreachable; answering 503 until it returns");
                }
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= REOPEN_AFTER {
                    failing_since = Some(std::time::Instant::now());
                    match Conn::open(&strong.options.target, strong.options.timeouts).await {
                        Ok(conn) => {
                            tracing::warn!("opened a new connection to Redis after {REOPEN_AFTER:?} without an answer");
                            *strong.conn.write().unwrap_or_else(|e| e.into_inner()) = conn;
                            if let Err(e) = listen(&strong).await {
                                tracing::warn!(error = %e, "cannot subscribe to the partitions' channels yet");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot reconnect to Redis yet"),
                    }
                }
            }
        }
        drop(strong);
        tokio::time::sleep(pause).await;
    }
}

impl PresenceState for RedisStore {
    async fn load(&self, key: &UserKey) -> Result<Versioned, StoreError> {
        let loaded = self.load_many(std::slice::from_ref(key)).await?.remove(0);
        self.inner.remember(key, loaded.clone());
        Ok(loaded)
    }

    async fn load_to_write(&self, key: &UserKey) -> Result<(Versioned, bool), StoreError> {
        match self.inner.recalled(key) {
            Some(known) => Ok((known, false)),
            None => Ok((self.load(key).await?, true)),
        }
    }

    async fn load_many(&self, keys: &[UserKey]) -> Result<Vec<Versioned>, StoreError> {
        let mut out = vec![Versioned::default(); keys.len()];
        let groups = self.by_partition(keys);
        let reads = groups.into_values().map(|group| {
            let names: Vec<String> = group.iter().map(|(_, k)| self.inner.keys.user(k)).collect();
            let cmd = fcall_ro("pd_load", &names);
            async move { (group, self.inner.run::<Value>(&cmd).await) }
        });
        for (group, reply) in join_all(reads).await {
            let reply = items(reply.map_err(unavailable)?)?;
            for ((i, _), pair) in group.iter().zip(reply.chunks(2)) {
                let version = pair.first().and_then(int).unwrap_or(0) as u64;
                if version > 0 {
                    out[*i] = Versioned {
                        version,
                        state: Arc::new(state_of(pair.get(1).and_then(bytes))?),
                    };
                }
            }
        }
        Ok(out)
    }

    async fn commit(&self, commit: Commit) -> Result<u64, CommitError> {
        self.commit_one(commit).await
    }

    async fn commit_many(&self, commits: Vec<Commit>) -> Vec<Result<u64, CommitError>> {
        // In order within a partition (two commits of one user must land in order), partitions
        // at once.
        let n = commits.len();
        let mut groups: HashMap<usize, Vec<(usize, Commit)>> = HashMap::new();
        for (i, c) in commits.into_iter().enumerate() {
            groups
                .entry(self.inner.keys.partition_of(&c.key))
                .or_default()
                .push((i, c));
        }
        let runs = groups.into_values().map(|group| async move {
            let mut out = Vec::with_capacity(group.len());
            for (i, c) in group {
                out.push((i, self.commit_one(c).await));
            }
            out
        });
        let mut outcomes: Vec<Option<Result<u64, CommitError>>> = (0..n).map(|_| None).collect();
        for (i, r) in join_all(runs).await.into_iter().flatten() {
            outcomes[i] = Some(r);
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(CommitError::Store(unavailable("lost outcome")))))
            .collect()
    }

    async fn users_with_connected_clients(&self) -> Result<Vec<UserKey>, StoreError> {
        let reads = (0..self.p_count()).map(|p| {
            let cmd = redis::cmd("SMEMBERS").arg(self.inner.keys.clients(p)).clone();
            async move { self.inner.run::<Vec<Vec<u8>>>(&cmd).await }
        });
        let mut out = Vec::new();
        for r in join_all(reads).await {
            out.extend(r.map_err(unavailable)?.iter().filter_map(|m| Keys::parse_member(m)));
        }
        out.sort();
        Ok(out)
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }
}

impl crate::store::Membership for RedisStore {
    async fn live_epochs(&self) -> Result<Option<Vec<String>>, StoreError> {
        let cmd = fcall_ro("pd_live_nodes", &[self.inner.keys.nodes()]);
        Ok(Some(self.inner.run(&cmd).await.map_err(unavailable)?))
    }

    async fn fenced(&self) {
        let mut rx = self.inner.fenced.subscribe();
        let _ = rx.wait_for(|f| *f).await;
    }

    async fn leave(&self) {
        let Some(epoch) = self.inner.options.node.clone() else {
            return;
        };
        self.inner.leaving.store(true, Ordering::Release);
        let mut cmd = fcall("pd_node_lease", &[self.inner.keys.nodes()]);
        cmd.arg(&epoch).arg(0).arg("leave");
        if let Err(e) = self.inner.run::<i64>(&cmd).await {
            tracing::warn!(error = %e, "cannot leave the live nodes; the others take over when this node's lease lapses");
            return;
        }
        // The lease copies go too, so no commit of this node's is accepted from now on.
        let copies = (0..self.p_count()).map(|p| {
            let cmd = redis::cmd("DEL").arg(self.inner.keys.lease(p, &epoch)).clone();
            async move { self.inner.run::<i64>(&cmd).await }
        });
        join_all(copies).await;
        // The other nodes re-read who is live when subscriptions are announced: they lead this
        // node's partitions and claim its released subscriptions now.
        self.inner.subscriptions_written().await;
        tracing::info!(%epoch, "left the live nodes; the others took over this node's work");
    }
}

impl Deadlines for RedisStore {
    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<UserKey>, StoreError> {
        let takeover = score(now) - self.inner.options.takeover.as_micros() as i64;
        let reads = (0..self.p_count()).map(|p| {
            let until = if self.inner.leads(p) { score(now) } else { takeover };
            let cmd = redis::cmd("ZRANGE")
                .arg(self.inner.keys.due(p))
                .arg("-inf")
                .arg(until)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .arg("WITHSCORES")
                .clone();
            async move { self.inner.run::<Vec<(Vec<u8>, f64)>>(&cmd).await }
        });
        let mut due: Vec<(f64, UserKey)> = Vec::new();
        for r in join_all(reads).await {
            for (member, at) in r.map_err(unavailable)? {
                if let Some(k) = Keys::parse_member(&member) {
                    due.push((at, k));
                }
            }
        }
        due.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(due.into_iter().take(limit).map(|(_, k)| k).collect())
    }

    async fn next_deadline(&self) -> Option<Timestamp> {
        // A deadline whose announcement was dropped is found within a second.
        let soon = self.inner.options.clock.now() + SignedDuration::from_secs(1);
        let reads = (0..self.p_count()).map(|p| {
            let cmd = redis::cmd("ZRANGE")
                .arg(self.inner.keys.due(p))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .clone();
            async move { (p, self.inner.run::<Vec<(Vec<u8>, f64)>>(&cmd).await) }
        });
        let mut earliest = soon;
        for (p, r) in join_all(reads).await {
            match r {
                Ok(first) => {
                    if let Some((_, at)) = first.first() {
                        let acts_at = self.inner.acts_at(p, *at as i64);
                        if let Some(at) = from_score(acts_at as f64) {
                            earliest = earliest.min(at);
                        }
                    }
                }
                Err(_) => return Some(soon),
            }
        }
        self.inner.earliest_told.store(score(earliest), Ordering::Release);
        Some(earliest)
    }

    async fn deadline_moved(&self) {
        self.inner.deadline_moved.notified().await
    }
}

impl ChangeLog for RedisStore {
    fn head(&self) -> Position {
        self.inner.head.borrow().clone()
    }

    async fn wait_past(&self, position: &Position) {
        let mut rx = self.inner.head.subscribe();
        let _ = rx.wait_for(|head| !position.includes(head)).await;
    }

    async fn changes_after(&self, position: &Position, limit: usize) -> Result<Vec<Arc<Change>>, LogError> {
        let Some(after) = position.partitions(self.p_count()) else {
            // A position of another form (a token carried over from another backend).
            return Err(LogError::Expired { oldest: self.head() });
        };
        let head = self
            .head()
            .partitions(self.p_count())
            .unwrap_or_else(|| vec![0; self.p_count()]);
        let limit = limit.clamp(1, 1000);
        let reads = (0..self.p_count()).filter(|p| head[*p] > after[*p]).map(|p| {
            let from = after[p];
            async move { (p, self.read_partition(p, from, limit).await) }
        });
        let mut per_partition: Vec<std::collections::VecDeque<Arc<Change>>> = Vec::new();
        let mut expired: Option<Vec<u64>> = None;
        for (p, r) in join_all(reads).await {
            match r.map_err(LogError::Store)? {
                Ok(changes) => per_partition.push(changes.into()),
                Err(oldest) => expired.get_or_insert_with(|| after.clone())[p] = oldest,
            }
        }
        if let Some(oldest) = expired {
            return Err(LogError::Expired {
                oldest: Position::from_partitions(&oldest),
            });
        }
        // Merge by commit time, keeping each partition's order.
        let mut out = Vec::new();
        while out.len() < limit {
            let next = per_partition
                .iter()
                .enumerate()
                .filter_map(|(i, q)| q.front().map(|c| (c.event.at, i)))
                .min();
            let Some((_, i)) = next else { break };
            out.extend(per_partition[i].pop_front());
        }
        Ok(out)
    }

    async fn snapshot(&self, keys: &[UserKey]) -> Result<Snapshot, StoreError> {
        let mut parts = self
            .head()
            .partitions(self.p_count())
            .unwrap_or_else(|| vec![0; self.p_count()]);
        let mut views = vec![UserPresence::default().view(); keys.len()];
        let groups = self.by_partition(keys);
        let reads = groups.into_iter().map(|(p, group)| {
            let mut names = vec![self.inner.keys.seq(p)];
            names.extend(group.iter().map(|(_, k)| self.inner.keys.user(k)));
            let cmd = fcall_ro("pd_snapshot", &names);
            async move { (p, group, self.inner.run::<Value>(&cmd).await) }
        });
        for (p, group, reply) in join_all(reads).await {
            let reply = items(reply.map_err(unavailable)?)?;
            parts[p] = reply.first().and_then(int).unwrap_or(0) as u64;
            for ((i, _), raw) in group.iter().zip(&reply[1..]) {
                views[*i] = state_of(bytes(raw))?.view();
            }
        }
        Ok(Snapshot {
            position: Position::from_partitions(&parts),
            views,
        })
    }

    async fn snapshot_tenant(&self, tenant: &TenantId) -> Result<TenantSnapshot, StoreError> {
        let reads = (0..self.p_count()).map(|p| {
            let keys = &self.inner.keys;
            let mut cmd = fcall_ro("pd_snapshot_tenant", &[keys.seq(p), keys.tenant(p, tenant)]);
            cmd.arg(keys.users(p));
            async move { (p, self.inner.run::<Value>(&cmd).await) }
        });
        let mut parts = vec![0; self.p_count()];
        let mut presences = Vec::new();
        for (p, reply) in join_all(reads).await {
            let reply = items(reply.map_err(unavailable)?)?;
            parts[p] = reply.first().and_then(int).unwrap_or(0) as u64;
            for pair in reply[1..].chunks(2) {
                let Some(key) = pair.first().and_then(bytes).and_then(Keys::parse_member) else {
                    continue;
                };
                presences.push((key, state_of(pair.get(1).and_then(bytes))?.view()));
            }
        }
        Ok(TenantSnapshot {
            position: Position::from_partitions(&parts),
            presences,
        })
    }
}

/// The names the subscription functions count by.
fn owner_field(owner: &Owner) -> String {
    format!(
        "{}\u{0}{}\u{0}{}",
        owner.tenant.as_str(),
        owner.application_id,
        owner.user.as_deref().unwrap_or("")
    )
}

fn application_field(tenant: &TenantId, application_id: &str) -> String {
    format!("{}\u{0}{application_id}", tenant.as_str())
}

fn watched_fields(s: &Subscription) -> Vec<String> {
    let mut users: Vec<&UserId> = s.users.iter().collect();
    users.sort();
    users.dedup();
    users
        .into_iter()
        .map(|u| format!("{}\u{0}{}", s.tenant.as_str(), u.as_str()))
        .collect()
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialise to JSON")
}

impl Subscriptions for RedisStore {
    async fn subscription(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        let mut cmd = fcall_ro("pd_sub_get", &self.subscription_key());
        cmd.arg(id);
        Ok(self.sub_records(cmd).await?.pop())
    }

    async fn create(&self, subscription: Subscription, limits: Limits) -> Result<Stored, CreateError> {
        let head = self.read_heads().await?;
        let owner = Owner::of(&subscription);
        let watched = watched_fields(&subscription);
        let mut cmd = fcall("pd_sub_create", &self.subscription_key());
        cmd.arg(&subscription.id)
            .arg(json(&subscription))
            .arg(
                subscription
                    .lifecycle_at
                    .map(|t| score(t).to_string())
                    .unwrap_or_default(),
            )
            .arg(owner_field(&owner))
            .arg(application_field(&subscription.tenant, &subscription.application_id))
            .arg(limits.per_owner)
            .arg(limits.per_application)
            .arg(limits.per_watched_user)
            .arg(self.position_text(&head).unwrap_or_default())
            .arg(&watched);
        let reply = items(self.inner.run(&cmd).await.map_err(unavailable)?)?;
        match reply.first().and_then(int) {
            Some(1) => {
                self.inner.subscriptions_written().await;
                Ok(Stored {
                    version: 1,
                    subscription: Arc::new(subscription),
                })
            }
            Some(0) => {
                let kind = reply.get(1).and_then(bytes).unwrap_or_default();
                let bound = reply.get(2).and_then(int).unwrap_or(0) as usize;
                let limit = match kind {
                    b"owner" => Limit::Owner(bound),
                    b"application" => Limit::Application(bound),
                    _ => {
                        let which = reply.get(3).and_then(bytes).unwrap_or_default();
                        let user = std::str::from_utf8(which)
                            .ok()
                            .and_then(|w| w.split_once('\u{0}'))
                            .and_then(|(_, u)| UserId::parse(u).ok())
                            .ok_or_else(|| unavailable("unexpected limit reply"))?;
                        Limit::WatchedUser(user, bound)
                    }
                };
                Err(CreateError::LimitReached(limit))
            }
            _ => Err(CreateError::Store(unavailable("unexpected create reply"))),
        }
    }

    async fn write(&self, write: SubscriptionWrite) -> Result<Option<Stored>, WriteError> {
        let (cmd, replaced) = match write {
            SubscriptionWrite::Replace {
                subscription,
                expected_version,
                lifecycle,
            } => {
                let mut cmd = fcall("pd_sub_replace", &self.subscription_key());
                cmd.arg(&subscription.id)
                    .arg(expected_version)
                    .arg(json(&*subscription))
                    .arg(
                        subscription
                            .lifecycle_at
                            .map(|t| score(t).to_string())
                            .unwrap_or_default(),
                    )
                    .arg(lifecycle.as_ref().map(json).unwrap_or_default());
                (cmd, Some(*subscription))
            }
            SubscriptionWrite::Remove {
                id,
                expected_version,
                lifecycle,
            } => {
                let Some(current) = self.subscription(&id).await? else {
                    return Err(WriteError::Conflict(None));
                };
                if current.version != expected_version {
                    return Err(WriteError::Conflict(Some(current)));
                }
                let s = &current.subscription;
                let mut cmd = fcall("pd_sub_remove", &self.subscription_key());
                cmd.arg(&id)
                    .arg(expected_version)
                    .arg(lifecycle.as_ref().map(json).unwrap_or_default())
                    .arg(owner_field(&Owner::of(s)))
                    .arg(application_field(&s.tenant, &s.application_id))
                    .arg(watched_fields(s));
                (cmd, None)
            }
        };
        let reply = items(self.inner.run(&cmd).await.map_err(unavailable)?)?;
        match reply.first().and_then(int) {
            Some(1) => {
                self.inner.subscriptions_written().await;
                self.inner.lifecycle_added.notify_waiters();
                let version = reply.get(1).and_then(int).unwrap_or(0) as u64;
                Ok(replaced.map(|s| Stored {
                    version,
                    subscription: Arc::new(s),
                }))
            }
            Some(0) => {
                let version = reply.get(1).and_then(int).unwrap_or(0) as u64;
                let current = match reply.get(2).and_then(bytes) {
                    Some(raw) if version > 0 => Some(Stored {
                        version,
                        subscription: Arc::new(
                            serde_json::from_slice(raw)
                                .map_err(|e| unavailable(format!("a subscription does not parse: {e}")))?,
                        ),
                    }),
                    _ => None,
                };
                Err(WriteError::Conflict(current))
            }
            _ => Err(WriteError::Store(unavailable("unexpected write reply"))),
        }
    }

    async fn page(&self, owner: &Owner, after: Option<&str>, limit: usize) -> Result<Vec<Stored>, StoreError> {
        let mut cmd = fcall_ro("pd_sub_page", &self.subscription_key());
        cmd.arg(owner_field(owner)).arg(after.unwrap_or("")).arg(limit);
        self.sub_records(cmd).await
    }

    async fn count(&self, owner: &Owner) -> Result<(usize, usize), StoreError> {
        let cmd = redis::cmd("HMGET")
            .arg(format!("{}cnt", self.inner.keys.subscriptions()))
            .arg(format!("o:{}", owner_field(owner)))
            .arg(format!("a:{}", application_field(&owner.tenant, &owner.application_id)))
            .clone();
        let (o, a): (Option<usize>, Option<usize>) = self.inner.run(&cmd).await.map_err(unavailable)?;
        Ok((o.unwrap_or(0), a.unwrap_or(0)))
    }

    async fn all(&self) -> Result<Vec<Stored>, StoreError> {
        self.sub_records(fcall_ro("pd_sub_all", &self.subscription_key())).await
    }

    async fn lifecycle_due(&self, now: Timestamp, limit: usize) -> Result<Vec<Stored>, StoreError> {
        let mut cmd = fcall_ro("pd_sub_due", &self.subscription_key());
        cmd.arg(score(now)).arg(limit);
        self.sub_records(cmd).await
    }

    async fn next_lifecycle_deadline(&self) -> Option<Timestamp> {
        let cmd = redis::cmd("ZRANGE")
            .arg(format!("{}life", self.inner.keys.subscriptions()))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .clone();
        let first: Vec<(Vec<u8>, f64)> = self.inner.run(&cmd).await.ok()?;
        first.first().and_then(|(_, s)| from_score(*s))
    }

    async fn subscriptions_changed(&self) {
        self.inner.subscriptions_changed.notified().await
    }
}

impl Deliveries for RedisStore {
    async fn claim(
        &self,
        consumer: &str,
        now: Timestamp,
        lease: SignedDuration,
    ) -> Result<Vec<(String, Position)>, StoreError> {
        let live = self.inner.live_nodes.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out: Vec<(String, Position)> = Vec::new();
        // A page a call keeps each call short; the walk ends when the cursor returns to 0.
        let mut cursor = b"0".to_vec();
        loop {
            let mut cmd = fcall("pd_claim", &self.subscription_key());
            cmd.arg(consumer)
                .arg(now.as_millisecond())
                .arg((now + lease).as_millisecond())
                .arg(CLAIM_TAKEOVER.as_millis() as u64)
                .arg(self.inner.options.node.as_deref().unwrap_or(""))
                .arg(&cursor)
                .arg(self.inner.options.claim_page)
                .arg(&*live);
            let reply = items(self.inner.run(&cmd).await.map_err(unavailable)?)?;
            let Some((next, taken)) = reply.split_first() else {
                return Err(unavailable("pd_claim answered nothing"));
            };
            out.extend(taken.chunks(2).filter_map(|pair| {
                let id = String::from_utf8(pair.first().and_then(bytes)?.to_vec()).ok()?;
                Some((
                    id,
                    self.position_from_text(pair.get(1).and_then(bytes).unwrap_or_default()),
                ))
            }));
            cursor = bytes(next).unwrap_or(b"0").to_vec();
            if cursor == b"0" {
                break;
            }
        }
        // A scan may return an entry twice (the hash was resized between pages).
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    async fn release(&self, consumer: &str, ids: Vec<String>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = fcall("pd_release", &self.subscription_key());
        cmd.arg(consumer).arg(ids);
        self.inner.run::<i64>(&cmd).await.map_err(unavailable)?;
        Ok(())
    }

    async fn acknowledge(&self, _consumer: &str, progress: Vec<(String, Position)>) -> Result<(), StoreError> {
        let mut cmd = fcall("pd_acknowledge", &self.subscription_key());
        let mut any = false;
        for (id, position) in &progress {
            if let Some(text) = self.position_text(position) {
                cmd.arg(id).arg(text);
                any = true;
            }
        }
        if any {
            self.inner.run::<Value>(&cmd).await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn skip(&self, subscription_id: &str, to: Position, missed: Option<NewLifecycle>) -> Result<(), StoreError> {
        let mut cmd = fcall("pd_skip", &self.subscription_key());
        cmd.arg(subscription_id)
            .arg(self.position_text(&to).unwrap_or_default())
            .arg(missed.as_ref().map(json).unwrap_or_default());
        self.inner.run::<Value>(&cmd).await.map_err(unavailable)?;
        if missed.is_some() {
            self.inner.lifecycle_added.notify_waiters();
        }
        Ok(())
    }

    async fn claim_lifecycle(
        &self,
        consumer: &str,
        now: Timestamp,
        lease: SignedDuration,
        limit: usize,
    ) -> Result<Vec<LifecycleNotice>, StoreError> {
        let mut cmd = fcall("pd_claim_notices", &self.subscription_key());
        cmd.arg(consumer)
            .arg(now.as_millisecond())
            .arg((now + lease).as_millisecond())
            .arg(limit);
        let reply = items(self.inner.run(&cmd).await.map_err(unavailable)?)?;
        let mut out = Vec::new();
        for pair in reply.chunks(2) {
            let Some(id) = pair.first().and_then(int) else { continue };
            let raw = pair.get(1).and_then(bytes).unwrap_or_default();
            let notice: NewLifecycle = serde_json::from_slice(raw)
                .map_err(|e| unavailable(format!("a lifecycle notice does not parse: {e}")))?;
            out.push(LifecycleNotice { id: id as u64, notice });
        }
        Ok(out)
    }

    async fn finish_lifecycle(&self, ids: Vec<u64>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = fcall("pd_finish_notices", &self.subscription_key());
        cmd.arg(ids);
        self.inner.run::<Value>(&cmd).await.map_err(unavailable)?;
        Ok(())
    }

    async fn lifecycle_added(&self) {
        self.inner.lifecycle_added.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_servers::{start_node, start_node_with};

    fn options(url: &str, prefix: &str) -> Options {
        let mut o = Options::new(Target::parse(url).unwrap(), Clock::system());
        o.prefix = prefix.into();
        o
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_master_that_does_not_fsync_every_write_is_refused_unless_relaxed() {
        let node = start_node_with(false, &["--appendfsync", "everysec"]);
        match RedisStore::open(options(&node.url(), "weak")).await {
            Err(OpenError::Refused(why)) => assert!(why.contains("appendfsync everysec"), "{why}"),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a master with appendfsync everysec was accepted"),
        }
        let mut relaxed = options(&node.url(), "weak");
        relaxed.relaxed = true;
        assert!(RedisStore::open(relaxed).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_master_that_may_evict_keys_is_refused_unless_relaxed() {
        let node = start_node_with(false, &["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"]);
        match RedisStore::open(options(&node.url(), "evicting")).await {
            Err(OpenError::Refused(why)) => assert!(why.contains("maxmemory-policy allkeys-lru"), "{why}"),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a master that may evict keys was accepted"),
        }
        // A limit with noeviction is fine: a full Redis refuses writes (503) and drops nothing.
        let bounded = start_node_with(false, &["--maxmemory", "100mb", "--maxmemory-policy", "noeviction"]);
        assert!(RedisStore::open(options(&bounded.url(), "bounded")).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_with_another_partition_count_is_refused() {
        let node = start_node(false);
        RedisStore::open(options(&node.url(), "parts")).await.unwrap();
        let mut other = options(&node.url(), "parts");
        other.partitions = 8;
        match RedisStore::open(other).await {
            Err(OpenError::Refused(why)) => assert!(why.contains("16 partitions"), "{why}"),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a node with 8 partitions opened a keyspace made with 16"),
        }
        // Another prefix is another keyspace, with its own count.
        let mut fresh = options(&node.url(), "parts-8");
        fresh.partitions = 8;
        assert!(RedisStore::open(fresh).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_nodes_commit_is_heard_at_once_and_both_count_it() {
        use presence_core::{Activity, Availability, Command, SessionId, SessionState, Timing};
        let node = start_node(false);
        let a = RedisStore::open(options(&node.url(), "live")).await.unwrap();
        let mut quiet = options(&node.url(), "live");
        quiet.poll = Duration::from_secs(3600);
        let b = RedisStore::open(quiet).await.unwrap();
        // A session set an hour ago: its deadlines are overdue.
        let mut state = UserPresence::default();
        let command = Command::SetPresence {
            session: SessionId::parse("app").unwrap(),
            state: SessionState::new(Availability::Busy, Activity::InACall).unwrap(),
            expiration: SignedDuration::from_mins(10),
            application: None,
        };
        let an_hour_ago = Clock::system().now() - SignedDuration::from_hours(1);
        let event = state.apply(command, an_hour_ago, &Timing::default()).unwrap().change;
        let key = UserKey::new(TenantId::parse("tenant").unwrap(), UserId::parse("user").unwrap());

        // B's sweeper has been told of nothing sooner than a second from now, and waits.
        b.next_deadline().await;
        let mut woken = Box::pin(b.deadline_moved());
        tokio::select! {
            biased;
            _ = &mut woken => panic!("woken before anything was committed"),
            _ = std::future::ready(()) => {}
        }
        let before = b.head();
        a.commit(Commit {
            key,
            expected_version: 0,
            state,
            event,
        })
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), b.wait_past(&before))
            .await
            .expect("B's head moved on A's announcement");
        assert_eq!(b.changes_after(&before, 10).await.unwrap().len(), 1);
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("B's sweeper woken for the overdue deadline A committed");

        // Both see what the keyspace holds, for /metrics.
        let counts = b.counts().await;
        assert_eq!(
            (counts.users, counts.sessions, counts.deadlines, counts.log_retained),
            (1, 1, 1, 1),
            "{counts:?}"
        );
        let key = UserKey::new(TenantId::parse("tenant").unwrap(), UserId::parse("user").unwrap());
        let cleared = Commit {
            key,
            expected_version: 1,
            state: UserPresence::default(),
            event: None,
        };
        a.commit(cleared).await.unwrap();
        let counts = a.counts().await;
        assert_eq!(
            (counts.users, counts.sessions, counts.deadlines, counts.log_retained),
            (1, 0, 0, 1),
            "{counts:?}"
        );
    }

    /// Flip each of `users` between Busy and Away through `store`.
    async fn flip_all(store: &RedisStore, users: &[String]) {
        for user in users {
            crate::store::conformance::flip(store, user, Clock::system().now()).await;
        }
    }

    /// Whether `listener`'s head reaches `writer`'s within `within`.
    async fn hears(listener: &RedisStore, writer: &RedisStore, within: Duration) -> bool {
        let target = writer.head();
        tokio::time::timeout(within, async {
            while !listener.head().includes(&target) {
                listener.wait_past(&listener.head()).await;
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_channel_moved_by_resharding_is_followed() {
        let cluster = test_servers::Cluster::start();
        let a = RedisStore::open(options(&cluster.url(), "moved")).await.unwrap();
        let mut quiet = options(&cluster.url(), "moved");
        quiet.poll = Duration::from_secs(3600);
        let b = RedisStore::open(quiet).await.unwrap();
        let users: Vec<String> = (0..64).map(|i| format!("user-{i}")).collect();
        flip_all(&a, &users).await;
        let touched = a.head().partitions(16).unwrap();
        assert!(
            touched.iter().all(|seq| *seq > 0),
            "the users span every partition: {touched:?}"
        );
        assert!(
            hears(&b, &a, Duration::from_secs(10)).await,
            "B hears A by the live path"
        );

        // A third of the partitions, their channels among them, move to another master. What is
        // published while B follows a channel is missed (the poll fills that gap; here it is off),
        // so A writes in rounds until one round is heard whole.
        cluster.move_slots_holding("{p0}");
        let mut heard = false;
        for _ in 0..10 {
            flip_all(&a, &users).await;
            if hears(&b, &a, Duration::from_secs(2)).await {
                heard = true;
                break;
            }
        }
        assert!(heard, "B still hears every partition after its slot moved");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claiming_walks_every_subscription_a_page_a_call() {
        let node = start_node(false);
        let mut o = options(&node.url(), "pages");
        o.claim_page = 100;
        let store = RedisStore::open(o).await.unwrap();
        // More subscriptions than a small hash holds compactly (512 by default), so the scan
        // really pages.
        let ids: Vec<String> = (0..1000).map(|i| format!("sub-{i:04}")).collect();
        let start = Position::from_sequence(0).to_text();
        let mut cmd = redis::cmd("HSET");
        cmd.arg(format!("{}pos", store.inner.keys.subscriptions()));
        for id in &ids {
            cmd.arg(id).arg(&start);
        }
        store.inner.run::<i64>(&cmd).await.unwrap();

        let now = Clock::system().now();
        let before = store.metrics().round_trips.get();
        let claimed = store
            .claim("consumer", now, SignedDuration::from_secs(30))
            .await
            .unwrap();
        let calls = store.metrics().round_trips.get() - before;
        let got: Vec<&String> = claimed.iter().map(|(id, _)| id).collect();
        assert_eq!(got, ids.iter().collect::<Vec<_>>(), "each subscription once");
        assert!(calls >= 5, "1,000 subscriptions in pages of 100 took {calls} calls");
        // All held: another consumer gets none, and the holder keeps them on renewal.
        assert!(store
            .claim("other", now, SignedDuration::from_secs(30))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .claim("consumer", now, SignedDuration::from_secs(30))
                .await
                .unwrap()
                .len(),
            1000
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_whose_clock_is_off_redis_by_more_than_the_bound_is_refused() {
        let node = start_node(false);
        let mut fast = options(&node.url(), "skew");
        fast.node = Some("fast-node".into());
        fast.clock = Clock::manual(Clock::system().now() + SignedDuration::from_secs(5));
        match RedisStore::open(fast).await {
            Err(OpenError::Refused(why)) => assert!(why.contains("off Redis's"), "{why}"),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a node 5 s ahead of Redis was accepted"),
        }
        let mut synced = options(&node.url(), "skew");
        synced.node = Some("synced-node".into());
        let store = RedisStore::open(synced).await.unwrap();
        assert!(store.metrics().clock_skew_ms.get().abs() < 1000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_redis_is_an_error_not_a_hang() {
        let node = start_node(false);
        let url = node.url();
        drop(node);
        let mut o = options(&url, "gone");
        o.timeouts = Timeouts {
            connect: Duration::from_millis(300),
            command: Duration::from_millis(300),
        };
        assert!(matches!(RedisStore::open(o).await, Err(OpenError::Unreachable(_))));
    }
}
