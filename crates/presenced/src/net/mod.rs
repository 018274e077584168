//! The network edge: accepting connections, bounding them, TLS, and graceful shutdown.
//!
//! [`serve`] runs one accept loop per listener over hyper's HTTP/1 connection (hyper-util's
//! tokio I/O adapter) in place of `axum::serve`, which runs hyper without a timer and so
//! bounds nothing. Here:
//! - [`limits`]: a cap on connections with a fair share per client address (eviction at the cap).
//! - [`conn`]: each connection's phase (head, busy, idle), the header-read and idle timeouts the
//!   limiter's reaper applies (a few looks per timeout, no timer per connection), the
//!   request-body deadline, and the [`ConnHandle`] handlers use (long-lived accounting, the
//!   close signal, the scheme).
//! - [`fd`]: the soft descriptor limit raised to the hard one, and the descriptors kept back
//!   from connections for the store and webhooks.
//! - [`tls`]: HTTPS with rustls (aws-lc-rs), certificates reloaded on SIGHUP or file change.
//! - [`cert`]: `presenced cert`, a local CA and a localhost certificate for trying HTTPS.
//! - [`config`]: the flags and file keys of all the above.
//!
//! Streaming responses (SSE, and WebSocket after an upgrade) are exempt from every timeout by
//! construction: a connection is busy from its request head until its response body is done
//! (an upgraded one for good), and no timeout applies to a busy connection; the body timeout
//! covers only the request body. A streaming handler takes [`ConnHandle::current`] while it is
//! called, marks itself with [`ConnHandle::long_lived`] (counted apart, evicted last) and ends
//! its stream when [`ConnHandle::closing`] resolves (shutdown or eviction).
pub mod cert;
pub mod config;
pub mod conn;
pub mod fd;
pub mod limits;
pub mod metrics;
pub mod tls;

pub use conn::{is_body_timeout, BodyTimeout, ConnHandle, LongLived};

use axum::extract::Request;
use axum::http::header;
use axum::response::Response;
use conn::{CloseSignal, ConnState, Current, ListenerInfo, ResponseBody, TimedBody, Timeouts, Watched};
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
}

impl Settings {
    /// How often the reaper looks at every connection: an eighth of the shorter timeout, within
    /// 50 ms..1 s; a timeout ends at most this late.
    fn reap_every(&self) -> Duration {
        (self.timeouts.header_read.min(self.timeouts.idle) / 8).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

impl Settings {
    pub fn new(timeouts: Timeouts, shutdown_timeout: Duration) -> Settings {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        // hyper's own header timer would also close idle keep-alive connections at the
        // header-read timeout (it starts when hyper waits for a head), and it is a timer per
        // connection; the reaper times the two phases apart.
        http1.header_read_timeout(None);
        Settings {
            timeouts,
            shutdown_timeout,
            http1,
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
    let reaper = tokio::spawn(reap(limiters.clone(), settings.clone()));
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
    reaper.abort();
}

/// Every [`Settings::reap_every`], close the connections in a head or idle past their timeout.
async fn reap(limiters: Vec<(Arc<Limiter>, ConnectionMetrics)>, settings: Arc<Settings>) {
    let started = Instant::now();
    let mut ticks = tokio::time::interval(settings.reap_every());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now_ms = started.elapsed().as_millis() as u64;
        for (limiter, metrics) in &limiters {
            let (heads, idle) = limiter.reap(now_ms, &settings.timeouts);
            metrics.closed_n(reason::HEADER_TIMEOUT, heads);
            metrics.closed_n(reason::IDLE_TIMEOUT, idle);
        }
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
        let local = tcp.local_addr().unwrap_or(peer);
        let state = Arc::new(ConnState::new(peer, local, l.info.clone(), l.metrics.clone()));
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
    let Some(acceptor) = tls else {
        return drive(tcp, state, slot, handler, &settings).await;
    };
    // The handshake is part of the first request head: the reaper times it with the head.
    let handshake = tokio::select! {
        hs = acceptor.accept(tcp) => hs,
        _ = CloseSignal { state: &state, close_only: false } => return,
    };
    match handshake {
        Ok(stream) => drive(stream, state, slot, handler, &settings).await,
        Err(e) => {
            tracing::debug!(peer = %state.peer, error = %e, "TLS handshake failed");
            state.metrics.closed(reason::TLS_HANDSHAKE);
        }
    }
}

/// Serve one connection, closing it when the server asks (a timeout found by the reaper,
/// eviction, shutdown).
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
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %state.peer, error = %e, "connection ended with an error");
                }
                break;
            }
            now = CloseSignal { state: &state, close_only: draining } => {
                // No request of this connection is under way while it reads a head: close it
                // now rather than wait for a slow client's head (hyper would).
                if now || state.phase() == conn::Phase::Head {
                    break;
                }
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    // Closed, or upgraded: an upgraded stream lives on elsewhere with its place in the cap, and
    // no connection timeout applies to it.
    state.detach();
}

/// hyper's service for one connection: marks the connection busy, puts the deadline on the
/// request body, and hands the request to the handler with its connection and `Host` at hand
/// ([`ConnHandle::current`], `http::base_url`).
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
                current: None,
                state: self.state.clone(),
            };
        }
        let host = match listener.public_url {
            None => request.headers().get(header::HOST).cloned(),
            Some(_) => None,
        };
        let mut current = Some(Current {
            conn: self.state.clone(),
            host,
        });
        let request =
            request.map(|body| axum::body::Body::new(TimedBody::new(body, self.body_timeout, self.state.clone())));
        let mut handler = self.handler.clone();
        // Current while the handler is called too: it may look before its future is polled.
        let inner = conn::with_current(&mut current, || tower_service::Service::call(&mut handler, request));
        AdapterFuture {
            inner: Some(inner),
            current,
            state: self.state.clone(),
        }
    }
}

struct AdapterFuture<F> {
    /// `None`: a path this listener does not serve (404).
    inner: Option<F>,
    /// Made current while the handler is polled.
    current: Option<Current>,
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
            Some(inner) => match conn::with_current(&mut this.current, || Pin::new(inner).poll(cx)) {
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
    ConnHandle::with_current(|c| c.is_none_or(|c| c.listener.serves_metrics))
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

/// Serving through [`serve`] in-process, with a toy handler: streams and slow handlers against
/// the timeouts, the drain, the handle.
#[cfg(test)]
mod serve_tests {
    use super::*;
    use axum::body::{Body, Bytes};
    use http_body::Frame;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SHORT: Duration = Duration::from_millis(500);

    /// A body fed by a channel.
    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

    impl http_body::Body for ChannelBody {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
        }
    }

    /// `/slow`: answers after 1.5 s. `/stream`: 5 chunks 300 ms apart. `/forever`: a chunk every
    /// 100 ms until the connection is asked to close. `/base`: the base URL. Else `ok`.
    #[derive(Clone)]
    struct Toy;

    impl tower_service::Service<Request> for Toy {
        type Response = Response;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request) -> Self::Future {
            Box::pin(async move {
                let path = request.uri().path().to_owned();
                let body = match path.as_str() {
                    "/slow" => {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        Body::from("slow")
                    }
                    "/stream" | "/forever" => {
                        let handle = ConnHandle::current().expect("a handler runs on its connection");
                        let (tx, rx) = tokio::sync::mpsc::channel(1);
                        let (count, every) = match path.as_str() {
                            "/stream" => (5, Duration::from_millis(300)),
                            _ => (usize::MAX, Duration::from_millis(100)),
                        };
                        tokio::spawn(async move {
                            let _long = handle.long_lived();
                            for _ in 0..count {
                                tokio::select! {
                                    _ = handle.closing() => return,
                                    _ = tokio::time::sleep(every) => {}
                                }
                                if tx.send(Bytes::from_static(b"tick\n")).await.is_err() {
                                    return;
                                }
                            }
                        });
                        Body::new(ChannelBody(rx))
                    }
                    "/base" => Body::from(crate::http::base_url::current()),
                    _ => Body::from("ok"),
                };
                Ok(Response::new(body))
            })
        }
    }

    struct Running {
        addr: std::net::SocketAddr,
        metrics: ConnectionMetrics,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        served: tokio::task::JoinHandle<()>,
    }

    async fn start(header_read: Duration, idle: Duration) -> Running {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let metrics = ConnectionMetrics::default();
        let listener = Listener {
            tcp,
            info: Arc::new(ListenerInfo {
                tls: false,
                serves_metrics: true,
                metrics_only: false,
                public_url: None,
            }),
            limiter: Limiter::new(100, metrics.clone()),
            metrics: metrics.clone(),
            tls: None,
        };
        let timeouts = Timeouts {
            header_read,
            idle,
            body_read: SHORT,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            vec![listener],
            Toy,
            Settings::new(timeouts, Duration::from_secs(2)),
            async move {
                let _ = stopped.await;
            },
        ));
        Running {
            addr,
            metrics,
            stop: Some(stop),
            served,
        }
    }

    /// Send `request`, read until the server closes (at most 10 s); the text and how long it took.
    async fn exchange(addr: std::net::SocketAddr, request: &str) -> (String, Duration) {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: example.org:9\r\nConnection: close\r\n\r\n")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_streaming_response_and_a_slow_handler_outlive_every_timeout() {
        let server = start(SHORT, SHORT).await;
        let addr = server.addr;
        let stream = tokio::spawn(async move { exchange(addr, &get("/stream")).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(server.metrics.long_lived.get(), 1, "the stream counts as long-lived");
        let (slow, took) = exchange(addr, &get("/slow")).await;
        assert!(slow.starts_with("HTTP/1.1 200") && slow.ends_with("slow"), "{slow}");
        assert!(took >= Duration::from_millis(1500));
        let (streamed, took) = stream.await.unwrap();
        assert_eq!(streamed.matches("tick\n").count(), 5, "{streamed}");
        assert!(took >= Duration::from_millis(1500), "{took:?}");
        assert_eq!(server.metrics.long_lived.get(), 0);
        let (base, _) = exchange(addr, &get("/base")).await;
        assert!(base.ends_with("http://example.org:9"), "{base}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_and_idle_connections_are_closed_on_time() {
        let server = start(SHORT, Duration::from_secs(1)).await;
        // Nothing sent: closed at the header-read timeout.
        let (text, took) = exchange(server.addr, "").await;
        assert!(text.is_empty(), "{text}");
        assert!(took >= SHORT && took < SHORT * 4, "{took:?}");
        // Half a head: the same.
        let (_, took) = exchange(server.addr, "GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
        assert!(took >= SHORT && took < SHORT * 4, "{took:?}");
        // A keep-alive request answered, then silence: closed at the idle timeout after it,
        // although that is past the header-read timeout.
        let (text, took) = exchange(server.addr, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("ok"), "{text}");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(2),
            "{took:?}"
        );
        let closed = |outcome| {
            server
                .metrics
                .closed
                .get_or_create(&crate::metrics::OutcomeLabels { outcome })
                .get()
        };
        assert_eq!(closed(reason::HEADER_TIMEOUT), 2);
        assert_eq!(closed(reason::IDLE_TIMEOUT), 1);
        // A request every 600 ms keeps a connection open past its idle timeout of 1 s.
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let mut buf = vec![0u8; 4096];
        for _ in 0..3 {
            s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_lets_requests_finish_and_asks_streams_to_end() {
        let mut server = start(Duration::from_secs(10), Duration::from_secs(10)).await;
        let addr = server.addr;
        let forever = tokio::spawn(async move { exchange(addr, &get("/forever")).await });
        let slow = tokio::spawn(async move { exchange(addr, &get("/slow")).await });
        let idle = TcpStream::connect(addr).await.unwrap();
        // Half a head (header timeout 10 s): closed at once, not waited for.
        let mut slow_head = TcpStream::connect(addr).await.unwrap();
        slow_head
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        server.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), &mut server.served)
            .await
            .expect("drained well within the shutdown timeout")
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "the slow request was waited for"
        );
        let (text, _) = slow.await.unwrap();
        assert!(text.ends_with("slow"), "{text}");
        let (text, _) = forever.await.unwrap();
        assert!(
            text.contains("tick\n") && text.ends_with("0\r\n\r\n"),
            "the stream ended cleanly: {text:?}"
        );
        drop(idle);
        let mut rest = Vec::new();
        assert_eq!(
            slow_head.read_to_end(&mut rest).await.unwrap(),
            0,
            "closed without an answer"
        );
        assert!(TcpStream::connect(addr).await.is_err(), "no longer listening");
    }
}
