//! Change notifications: Graph `/subscriptions` for presence, delivered by webhooks that never
//! lose a change.
//!
//! Module map:
//! - [`endpoint`]: the SSRF guard: which webhook URLs and addresses are allowed (allowances are
//!   `ipnet` networks).
//! - [`webhook`]: the outbound HTTP client: validation handshake and delivery POSTs.
//! - [`crypto`]: rich notifications, encrypted exactly as Graph documents (certificates parsed by
//!   rustls-webpki, keys and ciphers from aws-lc).
//! - [`payload`]: Graph's notification JSON (change, rich, lifecycle).
//! - [`validation_token`]: the signed `validationTokens` of rich notifications and their key.
//! - [`dispatcher`]: follows the change log; per-endpoint bounded queues, batching, retries with
//!   backoff, `missed` when something is given up; sends lifecycle notices.
//! - [`lifecycle`]: `reauthorizationRequired` before expiry, `subscriptionRemoved` at expiry.
//!
//! Nothing here is in the commit path: a change reaches a subscriber because the dispatcher reads
//! it from the change log after it is durable, and what each subscriber is owed is its position
//! in that log (see `store::deliveries`), which is what makes notifications crash-proof.
//! The subscription records and rules themselves live in `crate::subscription` and
//! `service::subscriptions`.
pub mod crypto;
pub mod dispatcher;
pub mod endpoint;
pub mod lifecycle;
pub mod payload;
pub mod validation_token;
pub mod webhook;
