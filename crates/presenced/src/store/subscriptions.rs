//! The subscriptions port: change-notification subscriptions, versioned so that concurrent
//! changes (an API call, the lifecycle worker, another node) cannot overwrite each other, and
//! indexed by their next lifecycle deadline.
//!
//! A lifecycle transition is one write: the subscription's change and the lifecycle notice it
//! owes its subscriber are durable together, or neither is.
use super::{NewLifecycle, StoreError};
use crate::subscription::Subscription;
use jiff::Timestamp;
use presence_core::{TenantId, UserId};
use std::future::Future;
use std::sync::Arc;

/// Who owns a subscription: its tenant and application, and the signed-in user who created it
/// (`None` for one an application token created).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub tenant: TenantId,
    pub application_id: String,
    pub user: Option<String>,
}

impl Owner {
    pub fn of(subscription: &Subscription) -> Owner {
        Owner {
            tenant: subscription.tenant.clone(),
            application_id: subscription.application_id.clone(),
            user: subscription.creator_id.clone(),
        }
    }
}

/// The bounds a creation must stay within, checked in the same step as the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Subscriptions one owner (a user of an application, or the application alone) holds.
    pub per_owner: usize,
    /// Subscriptions one application holds in one tenant, whoever created them.
    pub per_application: usize,
    /// Subscriptions watching any one user.
    pub per_watched_user: usize,
}

/// Which bound a creation would pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    Owner(usize),
    Application(usize),
    WatchedUser(UserId, usize),
}

/// A subscription as stored, with its version (1 when created, +1 per write).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub version: u64,
    pub subscription: Arc<Subscription>,
}

/// A change to an existing subscription, applied only if it is still at `expected_version`.
#[derive(Debug, Clone)]
pub enum SubscriptionWrite {
    /// Replace the record (renewal, a new URL, a reauthorization request), queuing `lifecycle`.
    Replace {
        subscription: Box<Subscription>,
        expected_version: u64,
        lifecycle: Option<NewLifecycle>,
    },
    /// Remove it (deletion, expiry), queuing `lifecycle` (e.g. `subscriptionRemoved`). Its
    /// delivery progress goes with it: nothing more is owed to it.
    Remove {
        id: String,
        expected_version: u64,
        lifecycle: Option<NewLifecycle>,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CreateError {
    /// A bound of [`Limits`] is reached.
    #[error("a subscription limit is reached: {0:?}")]
    LimitReached(Limit),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// The subscription changed (or went) since it was read; carries what is stored now.
    #[error("the subscription changed concurrently")]
    Conflict(Option<Stored>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub trait Subscriptions: Send + Sync + 'static {
    fn subscription(&self, id: &str) -> impl Future<Output = Result<Option<Stored>, StoreError>> + Send;

    /// Store a new subscription unless it would pass one of `limits` (checked in the same step,
    /// so concurrent creations cannot overshoot). Its notifications start with the changes
    /// committed after this call.
    fn create(
        &self,
        subscription: Subscription,
        limits: Limits,
    ) -> impl Future<Output = Result<Stored, CreateError>> + Send;

    /// Apply `write`; returns the new record (`None` after a removal).
    fn write(&self, write: SubscriptionWrite) -> impl Future<Output = Result<Option<Stored>, WriteError>> + Send;

    /// One owner's subscriptions, ordered by id, after `after`, at most `limit`.
    fn page(
        &self,
        owner: &Owner,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Stored>, StoreError>> + Send;

    /// How many subscriptions one owner holds, and how many its application holds in its tenant.
    fn count(&self, owner: &Owner) -> impl Future<Output = Result<(usize, usize), StoreError>> + Send;

    /// Every subscription (shared records, not copies): the dispatcher's index is built from it.
    fn all(&self) -> impl Future<Output = Result<Vec<Stored>, StoreError>> + Send;

    /// Subscriptions whose lifecycle deadline is at or before `now`, earliest first, at most `limit`.
    fn lifecycle_due(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Stored>, StoreError>> + Send;

    /// The earliest lifecycle deadline, if any subscription exists.
    fn next_lifecycle_deadline(&self) -> impl Future<Output = Option<Timestamp>> + Send;

    /// A hint that resolves after subscriptions were created, changed or removed. May also
    /// resolve for nothing; callers re-read.
    fn subscriptions_changed(&self) -> impl Future<Output = ()> + Send;
}
