//! Connection metrics (`presenced_connections_*` and `presenced_request_body_timeouts`), registered
//! into the server's registry.
use crate::metrics::OutcomeLabels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Why the server closed a connection (the `outcome` label).
pub mod reason {
    pub const HEADER_TIMEOUT: &str = "header_timeout";
    pub const IDLE_TIMEOUT: &str = "idle_timeout";
    pub const EVICTED: &str = "evicted";
    pub const TLS_HANDSHAKE: &str = "tls_handshake";
    pub const SHUTDOWN: &str = "shutdown";
}

#[derive(Debug, Default)]
pub struct Inner {
    pub open: Gauge,
    pub long_lived: Gauge,
    pub max: Gauge,
    pub accepted: Counter,
    pub refused: Counter,
    pub closed: Family<OutcomeLabels, Counter>,
    pub body_timeouts: Counter,
}

/// Cheap to clone (one reference count); one per listener.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics(Arc<Inner>);

impl std::ops::Deref for ConnectionMetrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl ConnectionMetrics {
    pub fn closed(&self, reason: &'static str) {
        self.closed_n(reason, 1);
    }

    pub fn closed_n(&self, reason: &'static str, n: usize) {
        if n > 0 {
            self.closed
                .get_or_create(&OutcomeLabels { outcome: reason })
                .inc_by(n as u64);
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register("connections_open", "Client connections open", self.open.clone());
        registry.register(
            "connections_long_lived",
            "Open connections serving a stream",
            self.long_lived.clone(),
        );
        registry.register(
            "connections_max",
            "Most client connections held at once (--max-connections, lowered to fit the descriptor limit)",
            self.max.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted",
            self.accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at the cap (their address already held a fair share)",
            self.refused.clone(),
        );
        registry.register(
            "connections_closed_by_server",
            "Connections the server closed, by outcome: header_timeout, idle_timeout, evicted, tls_handshake, shutdown",
            self.closed.clone(),
        );
        registry.register(
            "request_body_timeouts",
            "Requests whose body did not arrive within --body-read-timeout (answered 408)",
            self.body_timeouts.clone(),
        );
    }
}
