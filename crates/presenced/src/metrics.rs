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
use std::sync::atomic::{AtomicU64, Ordering};

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

/// A thread's handles for one label set of the request metrics (see `Metrics::record_request`).
struct RequestHandles {
    metrics: u64,
    route: &'static str,
    method: &'static str,
    status: u16,
    count: Counter,
    seconds: Histogram,
}

/// Label sets per thread before the cache starts over: routes × methods × statuses in use.
const MAX_CACHED_LABEL_SETS: usize = 64;

thread_local! {
    static RECENT_REQUEST_METRICS: std::cell::RefCell<Vec<RequestHandles>> = const { std::cell::RefCell::new(Vec::new()) };
}

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
    /// Requests sent to the store's server (Redis); none for the embedded store.
    pub round_trips: Counter,
    /// Requests per group commit.
    pub batch_size: Histogram,
    pub commits: Counter,
    /// Partitions whose timers this node sweeps on time (Redis backend; 0 for the embedded one).
    pub partitions_led: Gauge,
    /// Redis's clock minus this node's, at the last lease renewal (Redis backend).
    pub clock_skew_ms: Gauge,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            commit_seconds: latency_histogram(),
            round_trips: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            commits: Counter::default(),
            partitions_led: Gauge::default(),
            clock_skew_ms: Gauge::default(),
        }
    }
}

/// Metrics the dispatcher updates.
#[derive(Clone, Default)]
pub struct DeliveryMetrics {
    /// `delivered`, `failed` (an attempt that will be retried) or `dropped` (given up).
    pub outcomes: Family<OutcomeLabels, Counter>,
    /// Change notifications queued for endpoints and not yet sent.
    pub queue_depth: Gauge,
}

/// Gauges read from the store at scrape time.
#[derive(Clone, Default)]
pub struct StateGauges {
    pub users: Gauge,
    pub sessions: Gauge,
    pub deadlines_pending: Gauge,
    pub subscriptions: Gauge,
    pub change_log_retained: Gauge,
    pub lifecycle_queued: Gauge,
    pub streams_open: Gauge,
    pub streams_lagged: Gauge,
}

pub struct Metrics {
    /// Tells apart the metrics of several servers in one process (tests run many), for the
    /// per-thread handle cache of `record_request`.
    id: u64,
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
        registry.register(
            "change_log_retained",
            "Changes the change log's window holds",
            state.change_log_retained.clone(),
        );
        registry.register("streams_open", "Watch streams open", state.streams_open.clone());
        registry.register(
            "streams_fell_behind",
            "Times a watch stream fell behind its queue and caught up from the change log",
            state.streams_lagged.clone(),
        );
        registry.register(
            "lifecycle_notices_queued",
            "Lifecycle notices (reauthorizationRequired, subscriptionRemoved, missed) not yet sent",
            state.lifecycle_queued.clone(),
        );
        registry.register("store_commits", "Durable group commits", store.commits.clone());
        registry.register(
            "store_round_trips",
            "Requests sent to the store's server (Redis; none for the embedded store)",
            store.round_trips.clone(),
        );
        registry.register(
            "store_partitions_led",
            "Partitions whose fades and expiries this node applies on time (Redis backend)",
            store.partitions_led.clone(),
        );
        registry.register(
            "store_clock_skew_milliseconds",
            "Redis's clock minus this node's, read at the last lease renewal (Redis backend)",
            store.clock_skew_ms.clone(),
        );
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
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            request_seconds,
            state,
        }
    }

    /// Count one request and observe its latency. The label lookups (a hash of the labels and a
    /// shared read lock per family) were ~1,000 instructions of every request and a lock cache
    /// line bouncing between cores, so each thread keeps the handles of the label sets it has
    /// seen; a handle shares its value with the family, so the exposition is unchanged.
    pub fn record_request(&self, route: &'static str, method: &'static str, status: u16, seconds: f64) {
        RECENT_REQUEST_METRICS.with(|cache| {
            let mut cache = cache.borrow_mut();
            let found = cache
                .iter()
                .position(|c| c.metrics == self.id && c.status == status && c.route == route && c.method == method);
            let index = found.unwrap_or_else(|| {
                if cache.len() >= MAX_CACHED_LABEL_SETS {
                    cache.clear();
                }
                cache.push(RequestHandles {
                    metrics: self.id,
                    route,
                    method,
                    status,
                    count: self
                        .requests
                        .get_or_create(&RequestLabels { route, method, status })
                        .clone(),
                    seconds: self.request_seconds.get_or_create(&RouteLabels { route }).clone(),
                });
                cache.len() - 1
            });
            cache[index].seconds.observe(seconds);
            cache[index].count.inc();
        });
    }

    /// The registry, for modules that keep their own metrics (`net::metrics`).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
