//! One connection: what phase it is in, the I/O and body wrappers that move it between phases,
//! and the handle request handlers see.
//!
//! A connection is always in one of three phases:
//! - **head**: a request head is being read (from accept, or from the first byte after an idle
//!   spell); bounded by the header-read timeout. A TLS handshake is part of the first head.
//! - **busy**: from the moment a request head is complete until its response body has been sent
//!   (or dropped); no connection timeout applies, so a slow handler or a streaming response is
//!   never cut. Reading the request body is bounded separately ([`TimedBody`]). An upgraded
//!   connection (WebSocket) stays busy for good.
//! - **idle**: between a response and the next request's first byte; bounded by the idle timeout.
//!
//! Every transition happens on the connection's own task (hyper reads, calls the service and
//! drops the response body there), so the phase is one relaxed atomic word, written at most
//! twice per request, with no clock read: the word counts transitions, and the limiter's reaper
//! ([`super::limits::Limiter::reap`]), which looks at every connection a few times per timeout,
//! times how long a word stays unchanged. So the hot path touches no timer and no clock, and the
//! connection's task waits on nothing but hyper and one close flag ([`CloseSignal`]); a
//! per-connection timer polled on every wake cost ~2 µs of a ~25 µs read under load.
use super::metrics::ConnectionMetrics;
use axum::body::Bytes;
use axum::http::HeaderValue;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

const HEAD: u64 = 0;
const IDLE: u64 = 1;
const BUSY: u64 = 2;
/// Busy for good: upgraded, or no longer served by hyper.
const DETACHED: u64 = 3;
const PHASE_BITS: u64 = 3;
/// One transition more in the word's counter (above the phase bits).
const STEP: u64 = 4;

/// What the server has asked of a connection (besides serving it).
const KEEP: u8 = 0;
/// Finish the request in flight, then close (graceful shutdown).
const DRAIN: u8 = 1;
/// Close now (evicted for another address's fair share, timed out, or the drain time is up).
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

/// The state of one connection, shared by its task, the limiter (reaper, eviction) and handles.
#[derive(Debug)]
pub struct ConnState {
    /// `transitions << 2 | phase`, written by the connection's task only.
    phase: AtomicU64,
    /// The reaper's: the word it last saw, and since when (ms on its clock).
    seen: AtomicU64,
    seen_since: AtomicU64,
    close: AtomicU8,
    /// The connection's task, woken when `close` changes.
    task: AtomicWaker,
    /// Handles waiting for `close` to change.
    notify: Notify,
    long_lived: AtomicU64,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) listener: Arc<ListenerInfo>,
    pub(crate) metrics: ConnectionMetrics,
}

/// A connection's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Head,
    Idle,
    Busy,
}

/// Why the reaper closes a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    HeaderTimeout,
    IdleTimeout,
}

impl ConnState {
    /// A new connection, in its head phase.
    pub(crate) fn new(
        peer: SocketAddr,
        local: SocketAddr,
        listener: Arc<ListenerInfo>,
        metrics: ConnectionMetrics,
    ) -> ConnState {
        ConnState {
            phase: AtomicU64::new(HEAD),
            seen: AtomicU64::new(u64::MAX),
            seen_since: AtomicU64::new(0),
            close: AtomicU8::new(KEEP),
            task: AtomicWaker::new(),
            notify: Notify::new(),
            long_lived: AtomicU64::new(0),
            peer,
            local,
            listener,
            metrics,
        }
    }

    fn set(&self, phase: u64) {
        let word = self.phase.load(Ordering::Relaxed);
        if word & PHASE_BITS != DETACHED {
            self.phase.store((((word >> 2) + 1) * STEP) | phase, Ordering::Relaxed);
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) & PHASE_BITS {
            HEAD => Phase::Head,
            IDLE => Phase::Idle,
            _ => Phase::Busy,
        }
    }

    /// Bytes arrived: an idle connection starts reading a request head.
    #[inline]
    fn on_bytes(&self) {
        if self.phase.load(Ordering::Relaxed) & PHASE_BITS == IDLE {
            self.set(HEAD);
        }
    }

    /// A request head is complete and the service has it.
    #[inline]
    fn on_request(&self) {
        self.set(BUSY);
    }

    /// The response body is sent (or dropped).
    #[inline]
    fn on_response_done(&self) {
        self.set(IDLE);
    }

    /// hyper is done with the connection (closed, or upgraded and served elsewhere): no timeout
    /// applies any more.
    pub(crate) fn detach(&self) {
        self.phase.store(DETACHED, Ordering::Relaxed);
    }

    /// The reaper's look at `now_ms`: whether the connection has been in a head or idle too
    /// long. A phase is timed from the first look that saw it, so a timeout ends at most one
    /// reaper period late, never early.
    pub(crate) fn reap(&self, now_ms: u64, t: &Timeouts) -> Option<Expired> {
        let word = self.phase.load(Ordering::Relaxed);
        if self.seen.swap(word, Ordering::Relaxed) != word {
            self.seen_since.store(now_ms, Ordering::Relaxed);
            return None;
        }
        let since = self.seen_since.load(Ordering::Relaxed);
        let held = Duration::from_millis(now_ms.saturating_sub(since));
        match word & PHASE_BITS {
            HEAD if held >= t.header_read => Some(Expired::HeaderTimeout),
            IDLE if held >= t.idle => Some(Expired::IdleTimeout),
            _ => None,
        }
    }

    /// For eviction: heads first, then idle connections, each the longest-standing first, then
    /// busy ones, streams last (smaller is evicted first).
    pub(crate) fn eviction_rank(&self) -> (u8, u64) {
        let since = self.seen_since.load(Ordering::Relaxed);
        match self.phase() {
            Phase::Head => (0, since),
            Phase::Idle => (1, since),
            Phase::Busy if !self.is_long_lived() => (2, 0),
            Phase::Busy => (3, 0),
        }
    }

    fn wake(&self) {
        self.task.wake();
        self.notify.notify_waiters();
    }

    /// Ask the connection to finish what is in flight and close.
    pub(crate) fn drain(&self) {
        if self
            .close
            .compare_exchange(KEEP, DRAIN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake();
        }
    }

    /// Ask the connection to close now.
    pub(crate) fn close_now(&self) {
        if self.close.swap(CLOSE, Ordering::AcqRel) != CLOSE {
            self.wake();
        }
    }

    pub(crate) fn is_long_lived(&self) -> bool {
        self.long_lived.load(Ordering::Relaxed) > 0
    }

    fn closing_state(&self) -> u8 {
        self.close.load(Ordering::Acquire)
    }

    /// Resolves once the server asks this connection to close (drain or close), then returns
    /// whether it must close at once. For handles; the connection's task uses [`CloseSignal`].
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
}

/// The connection task's wait for a close request: `Some(true)` to close now, `Some(false)` to
/// drain. Polled on every wake of the task, so it is one atomic load and a waker registration
/// that does not clone an unchanged waker.
pub(crate) struct CloseSignal<'a> {
    pub(crate) state: &'a ConnState,
    /// Resolve only for a close (after a drain was seen).
    pub(crate) close_only: bool,
}

impl Future for CloseSignal<'_> {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let ready = |s: u8| match s {
            CLOSE => Some(true),
            DRAIN if !self.close_only => Some(false),
            _ => None,
        };
        if let Some(now) = ready(self.state.closing_state()) {
            return Poll::Ready(now);
        }
        self.state.task.register(cx.waker());
        match ready(self.state.closing_state()) {
            Some(now) => Poll::Ready(now),
            None => Poll::Pending,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The handle handlers see.

thread_local! {
    /// The connection and `Host` of the request whose handler this thread is polling.
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// What a handler may ask about its request's connection ([`ConnHandle::current`],
/// `http::base_url`).
pub(crate) struct Current {
    pub(crate) conn: Arc<ConnState>,
    pub(crate) host: Option<HeaderValue>,
}

/// Run `poll` (a handler's poll) with `current` as the current request; it is handed back
/// afterwards, even if `poll` panics, so the request's future carries it across polls.
pub(crate) fn with_current<R>(current: &mut Option<Current>, poll: impl FnOnce() -> R) -> R {
    struct Restore<'a>(&'a mut Option<Current>);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            CURRENT.with(|c| std::mem::swap(&mut *c.borrow_mut(), self.0));
        }
    }
    CURRENT.with(|c| std::mem::swap(&mut *c.borrow_mut(), current));
    let _restore = Restore(current);
    poll()
}

/// `f` of the current request's connection and `Host` (`None` outside a handler's poll).
pub(crate) fn read_current<R>(f: impl FnOnce(Option<&Current>) -> R) -> R {
    CURRENT.with(|c| f(c.borrow().as_ref()))
}

/// The connection a request arrived on, for handlers: its addresses and scheme, a way to be
/// counted as long-lived, and a signal when the server wants it closed.
///
/// [`ConnHandle::current`] finds it while a handler is polled; a handler that streams or spawns
/// takes the handle along.
#[derive(Clone, Debug)]
pub struct ConnHandle(pub(crate) Arc<ConnState>);

impl ConnHandle {
    /// The connection of the request being handled; `None` outside a handler served by
    /// [`super::serve`] (a unit test calling a handler directly).
    pub fn current() -> Option<ConnHandle> {
        read_current(|c| c.map(|c| ConnHandle(c.conn.clone())))
    }

    /// `f` of the current connection's handle (no reference count taken).
    pub fn with_current<R>(f: impl FnOnce(Option<&ConnState>) -> R) -> R {
        read_current(|c| f(c.map(|c| &*c.conn)))
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

    pub(crate) fn state() -> ConnState {
        let info = Arc::new(ListenerInfo {
            tls: false,
            serves_metrics: true,
            metrics_only: false,
            public_url: None,
        });
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        ConnState::new(addr, addr, info, ConnectionMetrics::default())
    }

    #[test]
    fn the_reaper_times_each_phase_by_its_own_timeout_from_its_first_look() {
        let t = Timeouts {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(75),
            body_read: Duration::from_secs(30),
        };
        let s = state();
        let ms = |secs: u64| secs * 1000;
        assert_eq!(s.reap(ms(0), &t), None, "first look");
        assert_eq!(s.reap(ms(9), &t), None);
        assert_eq!(s.reap(ms(10), &t), Some(Expired::HeaderTimeout));
        s.on_request();
        assert_eq!(s.reap(ms(11), &t), None);
        assert_eq!(s.reap(ms(500), &t), None, "busy has no timeout");
        s.on_response_done();
        assert_eq!(s.reap(ms(501), &t), None);
        assert_eq!(s.reap(ms(575), &t), None);
        assert_eq!(s.reap(ms(576), &t), Some(Expired::IdleTimeout));
        // A whole request between two looks is a new word: timed afresh.
        s.on_bytes();
        s.on_request();
        s.on_response_done();
        assert_eq!(s.reap(ms(600), &t), None);
        assert_eq!(s.reap(ms(674), &t), None);
        // Bytes of the next request start a head; bytes while busy or in a head change nothing.
        s.on_bytes();
        assert_eq!(s.phase(), Phase::Head);
        let word = s.phase.load(Ordering::Relaxed);
        s.on_bytes();
        assert_eq!(s.phase.load(Ordering::Relaxed), word);
        s.on_request();
        s.on_bytes();
        assert_eq!(s.phase(), Phase::Busy);
        // Detached (upgraded): busy for good.
        s.on_response_done();
        s.detach();
        s.on_response_done();
        assert_eq!(s.phase(), Phase::Busy);
        assert_eq!(s.reap(ms(1000), &t), None);
        assert_eq!(s.reap(ms(9000), &t), None);
    }

    #[tokio::test]
    async fn close_requests_wake_the_task_and_handles_and_escalate() {
        let s = Arc::new(state());
        let handle = tokio::spawn({
            let s = s.clone();
            async move { s.asked_to_close().await }
        });
        let task = tokio::spawn({
            let s = s.clone();
            async move {
                let drained = CloseSignal {
                    state: &s,
                    close_only: false,
                }
                .await;
                let closed = CloseSignal {
                    state: &s,
                    close_only: true,
                }
                .await;
                (drained, closed)
            }
        });
        tokio::task::yield_now().await;
        s.drain();
        assert!(!handle.await.unwrap(), "a drain is not a close");
        tokio::task::yield_now().await;
        s.close_now();
        assert_eq!(task.await.unwrap(), (false, true));
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
