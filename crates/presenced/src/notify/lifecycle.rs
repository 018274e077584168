//! The subscription lifecycle worker: asks for reauthorization before a subscription expires and
//! removes it when it does, each step one store write with its lifecycle notice.
//!
//! Driven by the store's lifecycle deadlines: it sleeps until the earliest one (or until a
//! subscription changes, which may bring one earlier), never scanning every subscription.
use crate::service::SubscriptionService;
use crate::store::Subscriptions;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Even with nothing due, look again this often: a cheap guard against a missed wake-up.
const IDLE_RECHECK: Duration = Duration::from_secs(5);
/// Pause after a failed step, so a store error cannot turn into a hot loop.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

pub struct Lifecycle<S> {
    service: Arc<SubscriptionService<S>>,
}

impl<S: Subscriptions> Lifecycle<S> {
    pub fn new(service: Arc<SubscriptionService<S>>) -> Self {
        Self { service }
    }

    /// One pass: every step due now. Returns (reauthorizations requested, subscriptions removed).
    pub async fn tick(&self) -> (usize, usize) {
        match self.service.lifecycle_step().await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take subscription lifecycle steps; will retry");
                (0, 0)
            }
        }
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let clock = self.service.clock().clone();
        loop {
            let (asked, removed) = self.tick().await;
            let busy = asked + removed > 0;
            let wait = match self.service.next_lifecycle_deadline().await {
                Some(at) => Duration::try_from(at.duration_since(clock.now()))
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE_RECHECK),
                None => IDLE_RECHECK,
            };
            // A due step that could not be taken (a conflict, a store error) is retried after a pause.
            let wait = if wait.is_zero() && !busy { ERROR_BACKOFF } else { wait };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.service.store().subscriptions_changed() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
