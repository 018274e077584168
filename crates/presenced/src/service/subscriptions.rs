//! The subscription service: the rules of Graph's `/subscriptions` for presence, between the
//! HTTP edge (which turns JSON into these inputs) and the store's subscriptions port.
//!
//! - A subscription belongs to its owner: the signed-in user of the application that created it
//!   (delegated tokens), or the application itself (application tokens). Anyone else is told it
//!   does not exist, so ids cannot even be probed.
//! - Limits per owner, per application and per watched user. A place is reserved before the
//!   validation handshake (so a caller over a limit costs no outbound request) and the store
//!   checks the limits again in the same step that stores the subscription (so concurrent
//!   creations, on this node or another, cannot overshoot).
//! - Every URL passes the SSRF policy and Graph's validation handshake before it is stored; a
//!   failed handshake tells the caller one generic reason (the detail goes to the log), so the
//!   server is no probe of what answers where.
//! - Each lifecycle step (reauthorization request, removal at expiry) is one store write: the
//!   subscription's change and the lifecycle notice it owes, together.
use crate::clock::Clock;
use crate::notify::endpoint::{EndpointError, EndpointPolicy};
use crate::notify::webhook::WebhookClient;
pub use crate::store::Owner;
use crate::store::{
    CreateError, LifecycleEvent, Limit, Limits, NewLifecycle, Store, StoreError, Stored, SubscriptionWrite,
    Subscriptions, WriteError,
};
use crate::subscription::{ExpirationError, Subscription, SubscriptionPolicy};
use jiff::Timestamp;
use presence_core::{TenantId, UserId};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

/// Lists are paged as Graph pages them; a page holds at most this many.
pub const PAGE_SIZE: usize = 100;
/// Lifecycle steps taken per pass: bounds one pass's work; the rest follow in the next.
const LIFECYCLE_BATCH: usize = 256;

/// A subscription request, its fields already checked for form by the caller.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub resource: String,
    pub users: Vec<UserId>,
    pub notification_url: String,
    pub lifecycle_notification_url: Option<String>,
    /// As the client wrote it; clamped to the policy's lifetime here.
    pub expiration: Option<String>,
    pub client_state: Option<String>,
    pub include_resource_data: bool,
    pub encryption_certificate: Option<String>,
    pub encryption_certificate_id: Option<String>,
    pub latest_supported_tls_version: String,
}

/// A change to a subscription (Graph's PATCH).
#[derive(Debug, Clone, Default)]
pub struct SubscriptionChange {
    pub expiration: Option<String>,
    pub notification_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("The subscription '{0}' does not exist.")]
    NotFound(String),
    #[error("{}", limit_message(.0))]
    LimitReached(Limit),
    #[error(transparent)]
    Expiration(#[from] ExpirationError),
    /// A URL the policy refuses (field name, reason).
    #[error("{1}")]
    Url(&'static str, EndpointError),
    /// The validation handshake failed (field name); why is logged, not told.
    #[error("Subscription validation request failed for {0}. The endpoint must answer the validation request within 10 seconds with 200 OK, Content-Type text/plain and the decoded validationToken as the body.")]
    Handshake(&'static str),
    /// Changed concurrently more often than retries allow.
    #[error("The subscription was changed concurrently; retry.")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn limit_message(limit: &Limit) -> String {
    match limit {
        Limit::Owner(n) => format!("You already have {n} subscriptions with this application; delete some first."),
        Limit::Application(n) => {
            format!("This application already has {n} subscriptions in this tenant; delete some first.")
        }
        Limit::WatchedUser(user, n) => format!("The user '{user}' is already watched by {n} subscriptions."),
    }
}

pub struct SubscriptionService<S = Store> {
    store: S,
    policy: SubscriptionPolicy,
    endpoints: EndpointPolicy,
    client: WebhookClient,
    clock: Clock,
    // Places reserved by creations whose handshake is under way, per owner and per application;
    // held for a map update, never across the handshake itself.
    reserved: Mutex<Reserved>,
}

#[derive(Default)]
struct Reserved {
    per_owner: HashMap<Owner, usize>,
    per_application: HashMap<(TenantId, String), usize>,
}

/// A place held for a creation until it is stored or fails.
struct Reservation<'a, S> {
    service: &'a SubscriptionService<S>,
    owner: Owner,
}

impl<S> Drop for Reservation<'_, S> {
    fn drop(&mut self) {
        let mut reserved = self.service.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let app = (self.owner.tenant.clone(), self.owner.application_id.clone());
        release(&mut reserved.per_owner, &self.owner);
        release(&mut reserved.per_application, &app);
    }
}

fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl<S: Subscriptions> SubscriptionService<S> {
    pub fn new(
        store: S,
        policy: SubscriptionPolicy,
        endpoints: EndpointPolicy,
        client: WebhookClient,
        clock: Clock,
    ) -> Self {
        Self {
            store,
            policy,
            endpoints,
            client,
            clock,
            reserved: Mutex::new(Reserved::default()),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            per_owner: self.policy.max_per_user,
            per_application: self.policy.max_per_app,
            per_watched_user: self.policy.max_per_watched_user,
        }
    }

    /// Hold a place for `owner` if what it and its application hold, with the places already
    /// held, stays within the limits.
    async fn reserve(&self, owner: &Owner) -> Result<Reservation<'_, S>, SubscriptionError> {
        let (owned, in_app) = self.store.count(owner).await?;
        let limits = self.limits();
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let app = (owner.tenant.clone(), owner.application_id.clone());
        let pending_owner = reserved.per_owner.get(owner).copied().unwrap_or(0);
        let pending_app = reserved.per_application.get(&app).copied().unwrap_or(0);
        if owned + pending_owner >= limits.per_owner {
            return Err(SubscriptionError::LimitReached(Limit::Owner(limits.per_owner)));
        }
        if in_app + pending_app >= limits.per_application {
            return Err(SubscriptionError::LimitReached(Limit::Application(
                limits.per_application,
            )));
        }
        *reserved.per_owner.entry(owner.clone()).or_insert(0) += 1;
        *reserved.per_application.entry(app).or_insert(0) += 1;
        Ok(Reservation {
            service: self,
            owner: owner.clone(),
        })
    }

    pub fn policy(&self) -> &SubscriptionPolicy {
        &self.policy
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Validate both URLs (policy first for both, then the handshakes), and store the subscription.
    pub async fn create(
        &self,
        owner: &Owner,
        request: NewSubscription,
    ) -> Result<Arc<Subscription>, SubscriptionError> {
        let now = self.clock.now();
        let expiration = self.policy.expiration(request.expiration.as_deref(), now)?;
        // Static URL checks first, so a bad second URL fails before any handshake is sent.
        self.endpoints
            .check_url(&request.notification_url)
            .map_err(|e| SubscriptionError::Url("notificationUrl", e))?;
        if let Some(l) = &request.lifecycle_notification_url {
            self.endpoints
                .check_url(l)
                .map_err(|e| SubscriptionError::Url("lifecycleNotificationUrl", e))?;
        }
        let _place = self.reserve(owner).await?;
        let notification_url = self.handshake("notificationUrl", &request.notification_url).await?;
        let lifecycle_notification_url = match &request.lifecycle_notification_url {
            Some(l) => Some(self.handshake("lifecycleNotificationUrl", l).await?),
            None => None,
        };
        let include = request.include_resource_data;
        let mut subscription = Subscription {
            id: uuid::Uuid::new_v4().to_string(),
            tenant: owner.tenant.clone(),
            application_id: owner.application_id.clone(),
            creator_id: owner.user.clone(),
            resource: request.resource,
            users: request.users,
            notification_url,
            lifecycle_notification_url,
            client_state: request.client_state,
            expiration,
            renewed_at: now,
            include_resource_data: include,
            encryption_certificate: request.encryption_certificate.filter(|_| include),
            encryption_certificate_id: request.encryption_certificate_id.filter(|_| include),
            latest_supported_tls_version: Some(request.latest_supported_tls_version),
            reauthorization_requested: false,
            lifecycle_at: None,
        };
        subscription.lifecycle_at = Some(self.policy.lifecycle_at(&subscription));
        match self.store.create(subscription, self.limits()).await {
            Ok(stored) => Ok(stored.subscription),
            Err(CreateError::LimitReached(limit)) => Err(SubscriptionError::LimitReached(limit)),
            Err(CreateError::Store(e)) => Err(e.into()),
        }
    }

    pub async fn get(&self, owner: &Owner, id: &str) -> Result<Arc<Subscription>, SubscriptionError> {
        Ok(self.owned(owner, id).await?.subscription)
    }

    /// One page of the owner's subscriptions, ordered by id, after `after`; and whether more follow.
    pub async fn list(
        &self,
        owner: &Owner,
        after: Option<&str>,
    ) -> Result<(Vec<Arc<Subscription>>, bool), SubscriptionError> {
        let mut page = self.store.page(owner, after, PAGE_SIZE + 1).await?;
        let more = page.len() > PAGE_SIZE;
        page.truncate(PAGE_SIZE);
        Ok((page.into_iter().map(|s| s.subscription).collect(), more))
    }

    /// Renew and/or move the notification URL (validated first).
    pub async fn update(
        &self,
        owner: &Owner,
        id: &str,
        change: SubscriptionChange,
    ) -> Result<Arc<Subscription>, SubscriptionError> {
        let url = match &change.notification_url {
            Some(u) => Some(self.handshake("notificationUrl", u).await?),
            None => None,
        };
        self.modify(owner, id, |s, now, policy| {
            if let Some(raw) = change.expiration.as_deref() {
                s.expiration = policy.expiration(Some(raw), now)?;
                s.renewed_at = now;
                s.reauthorization_requested = false;
            }
            if let Some(url) = &url {
                s.notification_url = url.clone();
            }
            Ok(())
        })
        .await
    }

    /// Graph's `reauthorize`: the subscriber confirms it still wants notifications.
    pub async fn reauthorize(&self, owner: &Owner, id: &str) -> Result<(), SubscriptionError> {
        self.modify(owner, id, |s, now, _| {
            s.reauthorization_requested = false;
            s.renewed_at = now;
            Ok(())
        })
        .await
        .map(drop)
    }

    pub async fn delete(&self, owner: &Owner, id: &str) -> Result<(), SubscriptionError> {
        for _ in 0..MAX_RETRIES {
            let current = self.owned(owner, id).await?;
            let write = SubscriptionWrite::Remove {
                id: id.to_owned(),
                expected_version: current.version,
                lifecycle: None,
            };
            match self.store.write(write).await {
                Ok(_) => return Ok(()),
                Err(WriteError::Conflict(_)) => continue,
                Err(WriteError::Store(e)) => return Err(e.into()),
            }
        }
        Err(SubscriptionError::Busy)
    }

    /// Take every lifecycle step due by now: ask for reauthorization before expiry, remove at
    /// expiry, each with its lifecycle notice in the same write. Returns (asked, removed).
    pub async fn lifecycle_step(&self) -> Result<(usize, usize), StoreError> {
        let now = self.clock.now();
        let (mut asked, mut removed) = (0, 0);
        for stored in self.store.lifecycle_due(now, LIFECYCLE_BATCH).await? {
            let s = &stored.subscription;
            let (write, removing) = if s.expiration <= now {
                let write = SubscriptionWrite::Remove {
                    id: s.id.clone(),
                    expected_version: stored.version,
                    lifecycle: self.notice(s, LifecycleEvent::SubscriptionRemoved, now),
                };
                (write, true)
            } else {
                let mut next = (**s).clone();
                next.reauthorization_requested = true;
                next.lifecycle_at = Some(self.policy.lifecycle_at(&next));
                let write = SubscriptionWrite::Replace {
                    lifecycle: self.notice(&next, LifecycleEvent::ReauthorizationRequired, now),
                    subscription: Box::new(next),
                    expected_version: stored.version,
                };
                (write, false)
            };
            match self.store.write(write).await {
                Ok(_) if removing => removed += 1,
                Ok(_) => asked += 1,
                // Changed meanwhile (renewed, deleted): the next pass sees the new deadline.
                Err(WriteError::Conflict(_)) => {}
                Err(WriteError::Store(e)) => return Err(e),
            }
        }
        Ok((asked, removed))
    }

    /// When the next lifecycle step falls due.
    pub async fn next_lifecycle_deadline(&self) -> Option<Timestamp> {
        self.store.next_lifecycle_deadline().await
    }

    fn notice(&self, s: &Subscription, event: LifecycleEvent, now: Timestamp) -> Option<NewLifecycle> {
        let url = s.lifecycle_notification_url.clone()?;
        Some(NewLifecycle {
            subscription_id: s.id.clone(),
            url,
            event,
            tenant: s.tenant.clone(),
            client_state: s.client_state.clone(),
            subscription_expiration: s.expiration,
            created_at: now,
        })
    }

    /// Read-modify-write of an owned subscription by compare-and-set, retried on a conflict.
    async fn modify(
        &self,
        owner: &Owner,
        id: &str,
        change: impl Fn(&mut Subscription, Timestamp, &SubscriptionPolicy) -> Result<(), SubscriptionError>,
    ) -> Result<Arc<Subscription>, SubscriptionError> {
        for _ in 0..MAX_RETRIES {
            let current = self.owned(owner, id).await?;
            let mut next = (*current.subscription).clone();
            change(&mut next, self.clock.now(), &self.policy)?;
            next.lifecycle_at = Some(self.policy.lifecycle_at(&next));
            let write = SubscriptionWrite::Replace {
                subscription: Box::new(next),
                expected_version: current.version,
                lifecycle: None,
            };
            match self.store.write(write).await {
                Ok(Some(stored)) => return Ok(stored.subscription),
                Ok(None) => return Err(SubscriptionError::NotFound(id.to_owned())),
                Err(WriteError::Conflict(_)) => continue,
                Err(WriteError::Store(e)) => return Err(e.into()),
            }
        }
        Err(SubscriptionError::Busy)
    }

    async fn owned(&self, owner: &Owner, id: &str) -> Result<Stored, SubscriptionError> {
        let not_found = || SubscriptionError::NotFound(id.to_owned());
        let stored = self.store.subscription(id).await?.ok_or_else(not_found)?;
        if Owner::of(&stored.subscription) == *owner {
            Ok(stored)
        } else {
            Err(not_found())
        }
    }

    /// The URL policy, then Graph's validation handshake; returns the URL as normalised.
    async fn handshake(&self, field: &'static str, raw: &str) -> Result<String, SubscriptionError> {
        let url = self
            .endpoints
            .check_url(raw)
            .map_err(|e| SubscriptionError::Url(field, e))?;
        self.client.validate(&url).await.map_err(|e| {
            tracing::info!(%url, error = %e, "a subscription's validation handshake failed");
            SubscriptionError::Handshake(field)
        })?;
        Ok(url.to_string())
    }
}

/// A subscription changed concurrently this often in a row is reported as busy.
const MAX_RETRIES: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::endpoint::EndpointPolicy;
    use crate::store::{Deliveries, LifecycleEvent};
    use jiff::SignedDuration;

    /// The lifecycle on a stepped clock: reauthorization asked a quarter of the lifetime before
    /// expiry, removal at expiry, each with its notice, and nothing before its time.
    #[tokio::test]
    async fn lifecycle_steps_happen_at_their_deadlines_each_with_its_notice() {
        let start: Timestamp = "2026-12-04T09:00:00Z".parse().unwrap();
        let clock = Clock::manual(start);
        let (_dir, store) = crate::store::embedded::temporary(clock.clone());
        let policy = SubscriptionPolicy::default();
        let endpoints = EndpointPolicy {
            allow_http: false,
            allowed_networks: Vec::new(),
            allowed_on_ports: vec![],
        };
        let client = WebhookClient::new(endpoints.clone()).unwrap();
        let service = SubscriptionService::new(store.clone(), policy.clone(), endpoints, client, clock.clone());
        let mut s = Subscription {
            id: "s1".into(),
            tenant: TenantId::parse("t").unwrap(),
            application_id: "app".into(),
            creator_id: None,
            resource: "/communications/presences/u".into(),
            users: vec![UserId::parse("u").unwrap()],
            notification_url: "https://hooks.example/n".into(),
            lifecycle_notification_url: Some("https://hooks.example/l".into()),
            client_state: None,
            expiration: start + SignedDuration::from_mins(60),
            renewed_at: start,
            include_resource_data: false,
            encryption_certificate: None,
            encryption_certificate_id: None,
            latest_supported_tls_version: None,
            reauthorization_requested: false,
            lifecycle_at: None,
        };
        s.lifecycle_at = Some(policy.lifecycle_at(&s));
        store.create(s, service.limits()).await.unwrap();
        let reauthorize_at = start + SignedDuration::from_mins(45);
        assert_eq!(service.next_lifecycle_deadline().await, Some(reauthorize_at));

        clock.set(reauthorize_at - SignedDuration::from_secs(1));
        assert_eq!(service.lifecycle_step().await.unwrap(), (0, 0));
        clock.set(reauthorize_at);
        assert_eq!(service.lifecycle_step().await.unwrap(), (1, 0));
        assert_eq!(service.lifecycle_step().await.unwrap(), (0, 0), "asked once");
        let expiry = start + SignedDuration::from_mins(60);
        assert_eq!(service.next_lifecycle_deadline().await, Some(expiry));

        clock.set(expiry);
        assert_eq!(service.lifecycle_step().await.unwrap(), (0, 1));
        assert!(store.subscription("s1").await.unwrap().is_none());
        assert_eq!(service.next_lifecycle_deadline().await, None);
        let lease = SignedDuration::from_secs(30);
        let events: Vec<LifecycleEvent> = store
            .claim_lifecycle("test", expiry, lease, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.notice.event)
            .collect();
        assert_eq!(
            events,
            [
                LifecycleEvent::ReauthorizationRequired,
                LifecycleEvent::SubscriptionRemoved
            ]
        );
    }
}
