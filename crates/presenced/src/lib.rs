//! presenced: a Microsoft Graph-compatible presence server.
//!
//! Module map:
//! - [`data_dir`]: the data directory's files: private, never through a symlink, checked at start.
//! - [`config`]: command line, environment and TOML configuration.
//! - [`auth`]: JWT verification (HS256 secret, JWKS; parsing and signatures by jsonwebtoken), minting,
//!   and the Graph permission matrix.
//! - [`http`]: the Graph wire API (routing, DTOs, errors, request ids) and health endpoints.
//! - [`service`]: the presence service (load → apply (core) → compare-and-set commit) and the
//!   subscription service (ownership, limits, handshake, lifecycle steps).
//! - [`store`]: the store's ports (presence state, deadlines, change log, subscriptions,
//!   deliveries) and their backends (embedded: memory, a segmented write-ahead log with group
//!   commit, redb checkpoints on their own thread).
//! - [`subscription`]: the subscription record, its `resource` filter and lifetime policy.
//! - [`sweeper`]: applies fades and expiries on time from the store's deadline index.
//! - [`stream`]: live watch streams: the hub that follows the change log, resumable watches.
//! - [`client_session`]: which connection-bound client sessions this process's sockets hold.
//! - [`server`]: wiring and graceful shutdown.
//! - [`net`]: the accept loop: connection cap with a fair share per address, timeouts, TLS,
//!   the descriptor limit.
//! - [`notify`]: webhook delivery derived from the change log, lifecycle events.
//! - [`metrics`]: Prometheus metrics (`/metrics`).
//! - [`clock`]: the only place allowed to read the wall clock, and the injectable [`clock::Clock`].
//! - [`json_text`]: JSON values written by hand, byte-equal to serde_json, for the hot paths.
//! - [`graph_time`]: date-times as Graph writes them (seven fractional digits).
//!
//! The binary (`main.rs`) adds the CLI and the process allocator (mimalloc, `allocator.rs`); the
//! measuring programs are the separate `presenced-bench` crate.
#![forbid(unsafe_code)]

pub mod auth;
pub mod client_session;
pub mod clock;
pub mod config;
pub mod data_dir;
pub mod graph_time;
pub mod http;
pub mod json_text;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod server;
pub mod service;
pub mod store;
pub mod stream;
pub mod subscription;
pub mod sweeper;
