//! Change notifications derived from the change log.
//!
//! One task (the matcher) follows the log. For each change of a user's availability or activity
//! it finds the subscriptions watching that user and queues the change for each, on the queue of
//! the subscription's endpoint URL. One task per endpoint sends its queue in log order (so
//! per-user order holds), batching what queued up, retrying a failing POST with exponential
//! backoff and jitter; a failing endpoint holds up only its own queue.
//!
//! Nothing is stored per notification. Each subscription has an acknowledged position in the
//! store: everything it is owed is in the log after it. Positions are acknowledged once the
//! notifications before them went out (lazily: a crash means a re-send, which at-least-once
//! allows). What a subscription is given up on (its queue overflowed, a POST failed for longer
//! than `retry_for`, or the log's window moved past its position) is skipped in the store in the
//! same write as a `missed` lifecycle notice, so a subscriber is always told what it lost.
//!
//! What one subscriber can make the server hold: per subscription at most `queue_per_subscription`
//! queued changes, per endpoint at most `queue_per_endpoint` (references to changes the log holds
//! anyway), one position and at most one pending `missed` notice in the store.
use super::crypto::EncryptionCertificate;
use super::payload::{self, ChangedPresence};
use super::validation_token::ValidationTokenSigner;
use super::webhook::WebhookClient;
use crate::clock::Clock;
use crate::metrics::{DeliveryMetrics, OutcomeLabels};
use crate::store::{
    Change, ChangeLog, Deliveries, LifecycleEvent, LifecycleNotice, LogError, NewLifecycle, Position, Subscriptions,
};
use crate::subscription::Subscription;
use jiff::SignedDuration;
use presence_core::UserKey;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// Graph batches queued notifications into one POST; 100 keeps a body well under a megabyte.
const MAX_BATCH: usize = 100;
/// Changes read from the log per step.
const READ_BATCH: usize = 1024;
/// How often positions are acknowledged to the store (and given-up changes recorded).
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How long a claim on the delivery work lasts; renewed at every refresh, three times within it.
const LEASE: SignedDuration = SignedDuration::from_secs(30);
/// Re-read the subscriptions this often even without a hint that they changed.
const REFRESH_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Give up on a notification this long after its change (Graph: 4 hours); then `missed`.
    pub retry_for: SignedDuration,
    /// Graph's timeouts: 3 s for a first attempt, 10 s for retries.
    pub first_timeout: Duration,
    pub retry_timeout: Duration,
    /// Backoff starts here and doubles per failed attempt, capped at `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Changes queued for one subscription before the oldest are dropped (then `missed`).
    pub queue_per_subscription: usize,
    /// Changes queued for one endpoint URL, across its subscriptions, likewise.
    pub queue_per_endpoint: usize,
    /// An endpoint failing this long without a success is suspended: each of its subscriptions
    /// keeps only its newest change queued (the rest are given up, with `missed`), and the
    /// endpoint is tried once per `probe_every` until it answers again.
    pub suspend_after: SignedDuration,
    pub probe_every: Duration,
    /// Signs the `validationTokens` of rich notifications; `None` sends none.
    pub validation_tokens: Option<Arc<ValidationTokenSigner>>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            retry_for: SignedDuration::from_hours(4),
            first_timeout: Duration::from_secs(3),
            retry_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
            queue_per_subscription: 10_000,
            queue_per_endpoint: 50_000,
            suspend_after: SignedDuration::from_mins(10),
            probe_every: Duration::from_secs(60),
            validation_tokens: None,
        }
    }
}

/// One subscription as the dispatcher tracks it.
struct Tracked {
    record: Arc<Subscription>,
    /// Changes at or before this were owed before the dispatcher took the subscription over (they
    /// were queued from the store's position) or are not owed at all.
    start: Position,
    /// The position last acknowledged to the store.
    acknowledged: Position,
}

/// The changes queued for one endpoint URL, per subscription, each queue in log order.
#[derive(Default)]
struct Queue {
    by_subscription: HashMap<Arc<str>, VecDeque<Arc<Change>>>,
    /// The oldest position of each subscription's batch in flight.
    in_flight: HashMap<Arc<str>, Position>,
    total: usize,
    /// Subscriptions whose changes were dropped, with the newest dropped position: to be skipped
    /// in the store (with `missed`) before anything later is acknowledged for them.
    dropped: HashMap<Arc<str>, Position>,
    /// When the endpoint started failing (no success since), if it is failing.
    failing_since: Option<jiff::Timestamp>,
    /// Failing for longer than `suspend_after`: each subscription keeps only its newest change.
    suspended: bool,
}

impl Queue {
    /// Up to `max` queued changes in log order across subscriptions, moved into flight.
    fn take_batch(&mut self, max: usize) -> Vec<(Arc<str>, Arc<Change>)> {
        let mut batch = Vec::new();
        while batch.len() < max {
            let oldest = self
                .by_subscription
                .iter()
                .filter_map(|(id, q)| q.front().map(|c| (c.position.order_key(), id)))
                .min_by_key(|(p, _)| *p)
                .map(|(_, id)| id.clone());
            let Some(id) = oldest else { break };
            let Some(change) = self.by_subscription.get_mut(&id).and_then(VecDeque::pop_front) else {
                break;
            };
            self.total -= 1;
            let flying = self.in_flight.entry(id.clone()).or_default();
            *flying = flying.earliest(&change.position);
            batch.push((id, change));
        }
        batch
    }

    /// Drop the oldest queued change of `id` (or, with `None`, of the whole endpoint).
    fn drop_oldest(&mut self, id: Option<&Arc<str>>) {
        let id = match id {
            Some(id) => Some(id.clone()),
            None => self
                .by_subscription
                .iter()
                .filter_map(|(id, q)| q.front().map(|c| (c.position.order_key(), id)))
                .min_by_key(|(p, _)| *p)
                .map(|(_, id)| id.clone()),
        };
        let Some(id) = id else { return };
        if let Some(change) = self.by_subscription.get_mut(&id).and_then(VecDeque::pop_front) {
            self.total -= 1;
            let newest = self.dropped.entry(id).or_default();
            *newest = newest.join(&change.position);
        }
    }

    /// The position through which `id` needs nothing more from this queue, given that the
    /// matcher has routed every change through `routed`.
    fn done_through(&self, id: &str, routed: Position) -> Position {
        // The earliest change of each partition still held; a queue is in log order per partition.
        let mut held = self.in_flight.get(id).cloned().unwrap_or_default();
        for change in self.by_subscription.get(id).into_iter().flatten() {
            if held.is_full() {
                break;
            }
            held = held.earliest(&change.position);
        }
        routed.before(&held)
    }

    /// The endpoint failed at `now`; returns whether it has just become suspended.
    fn failed(&mut self, now: jiff::Timestamp, suspend_after: SignedDuration) -> bool {
        let since = *self.failing_since.get_or_insert(now);
        if self.suspended || now.duration_since(since) < suspend_after {
            return false;
        }
        self.suspended = true;
        let ids: Vec<Arc<str>> = self.by_subscription.keys().cloned().collect();
        for id in ids {
            while self.by_subscription.get(&id).is_some_and(|q| q.len() > 1) {
                self.drop_oldest(Some(&id));
            }
        }
        true
    }

    fn succeeded(&mut self) {
        self.failing_since = None;
        self.suspended = false;
    }

    fn forget(&mut self, id: &str) {
        if let Some(q) = self.by_subscription.remove(id) {
            self.total -= q.len();
        }
        self.in_flight.remove(id);
        self.dropped.remove(id);
    }
}

/// One endpoint URL: its queue, and the wake-up for its sender task.
struct Endpoint {
    url: String,
    queue: Mutex<Queue>,
    wake: Notify,
}

impl Endpoint {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the matcher and the endpoint senders share.
struct Shared<S> {
    store: S,
    client: WebhookClient,
    config: DeliveryConfig,
    clock: Clock,
    metrics: DeliveryMetrics,
    shutdown: watch::Receiver<bool>,
    /// Current subscription records, for building payloads.
    records: Mutex<HashMap<String, Arc<Subscription>>>,
    /// Every change through this position has been routed to the queues.
    routed: Mutex<Position>,
}

impl<S> Shared<S> {
    fn record(&self, id: &str) -> Option<Arc<Subscription>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    fn routed(&self) -> Position {
        self.routed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub struct Dispatcher<S> {
    shared: Arc<Shared<S>>,
    consumer: String,
    tracked: HashMap<String, Tracked>,
    watching: HashMap<UserKey, Vec<Arc<str>>>,
    endpoints: HashMap<String, Arc<Endpoint>>,
    tasks: JoinSet<()>,
}

impl<S> Dispatcher<S>
where
    S: ChangeLog + Subscriptions + Deliveries + Clone,
{
    pub fn new(
        store: S,
        client: WebhookClient,
        config: DeliveryConfig,
        metrics: DeliveryMetrics,
        clock: Clock,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                client,
                config,
                clock,
                metrics,
                shutdown,
                records: Mutex::new(HashMap::new()),
                routed: Mutex::new(Position::ZERO),
            }),
            consumer: format!("dispatcher-{}", uuid::Uuid::new_v4()),
            tracked: HashMap::new(),
            watching: HashMap::new(),
            endpoints: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Claim the subscriptions, then follow the log until shutdown.
    pub async fn run(mut self) {
        let store = self.shared.store.clone();
        let mut shutdown = self.shared.shutdown.clone();
        self.tasks
            .spawn(send_lifecycle(self.shared.clone(), self.consumer.clone()));
        // Start from the oldest position owed; subscriptions further along skip what they are not owed.
        let mut position = store.head();
        if let Err(e) = self.refresh(&mut position, true).await {
            tracing::warn!(error = %e, "cannot read subscriptions; will retry");
        }
        self.set_routed(position.clone());
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        loop {
            tokio::select! {
                _ = store.wait_past(&position) => {
                    match store.changes_after(&position, READ_BATCH).await {
                        Ok(changes) => {
                            if !changes.is_empty() {
                                self.route(&changes);
                                position = changes.iter().fold(position, |p, c| p.join(&c.position));
                                self.set_routed(position.clone());
                            }
                        }
                        Err(LogError::Expired { oldest }) => {
                            tracing::warn!(%position, %oldest, "the change log moved past the dispatcher; subscribers get missed");
                            self.lose_until(&oldest);
                            position = position.join(&oldest);
                            self.set_routed(position.clone());
                        }
                        Err(LogError::Store(e)) => {
                            tracing::warn!(error = %e, "cannot read the change log; will retry");
                            tokio::time::sleep(FLUSH_EVERY).await;
                        }
                    }
                }
                _ = store.subscriptions_changed() => {
                    if let Err(e) = self.refresh(&mut position, false).await {
                        tracing::warn!(error = %e, "cannot read subscriptions; will retry");
                    }
                }
                _ = refresh.tick() => {
                    if let Err(e) = self.refresh(&mut position, false).await {
                        tracing::warn!(error = %e, "cannot read subscriptions; will retry");
                    }
                }
                _ = flush.tick() => self.flush().await,
                _ = shutdown.changed() => break,
            }
        }
        self.flush().await;
        self.tasks.abort_all();
        // A clean stop hands every subscription over at once: what was sent is acknowledged
        // above, and no POST of this node's is left running, so the next holder takes each from
        // its acknowledged position now rather than when the claim lapses.
        let held: Vec<String> = self.tracked.keys().cloned().collect();
        if let Err(e) = store.release(&self.consumer, held).await {
            tracing::warn!(error = %e, "cannot release subscriptions at stop; their claims lapse instead");
        }
    }

    fn set_routed(&self, position: Position) {
        *self.shared.routed.lock().unwrap_or_else(|e| e.into_inner()) = position;
    }

    /// Queue each change for every tracked subscription watching its user.
    fn route(&mut self, changes: &[Arc<Change>]) {
        for change in changes {
            if !change.event.availability_or_activity_changed() {
                continue;
            }
            let Some(ids) = self.watching.get(&change.key) else {
                continue;
            };
            for id in ids.clone() {
                self.queue(&id, change);
            }
        }
    }

    fn queue(&mut self, id: &Arc<str>, change: &Arc<Change>) {
        let Some(tracked) = self.tracked.get(&**id) else {
            return;
        };
        if change.position <= tracked.start || change.event.at >= tracked.record.expiration {
            return;
        }
        let Some(endpoint) = self.endpoints.get(&tracked.record.notification_url) else {
            return;
        };
        let config = &self.shared.config;
        {
            let mut queue = endpoint.queue();
            let bound = if queue.suspended {
                1
            } else {
                config.queue_per_subscription
            };
            let own = queue.by_subscription.entry(id.clone()).or_default();
            own.push_back(change.clone());
            let own_len = own.len();
            queue.total += 1;
            if own_len > bound {
                queue.drop_oldest(Some(id));
            }
            if queue.total > config.queue_per_endpoint {
                queue.drop_oldest(None);
            }
        }
        endpoint.wake.notify_one();
    }

    /// Take over what the store says this consumer may send, and follow every change to the
    /// subscription set: new ones are backfilled from their positions, gone ones dropped.
    async fn refresh(&mut self, position: &mut Position, first: bool) -> Result<(), crate::store::StoreError> {
        let store = self.shared.store.clone();
        let now = self.shared.clock.now();
        let claimed: HashMap<String, Position> = store.claim(&self.consumer, now, LEASE).await?.into_iter().collect();
        let all = store.all().await?;
        let exists: HashSet<String> = all.iter().map(|s| s.subscription.id.clone()).collect();
        let records: HashMap<String, Arc<Subscription>> = all
            .into_iter()
            .filter(|s| claimed.contains_key(&s.subscription.id))
            .map(|s| (s.subscription.id.clone(), s.subscription))
            .collect();
        let gone: Vec<String> = self
            .tracked
            .iter()
            .filter(|(id, t)| {
                records
                    .get(*id)
                    .is_none_or(|r| r.notification_url != t.record.notification_url || r.users != t.record.users)
            })
            .map(|(id, _)| id.clone())
            .collect();
        if !gone.is_empty() {
            // What they lost must reach the store before their queues go.
            self.flush().await;
        }
        // Subscriptions another node now leads (they exist, but were not claimed for this one)
        // are let go at once, unless a POST of theirs is in flight: that one's claim lapses
        // instead, so two nodes never send one subscription at the same time.
        let mut handed_over = Vec::new();
        for id in gone {
            if exists.contains(&id) && !claimed.contains_key(&id) && !self.in_flight(&id) {
                handed_over.push(id.clone());
            }
            self.untrack(&id);
        }
        if let Err(e) = store.release(&self.consumer, handed_over).await {
            tracing::warn!(error = %e, "cannot release subscriptions; their claims lapse instead");
        }
        if first {
            // Start from the oldest position any subscription is owed from.
            for at in claimed.values() {
                *position = position.meet(at);
            }
        }
        let mut added = Vec::new();
        for (id, record) in &records {
            match self.tracked.get_mut(id) {
                Some(t) => t.record = record.clone(),
                None => {
                    let at = claimed[id].clone();
                    self.track(record.clone(), at.clone());
                    added.push((id.clone(), at));
                }
            }
        }
        *self.shared.records.lock().unwrap_or_else(|e| e.into_inner()) = records;
        for (id, at) in added {
            if !at.includes(position) {
                self.backfill(&id, at, position.clone()).await;
            }
        }
        Ok(())
    }

    fn in_flight(&self, id: &str) -> bool {
        self.tracked
            .get(id)
            .and_then(|t| self.endpoints.get(&t.record.notification_url))
            .is_some_and(|e| e.queue().in_flight.contains_key(id))
    }

    fn track(&mut self, record: Arc<Subscription>, at: Position) {
        let id: Arc<str> = Arc::from(record.id.as_str());
        for user in &record.users {
            self.watching
                .entry(UserKey::new(record.tenant.clone(), user.clone()))
                .or_default()
                .push(id.clone());
        }
        let url = record.notification_url.clone();
        if !self.endpoints.contains_key(&url) {
            let endpoint = Arc::new(Endpoint {
                url: url.clone(),
                queue: Mutex::new(Queue::default()),
                wake: Notify::new(),
            });
            self.tasks.spawn(send_endpoint(self.shared.clone(), endpoint.clone()));
            self.endpoints.insert(url, endpoint);
        }
        self.tracked.insert(
            record.id.clone(),
            Tracked {
                record,
                start: at.clone(),
                acknowledged: at,
            },
        );
    }

    fn untrack(&mut self, id: &str) {
        let Some(t) = self.tracked.remove(id) else { return };
        for user in &t.record.users {
            let key = UserKey::new(t.record.tenant.clone(), user.clone());
            if let Some(ids) = self.watching.get_mut(&key) {
                ids.retain(|i| &**i != id);
                if ids.is_empty() {
                    self.watching.remove(&key);
                }
            }
        }
        let url = &t.record.notification_url;
        if let Some(endpoint) = self.endpoints.get(url) {
            endpoint.queue().forget(id);
        }
        // An endpoint with no subscription left is freed: its sender ends when it finds it empty.
        if !self.tracked.values().any(|t| &t.record.notification_url == url) {
            if let Some(endpoint) = self.endpoints.remove(url) {
                endpoint.wake.notify_one();
            }
        }
    }

    /// Queue what `id` is owed between its position and where the matcher stands.
    async fn backfill(&mut self, id: &str, from: Position, through: Position) {
        let store = self.shared.store.clone();
        let mut at = from;
        let Some(key) = self.tracked.get(id).map(|t| Arc::<str>::from(t.record.id.as_str())) else {
            return;
        };
        while !at.includes(&through) {
            match store.changes_after(&at, READ_BATCH).await {
                Ok(changes) if changes.is_empty() => return,
                Ok(changes) => {
                    for change in changes.iter().filter(|c| c.position <= through) {
                        let watched = self.tracked.get(id).is_some_and(|t| {
                            t.record.tenant == change.key.tenant && t.record.users.contains(&change.key.user)
                        });
                        if watched && change.event.availability_or_activity_changed() {
                            self.queue(&key, change);
                        }
                    }
                    at = changes.iter().fold(at, |p, c| p.join(&c.position));
                }
                Err(LogError::Expired { oldest }) => {
                    self.lose(id, oldest.clone());
                    at = at.join(&oldest);
                }
                Err(LogError::Store(e)) => {
                    tracing::warn!(error = %e, subscription = id, "cannot backfill notifications; they follow after a restart");
                    return;
                }
            }
        }
    }

    /// The log no longer holds what subscriptions behind `oldest` are owed: they lose it.
    fn lose_until(&mut self, oldest: &Position) {
        let behind: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| !t.acknowledged.includes(oldest))
            .map(|(id, _)| id.clone())
            .collect();
        for id in behind {
            self.lose(&id, oldest.clone());
        }
    }

    /// Record on `id`'s endpoint that its changes through `through` are given up.
    fn lose(&mut self, id: &str, through: Position) {
        let Some(t) = self.tracked.get(id) else { return };
        if let Some(endpoint) = self.endpoints.get(&t.record.notification_url) {
            let mut queue = endpoint.queue();
            let newest = queue.dropped.entry(Arc::from(id)).or_default();
            *newest = newest.join(&through);
        }
    }

    /// Record given-up changes (with `missed`), then acknowledge every subscription's progress.
    /// (The claim is renewed by `refresh`: claiming walks every subscription, too much for each
    /// flush.)
    async fn flush(&mut self) {
        let store = self.shared.store.clone();
        let now = self.shared.clock.now();
        let routed = self.shared.routed();
        let queued: usize = self.endpoints.values().map(|e| e.queue().total).sum();
        self.shared.metrics.queue_depth.set(queued as i64);
        let mut acks = Vec::new();
        let mut skips = Vec::new();
        for (id, t) in &mut self.tracked {
            let Some(endpoint) = self.endpoints.get(&t.record.notification_url) else {
                continue;
            };
            let (dropped, done) = {
                let mut queue = endpoint.queue();
                (
                    queue.dropped.remove(id.as_str()),
                    queue.done_through(id, routed.clone()),
                )
            };
            if let Some(through) = dropped {
                skips.push((id.clone(), through, t.record.clone()));
            } else if !t.acknowledged.includes(&done) {
                t.acknowledged = t.acknowledged.join(&done);
                acks.push((id.clone(), done));
            }
        }
        for (id, through, record) in skips {
            let missed = record.lifecycle_notification_url.clone().map(|url| NewLifecycle {
                subscription_id: id.clone(),
                url,
                event: LifecycleEvent::Missed,
                tenant: record.tenant.clone(),
                client_state: record.client_state.clone(),
                subscription_expiration: record.expiration,
                created_at: now,
            });
            match store.skip(&id, through.clone(), missed).await {
                Ok(()) => {
                    tracing::warn!(subscription = %id, %through, "gave up notifications; the subscriber gets missed");
                    if let Some(t) = self.tracked.get_mut(&id) {
                        t.acknowledged = t.acknowledged.join(&through);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, subscription = %id, "cannot record given-up notifications; will retry");
                    self.lose(&id, through);
                }
            }
        }
        if let Err(e) = store.acknowledge(&self.consumer, acks).await {
            tracing::warn!(error = %e, "cannot record delivery progress; notifications may be sent again");
        }
    }
}

/// One endpoint's sender: takes batches off its queue in log order and POSTs them until they
/// succeed or are given up.
async fn send_endpoint<S>(shared: Arc<Shared<S>>, endpoint: Arc<Endpoint>)
where
    S: Send + Sync + 'static,
{
    let target = reqwest::Url::parse(&endpoint.url);
    let mut shutdown = shared.shutdown.clone();
    loop {
        let batch = endpoint.queue().take_batch(MAX_BATCH);
        if batch.is_empty() {
            // Freed by the matcher once no subscription uses it, and nothing is queued.
            if Arc::strong_count(&endpoint) == 1 {
                return;
            }
            tokio::select! {
                _ = endpoint.wake.notified() => continue,
                _ = shutdown.changed() => return,
            }
        }
        let (items, rich) = build_items(&shared, &batch);
        let delivered = match (&target, items.is_empty()) {
            (_, true) => true,
            (Ok(target), false) => {
                let body = payload::collection_with_tokens(items, validation_tokens(&shared, rich));
                deliver_with_retries(&shared, &endpoint, target, &batch, body).await
            }
            (Err(_), false) => {
                tracing::warn!(url = %endpoint.url, "dropping notifications to an unparsable URL");
                false
            }
        };
        let mut queue = endpoint.queue();
        for (id, change) in &batch {
            queue.in_flight.remove(id);
            if !delivered {
                let newest = queue.dropped.entry(id.clone()).or_default();
                *newest = newest.join(&change.position);
            }
        }
    }
}

/// The items of one POST, and the (application, tenant) pairs of those that carry resource data.
fn build_items<S>(
    shared: &Shared<S>,
    batch: &[(Arc<str>, Arc<Change>)],
) -> (Vec<serde_json::Value>, Vec<(String, presence_core::TenantId)>) {
    let mut items = Vec::with_capacity(batch.len());
    let mut rich = Vec::new();
    let mut certificates: HashMap<&str, Option<EncryptionCertificate>> = HashMap::new();
    for (id, change) in batch {
        // A deleted subscription wants no more notifications, even ones already queued.
        let Some(subscription) = shared.record(id) else {
            continue;
        };
        let certificate = certificates
            .entry(id)
            .or_insert_with(|| {
                subscription
                    .encryption_certificate
                    .as_deref()
                    .and_then(|c| EncryptionCertificate::parse(c).ok())
            })
            .clone();
        let view = &change.event.view;
        let presence = ChangedPresence {
            user: &change.key.user,
            availability: view.availability,
            activity: view.activity,
            sequence: view.sequence,
        };
        let item_id = change.position.to_text();
        match payload::change_item(&item_id, &subscription, &presence, certificate.as_ref()) {
            Ok(item) => {
                let pair = (subscription.application_id.clone(), subscription.tenant.clone());
                if item.get("encryptedContent").is_some() && !rich.contains(&pair) {
                    rich.push(pair);
                }
                items.push(item);
            }
            Err(e) => tracing::warn!(error = %e, subscription = %subscription.id, "cannot encrypt a notification"),
        }
    }
    (items, rich)
}

/// One token per application and tenant with resource data in the POST, as Graph sends them.
/// They stay valid for an hour past the retry window, since a retried POST repeats its body.
fn validation_tokens<S>(shared: &Shared<S>, rich: Vec<(String, presence_core::TenantId)>) -> Vec<String> {
    let Some(signer) = &shared.config.validation_tokens else {
        return Vec::new();
    };
    let now = shared.clock.now();
    let lifetime = shared.config.retry_for + SignedDuration::from_hours(1);
    rich.iter()
        .filter_map(|(app, tenant)| signer.sign(app, tenant, now, lifetime))
        .collect()
}

/// Send until it succeeds (true) or the oldest change is older than `retry_for` (false: given
/// up, the caller records it for `missed`). On shutdown the task ends mid-retry: nothing was
/// acknowledged, so the next start sends it again.
async fn deliver_with_retries<S>(
    shared: &Shared<S>,
    endpoint: &Endpoint,
    target: &reqwest::Url,
    batch: &[(Arc<str>, Arc<Change>)],
    body: serde_json::Value,
) -> bool {
    let mut attempt: u32 = 0;
    let mut shutdown = shared.shutdown.clone();
    let outcome = |name: &'static str, n: usize| {
        shared
            .metrics
            .outcomes
            .get_or_create(&OutcomeLabels { outcome: name })
            .inc_by(n as u64)
    };
    let oldest = batch.iter().map(|(_, c)| c.event.at).min();
    loop {
        let timeout = if attempt == 0 {
            shared.config.first_timeout
        } else {
            shared.config.retry_timeout
        };
        match shared.client.deliver(target, &body, timeout).await {
            Ok(()) => {
                outcome("delivered", batch.len());
                endpoint.queue().succeeded();
                return true;
            }
            Err(e) => {
                outcome("failed", 1);
                attempt += 1;
                let now = shared.clock.now();
                let (suspended, just_now) = {
                    let mut queue = endpoint.queue();
                    let just_now = queue.failed(now, shared.config.suspend_after);
                    (queue.suspended, just_now)
                };
                if just_now {
                    tracing::warn!(url = %target, "the endpoint has failed for too long; suspended (its subscribers get missed)");
                }
                if oldest.is_some_and(|o| now.duration_since(o) >= shared.config.retry_for) {
                    tracing::warn!(url = %target, error = %e, count = batch.len(), "giving up on notifications");
                    outcome("dropped", batch.len());
                    return false;
                }
                let wait = if suspended {
                    shared.config.probe_every
                } else {
                    backoff(&shared.config, attempt)
                };
                tracing::debug!(url = %target, error = %e, attempt, ?wait, "delivery failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => std::future::pending::<()>().await,
                }
            }
        }
    }
}

/// Exponential backoff with "full jitter" (a random point in [wait/2, wait]), so endpoints that
/// fail together do not retry in lockstep.
fn backoff(config: &DeliveryConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff_initial
        .saturating_mul(1u32.checked_shl(attempt.clamp(1, 21) - 1).unwrap_or(u32::MAX));
    let capped = exp.min(config.backoff_max);
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    capped / 2 + capped.mul_f64(f64::from(byte[0]) / 510.0)
}

/// The lifecycle sender: claims queued lifecycle notices and sends each (with retries) on its own
/// task, so a dead lifecycle URL holds up no other notice; a sent notice is forgotten.
async fn send_lifecycle<S>(shared: Arc<Shared<S>>, consumer: String)
where
    S: Deliveries + Clone,
{
    let store = shared.store.clone();
    let mut shutdown = shared.shutdown.clone();
    let mut sending: HashSet<u64> = HashSet::new();
    let mut tasks: JoinSet<(u64, bool)> = JoinSet::new();
    let mut recheck = tokio::time::interval(FLUSH_EVERY);
    loop {
        let now = shared.clock.now();
        match store.claim_lifecycle(&consumer, now, LEASE, 256).await {
            Ok(notices) => {
                for notice in notices {
                    if !sending.insert(notice.id) {
                        continue;
                    }
                    let shared = shared.clone();
                    tasks.spawn(async move {
                        let id = notice.id;
                        (id, send_notice(&shared, &notice).await)
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read lifecycle notices; will retry"),
        }
        tokio::select! {
            _ = store.lifecycle_added() => {}
            _ = recheck.tick() => {}
            Some(done) = tasks.join_next() => {
                let mut finished = Vec::new();
                let mut next = Some(done);
                while let Some(result) = next {
                    if let Ok((id, _)) = result {
                        sending.remove(&id);
                        finished.push(id);
                    }
                    next = tasks.try_join_next();
                }
                if let Err(e) = store.finish_lifecycle(finished).await {
                    tracing::warn!(error = %e, "cannot record sent lifecycle notices; they may be sent again");
                }
            }
            _ = shutdown.changed() => {
                tasks.abort_all();
                return;
            }
        }
    }
}

/// Send one lifecycle notice until it succeeds or is older than `retry_for`.
async fn send_notice<S>(shared: &Shared<S>, notice: &LifecycleNotice) -> bool {
    let n = &notice.notice;
    let Ok(target) = reqwest::Url::parse(&n.url) else {
        return false;
    };
    let item = payload::lifecycle_item(
        &n.subscription_id,
        n.event,
        &n.tenant,
        n.client_state.as_deref(),
        n.subscription_expiration,
    );
    let body = payload::collection(vec![item]);
    let mut attempt = 0;
    loop {
        let timeout = if attempt == 0 {
            shared.config.first_timeout
        } else {
            shared.config.retry_timeout
        };
        if shared.client.deliver(&target, &body, timeout).await.is_ok() {
            return true;
        }
        attempt += 1;
        if shared.clock.now().duration_since(n.created_at) >= shared.config.retry_for {
            tracing::warn!(url = %target, event = n.event.as_str(), "giving up on a lifecycle notice");
            return false;
        }
        tokio::time::sleep(backoff(&shared.config, attempt)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::{Activity, Availability, ChangeEvent, PresenceView, SequenceNumber, TenantId, UserId};

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let config = DeliveryConfig::default();
        let first = backoff(&config, 1);
        assert!(
            first >= Duration::from_millis(250) && first <= Duration::from_millis(500),
            "{first:?}"
        );
        let fifth = backoff(&config, 5);
        assert!(
            fifth >= Duration::from_secs(4) && fifth <= Duration::from_secs(8),
            "{fifth:?}"
        );
        let late = backoff(&config, 40);
        assert!(late <= config.backoff_max && late >= config.backoff_max / 2, "{late:?}");
    }

    fn change(position: u64) -> Arc<Change> {
        let view = PresenceView {
            availability: Availability::Busy,
            activity: Activity::InACall,
            status_message: None,
            out_of_office: Default::default(),
            sequence: SequenceNumber(position),
            work_location: Default::default(),
        };
        Arc::new(Change {
            position: Position::from_sequence(position),
            key: UserKey::new(TenantId::parse("t").unwrap(), UserId::parse("u").unwrap()),
            event: ChangeEvent {
                at: "2026-11-27T09:00:00Z".parse().unwrap(),
                previous_availability: Availability::Offline,
                previous_activity: Activity::Offline,
                view,
            },
        })
    }

    #[test]
    fn a_queue_sends_in_log_order_across_subscriptions_and_knows_what_is_done() {
        let mut q = Queue::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        for (id, p) in [(&a, 1), (&b, 2), (&a, 3), (&b, 5)] {
            q.by_subscription.entry(id.clone()).or_default().push_back(change(p));
            q.total += 1;
        }
        let routed = Position::from_sequence(9);
        assert_eq!(q.done_through("a", routed.clone()), Position::from_sequence(0));
        let batch = q.take_batch(3);
        let order: Vec<u64> = batch.iter().map(|(_, c)| c.position.sequence()).collect();
        assert_eq!(order, [1, 2, 3], "oldest first, whichever subscription");
        assert_eq!(
            q.done_through("b", routed.clone()),
            Position::from_sequence(1),
            "in flight holds b back"
        );
        q.in_flight.clear();
        assert_eq!(
            q.done_through("a", routed.clone()),
            routed,
            "nothing queued: done through what was routed"
        );
        assert_eq!(q.done_through("b", routed.clone()), Position::from_sequence(4));
    }

    #[test]
    fn dropping_the_oldest_records_what_was_lost() {
        let mut q = Queue::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        for (id, p) in [(&a, 1), (&b, 2), (&a, 3)] {
            q.by_subscription.entry(id.clone()).or_default().push_back(change(p));
            q.total += 1;
        }
        q.drop_oldest(None);
        assert_eq!(q.dropped.get("a"), Some(&Position::from_sequence(1)));
        q.drop_oldest(Some(&a));
        assert_eq!(q.dropped.get("a"), Some(&Position::from_sequence(3)));
        assert_eq!(q.total, 1);
        q.forget("b");
        assert_eq!(q.total, 0);
    }
}
