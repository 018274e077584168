//! Connection-bound client sessions: which client sessions this process's sockets hold.
//!
//! The session itself is a core `Session` with a `ClientLink` (device, process epoch, connected),
//! stored like any other. What lives here is what only the holding process knows: which socket
//! holds which session right now, so that a reconnect takes a session over from a socket that has
//! not noticed it is dead yet, and the old socket's close does not then disconnect the new one.
//! The protocol is in `http::client_session`; `docs/client-sessions.md` describes it.
use presence_core::{SessionId, UserKey};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// After its connection ends, a client session lasts this long (a reconnect within it keeps
    /// the session with no visible change); after a restart, sessions of the earlier process
    /// get it from the start.
    pub grace: Duration,
    /// Open client sessions per user in this process.
    pub per_user: usize,
    /// A socket's `set` messages become at most one write this often (the latest wins).
    pub set_every: Duration,
    /// A socket's `activity` messages become at most one write this often (capped at a quarter
    /// of the fade time, so activity always lands well before a session would fade).
    pub activity_every: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(30),
            per_user: 10,
            set_every: Duration::from_millis(250),
            activity_every: Duration::from_secs(30),
        }
    }
}

/// The client sessions this process holds.
pub struct ClientSessions {
    pub config: ClientConfig,
    /// This process: recorded on every session it connects, so the next process can tell the
    /// sessions it did not connect itself.
    pub epoch: String,
    held: Mutex<HashMap<UserKey, HashMap<SessionId, Holder>>>,
    generations: AtomicU64,
}

struct Holder {
    generation: u64,
    replaced: Arc<Notify>,
    /// Orders the connect and disconnect writes of one session across the sockets that hold it
    /// one after another (kept from holder to holder).
    writes: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug, thiserror::Error)]
#[error("this user already has {0} open client sessions")]
pub struct TooManyClients(pub usize);

/// One socket's hold on a session. Dropped without [`release`](Hold::release), it lets go
/// without deciding anything.
pub struct Hold {
    sessions: Arc<ClientSessions>,
    key: UserKey,
    session: SessionId,
    generation: u64,
    /// Notified when another socket takes the session over.
    pub replaced: Arc<Notify>,
    writes: Arc<tokio::sync::Mutex<()>>,
}

impl ClientSessions {
    pub fn new(config: ClientConfig, epoch: String) -> Self {
        Self {
            config,
            epoch,
            held: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(1),
        }
    }

    /// Hold `session` of `key` for a new socket; a socket already holding it is told it has
    /// been replaced.
    pub fn hold(self: &Arc<Self>, key: &UserKey, session: &SessionId) -> Result<Hold, TooManyClients> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let sessions = held.entry(key.clone()).or_default();
        let writes = match sessions.get(session) {
            Some(old) => {
                old.replaced.notify_one();
                old.writes.clone()
            }
            None if sessions.len() >= self.config.per_user => {
                if sessions.is_empty() {
                    held.remove(key);
                }
                return Err(TooManyClients(self.config.per_user));
            }
            None => Arc::new(tokio::sync::Mutex::new(())),
        };
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let replaced = Arc::new(Notify::new());
        sessions.insert(
            session.clone(),
            Holder {
                generation,
                replaced: replaced.clone(),
                writes: writes.clone(),
            },
        );
        Ok(Hold {
            sessions: self.clone(),
            key: key.clone(),
            session: session.clone(),
            generation,
            replaced,
            writes,
        })
    }

    /// Client sessions held now.
    pub fn held_count(&self) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.values().map(HashMap::len).sum()
    }

    /// Remove the holder of generation `generation`, if it is still the one; says whether it was.
    fn remove_if_current(&self, key: &UserKey, session: &SessionId, generation: u64) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sessions) = held.get_mut(key) else {
            return false;
        };
        let current = sessions.get(session).is_some_and(|h| h.generation == generation);
        if current {
            sessions.remove(session);
            if sessions.is_empty() {
                held.remove(key);
            }
        }
        current
    }

    fn is_current(&self, key: &UserKey, session: &SessionId, generation: u64) -> bool {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(key)
            .and_then(|s| s.get(session))
            .is_some_and(|h| h.generation == generation)
    }
}

impl Hold {
    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// Run the connect write while no other socket's connect or disconnect write of this
    /// session runs.
    pub async fn connect<T>(&self, write: impl std::future::Future<Output = T>) -> T {
        let _order = self.writes.lock().await;
        write.await
    }

    /// Let go of the session. `disconnect` (the write that starts the grace) runs only if this
    /// socket still holds it, in order with the connect writes of sockets taking it over; the
    /// answer says whether it ran.
    pub async fn release<T>(self, disconnect: impl std::future::Future<Output = T>) -> Option<T> {
        let _order = self.writes.lock().await;
        if !self.sessions.is_current(&self.key, &self.session, self.generation) {
            return None;
        }
        let outcome = disconnect.await;
        self.sessions
            .remove_if_current(&self.key, &self.session, self.generation);
        Some(outcome)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.sessions
            .remove_if_current(&self.key, &self.session, self.generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::{TenantId, UserId};

    fn key(user: &str) -> UserKey {
        UserKey::new(TenantId::parse("t").unwrap(), UserId::parse(user).unwrap())
    }

    fn sessions(per_user: usize) -> Arc<ClientSessions> {
        let config = ClientConfig {
            per_user,
            ..ClientConfig::default()
        };
        Arc::new(ClientSessions::new(config, "epoch".into()))
    }

    #[tokio::test]
    async fn a_reconnect_takes_the_session_over_and_the_old_socket_disconnects_nothing() {
        let all = sessions(10);
        let id = SessionId::parse("c1").unwrap();
        let old = all.hold(&key("u"), &id).unwrap();
        let new = all.hold(&key("u"), &id).unwrap();
        // The old socket learns it was replaced, without waiting.
        old.replaced.notified().await;
        assert_eq!(old.release(async { "disconnected" }).await, None);
        assert_eq!(all.held_count(), 1);
        assert_eq!(new.release(async { "disconnected" }).await, Some("disconnected"));
        assert_eq!(all.held_count(), 0);
    }

    #[tokio::test]
    async fn a_user_holds_a_bounded_number_of_sessions() {
        let all = sessions(2);
        let a = all.hold(&key("u"), &SessionId::parse("a").unwrap()).unwrap();
        let _b = all.hold(&key("u"), &SessionId::parse("b").unwrap()).unwrap();
        assert!(all.hold(&key("u"), &SessionId::parse("c").unwrap()).is_err());
        // Taking over one already held is not a new one; another user has their own bound.
        let _a_again = all.hold(&key("u"), &SessionId::parse("a").unwrap()).unwrap();
        let _c = all.hold(&key("v"), &SessionId::parse("c").unwrap()).unwrap();
        // The replaced socket's hold going away leaves the new holder's.
        drop(a);
        assert_eq!(all.held_count(), 3);
    }
}
