//! Configuration: command-line flags, `PRESENCED_*` environment variables and a TOML file.
//!
//! Precedence is flag > environment > file > built-in default (clap folds the first two; the file
//! only fills what neither gave). Every duration takes `2s`/`5m` or ISO 8601 (`PT5M`).
use crate::client_session::ClientConfig;
use crate::http::rate_limit::RateLimit;
use crate::notify::dispatcher::DeliveryConfig;
use crate::notify::endpoint::parse_allowance;
use crate::store::embedded::change_log::Retention;
use crate::store::StoreChoice;
use crate::stream::StreamConfig;
use crate::subscription::SubscriptionPolicy;
use clap::{Args, Parser, Subcommand, ValueEnum};
use presence_core::duration::parse_config_duration;
use presence_core::Timing;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "presenced-data";

#[derive(Debug, Parser)]
#[command(name = "presenced", version, about = "A Microsoft Graph-compatible presence server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

// Parsed once at start; the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the server.
    Serve(ServeArgs),
    /// Print a token (JWT) that a server using the same data directory accepts.
    Token(TokenArgs),
    /// Print the OpenAPI document of the API (as served at /openapi.json).
    Openapi,
    /// Write a throwaway CA and a certificate for localhost, to try --tls-cert/--tls-key.
    Cert(crate::net::config::CertArgs),
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML configuration file (see presenced.example.toml).
    #[arg(long, env = "PRESENCED_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port. [default: 127.0.0.1:8080]
    #[arg(long, env = "PRESENCED_LISTEN")]
    pub listen: Option<String>,
    /// Directory holding the database and the token-signing secret. [default: ./presenced-data]
    #[arg(long, env = "PRESENCED_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The store backend: `embedded` (memory, a write-ahead log and redb in the data directory), or
    /// Redis/Valkey shared by several nodes: `redis://host:port`, `rediss://…` (TLS), or
    /// `redis+cluster://host:port,host:port` (a Cluster's seeds). [default: embedded]
    #[arg(long, env = "PRESENCED_STORE")]
    pub store: Option<String>,
    /// Redis: the keyspace's partition count, fixed when the keyspace is created (every node must agree). [default: 16]
    #[arg(long, env = "PRESENCED_REDIS_PARTITIONS")]
    pub redis_partitions: Option<usize>,
    /// Redis: every key starts with this, so deployments can share one Redis. [default: presenced]
    #[arg(long, env = "PRESENCED_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Redis: accept masters without `appendonly yes` and `appendfsync always`. An acknowledged
    /// write may then be lost if a master fails (up to a second's writes with `everysec`).
    #[arg(long, env = "PRESENCED_REDIS_RELAXED_DURABILITY")]
    pub redis_relaxed_durability: bool,
    /// Redis: replicas that must confirm each write (`WAIT`) before its `200`; closes most of the
    /// failover window at the cost of a replication round trip per write. [default: 0]
    #[arg(long, env = "PRESENCED_REDIS_WAIT_REPLICAS")]
    pub redis_wait_replicas: Option<usize>,
    /// Redis: how long a node's lease lasts unrenewed (judged by Redis's clock). A node silent this
    /// long is declared dead: its client sessions get their grace, and it may no longer write.
    /// Keep it above the Cluster's failover time (cluster-node-timeout and an election). [default: 30s]
    #[arg(long, env = "PRESENCED_REDIS_NODE_LEASE")]
    pub redis_node_lease: Option<String>,
    /// The change log keeps at most this many changes (webhook subscribers further behind get `missed`). [default: 100000]
    #[arg(long, env = "PRESENCED_CHANGE_LOG_RETAIN")]
    pub change_log_retain: Option<usize>,
    /// ...and none older than this. [default: 4h]
    #[arg(long, env = "PRESENCED_CHANGE_LOG_RETAIN_FOR")]
    pub change_log_retain_for: Option<String>,
    /// Let delegated Presence.ReadWrite tokens change other users' presence (by default they change
    /// their own only; changing others' is what the application permission Presence.ReadWrite.All is for).
    #[arg(long, env = "PRESENCED_ALLOW_DELEGATED_WRITES_TO_OTHERS")]
    pub allow_delegated_writes_to_others: bool,
    /// Open watch streams allowed per application per tenant. [default: 500]
    #[arg(long, env = "PRESENCED_STREAMS_MAX_PER_APP")]
    pub streams_max_per_app: Option<usize>,
    /// A client session outlives its connection by this much, so a reconnect keeps it unchanged. [default: 30s]
    #[arg(long, env = "PRESENCED_CLIENT_GRACE")]
    pub client_grace: Option<String>,
    /// Client sessions one user may hold open at once. [default: 10]
    #[arg(long, env = "PRESENCED_CLIENT_SESSIONS_PER_USER")]
    pub client_sessions_per_user: Option<usize>,
    /// An Available session without keep-alive fades to AvailableIdle after this, Away after twice this. [default: 5m]
    #[arg(long, env = "PRESENCED_FADE_AFTER")]
    pub fade_after: Option<String>,
    /// Shortest expirationDuration setPresence accepts. [default: 5m]
    #[arg(long, env = "PRESENCED_SESSION_EXPIRATION_MIN")]
    pub session_expiration_min: Option<String>,
    /// Session lifetime when setPresence gives none. [default: 5m]
    #[arg(long, env = "PRESENCED_SESSION_EXPIRATION_DEFAULT")]
    pub session_expiration_default: Option<String>,
    /// Longest expirationDuration setPresence accepts. [default: 4h]
    #[arg(long, env = "PRESENCED_SESSION_EXPIRATION_MAX")]
    pub session_expiration_max: Option<String>,
    /// Time zone (IANA or Windows name) whose midnight ends a work location set without a
    /// `Prefer: outlook.timezone` header. [default: UTC]
    #[arg(long, env = "PRESENCED_WORK_LOCATION_TIME_ZONE")]
    pub work_location_time_zone: Option<String>,
    /// JWKS file with RS256/ES256 keys of an external identity provider.
    #[arg(long, env = "PRESENCED_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// The HS256 secret from this file (base64 of 32+ bytes, mode 0600) instead of the data
    /// directory's: several nodes read one secret. [default: <data-dir>/secret]
    #[arg(long, env = "PRESENCED_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// The RSA key that signs rich notifications' validationTokens, from this file (PKCS#8 PEM,
    /// mode 0600) instead of the data directory's: several nodes sign with one key, so a receiver
    /// verifies any node's tokens against the keys any node publishes.
    /// [default: <data-dir>/validation-token-key, made on first start]
    #[arg(long, env = "PRESENCED_VALIDATION_TOKEN_KEY_FILE")]
    pub validation_token_key_file: Option<PathBuf>,
    /// Accepted token issuer (repeatable). [default: presenced]
    #[arg(long = "jwt-issuer", env = "PRESENCED_JWT_ISSUERS", value_delimiter = ',')]
    pub jwt_issuers: Vec<String>,
    /// Accepted token audience (repeatable). [default: https://graph.microsoft.com]
    #[arg(long = "jwt-audience", env = "PRESENCED_JWT_AUDIENCES", value_delimiter = ',')]
    pub jwt_audiences: Vec<String>,
    /// Refuse HS256 tokens signed with the data-dir secret (the default once --jwks-file is given).
    #[arg(long, env = "PRESENCED_DISABLE_HS256", conflicts_with = "enable_hs256")]
    pub disable_hs256: bool,
    /// Accept HS256 tokens signed with the data-dir secret even with --jwks-file (on by default without one).
    #[arg(long, env = "PRESENCED_ENABLE_HS256")]
    pub enable_hs256: bool,
    /// Refuse tokens valid for longer than this (exp minus iat). [default: 24h]
    #[arg(long, env = "PRESENCED_MAX_TOKEN_LIFETIME")]
    pub max_token_lifetime: Option<String>,
    /// Allow http:// webhook URLs (default: https only).
    #[arg(long, env = "PRESENCED_WEBHOOK_ALLOW_HTTP")]
    pub webhook_allow_http: bool,
    /// Allow webhooks to addresses in this network (repeatable), e.g. 127.0.0.0/8; loopback,
    /// private, link-local and metadata addresses are refused otherwise.
    #[arg(
        long = "webhook-allow-network",
        env = "PRESENCED_WEBHOOK_ALLOW_NETWORKS",
        value_delimiter = ','
    )]
    pub webhook_allow_networks: Vec<String>,
    /// Keep retrying a failed notification this long before giving up (then `missed`). [default: 4h]
    #[arg(long, env = "PRESENCED_WEBHOOK_RETRY_FOR")]
    pub webhook_retry_for: Option<String>,
    /// Changes queued for one subscription before the oldest are given up (then `missed`). [default: 10000]
    #[arg(long, env = "PRESENCED_WEBHOOK_QUEUE_PER_SUBSCRIPTION")]
    pub webhook_queue_per_subscription: Option<usize>,
    /// Changes queued for one endpoint URL, across its subscriptions, likewise. [default: 50000]
    #[arg(long, env = "PRESENCED_WEBHOOK_QUEUE_PER_ENDPOINT")]
    pub webhook_queue_per_endpoint: Option<usize>,
    /// An endpoint failing this long is suspended: tried once a minute, one change queued per subscription. [default: 10m]
    #[arg(long, env = "PRESENCED_WEBHOOK_SUSPEND_AFTER")]
    pub webhook_suspend_after: Option<String>,
    /// How often a suspended endpoint is tried. [default: 1m]
    #[arg(long, env = "PRESENCED_WEBHOOK_PROBE_EVERY")]
    pub webhook_probe_every: Option<String>,
    /// Let application tokens (Presence.Read.All role) create subscriptions; Graph allows only delegated tokens.
    #[arg(long, env = "PRESENCED_SUBSCRIPTIONS_ALLOW_APP_TOKENS")]
    pub subscriptions_allow_app_tokens: bool,
    /// Longest subscription lifetime; later expirationDateTime values are clamped. [default: 1h]
    #[arg(long, env = "PRESENCED_SUBSCRIPTION_LIFETIME_MAX")]
    pub subscription_lifetime_max: Option<String>,
    /// Shortest subscription lifetime; earlier expirationDateTime values are lengthened. [default: 45m]
    #[arg(long, env = "PRESENCED_SUBSCRIPTION_LIFETIME_MIN")]
    pub subscription_lifetime_min: Option<String>,
    /// Send reauthorizationRequired this long before a subscription expires (at most a quarter of its lifetime). [default: 15m]
    #[arg(long, env = "PRESENCED_SUBSCRIPTION_REAUTHORIZE_BEFORE")]
    pub subscription_reauthorize_before: Option<String>,
    /// Subscriptions one application may hold per tenant. [default: 1000]
    #[arg(long, env = "PRESENCED_SUBSCRIPTIONS_MAX_PER_APP")]
    pub subscriptions_max_per_app: Option<usize>,
    /// Subscriptions one user may hold per application. [default: 100]
    #[arg(long, env = "PRESENCED_SUBSCRIPTIONS_MAX_PER_USER")]
    pub subscriptions_max_per_user: Option<usize>,
    /// Subscriptions that may watch any one user. [default: 1000]
    #[arg(long, env = "PRESENCED_SUBSCRIPTIONS_MAX_PER_WATCHED_USER")]
    pub subscriptions_max_per_watched_user: Option<usize>,
    /// Presence requests allowed per application per tenant, as REQUESTS/WINDOW, or `off`. [default: 1500/30s]
    #[arg(long, env = "PRESENCED_RATE_LIMIT")]
    pub rate_limit: Option<String>,
    /// Log format. [default: text]
    #[arg(long, env = "PRESENCED_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `presenced=debug`. [default: info]
    #[arg(long, env = "PRESENCED_LOG_LEVEL")]
    pub log_level: Option<String>,
    #[command(flatten)]
    pub net: crate::net::config::NetArgs,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The server's data directory (the secret is created there if missing).
    #[arg(long, env = "PRESENCED_DATA_DIR", required_unless_present = "jwt_secret_file")]
    pub data_dir: Option<PathBuf>,
    /// Sign with the secret in this file (the servers' `--jwt-secret-file`) instead.
    #[arg(long, env = "PRESENCED_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    #[arg(long)]
    pub tenant: String,
    /// Signed-in user (`oid`): makes a delegated token.
    #[arg(long)]
    pub user: Option<String>,
    /// Application id (`appid`/`azp`). [default: presenced-cli]
    #[arg(long)]
    pub app: Option<String>,
    /// Delegated scope (repeatable). [default with --user: Presence.Read.All Presence.ReadWrite]
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Application role (repeatable). [default without --user: Presence.ReadWrite.All]
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// Lifetime, e.g. 1h or PT8H.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    #[arg(long, default_value = crate::auth::DEFAULT_ISSUER)]
    pub issuer: String,
    #[arg(long, default_value = crate::auth::DEFAULT_AUDIENCE)]
    pub audience: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The TOML file. Unknown keys are an error: a typo must not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub store: Option<String>,
    #[serde(default)]
    pub redis: FileRedis,
    #[serde(default)]
    pub change_log: FileChangeLog,
    #[serde(default)]
    pub streams: FileStreams,
    #[serde(default)]
    pub client_sessions: FileClientSessions,
    pub rate_limit: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub fade_after: Option<String>,
    pub session_expiration_min: Option<String>,
    pub session_expiration_default: Option<String>,
    pub session_expiration_max: Option<String>,
    pub work_location_time_zone: Option<String>,
    #[serde(default)]
    pub auth: FileAuth,
    #[serde(default)]
    pub log: FileLog,
    #[serde(default)]
    pub webhooks: FileWebhooks,
    #[serde(default)]
    pub subscriptions: FileSubscriptions,
    pub public_url: Option<String>,
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub connections: crate::net::config::FileConnections,
    #[serde(default)]
    pub tls: crate::net::config::FileTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStreams {
    pub max_per_app: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedis {
    pub partitions: Option<usize>,
    pub prefix: Option<String>,
    pub relaxed_durability: Option<bool>,
    pub node_lease: Option<String>,
    pub wait_replicas: Option<usize>,
}

/// The Redis backend's settings (used when `store` names Redis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub partitions: usize,
    pub prefix: String,
    pub relaxed_durability: bool,
    pub node_lease: std::time::Duration,
    pub wait_replicas: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientSessions {
    pub grace: Option<String>,
    pub per_user: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileChangeLog {
    pub retain: Option<usize>,
    pub retain_for: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWebhooks {
    pub allow_http: Option<bool>,
    pub allow_networks: Option<Vec<String>>,
    pub retry_for: Option<String>,
    pub queue_per_subscription: Option<usize>,
    pub queue_per_endpoint: Option<usize>,
    pub suspend_after: Option<String>,
    pub probe_every: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSubscriptions {
    pub allow_app_tokens: Option<bool>,
    pub max_per_app: Option<usize>,
    pub max_per_user: Option<usize>,
    pub max_per_watched_user: Option<usize>,
    pub lifetime_max: Option<String>,
    pub lifetime_min: Option<String>,
    pub reauthorize_before: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    pub allow_delegated_writes_to_others: Option<bool>,
    pub jwks_file: Option<PathBuf>,
    pub issuers: Option<Vec<String>>,
    pub audiences: Option<Vec<String>>,
    pub hs256: Option<bool>,
    pub max_token_lifetime: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    pub format: Option<LogFormat>,
    pub level: Option<String>,
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store: StoreChoice,
    pub retention: Retention,
    pub streams: StreamConfig,
    pub clients: ClientConfig,
    pub redis: RedisSettings,
    pub delegated_writes_to_others: bool,
    pub timing: Timing,
    pub jwks_file: Option<PathBuf>,
    pub jwt_secret_file: Option<PathBuf>,
    pub validation_token_key_file: Option<PathBuf>,
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub hs256: bool,
    pub max_token_lifetime: std::time::Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    pub webhook_allow_http: bool,
    pub webhook_allow_networks: Vec<ipnet::IpNet>,
    /// Allowances limited to ports (`10.0.0.0/8:8443`).
    pub webhook_allow_on_ports: Vec<(ipnet::IpNet, std::ops::RangeInclusive<u16>)>,
    pub delivery: DeliveryConfig,
    pub subscriptions: SubscriptionPolicy,
    pub rate_limit: Option<RateLimit>,
    pub net: crate::net::config::NetConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {key}: {message}")]
    Value { key: &'static str, message: String },
}

impl ServeArgs {
    pub fn resolve(self) -> Result<ServeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let listen_raw = self.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_raw.parse().map_err(|e| ConfigError::Value {
            key: "listen",
            message: format!("{listen_raw:?} is not HOST:PORT with a numeric IP ({e})"),
        })?;
        let defaults = Timing::default();
        let duration = |key: &'static str, flag: Option<String>, file: Option<String>, default| match flag.or(file) {
            None => Ok(default),
            Some(text) => parse_config_duration(&text).map_err(|e| ConfigError::Value {
                key,
                message: format!("{text:?}: {e}"),
            }),
        };
        let timing = Timing {
            fade_after: duration("fade-after", self.fade_after, file.fade_after, defaults.fade_after)?,
            session_expiration_min: duration(
                "session-expiration-min",
                self.session_expiration_min,
                file.session_expiration_min,
                defaults.session_expiration_min,
            )?,
            session_expiration_default: duration(
                "session-expiration-default",
                self.session_expiration_default,
                file.session_expiration_default,
                defaults.session_expiration_default,
            )?,
            session_expiration_max: duration(
                "session-expiration-max",
                self.session_expiration_max,
                file.session_expiration_max,
                defaults.session_expiration_max,
            )?,
            work_location_zone: match self.work_location_time_zone.or(file.work_location_time_zone) {
                None => defaults.work_location_zone.clone(),
                Some(name) => presence_core::zone::lookup_time_zone(&name)
                    .map(presence_core::DayZone::new)
                    .map_err(|e| ConfigError::Value {
                        key: "work-location-time-zone",
                        message: e.to_string(),
                    })?,
            },
            ..defaults
        }
        .validate()
        .map_err(|e| ConfigError::Value {
            key: "timing",
            message: e.to_string(),
        })?;
        let networks_raw = if self.webhook_allow_networks.is_empty() {
            file.webhooks.allow_networks.unwrap_or_default()
        } else {
            self.webhook_allow_networks
        };
        let mut webhook_allow_networks = Vec::new();
        let mut webhook_allow_on_ports = Vec::new();
        for n in &networks_raw {
            let allowance = parse_allowance(n).map_err(|e| ConfigError::Value {
                key: "webhook-allow-network",
                message: format!("{n:?}: {e}"),
            })?;
            match allowance {
                (network, None) => webhook_allow_networks.push(network),
                (network, Some(ports)) => webhook_allow_on_ports.push((network, ports)),
            }
        }
        let delivery_defaults = DeliveryConfig::default();
        let delivery = DeliveryConfig {
            retry_for: duration(
                "webhook-retry-for",
                self.webhook_retry_for,
                file.webhooks.retry_for,
                delivery_defaults.retry_for,
            )?,
            queue_per_subscription: self
                .webhook_queue_per_subscription
                .or(file.webhooks.queue_per_subscription)
                .unwrap_or(delivery_defaults.queue_per_subscription)
                .max(1),
            queue_per_endpoint: self
                .webhook_queue_per_endpoint
                .or(file.webhooks.queue_per_endpoint)
                .unwrap_or(delivery_defaults.queue_per_endpoint)
                .max(1),
            suspend_after: duration(
                "webhook-suspend-after",
                self.webhook_suspend_after,
                file.webhooks.suspend_after,
                delivery_defaults.suspend_after,
            )?,
            probe_every: duration(
                "webhook-probe-every",
                self.webhook_probe_every,
                file.webhooks.probe_every,
                jiff::SignedDuration::try_from(delivery_defaults.probe_every).unwrap_or_default(),
            )
            .map(|d| std::time::Duration::try_from(d).unwrap_or(delivery_defaults.probe_every))?,
            ..delivery_defaults
        };
        let sub_defaults = SubscriptionPolicy::default();
        let subscriptions = SubscriptionPolicy {
            lifetime_max: duration(
                "subscription-lifetime-max",
                self.subscription_lifetime_max,
                file.subscriptions.lifetime_max,
                sub_defaults.lifetime_max,
            )?,
            lifetime_min: duration(
                "subscription-lifetime-min",
                self.subscription_lifetime_min,
                file.subscriptions.lifetime_min,
                sub_defaults.lifetime_min,
            )?,
            reauthorize_before: duration(
                "subscription-reauthorize-before",
                self.subscription_reauthorize_before,
                file.subscriptions.reauthorize_before,
                sub_defaults.reauthorize_before,
            )?,
            allow_app_tokens: self.subscriptions_allow_app_tokens
                || file.subscriptions.allow_app_tokens.unwrap_or(false),
            max_per_app: self
                .subscriptions_max_per_app
                .or(file.subscriptions.max_per_app)
                .unwrap_or(sub_defaults.max_per_app),
            max_per_user: self
                .subscriptions_max_per_user
                .or(file.subscriptions.max_per_user)
                .unwrap_or(sub_defaults.max_per_user),
            max_per_watched_user: self
                .subscriptions_max_per_watched_user
                .or(file.subscriptions.max_per_watched_user)
                .unwrap_or(sub_defaults.max_per_watched_user),
        };
        if subscriptions.lifetime_max <= jiff::SignedDuration::ZERO
            || subscriptions.lifetime_min > subscriptions.lifetime_max
        {
            return Err(ConfigError::Value {
                key: "subscription-lifetime",
                message: "need 0 < subscription-lifetime-min <= subscription-lifetime-max".into(),
            });
        }
        let store_raw = self.store.or(file.store).unwrap_or_else(|| "embedded".to_owned());
        let store = store_raw
            .parse()
            .map_err(|message| ConfigError::Value { key: "store", message })?;
        let retention_defaults = Retention::default();
        let retention = Retention {
            count: self
                .change_log_retain
                .or(file.change_log.retain)
                .unwrap_or(retention_defaults.count),
            age: duration(
                "change-log-retain-for",
                self.change_log_retain_for,
                file.change_log.retain_for,
                retention_defaults.age,
            )?,
        };
        if retention.age <= jiff::SignedDuration::ZERO {
            return Err(ConfigError::Value {
                key: "change-log-retain-for",
                message: "must be longer than zero".into(),
            });
        }
        let stream_defaults = StreamConfig::default();
        let streams = StreamConfig {
            max_per_app: self
                .streams_max_per_app
                .or(file.streams.max_per_app)
                .unwrap_or(stream_defaults.max_per_app),
            ..stream_defaults
        };
        let node_lease = duration(
            "redis-node-lease",
            self.redis_node_lease,
            file.redis.node_lease,
            jiff::SignedDuration::from_secs(30),
        )?;
        let node_lease = std::time::Duration::try_from(node_lease)
            .ok()
            .filter(|d| *d >= std::time::Duration::from_millis(300))
            .ok_or_else(|| ConfigError::Value {
                key: "redis-node-lease",
                message: "must be at least 300ms".into(),
            })?;
        let client_defaults = ClientConfig::default();
        let grace = duration(
            "client-grace",
            self.client_grace,
            file.client_sessions.grace,
            jiff::SignedDuration::try_from(client_defaults.grace).unwrap_or_default(),
        )?;
        let clients = ClientConfig {
            grace: std::time::Duration::try_from(grace).map_err(|_| ConfigError::Value {
                key: "client-grace",
                message: "must not be negative".into(),
            })?,
            per_user: self
                .client_sessions_per_user
                .or(file.client_sessions.per_user)
                .unwrap_or(client_defaults.per_user)
                .max(1),
            ..client_defaults
        };
        let jwks_file_given = self.jwks_file.clone().or(file.auth.jwks_file.clone());
        let max_token_lifetime = duration(
            "max-token-lifetime",
            self.max_token_lifetime.clone(),
            file.auth.max_token_lifetime.clone(),
            jiff::SignedDuration::from_hours(24),
        )?;
        let max_token_lifetime = std::time::Duration::try_from(max_token_lifetime)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| ConfigError::Value {
                key: "max-token-lifetime",
                message: "must be longer than zero".into(),
            })?;
        let rate_limit_raw = self
            .rate_limit
            .or(file.rate_limit)
            .unwrap_or_else(|| "1500/30s".to_owned());
        let rate_limit = RateLimit::parse(&rate_limit_raw).map_err(|message| ConfigError::Value {
            key: "rate-limit",
            message,
        })?;
        let or_default = |flag: Vec<String>, file: Option<Vec<String>>, default: &str| {
            if !flag.is_empty() {
                flag
            } else {
                file.unwrap_or_else(|| vec![default.to_owned()])
            }
        };
        Ok(ServeConfig {
            listen,
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            store,
            retention,
            streams,
            clients,
            redis: RedisSettings {
                partitions: self.redis_partitions.or(file.redis.partitions).unwrap_or(16),
                prefix: self
                    .redis_prefix
                    .or(file.redis.prefix)
                    .unwrap_or_else(|| "presenced".to_owned()),
                relaxed_durability: self.redis_relaxed_durability || file.redis.relaxed_durability.unwrap_or(false),
                node_lease,
                wait_replicas: self.redis_wait_replicas.or(file.redis.wait_replicas).unwrap_or(0),
            },
            delegated_writes_to_others: self.allow_delegated_writes_to_others
                || file.auth.allow_delegated_writes_to_others.unwrap_or(false),
            timing,
            jwks_file: self.jwks_file.or(file.auth.jwks_file),
            jwt_secret_file: self.jwt_secret_file,
            validation_token_key_file: self.validation_token_key_file,
            issuers: or_default(self.jwt_issuers, file.auth.issuers, crate::auth::DEFAULT_ISSUER),
            audiences: or_default(self.jwt_audiences, file.auth.audiences, crate::auth::DEFAULT_AUDIENCE),
            // With an identity provider's keys, the data-dir secret is one more way in that an
            // operator must ask for.
            hs256: match (self.disable_hs256, self.enable_hs256) {
                (true, _) => false,
                (_, true) => true,
                _ => file.auth.hs256.unwrap_or(jwks_file_given.is_none()),
            },
            max_token_lifetime,
            log_format: self.log_format.or(file.log.format).unwrap_or_default(),
            log_level: self.log_level.or(file.log.level).unwrap_or_else(|| "info".to_owned()),
            webhook_allow_http: self.webhook_allow_http || file.webhooks.allow_http.unwrap_or(false),
            webhook_allow_networks,
            webhook_allow_on_ports,
            delivery,
            subscriptions,
            rate_limit,
            net: self.net.resolve(crate::net::config::FileNet {
                public_url: file.public_url,
                metrics_listen: file.metrics_listen,
                connections: file.connections,
                tls: file.tls,
            })?,
        })
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nfade_after = \"PT2M\"\n[auth]\nissuers = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            fade_after: Some("30s".into()),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.timing.fade_after, SignedDuration::from_secs(30));
        assert_eq!(c.issuers, vec!["a", "b"]);
        assert_eq!(c.audiences, vec![crate::auth::DEFAULT_AUDIENCE]);
        assert_eq!(c.timing.session_expiration_max, SignedDuration::from_hours(4));
    }

    #[test]
    fn the_example_config_file_is_valid_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../presenced.example.toml");
        let from_file = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let defaults = ServeArgs::default().resolve().unwrap();
        assert_eq!(from_file.listen, defaults.listen);
        assert_eq!(from_file.data_dir, defaults.data_dir);
        assert_eq!(from_file.timing, defaults.timing);
        assert_eq!(
            (&from_file.store, from_file.retention),
            (&defaults.store, defaults.retention)
        );
        assert_eq!(from_file.redis, defaults.redis);
        assert_eq!(
            (from_file.issuers, from_file.audiences),
            (defaults.issuers, defaults.audiences)
        );
        assert_eq!(
            (from_file.hs256, from_file.log_format),
            (defaults.hs256, defaults.log_format)
        );
        assert_eq!(from_file.net, defaults.net);
        assert_eq!(from_file.streams.max_per_app, defaults.streams.max_per_app);
        assert_eq!(
            (from_file.clients.grace, from_file.clients.per_user),
            (defaults.clients.grace, defaults.clients.per_user)
        );
    }

    #[test]
    fn hs256_is_off_once_an_identity_provider_is_configured_unless_asked_for() {
        let without = ServeArgs::default().resolve().unwrap();
        assert!(without.hs256);
        assert_eq!(without.max_token_lifetime, std::time::Duration::from_secs(86_400));
        let with_jwks = ServeArgs {
            jwks_file: Some("/etc/presenced/jwks.json".into()),
            ..Default::default()
        };
        assert!(!with_jwks.resolve().unwrap().hs256);
        let asked = ServeArgs {
            jwks_file: Some("/etc/presenced/jwks.json".into()),
            enable_hs256: true,
            max_token_lifetime: Some("2h".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert!(asked.hs256);
        assert_eq!(asked.max_token_lifetime, std::time::Duration::from_secs(7_200));
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "fade_afterr = \"2m\"\n").unwrap();
        assert!(matches!(
            ServeArgs {
                config: Some(path),
                ..Default::default()
            }
            .resolve(),
            Err(ConfigError::Parse { .. })
        ));
        let bad = ServeArgs {
            fade_after: Some("soon".into()),
            ..Default::default()
        };
        assert!(matches!(
            bad.resolve(),
            Err(ConfigError::Value { key: "fade-after", .. })
        ));
        let inverted = ServeArgs {
            session_expiration_min: Some("1h".into()),
            ..Default::default()
        };
        assert!(inverted.resolve().is_err());
    }
}
