//! The store port: what the presence service needs from persistence, and nothing more.
//!
//! The contract is written so that a shared, multi-process backend (Redis) can implement it:
//! - `load` returns a user's state with an opaque version;
//! - `commit` writes the new state *and* its change event atomically, only if the version is still
//!   the one loaded (compare-and-set), and returns once both are durable;
//! - the deadline index answers "which users have a transition due by `now`", updated by `commit`.
//!
//! No method assumes the caller is the only writer: the service retries on `Conflict`.
//!
//! Backends: [`embedded`] (memory + redb file, group commit).
pub mod embedded;

use crate::notify::subscription::Subscription;
use jiff::Timestamp;
use presence_core::{
    Activity, Availability, ChangeEvent, PresenceView, SequenceNumber, TenantId, UserId, UserKey, UserPresence,
};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;

/// A user's state as loaded; version 0 means "no record yet".
#[derive(Debug, Clone, Default)]
pub struct Versioned {
    pub version: u64,
    pub state: Arc<UserPresence>,
}

/// One user's new state and the change event it produced, to be made durable together.
#[derive(Debug, Clone)]
pub struct Commit {
    pub key: UserKey,
    pub expected_version: u64,
    pub state: UserPresence,
    pub event: Option<ChangeEvent>,
}

/// A change event as it sits in the outbox, in commit order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxEntry {
    pub id: u64,
    pub key: UserKey,
    pub event: ChangeEvent,
}

/// A notification owed to a webhook endpoint. It is written in the same transaction as the change
/// that caused it and stays until the endpoint acknowledges it (or delivery is given up), so a
/// crash at any moment loses nothing owed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Global, increasing in commit order: per endpoint, deliveries go out in this order.
    pub id: u64,
    pub url: String,
    pub subscription_id: String,
    pub created_at: Timestamp,
    pub kind: DeliveryKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryKind {
    Change {
        user: UserId,
        availability: Availability,
        activity: Activity,
        sequence: SequenceNumber,
    },
    /// Lifecycle events carry what they need, because the subscription may be gone by the time they go out.
    Lifecycle {
        event: LifecycleEvent,
        tenant: TenantId,
        client_state: Option<String>,
        subscription_expiration: Timestamp,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LifecycleEvent {
    ReauthorizationRequired,
    SubscriptionRemoved,
    Missed,
}

impl LifecycleEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleEvent::ReauthorizationRequired => "reauthorizationRequired",
            LifecycleEvent::SubscriptionRemoved => "subscriptionRemoved",
            LifecycleEvent::Missed => "missed",
        }
    }
}

/// A delivery to add outside a presence commit (lifecycle events); the store assigns the id.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub url: String,
    pub subscription_id: String,
    pub created_at: Timestamp,
    pub kind: DeliveryKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Someone else committed this user since it was loaded; reload and retry.
    #[error("concurrent update")]
    Conflict,
    /// The write could not be made durable (disk full, I/O error, store shut down). Nothing was acknowledged.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

pub trait PresenceStore: Send + Sync + 'static {
    fn load(&self, key: &UserKey) -> impl Future<Output = Result<Versioned, StoreError>> + Send;

    /// The user's presence as of `now`: what reads serve. The default loads and folds; a backend
    /// holding states in memory can fold in place without handing out a reference-counted copy.
    fn view(&self, key: &UserKey, now: Timestamp) -> impl Future<Output = Result<PresenceView, StoreError>> + Send {
        async move { Ok(self.load(key).await?.state.view_at(now)) }
    }

    fn commit(&self, commit: Commit) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Independent commits at once, each checked and applied exactly as `commit` would (one may
    /// conflict while the others land); outcomes in order. The sweeper commits a tick's
    /// transitions this way: one round trip instead of one per user. The default commits them one
    /// by one.
    fn commit_many(&self, commits: Vec<Commit>) -> impl Future<Output = Vec<Result<u64, StoreError>>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(commits.len());
            for commit in commits {
                outcomes.push(self.commit(commit).await);
            }
            outcomes
        }
    }

    /// Users whose next deadline is at or before `now`, earliest first, at most `limit`.
    fn due(&self, now: Timestamp, limit: usize) -> impl Future<Output = Result<Vec<UserKey>, StoreError>> + Send;

    /// The earliest deadline pending across all users, or an earlier time: a backend may answer
    /// early (the embedded one files renewals lazily), and a sweeper woken early finds nothing
    /// due and asks again. Never later.
    fn next_deadline(&self) -> impl Future<Output = Option<Timestamp>> + Send;

    /// Resolves when a commit may have moved the earliest deadline earlier, so a sleeping sweeper
    /// can re-plan instead of oversleeping a fresh, short deadline.
    fn deadline_moved(&self) -> impl Future<Output = ()> + Send;

    /// Change events after `after_id`, oldest first: the outbox the notifier drains.
    fn outbox_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send;

    /// Whether the store can accept writes (for `/readyz`).
    fn is_ready(&self) -> bool;

    // ---- subscriptions and deliveries (change notifications) ----

    /// Create or replace a subscription, durably. From then on, every committed change of one of
    /// its users also writes a [`Delivery`] for it, atomically with the change.
    fn put_subscription(&self, subscription: Subscription) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Remove a subscription durably; returns it if it existed. Its undelivered change
    /// notifications are dropped by the dispatcher (the subscriber asked for no more).
    fn delete_subscription(&self, id: &str) -> impl Future<Output = Result<Option<Subscription>, StoreError>> + Send;

    fn subscription(&self, id: &str) -> impl Future<Output = Result<Option<Subscription>, StoreError>> + Send;

    /// All subscriptions, or one tenant's.
    fn subscriptions(
        &self,
        tenant: Option<&TenantId>,
    ) -> impl Future<Output = Result<Vec<Subscription>, StoreError>> + Send;

    /// Durably add deliveries that no presence change produced (lifecycle events).
    fn enqueue(&self, deliveries: Vec<NewDelivery>) -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send;

    /// Forget delivered (or abandoned) deliveries. Need not be durable: a delivery that comes back
    /// after a crash is sent again, which at-least-once allows.
    fn finish(&self, ids: Vec<u64>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every delivery still owed, in id order: the dispatcher's starting point after a restart.
    fn pending_deliveries(&self) -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send;

    /// New deliveries as they become durable, in id order. Taken once, by the dispatcher.
    fn take_delivery_feed(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Vec<Delivery>>>;
}

#[cfg(test)]
pub(crate) mod conformance;
