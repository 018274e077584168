//! The network edge: accepting connections, bounding them, TLS, and graceful shutdown.
//!
//! [`serve`] runs one accept loop per listener over hyper's HTTP/1 connection (hyper-util's
//! tokio I/O adapter) in place of `axum::serve`, which runs hyper without a timer and so
//! bounds nothing. Here:
//! - [`limits`]: a cap on connections with a fair share per client address (eviction at the cap).
//! - [`conn`]: each connection's phase (head, busy, idle), the header-read and idle timeouts a
//!   per-connection watchdog applies, the request-body deadline, and the [`ConnHandle`]
//!   handlers use (long-lived accounting, the close signal, the scheme).
//! - [`fd`]: the soft descriptor limit raised to the hard one, and the descriptors kept back
//!   from connections for the store and webhooks.
//! - [`tls`]: HTTPS with rustls (aws-lc-rs), certificates reloaded on SIGHUP or file change.
//! - [`cert`]: `presenced cert`, a local CA and a localhost certificate for trying HTTPS.
//! - [`config`]: the flags and file keys of all the above.
//!
//! Streaming responses (SSE, and WebSocket after an upgrade) are exempt from every timeout by
//! construction: a connection is busy from its request head until its response body is done,
//! and no timeout applies to a busy connection; the body timeout covers only the request body.
//! A streaming handler marks itself with [`ConnHandle::long_lived`] (counted apart, evicted
//! last) and ends its stream when [`ConnHandle::closing`] resolves (shutdown or eviction).
pub mod cert;
pub mod config;
pub mod conn;
pub mod fd;
pub mod limits;
pub mod metrics;
pub mod tls;

pub use conn::{is_body_timeout, BodyTimeout, ConnHandle, LongLived};

use crate::http::base_url;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use conn::{ConnState, ListenerInfo, ResponseBody, TimedBody, Timeouts, Verdict, Watched};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use limits::{Admission, Limiter, Slot};
use metrics::{reason, ConnectionMetrics};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One listening socket and how its connections are served.
pub struct Listener {
    pub tcp: TcpListener,
    pub info: Arc<ListenerInfo>,
    pub limiter: Arc<Limiter>,
    pub metrics: ConnectionMetrics,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Settings shared by every connection of a server.
pub struct Settings {
    pub timeouts: Timeouts,
    pub shutdown_timeout: Duration,
    http1: hyper::server::conn::http1::Builder,
    epoch: Instant,
}

impl Settings {
    pub fn new(timeouts: Timeouts, shutdown_timeout: Duration) -> Settings {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        // hyper's own header timer would also close idle keep-alive connections at the
        // header-read timeout (it starts when hyper waits for a head); the watchdog times the
        // two phases apart.
        http1.header_read_timeout(None);
        Settings {
            timeouts,
            shutdown_timeout,
            http1,
            epoch: Instant::now(),
        }
    }
}

/// The service every request goes to ([`crate::http::EntryService`] in the server). It must
/// always be ready: `poll_ready` is not awaited.
pub trait Handler:
    tower_service::Service<Request, Response = Response, Error = Infallible, Future: Send + Unpin + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Handler for S where
    S: tower_service::Service<Request, Response = Response, Error = Infallible, Future: Send + Unpin + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serve every listener until `shutdown` resolves; then stop accepting, let in-flight requests
/// finish (idle connections close at once), and after `shutdown_timeout` close what is left.
pub async fn serve<H: Handler>(
    listeners: Vec<Listener>,
    handler: H,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let settings = Arc::new(settings);
    let (stop_tx, stop_rx) = watch::channel(false);
    let limiters: Vec<_> = listeners
        .iter()
        .map(|l| (l.limiter.clone(), l.metrics.clone()))
        .collect();
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, handler.clone(), settings.clone(), stop_rx.clone())))
        .collect();
    shutdown.await;
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    tracing::info!("stopped accepting; draining connections");
    for (limiter, _) in &limiters {
        limiter.drain_all();
    }
    let drained = tokio::time::timeout(settings.shutdown_timeout, async {
        for (limiter, _) in &limiters {
            limiter.until_empty().await;
        }
    })
    .await;
    if drained.is_err() {
        let left: usize = limiters.iter().map(|(l, _)| l.open()).sum();
        tracing::warn!(
            connections = left,
            "connections still open after the shutdown timeout; closing them"
        );
        for (limiter, metrics) in &limiters {
            for _ in 0..limiter.open() {
                metrics.closed(reason::SHUTDOWN);
            }
            limiter.close_all();
        }
        // Connections close on their next poll; an upgraded stream whose handler ignores
        // `ConnHandle::closing` is not waited for.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            for (limiter, _) in &limiters {
                limiter.until_empty().await;
            }
        })
        .await;
    }
}

async fn accept_loop<H: Handler>(l: Listener, handler: H, settings: Arc<Settings>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            accepted = l.tcp.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_error(e).await;
                continue;
            }
        };
        let now = Instant::now();
        let local = tcp.local_addr().unwrap_or(peer);
        let state = Arc::new(ConnState::new(
            settings.epoch,
            now,
            peer,
            local,
            l.info.clone(),
            l.metrics.clone(),
        ));
        let (admission, slot) = l.limiter.admit(peer.ip(), &state);
        let Some(slot) = slot else {
            l.metrics.refused.inc();
            refuse(tcp, l.tls.is_some());
            continue;
        };
        if admission == Admission::AdmittedByEviction {
            l.metrics.closed(reason::EVICTED);
        }
        l.metrics.accepted.inc();
        tokio::spawn(connection(
            tcp,
            state,
            slot,
            handler.clone(),
            settings.clone(),
            l.tls.clone(),
        ));
    }
}

/// Out of descriptors (EMFILE, ENFILE) or memory: the connection waits in the backlog; pause
/// briefly rather than spin. A connection the peer already reset is simply skipped.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The answer to a connection refused at the cap (plain HTTP only; a TLS client just sees the
/// connection close). Best effort: written without waiting, then the socket is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 110\r\n\r\n{\"error\":{\"code\":\"ServiceNotAvailable\",\"message\":\"The server is at its connection limit; retry in a moment.\"}}";

fn refuse(tcp: TcpStream, tls: bool) {
    if !tls {
        let _ = tcp.try_write(REFUSED);
    }
}

async fn connection<H: Handler>(
    tcp: TcpStream,
    state: Arc<ConnState>,
    slot: Slot,
    handler: H,
    settings: Arc<Settings>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let handle = ConnHandle(state.clone());
    handle
        .scope(async move {
            let Some(acceptor) = tls else {
                return drive(tcp, state, slot, handler, &settings).await;
            };
            // The handshake is part of the first request head, and under its deadline.
            let deadline = match state.verdict(Instant::now(), &settings.timeouts) {
                Verdict::Until(at) => at,
                _ => Instant::now(),
            };
            let handshake = tokio::select! {
                hs = tokio::time::timeout_at(deadline.into(), acceptor.accept(tcp)) => hs,
                _ = state.asked_to_close() => return,
            };
            match handshake {
                Ok(Ok(stream)) => drive(stream, state, slot, handler, &settings).await,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %state.peer, error = %e, "TLS handshake failed");
                    state.metrics.closed(reason::TLS_HANDSHAKE);
                }
                Err(_) => state.metrics.closed(reason::HEADER_TIMEOUT),
            }
        })
        .await
}

/// Serve one connection, closing it when the watchdog finds its phase over its timeout or the
/// server asks (eviction, shutdown).
async fn drive<IO, H>(io: IO, state: Arc<ConnState>, slot: Slot, handler: H, settings: &Settings)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let io = TokioIo::new(Watched {
        inner: io,
        state: state.clone(),
        _slot: slot,
    });
    let service = Adapter {
        handler,
        state: state.clone(),
        body_timeout: settings.timeouts.body_read,
    };
    let conn = settings.http1.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let timeouts = &settings.timeouts;
    let first = match state.verdict(Instant::now(), timeouts) {
        Verdict::Until(at) => at,
        _ => Instant::now(),
    };
    let watchdog = tokio::time::sleep_until(first.into());
    tokio::pin!(watchdog);
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %state.peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut watchdog => match state.verdict(Instant::now(), timeouts) {
                Verdict::Until(at) => watchdog.as_mut().reset(at.into()),
                Verdict::HeaderTimeout => {
                    state.metrics.closed(reason::HEADER_TIMEOUT);
                    return;
                }
                Verdict::IdleTimeout => {
                    state.metrics.closed(reason::IDLE_TIMEOUT);
                    return;
                }
            },
            now = state.asked_to_close(), if !draining => {
                if now {
                    return;
                }
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = state.asked_to_close_now(), if draining => return,
        }
    }
}

/// hyper's service for one connection: marks the connection busy, puts the deadline on the
/// request body, and hands the request to the handler with the request's `Host` at hand for
/// [`base_url`].
struct Adapter<H> {
    handler: H,
    state: Arc<ConnState>,
    body_timeout: Duration,
}

impl<H: Handler> hyper::service::Service<hyper::Request<Incoming>> for Adapter<H> {
    type Response = hyper::Response<ResponseBody>;
    type Error = Infallible;
    type Future = AdapterFuture<H::Future>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        conn::request_started(&self.state);
        let listener = &self.state.listener;
        if listener.metrics_only && request.uri().path() != "/metrics" {
            return AdapterFuture {
                inner: None,
                host: None,
                state: self.state.clone(),
            };
        }
        let host = match listener.public_url {
            None => request.headers().get(header::HOST).cloned(),
            Some(_) => None,
        };
        let request =
            request.map(|body| axum::body::Body::new(TimedBody::new(body, self.body_timeout, self.state.clone())));
        let mut handler = self.handler.clone();
        AdapterFuture {
            inner: Some(tower_service::Service::call(&mut handler, request)),
            host,
            state: self.state.clone(),
        }
    }
}

struct AdapterFuture<F> {
    /// `None`: a path this listener does not serve (404).
    inner: Option<F>,
    host: Option<HeaderValue>,
    state: Arc<ConnState>,
}

impl<F> Future for AdapterFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<hyper::Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = match &mut this.inner {
            Some(inner) => match base_url::with_request_host(&mut this.host, || Pin::new(inner).poll(cx)) {
                Poll::Ready(Ok(response)) => response,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => return Poll::Pending,
            },
            None => {
                let mut r = Response::new(axum::body::Body::from("not found\n"));
                *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
                r
            }
        };
        let state = this.state.clone();
        Poll::Ready(Ok(response.map(|body| ResponseBody::new(body, state))))
    }
}

/// Whether `/metrics` is served on the current request's listener (true outside one).
pub fn serves_metrics_here() -> bool {
    ConnHandle::with_current(|c| c.is_none_or(ConnHandle::serves_metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_well_formed_response() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "ServiceNotAvailable");
    }
}
