//! The services: the rules between the HTTP edge (or any other caller) and the store's ports.
//!
//! Module map:
//! - [`presence`]: load → apply (core) → compare-and-set commit, and reads.
//! - [`subscriptions`]: who owns which subscription, the per-application limit, the validation
//!   handshake, and each lifecycle step as one store write.
pub mod presence;
pub mod subscriptions;

pub use presence::{PresenceService, ServiceError};
pub use subscriptions::{Owner, SubscriptionError, SubscriptionService};
