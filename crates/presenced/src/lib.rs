//! presenced: a Microsoft Graph-compatible presence server.
//!
//! Module map:
//! - [`config`]: command line, environment and TOML configuration.
//! - [`auth`]: JWT verification (HS256 secret, JWKS), minting, and the Graph permission matrix.
//! - [`http`]: the Graph wire API (routing, DTOs, errors, request ids) and health endpoints.
//! - [`service`]: load → apply (core) → commit, with per-user serialisation.
//! - [`store`]: the store port and its backends (embedded: memory, a segmented write-ahead log with
//!   group commit, redb checkpoints on their own thread).
//! - [`sweeper`]: applies fades and expiries on time from the store's deadline index.
//! - [`server`]: wiring and graceful shutdown.
//! - [`notify`]: change-notification subscriptions, webhook delivery, lifecycle events.
//! - [`metrics`]: Prometheus metrics (`/metrics`).
//! - [`clock`]: the only place allowed to read the wall clock.
//! - [`json_text`]: JSON values written by hand, byte-equal to serde_json, for the hot paths.
#![forbid(unsafe_code)]

pub mod auth;
pub mod clock;
pub mod config;
pub mod http;
pub mod json_text;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod service;
pub mod store;
pub mod sweeper;
