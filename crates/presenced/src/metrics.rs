//! Prometheus metrics, served at `/metrics`.
//!
//! Labels are coarse on purpose: routes are endpoint kinds (never paths with ids), and no user,
//! session, tenant or subscription id ever becomes a label, so cardinality stays fixed no matter
//! how many users there are.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. 2.5 s, with bounds at the latency targets we report against (1 ms, 2 ms, 20 ms):
    // request latencies on loopback sit at the low end, fsync stalls at the high.
    Histogram::new([
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

/// Metrics the store updates from its writer thread (cheap clones of shared atomics).
#[derive(Clone)]
pub struct StoreMetrics {
    /// Duration of one group commit (write + fsync).
    pub commit_seconds: Histogram,
    /// Requests per group commit.
    pub batch_size: Histogram,
    pub commits: Counter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            commit_seconds: latency_histogram(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            commits: Counter::default(),
        }
    }
}

/// Metrics the dispatcher updates.
#[derive(Clone, Default)]
pub struct DeliveryMetrics {
    /// `delivered`, `failed` (an attempt that will be retried) or `dropped` (given up).
    pub outcomes: Family<OutcomeLabels, Counter>,
    /// Notifications owed and not yet delivered.
    pub queue_depth: Gauge,
}

/// Gauges read from the store at scrape time.
#[derive(Clone, Default)]
pub struct StateGauges {
    pub users: Gauge,
    pub sessions: Gauge,
    pub deadlines_pending: Gauge,
    pub subscriptions: Gauge,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: HistogramFamily<RouteLabels>,
    pub state: StateGauges,
}

impl Metrics {
    pub fn new(store: &StoreMetrics, delivery: &DeliveryMetrics) -> Self {
        let mut registry = Registry::with_prefix("presenced");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        let state = StateGauges::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            request_seconds.clone(),
        );
        registry.register("users", "Users with stored presence state", state.users.clone());
        registry.register("sessions", "Presence sessions held", state.sessions.clone());
        registry.register(
            "deadlines_pending",
            "Users with a pending fade or expiry",
            state.deadlines_pending.clone(),
        );
        registry.register(
            "subscriptions",
            "Change-notification subscriptions",
            state.subscriptions.clone(),
        );
        registry.register("store_commits", "Durable group commits", store.commits.clone());
        registry.register(
            "store_commit_duration_seconds",
            "Group commit duration (write and fsync)",
            store.commit_seconds.clone(),
        );
        registry.register(
            "store_commit_batch_size",
            "Requests per group commit",
            store.batch_size.clone(),
        );
        registry.register(
            "notification_deliveries",
            "Notification delivery attempts by outcome",
            delivery.outcomes.clone(),
        );
        registry.register(
            "notification_queue_depth",
            "Notifications owed and not yet delivered",
            delivery.queue_depth.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            state,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
