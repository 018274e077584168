//! The stream hub: follows the change log once for every open watch stream, and hands each
//! change to the streams watching its user (or its whole tenant) through a bounded queue.
//!
//! Routing is a map lookup per change, not a filter per stream, so the cost of a change is the
//! number of streams that want it. A stream whose queue is full is marked lagged and dropped from
//! the routing table; its task then resynchronises from a fresh snapshot. So a slow consumer
//! costs at most its queue, never stalls the hub or other streams, and the writer thread does
//! no per-stream work at all.
use crate::store::{Change, ChangeLog, LogError, Position};
use presence_core::{TenantId, UserKey};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch};

/// Changes read from the log per step.
const READ_BATCH: usize = 1024;

/// What a stream watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// These users (at most 650, like `getPresencesByUserId`).
    Users(Vec<UserKey>),
    /// Every user of one tenant (application permission only).
    Tenant(TenantId),
}

/// A stream's end of the hub: its queue of changes, and whether it fell behind.
pub struct Registration {
    pub changes: mpsc::Receiver<Arc<Change>>,
    lagged: Arc<AtomicBool>,
    id: u64,
    hub: Arc<Inner>,
}

impl Registration {
    /// Whether the hub dropped this stream for not keeping up (its queue was full).
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.routes().remove(self.id);
    }
}

struct Route {
    tx: mpsc::Sender<Arc<Change>>,
    lagged: Arc<AtomicBool>,
    scope: Scope,
}

#[derive(Default)]
struct Routes {
    streams: HashMap<u64, Route>,
    by_user: HashMap<UserKey, Vec<u64>>,
    by_tenant: HashMap<TenantId, Vec<u64>>,
}

impl Routes {
    fn add(&mut self, id: u64, route: Route) {
        match &route.scope {
            Scope::Users(keys) => {
                for key in keys {
                    self.by_user.entry(key.clone()).or_default().push(id);
                }
            }
            Scope::Tenant(tenant) => self.by_tenant.entry(tenant.clone()).or_default().push(id),
        }
        self.streams.insert(id, route);
    }

    fn remove(&mut self, id: u64) {
        let Some(route) = self.streams.remove(&id) else { return };
        let unlink = |ids: &mut Vec<u64>| ids.retain(|i| *i != id);
        match &route.scope {
            Scope::Users(keys) => {
                for key in keys {
                    if let Some(ids) = self.by_user.get_mut(key) {
                        unlink(ids);
                        if ids.is_empty() {
                            self.by_user.remove(key);
                        }
                    }
                }
            }
            Scope::Tenant(tenant) => {
                if let Some(ids) = self.by_tenant.get_mut(tenant) {
                    unlink(ids);
                    if ids.is_empty() {
                        self.by_tenant.remove(tenant);
                    }
                }
            }
        }
    }

    /// Queue `change` for every stream that wants it; a full queue marks its stream lagged.
    fn route(&mut self, change: &Arc<Change>, lagged_total: &AtomicU64) {
        let mut lagging = Vec::new();
        let users = self.by_user.get(&change.key).into_iter().flatten();
        let tenants = self.by_tenant.get(&change.key.tenant).into_iter().flatten();
        for id in users.chain(tenants) {
            let Some(route) = self.streams.get(id) else { continue };
            if route.tx.try_send(change.clone()).is_err() {
                route.lagged.store(true, Ordering::Release);
                lagging.push(*id);
            }
        }
        lagged_total.fetch_add(lagging.len() as u64, Ordering::Relaxed);
        for id in lagging {
            self.remove(id);
        }
    }

    /// Every stream is behind (the hub itself fell out of the log's window).
    fn lag_all(&mut self, lagged_total: &AtomicU64) {
        lagged_total.fetch_add(self.streams.len() as u64, Ordering::Relaxed);
        for route in self.streams.values() {
            route.lagged.store(true, Ordering::Release);
        }
        self.streams.clear();
        self.by_user.clear();
        self.by_tenant.clear();
    }
}

struct Inner {
    routes: Mutex<Routes>,
    next_id: AtomicU64,
    /// Every change through this position has been routed.
    routed: watch::Sender<Position>,
    queue: usize,
    /// Streams dropped from routing for a full queue (they catch up from the log), ever.
    lagged_total: AtomicU64,
}

impl Inner {
    fn routes(&self) -> MutexGuard<'_, Routes> {
        // Held for a map lookup and a few non-blocking sends, never across an await.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The hub's handle; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// A hub whose streams each queue at most `queue` changes before they are resynchronised.
    pub fn new(queue: usize, start: Position) -> Self {
        Self {
            inner: Arc::new(Inner {
                routes: Mutex::new(Routes::default()),
                next_id: AtomicU64::new(1),
                routed: watch::Sender::new(start),
                queue: queue.max(1),
                lagged_total: AtomicU64::new(0),
            }),
        }
    }

    /// Start routing to a new stream. Changes routed from now on reach its queue.
    pub fn register(&self, scope: Scope) -> Registration {
        let (tx, rx) = mpsc::channel(self.inner.queue);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner.routes().add(
            id,
            Route {
                tx,
                lagged: lagged.clone(),
                scope,
            },
        );
        Registration {
            changes: rx,
            lagged,
            id,
            hub: self.inner.clone(),
        }
    }

    /// How many streams are routed to.
    pub fn streams(&self) -> usize {
        self.inner.routes().streams.len()
    }

    /// How many times a stream fell behind its queue (and caught up from the log), ever.
    pub fn lagged_total(&self) -> u64 {
        self.inner.lagged_total.load(Ordering::Relaxed)
    }

    /// The position through which every change has been routed.
    pub fn routed(&self) -> Position {
        self.inner.routed.borrow().clone()
    }

    /// Follow the log and route every change, until `stop` turns true.
    pub async fn run<L: ChangeLog>(self, log: L, mut stop: watch::Receiver<bool>) {
        let mut position = log.head();
        self.inner.routed.send_replace(position.clone());
        loop {
            tokio::select! {
                _ = log.wait_past(&position) => {}
                _ = stop.changed() => return,
            }
            match log.changes_after(&position, READ_BATCH).await {
                Ok(changes) => {
                    if changes.is_empty() {
                        continue;
                    }
                    let mut routes = self.inner.routes();
                    for change in &changes {
                        routes.route(change, &self.inner.lagged_total);
                    }
                    drop(routes);
                    position = changes.iter().fold(position, |p, c| p.join(&c.position));
                    self.inner.routed.send_replace(position.clone());
                }
                Err(LogError::Expired { oldest }) => {
                    tracing::warn!(%position, %oldest, "the stream hub fell out of the change log; every stream resynchronises");
                    self.inner.routes().lag_all(&self.inner.lagged_total);
                    position = oldest;
                }
                Err(LogError::Store(e)) => {
                    tracing::warn!(error = %e, "the stream hub cannot read the change log; will retry");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }
}
