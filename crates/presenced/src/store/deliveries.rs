//! The deliveries port: what is owed to subscribers, claimed and acknowledged by whoever sends it.
//!
//! Change notifications are not stored one by one: what a subscription is owed is every change
//! in the log after its acknowledged position that concerns one of its users. So a change costs
//! no durable record per subscriber, and what one subscriber can make the server keep is its
//! position and a few lifecycle notices. Lifecycle notices (`reauthorizationRequired`,
//! `subscriptionRemoved`, `missed`) are stored, because the subscription they are about may be
//! gone by the time they go out.
//!
//! Work is claimed with a lease before it is sent, so several senders (nodes) could share it;
//! a sender that dies lets its leases lapse and another takes over from the acknowledged
//! positions. Delivery is at-least-once: acknowledgements may be lost to a crash (a re-send),
//! never advanced past what was sent or given up with a `missed` notice.
use super::{Position, StoreError};
use jiff::{SignedDuration, Timestamp};
use presence_core::TenantId;
use serde::{Deserialize, Serialize};
use std::future::Future;

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

/// A lifecycle notice to queue; it carries all it needs to be sent after its subscription is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewLifecycle {
    pub subscription_id: String,
    pub url: String,
    pub event: LifecycleEvent,
    pub tenant: TenantId,
    pub client_state: Option<String>,
    pub subscription_expiration: Timestamp,
    pub created_at: Timestamp,
}

/// A queued lifecycle notice with the id the store gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleNotice {
    pub id: u64,
    #[serde(flatten)]
    pub notice: NewLifecycle,
}

pub trait Deliveries: Send + Sync + 'static {
    /// Claim the change-notification work of every subscription no other consumer holds a live
    /// lease on, for `lease` from `now` (renewing this consumer's own). Returns each claimed
    /// subscription's id and acknowledged position: what is owed starts after it.
    fn claim(
        &self,
        consumer: &str,
        now: Timestamp,
        lease: SignedDuration,
    ) -> impl Future<Output = Result<Vec<(String, Position)>, StoreError>> + Send;

    /// Let go of claims `consumer` holds, so another consumer may take them at once (the caller
    /// stopped sending them and acknowledged what it sent). Others' claims are left alone.
    fn release(&self, consumer: &str, ids: Vec<String>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Record that each subscription's notifications up to a position went out (or were not for
    /// it). Positions only move forward; one for a removed subscription is ignored. Need not be
    /// durable at once: a lost acknowledgement means a re-send.
    fn acknowledge(
        &self,
        consumer: &str,
        progress: Vec<(String, Position)>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Give up what a subscription is owed up to `to`, and queue `missed` (if given) in the same
    /// durable step: a crash can lose neither without the other.
    fn skip(
        &self,
        subscription_id: &str,
        to: Position,
        missed: Option<NewLifecycle>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Claim up to `limit` queued lifecycle notices no other consumer holds, oldest first.
    fn claim_lifecycle(
        &self,
        consumer: &str,
        now: Timestamp,
        lease: SignedDuration,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LifecycleNotice>, StoreError>> + Send;

    /// Forget sent (or abandoned) lifecycle notices. Need not be durable at once (a re-send).
    fn finish_lifecycle(&self, ids: Vec<u64>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A hint that resolves after lifecycle notices were queued. May also resolve for nothing.
    fn lifecycle_added(&self) -> impl Future<Output = ()> + Send;
}
