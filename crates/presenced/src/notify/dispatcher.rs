//! Delivery of owed notifications: one queue and one task per endpoint URL.
//!
//! Per endpoint, deliveries go out strictly in commit order (so per-user order holds), batched
//! when they queue up, and a failing batch blocks only its own endpoint while it is retried with
//! exponential backoff and jitter; every other endpoint keeps flowing. A delivery leaves the store
//! only after a 2xx, so a crash means a re-send (at-least-once), never a loss.
use super::crypto::EncryptionCertificate;
use super::payload::{self, ChangedPresence};
use super::webhook::WebhookClient;
use crate::clock::SystemClock;
use crate::metrics::{DeliveryMetrics, OutcomeLabels};
use crate::store::{Delivery, DeliveryKind, LifecycleEvent, NewDelivery, PresenceStore};
use jiff::SignedDuration;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Graph batches queued notifications into one POST; 100 keeps a body well under a megabyte.
const MAX_BATCH: usize = 100;

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Give up on a notification this long after it was created (Graph: 4 hours).
    pub retry_for: SignedDuration,
    /// Graph's timeouts: 3 s for a first attempt, 10 s for retries.
    pub first_timeout: Duration,
    pub retry_timeout: Duration,
    /// Backoff starts here and doubles per failed attempt, capped at `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            retry_for: SignedDuration::from_hours(4),
            first_timeout: Duration::from_secs(3),
            retry_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
        }
    }
}

struct Context<S> {
    store: S,
    client: WebhookClient,
    config: DeliveryConfig,
    clock: SystemClock,
    shutdown: watch::Receiver<bool>,
    /// Delivered ids go to one background task, so an endpoint never waits on the store (which
    /// may be in the middle of an fsync) before sending its next batch.
    finished: mpsc::UnboundedSender<Vec<u64>>,
    metrics: DeliveryMetrics,
}

pub struct Dispatcher<S> {
    context: Arc<Context<S>>,
    endpoints: HashMap<String, mpsc::UnboundedSender<Delivery>>,
    tasks: tokio::task::JoinSet<()>,
}

impl<S: PresenceStore + Clone> Dispatcher<S> {
    pub fn new(
        store: S,
        client: WebhookClient,
        config: DeliveryConfig,
        metrics: DeliveryMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let (finished, finished_rx) = mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(record_finished(store.clone(), finished_rx));
        let context = Arc::new(Context {
            store,
            client,
            config,
            clock: SystemClock,
            shutdown,
            finished,
            metrics,
        });
        Self {
            context,
            endpoints: HashMap::new(),
            tasks,
        }
    }

    /// Resume what was owed at start, then follow new deliveries until shutdown.
    pub async fn run(mut self) {
        let Some(mut feed) = self.context.store.take_delivery_feed() else {
            tracing::error!("delivery feed already taken; notifications are not dispatched");
            return;
        };
        let pending = match self.context.store.pending_deliveries().await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read pending deliveries");
                Vec::new()
            }
        };
        // The feed may repeat deliveries committed while `pending` was read; ids tell them apart.
        let resumed_up_to = pending.last().map_or(0, |d| d.id);
        if !pending.is_empty() {
            tracing::info!(count = pending.len(), "resuming pending deliveries");
        }
        for delivery in pending {
            self.route(delivery);
        }
        let mut shutdown = self.context.shutdown.clone();
        loop {
            tokio::select! {
                batch = feed.recv() => match batch {
                    Some(batch) => {
                        for delivery in batch.into_iter().filter(|d| d.id > resumed_up_to) {
                            self.route(delivery);
                        }
                    }
                    None => break,
                },
                _ = shutdown.changed() => break,
            }
        }
        drop(self.endpoints);
        self.tasks.abort_all();
    }

    fn route(&mut self, delivery: Delivery) {
        self.context.metrics.queue_depth.inc();
        let sender = self.endpoints.entry(delivery.url.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.tasks
                .spawn(endpoint_worker(delivery.url.clone(), rx, self.context.clone()));
            tx
        });
        let _ = sender.send(delivery);
    }
}

async fn endpoint_worker<S: PresenceStore>(
    url: String,
    mut rx: mpsc::UnboundedReceiver<Delivery>,
    context: Arc<Context<S>>,
) {
    let target = reqwest::Url::parse(&url);
    let mut backlog: VecDeque<Delivery> = VecDeque::new();
    loop {
        if backlog.is_empty() {
            match rx.recv().await {
                Some(d) => backlog.push_back(d),
                None => return,
            }
        }
        while let Ok(d) = rx.try_recv() {
            backlog.push_back(d);
        }
        let batch: Vec<Delivery> = backlog.iter().take(MAX_BATCH).cloned().collect();
        let Ok(target) = &target else {
            tracing::warn!(%url, "dropping deliveries to an unparsable URL");
            finish(&context, &batch).await;
            backlog.drain(..batch.len());
            continue;
        };
        let items = build_items(&context, &batch).await;
        if !items.is_empty() {
            deliver_with_retries(&context, target, &batch, payload::collection(items)).await;
        }
        finish(&context, &batch).await;
        backlog.drain(..batch.len());
    }
}

/// Send until it succeeds or the oldest delivery is older than `retry_for`; on giving up, tell
/// the affected subscribers with a `missed` lifecycle notification.
async fn deliver_with_retries<S: PresenceStore>(
    context: &Context<S>,
    target: &reqwest::Url,
    batch: &[Delivery],
    body: serde_json::Value,
) {
    let mut attempt: u32 = 0;
    let mut shutdown = context.shutdown.clone();
    loop {
        let timeout = if attempt == 0 {
            context.config.first_timeout
        } else {
            context.config.retry_timeout
        };
        match context.client.deliver(target, &body, timeout).await {
            Ok(()) => {
                context
                    .metrics
                    .outcomes
                    .get_or_create(&OutcomeLabels { outcome: "delivered" })
                    .inc_by(batch.len() as u64);
                return;
            }
            Err(e) => {
                context
                    .metrics
                    .outcomes
                    .get_or_create(&OutcomeLabels { outcome: "failed" })
                    .inc();
                attempt += 1;
                let oldest = batch
                    .iter()
                    .map(|d| d.created_at)
                    .min()
                    .unwrap_or_else(|| context.clock.now());
                if context.clock.now().duration_since(oldest) >= context.config.retry_for {
                    tracing::warn!(url = %target, error = %e, count = batch.len(), "giving up on deliveries");
                    context
                        .metrics
                        .outcomes
                        .get_or_create(&OutcomeLabels { outcome: "dropped" })
                        .inc_by(batch.len() as u64);
                    report_missed(context, batch).await;
                    return;
                }
                let wait = backoff(&context.config, attempt);
                tracing::debug!(url = %target, error = %e, attempt, ?wait, "delivery failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // Shutting down: the deliveries stay in the store and resume on the next start.
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
        .saturating_mul(1u32.checked_shl(attempt.min(20) - 1).unwrap_or(u32::MAX));
    let capped = exp.min(config.backoff_max);
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    capped / 2 + capped.mul_f64(f64::from(byte[0]) / 510.0)
}

async fn build_items<S: PresenceStore>(context: &Context<S>, batch: &[Delivery]) -> Vec<serde_json::Value> {
    let mut items = Vec::with_capacity(batch.len());
    let mut certificates: HashMap<String, Option<EncryptionCertificate>> = HashMap::new();
    for delivery in batch {
        match &delivery.kind {
            DeliveryKind::Change {
                user,
                availability,
                activity,
                sequence,
            } => {
                // A deleted subscription wants no more notifications, even ones already owed.
                let Ok(Some(subscription)) = context.store.subscription(&delivery.subscription_id).await else {
                    continue;
                };
                let certificate = certificates
                    .entry(subscription.id.clone())
                    .or_insert_with(|| {
                        subscription
                            .encryption_certificate
                            .as_deref()
                            .and_then(|c| EncryptionCertificate::parse(c).ok())
                    })
                    .clone();
                let presence = ChangedPresence {
                    user,
                    availability: *availability,
                    activity: *activity,
                    sequence: *sequence,
                };
                match payload::change_item(delivery, &subscription, &presence, certificate.as_ref()) {
                    Ok(item) => items.push(item),
                    Err(e) => {
                        tracing::warn!(error = %e, subscription = %subscription.id, "cannot encrypt a notification")
                    }
                }
            }
            DeliveryKind::Lifecycle {
                event,
                tenant,
                client_state,
                subscription_expiration,
            } => {
                items.push(payload::lifecycle_item(
                    &delivery.subscription_id,
                    *event,
                    tenant,
                    client_state.as_deref(),
                    *subscription_expiration,
                ));
            }
        }
    }
    items
}

async fn finish<S: PresenceStore>(context: &Context<S>, batch: &[Delivery]) {
    context.metrics.queue_depth.dec_by(batch.len() as i64);
    let _ = context.finished.send(batch.iter().map(|d| d.id).collect());
}

/// Forget delivered notifications, coalescing whatever finished meanwhile into one store call.
async fn record_finished<S: PresenceStore>(store: S, mut rx: mpsc::UnboundedReceiver<Vec<u64>>) {
    while let Some(mut ids) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            ids.extend(more);
        }
        if let Err(e) = store.finish(ids).await {
            tracing::warn!(error = %e, "could not record delivered notifications; they may be sent again");
        }
    }
}

async fn report_missed<S: PresenceStore>(context: &Context<S>, batch: &[Delivery]) {
    let mut seen = Vec::new();
    let mut missed = Vec::new();
    for delivery in batch.iter().filter(|d| matches!(d.kind, DeliveryKind::Change { .. })) {
        if seen.contains(&delivery.subscription_id) {
            continue;
        }
        seen.push(delivery.subscription_id.clone());
        let Ok(Some(subscription)) = context.store.subscription(&delivery.subscription_id).await else {
            continue;
        };
        let Some(url) = subscription.lifecycle_notification_url.clone() else {
            continue;
        };
        missed.push(NewDelivery {
            url,
            subscription_id: subscription.id.clone(),
            created_at: context.clock.now(),
            kind: DeliveryKind::Lifecycle {
                event: LifecycleEvent::Missed,
                tenant: subscription.tenant.clone(),
                client_state: subscription.client_state.clone(),
                subscription_expiration: subscription.expiration,
            },
        });
    }
    if !missed.is_empty() {
        if let Err(e) = context.store.enqueue(missed).await {
            tracing::warn!(error = %e, "could not queue missed lifecycle notifications");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
