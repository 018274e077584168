//! Subscription lifecycle: ask for reauthorization before a subscription expires, and remove it
//! (telling the subscriber) when it does.
use super::subscription::SubscriptionPolicy;
use crate::clock::SystemClock;
use crate::store::{DeliveryKind, LifecycleEvent, NewDelivery, PresenceStore};
use jiff::Timestamp;
use std::time::Duration;
use tokio::sync::watch;

/// Lifecycle deadlines are minutes apart; checking every second keeps each within a second.
const TICK: Duration = Duration::from_secs(1);

pub struct Lifecycle<S> {
    store: S,
    policy: SubscriptionPolicy,
}

impl<S: PresenceStore> Lifecycle<S> {
    pub fn new(store: S, policy: SubscriptionPolicy) -> Self {
        Self { store, policy }
    }

    /// One pass at `now`: returns (reauthorizations requested, subscriptions removed).
    pub async fn tick(&self, now: Timestamp) -> (usize, usize) {
        let Ok(subscriptions) = self.store.subscriptions(None).await else {
            return (0, 0);
        };
        let (mut asked, mut removed) = (0, 0);
        for mut subscription in subscriptions {
            let event = if subscription.expiration <= now {
                if let Err(e) = self.store.delete_subscription(&subscription.id).await {
                    tracing::warn!(error = %e, "could not remove an expired subscription");
                    continue;
                }
                removed += 1;
                LifecycleEvent::SubscriptionRemoved
            } else if !subscription.reauthorization_requested
                && now
                    >= self
                        .policy
                        .reauthorize_at(subscription.expiration, subscription.renewed_at)
            {
                subscription.reauthorization_requested = true;
                if let Err(e) = self.store.put_subscription(subscription.clone()).await {
                    tracing::warn!(error = %e, "could not record a reauthorization request");
                    continue;
                }
                asked += 1;
                LifecycleEvent::ReauthorizationRequired
            } else {
                continue;
            };
            let Some(url) = subscription.lifecycle_notification_url.clone() else {
                continue;
            };
            let delivery = NewDelivery {
                url,
                subscription_id: subscription.id.clone(),
                created_at: now,
                kind: DeliveryKind::Lifecycle {
                    event,
                    tenant: subscription.tenant.clone(),
                    client_state: subscription.client_state.clone(),
                    subscription_expiration: subscription.expiration,
                },
            };
            if let Err(e) = self.store.enqueue(vec![delivery]).await {
                tracing::warn!(error = %e, "could not queue a lifecycle notification");
            }
        }
        (asked, removed)
    }

    pub async fn run(self, clock: SystemClock, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.tick(clock.now()).await;
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
