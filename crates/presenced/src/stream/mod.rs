//! Live watch streams: the presence of a set of users (or a whole tenant), as a snapshot at one
//! change-log position and then every change, resumable with a token.
//!
//! Module map:
//! - [`hub`]: follows the change log once and routes each change to the streams that want it.
//! - [`watch`]: one stream's events: snapshot, live changes, catch-up from the log, reset.
//! - [`resume`]: resume tokens (position and watch-set fingerprint).
//!
//! The transports (Server-Sent Events and WebSocket) are in `http::stream`; [`Streams`] is what
//! they share: the hub, the per-application limit, and the shutdown that ends every stream with a
//! final message.
pub mod hub;
pub mod resume;
pub mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch as signal, Notify};

#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Open streams per application per tenant (a WebSocket waiting for its first message counts).
    pub max_per_app: usize,
    /// Changes queued per stream before it falls back to reading the log itself.
    pub queue: usize,
    /// An SSE comment or WebSocket ping this often keeps idle streams open through proxies.
    pub keep_alive: Duration,
    /// On shutdown, how long streams get to send their final message and close.
    pub drain: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_per_app: 500,
            queue: 1024,
            keep_alive: Duration::from_secs(15),
            drain: Duration::from_secs(5),
        }
    }
}

/// What every stream of a server shares.
pub struct Streams {
    pub hub: hub::Hub,
    pub config: StreamConfig,
    // Held for one map update per stream opened or closed.
    open: Mutex<HashMap<(String, String), usize>>,
    live: Arc<Live>,
    shutdown: signal::Sender<bool>,
}

#[derive(Default)]
struct Live {
    count: AtomicUsize,
    closed: Notify,
}

/// An open stream's place in the limits; gives it back when dropped.
pub struct Admission {
    /// The (tenant, application) it counts against; none for a client-session socket, which
    /// counts only in what shutdown waits for.
    key: Option<(String, String)>,
    streams: Arc<Streams>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(key);
                }
            }
        }
        if self.streams.live.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.streams.live.closed.notify_waiters();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("this application already has {0} open streams in this tenant")]
pub struct TooManyStreams(pub usize);

impl Streams {
    pub fn new(hub: hub::Hub, config: StreamConfig) -> Self {
        Self {
            hub,
            config,
            open: Mutex::new(HashMap::new()),
            live: Arc::new(Live::default()),
            shutdown: signal::Sender::new(false),
        }
    }

    /// Count a new stream of `app` in `tenant` against the limit.
    pub fn admit(self: &Arc<Self>, tenant: &str, app: &str) -> Result<Admission, TooManyStreams> {
        let key = (tenant.to_owned(), app.to_owned());
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= self.config.max_per_app {
            return Err(TooManyStreams(self.config.max_per_app));
        }
        *n += 1;
        self.live.count.fetch_add(1, Ordering::AcqRel);
        Ok(Admission {
            key: Some(key),
            streams: self.clone(),
        })
    }

    /// Count a long-lived socket that is not a watch stream (a client session) in what shutdown
    /// waits for; its own limits are elsewhere.
    pub fn track(self: &Arc<Self>) -> Admission {
        self.live.count.fetch_add(1, Ordering::AcqRel);
        Admission {
            key: None,
            streams: self.clone(),
        }
    }

    /// Streams open now.
    pub fn open_count(&self) -> usize {
        self.live.count.load(Ordering::Acquire)
    }

    /// Resolves (to `true`) when the server begins to shut down.
    pub fn shutdown_signal(&self) -> signal::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Tell every stream to send its final message and close; then wait for them, at most the
    /// configured drain time. Returns how many were still open when it stopped waiting.
    pub async fn shut_down(&self) -> usize {
        self.shutdown.send_replace(true);
        let wait = async {
            loop {
                let closed = self.live.closed.notified();
                if self.open_count() == 0 {
                    return;
                }
                closed.await;
            }
        };
        let _ = tokio::time::timeout(self.config.drain, wait).await;
        self.open_count()
    }
}
