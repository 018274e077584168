//! Change-notification subscriptions as a domain: the stored record, the `resource` filter a
//! client writes, and the lifetime policy. The rules that need I/O (ownership, limits, the
//! validation handshake) live in `service::subscriptions`; delivery lives in `notify`.
//!
//! Module map:
//! - [`record`]: the [`Subscription`] record as stored.
//! - [`filter`]: parsing a subscription's `resource` (`$filter=id in ('a','b')`).
//! - [`policy`]: lifetime clamping and reauthorization timing.
pub mod filter;
pub mod policy;
pub mod record;

pub use policy::{ExpirationError, SubscriptionPolicy};
pub use record::{Subscription, MAX_CERTIFICATE_ID_CHARS, MAX_CLIENT_STATE_CHARS};
