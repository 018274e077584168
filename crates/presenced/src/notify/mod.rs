//! Change notifications: Graph `/subscriptions` for presence, delivered by webhooks that never
//! lose a change.
//!
//! Module map:
//! - [`filter`]: parsing a subscription's `resource` (`$filter=id in ('a','b')`).
//! - [`subscription`]: the subscription record, lifetime clamping and reauthorization timing.
//! - [`endpoint`]: the SSRF guard: which webhook URLs and addresses are allowed.
//! - [`webhook`]: the outbound HTTP client: validation handshake and delivery POSTs.
//! - [`crypto`]: rich notifications, encrypted exactly as Graph documents.
//! - [`payload`]: Graph's notification JSON (change, rich, lifecycle).
//! - [`dispatcher`]: per-endpoint queues, batching, retries with backoff, `missed` on give-up.
//! - [`lifecycle`]: `reauthorizationRequired` before expiry, `subscriptionRemoved` at expiry.
//!
//! The deliveries themselves are written by the store in the same transaction as the change that
//! owes them (see `store::embedded::writer`), which is what makes them crash-proof.
pub mod crypto;
pub mod dispatcher;
pub mod endpoint;
pub mod filter;
pub mod lifecycle;
pub mod payload;
pub mod subscription;
pub mod webhook;
