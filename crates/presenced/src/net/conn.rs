//! One connection: what phase it is in and since when, the I/O and body wrappers that move it
//! between phases, and the handle request handlers see.
//!
//! A connection is always in one of three phases:
//! - **head**: a request head is being read (from accept, or from the first byte after an idle
//!   spell); bounded by the header-read timeout. A TLS handshake is part of the first head.
//! - **busy**: from the moment a request head is complete until its response body has been sent
//!   (or dropped); no connection timeout applies, so a slow handler or a streaming response is
//!   never cut. Reading the request body is bounded separately ([`TimedBody`]).
//! - **idle**: between a response and the next request's first byte; bounded by the idle timeout.
//!
//! Every transition happens on the connection's own task (hyper reads, calls the service and
//! drops the response body there), so the phase is one relaxed atomic word, written at most
//! twice per request and read by the watchdog when its timer fires.
use super::metrics::ConnectionMetrics;
use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

const HEAD: u64 = 0;
const IDLE: u64 = 1;
const BUSY: u64 = 2;
const PHASE_BITS: u64 = 3;

/// What the server has asked of a connection (besides serving it).
const KEEP: u8 = 0;
/// Finish the request in flight, then close (graceful shutdown).
const DRAIN: u8 = 1;
/// Close now (evicted for another address's fair share, or the drain time is up).
const CLOSE: u8 = 2;

/// The listener a connection came through.
#[derive(Debug)]
pub struct ListenerInfo {
    pub tls: bool,
    /// Whether `/metrics` is served on this listener.
    pub serves_metrics: bool,
    /// Only `/metrics` is served here (the `--metrics-listen` address).
    pub metrics_only: bool,
    /// `--public-url`, without a trailing `/`.
    pub public_url: Option<Arc<str>>,
}

/// Timeouts of the connections of one server.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub body_read: Duration,
}

/// The state of one connection, shared by its task, the limiter (for eviction) and handles.
#[derive(Debug)]
pub struct ConnState {
    /// `(milliseconds since epoch) << 2 | phase`.
    phase: AtomicU64,
    epoch: Instant,
    close: AtomicU8,
    /// Woken when `close` changes.
    notify: Notify,
    long_lived: AtomicU64,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) listener: Arc<ListenerInfo>,
    pub(crate) metrics: ConnectionMetrics,
}

/// A phase and when it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Head(Instant),
    Idle(Instant),
    Busy,
}

/// What the watchdog concluded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Look again at this instant.
    Until(Instant),
    HeaderTimeout,
    IdleTimeout,
}

impl ConnState {
    /// A new connection, in its head phase since `accepted`.
    pub(crate) fn new(
        epoch: Instant,
        accepted: Instant,
        peer: SocketAddr,
        local: SocketAddr,
        listener: Arc<ListenerInfo>,
        metrics: ConnectionMetrics,
    ) -> ConnState {
        let state = ConnState {
            phase: AtomicU64::new(0),
            epoch,
            close: AtomicU8::new(KEEP),
            notify: Notify::new(),
            long_lived: AtomicU64::new(0),
            peer,
            local,
            listener,
            metrics,
        };
        state.set(HEAD, accepted);
        state
    }

    fn set(&self, phase: u64, at: Instant) {
        let ms = at.saturating_duration_since(self.epoch).as_millis() as u64;
        self.phase.store(ms << 2 | phase, Ordering::Relaxed);
    }

    pub(crate) fn phase(&self) -> Phase {
        let word = self.phase.load(Ordering::Relaxed);
        let at = self.epoch + Duration::from_millis(word >> 2);
        match word & PHASE_BITS {
            HEAD => Phase::Head(at),
            IDLE => Phase::Idle(at),
            _ => Phase::Busy,
        }
    }

    /// Bytes arrived: an idle connection starts reading a request head.
    #[inline]
    fn on_bytes(&self) {
        if self.phase.load(Ordering::Relaxed) & PHASE_BITS == IDLE {
            self.set(HEAD, Instant::now());
        }
    }

    /// A request head is complete and the service has it.
    #[inline]
    fn on_request(&self) {
        self.phase.store(BUSY, Ordering::Relaxed);
    }

    /// The response body is sent (or dropped).
    #[inline]
    fn on_response_done(&self) {
        self.set(IDLE, Instant::now());
    }

    /// The watchdog's judgement at `now`.
    pub(crate) fn verdict(&self, now: Instant, t: &Timeouts) -> Verdict {
        match self.phase() {
            Phase::Head(since) if now >= since + t.header_read => Verdict::HeaderTimeout,
            Phase::Head(since) => Verdict::Until(since + t.header_read),
            Phase::Idle(since) if now >= since + t.idle => Verdict::IdleTimeout,
            Phase::Idle(since) => Verdict::Until(since + t.idle),
            // Nothing bounds a busy connection; look again when the shorter timeout could next
            // matter (a response that ends now would be judged from then on).
            Phase::Busy => Verdict::Until(now + t.header_read.min(t.idle)),
        }
    }

    /// Ask the connection to finish what is in flight and close.
    pub(crate) fn drain(&self) {
        if self
            .close
            .compare_exchange(KEEP, DRAIN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_waiters();
        }
    }

    /// Ask the connection to close now.
    pub(crate) fn close_now(&self) {
        if self.close.swap(CLOSE, Ordering::AcqRel) != CLOSE {
            self.notify.notify_waiters();
        }
    }

    pub(crate) fn is_long_lived(&self) -> bool {
        self.long_lived.load(Ordering::Relaxed) > 0
    }

    fn closing_state(&self) -> u8 {
        self.close.load(Ordering::Acquire)
    }

    /// Resolves once the server asks this connection to close (drain or close), then returns
    /// whether it must close at once.
    pub(crate) async fn asked_to_close(&self) -> bool {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.closing_state() {
                KEEP => notified.await,
                s => return s == CLOSE,
            }
        }
    }

    /// Resolves once the server asks this connection to close now.
    pub(crate) async fn asked_to_close_now(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.closing_state() == CLOSE {
                return;
            }
            notified.await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The handle handlers see.

tokio::task_local! {
    static CURRENT: ConnHandle;
}

/// The connection a request arrived on, for handlers: its addresses and scheme, a way to be
/// counted as long-lived, and a signal when the server wants it closed.
///
/// Handlers run on their connection's task, so [`ConnHandle::current`] finds it; a handler that
/// spawns work takes the handle along.
#[derive(Clone, Debug)]
pub struct ConnHandle(pub(crate) Arc<ConnState>);

impl ConnHandle {
    /// The connection of the request being handled; `None` outside a connection served by
    /// [`super::serve`] (a unit test calling a handler directly).
    pub fn current() -> Option<ConnHandle> {
        CURRENT.try_with(ConnHandle::clone).ok()
    }

    /// `f` of the current connection's handle (no reference count taken).
    pub fn with_current<R>(f: impl FnOnce(Option<&ConnHandle>) -> R) -> R {
        let mut f = Some(f);
        match CURRENT.try_with(|c| f.take().map(|f| f(Some(c)))) {
            Ok(Some(r)) => r,
            _ => f.take().map(|f| f(None)).expect("f runs once"),
        }
    }

    /// Run `f` with this handle as the current connection.
    pub(crate) async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }

    pub fn peer(&self) -> SocketAddr {
        self.0.peer
    }

    /// The address the client connected to.
    pub fn local(&self) -> SocketAddr {
        self.0.local
    }

    pub fn is_tls(&self) -> bool {
        self.0.listener.tls
    }

    pub fn public_url(&self) -> Option<&str> {
        self.0.listener.public_url.as_deref()
    }

    pub fn serves_metrics(&self) -> bool {
        self.0.listener.serves_metrics
    }

    /// Count this connection as long-lived (a stream) while the guard lives: it shows in
    /// `presenced_connections_long_lived` and is the last its address loses to eviction. No
    /// timeout needs lifting: a response being streamed keeps its connection busy, and busy
    /// connections have none.
    pub fn long_lived(&self) -> LongLived {
        self.0.long_lived.fetch_add(1, Ordering::Relaxed);
        self.0.metrics.long_lived.inc();
        LongLived(self.0.clone())
    }

    /// Resolves when the server wants this connection closed: at shutdown (after which it
    /// waits `--shutdown-timeout` for the response to end) or when the connection is evicted.
    /// A streaming handler ends its stream when this resolves.
    pub async fn closing(&self) {
        self.0.asked_to_close().await;
    }
}

/// See [`ConnHandle::long_lived`].
#[derive(Debug)]
pub struct LongLived(Arc<ConnState>);

impl Drop for LongLived {
    fn drop(&mut self) {
        self.0.long_lived.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.long_lived.dec();
    }
}

// ---------------------------------------------------------------------------------------------
// I/O and bodies.

/// The connection's byte stream, noting when bytes arrive; it also holds the connection's
/// place in the limiter, so the place is given back exactly when the socket closes (after an
/// upgrade too, when the upgraded stream is dropped).
pub(crate) struct Watched<S> {
    pub(crate) inner: S,
    pub(crate) state: Arc<ConnState>,
    pub(crate) _slot: super::limits::Slot,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.on_bytes();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The request body reached its deadline: `body-read-timeout` after the server first waited
/// for it. `http::body::read` answers `408`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Whether `error` (or one of its sources) is a [`BodyTimeout`].
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<BodyTimeout>() {
            return true;
        }
        current = e.source();
    }
    false
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body with a deadline for all of it. The timer is made only when the body is not
/// already there (every SDK request's body arrives with its head), so most requests never
/// touch the timer wheel.
pub(crate) struct TimedBody {
    inner: hyper::body::Incoming,
    timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// For the metrics; taken when the deadline passes, so it is counted once.
    state: Option<Arc<ConnState>>,
}

impl TimedBody {
    pub(crate) fn new(inner: hyper::body::Incoming, timeout: Duration, state: Arc<ConnState>) -> TimedBody {
        TimedBody {
            inner,
            timeout,
            deadline: None,
            state: Some(state),
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                if let Some(state) = this.state.take() {
                    state.metrics.body_timeouts.inc();
                }
                Poll::Ready(Some(Err(BodyTimeout(timeout).into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that moves its connection to idle when it is done (sent whole, or dropped).
pub struct ResponseBody {
    inner: axum::body::Body,
    state: Arc<ConnState>,
}

impl ResponseBody {
    pub(crate) fn new(inner: axum::body::Body, state: Arc<ConnState>) -> ResponseBody {
        ResponseBody { inner, state }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.state.on_response_done();
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    #[inline]
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Mark the connection busy as its request is handed to the service.
#[inline]
pub(crate) fn request_started(state: &ConnState) {
    state.on_request();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(epoch: Instant) -> ConnState {
        let info = Arc::new(ListenerInfo {
            tls: false,
            serves_metrics: true,
            metrics_only: false,
            public_url: None,
        });
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        ConnState::new(epoch, epoch, addr, addr, info, ConnectionMetrics::default())
    }

    #[test]
    fn the_watchdog_judges_each_phase_by_its_own_timeout() {
        let t = Timeouts {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(75),
            body_read: Duration::from_secs(30),
        };
        let epoch = Instant::now();
        let s = state(epoch);
        let at = |secs| epoch + Duration::from_secs(secs);
        assert_eq!(s.verdict(at(5), &t), Verdict::Until(at(10)));
        assert_eq!(s.verdict(at(10), &t), Verdict::HeaderTimeout);
        s.on_request();
        assert_eq!(s.verdict(at(500), &t), Verdict::Until(at(510)));
        s.set(IDLE, at(20));
        assert_eq!(s.verdict(at(30), &t), Verdict::Until(at(95)));
        assert_eq!(s.verdict(at(95), &t), Verdict::IdleTimeout);
        // Bytes of the next request start a head; bytes while busy or in a head change nothing.
        s.on_bytes();
        assert!(matches!(s.phase(), Phase::Head(_)));
        let before = s.phase();
        s.on_bytes();
        assert_eq!(s.phase(), before);
        s.on_request();
        s.on_bytes();
        assert_eq!(s.phase(), Phase::Busy);
    }

    #[tokio::test]
    async fn close_requests_wake_waiters_and_escalate() {
        let s = Arc::new(state(Instant::now()));
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.asked_to_close().await }
        });
        tokio::task::yield_now().await;
        s.drain();
        assert!(!waiter.await.unwrap(), "a drain is not a close");
        let now = tokio::spawn({
            let s = s.clone();
            async move { s.asked_to_close_now().await }
        });
        tokio::task::yield_now().await;
        s.close_now();
        now.await.unwrap();
        assert!(s.asked_to_close().await);
    }

    #[test]
    fn body_timeouts_are_found_behind_wrappers() {
        let wrapped = axum::Error::new(BodyTimeout(Duration::from_secs(1)));
        assert!(is_body_timeout(&wrapped));
        assert!(!is_body_timeout(&std::io::Error::other("x")));
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn set_busy(state: &ConnState) {
        state.on_request();
    }

    pub(crate) fn set_idle(state: &ConnState) {
        state.on_response_done();
    }
}
