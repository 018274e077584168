//! The presence-state port: users' states, read singly or in batches, written by compare-and-set.
use super::StoreError;
use jiff::Timestamp;
use presence_core::{ChangeEvent, PresenceView, UserKey, UserPresence};
use std::future::Future;
use std::sync::Arc;

/// A user's state as loaded; version 0 means "no record yet".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Versioned {
    pub version: u64,
    pub state: Arc<UserPresence>,
}

/// One user's new state and the change event it produced, made durable together: the event
/// becomes the user's next entry in the change log.
#[derive(Debug, Clone)]
pub struct Commit {
    pub key: UserKey,
    pub expected_version: u64,
    pub state: UserPresence,
    pub event: Option<ChangeEvent>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommitError {
    /// Someone else committed this user since it was loaded. Carries the state now stored, so a
    /// retry needs no second read.
    #[error("concurrent update")]
    Conflict(Versioned),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub trait PresenceState: Send + Sync + 'static {
    fn load(&self, key: &UserKey) -> impl Future<Output = Result<Versioned, StoreError>> + Send;

    /// The user's state to compute a write from, and whether it was read just now (`true`) or
    /// is this node's last known copy (`false`), which a commit's compare-and-set checks: a
    /// backend a round trip away saves the read when the copy is current. The default loads.
    fn load_to_write(&self, key: &UserKey) -> impl Future<Output = Result<(Versioned, bool), StoreError>> + Send {
        async move { Ok((self.load(key).await?, true)) }
    }

    /// Many users at once, in the order asked (bulk reads: up to 650 ids in one call).
    fn load_many(&self, keys: &[UserKey]) -> impl Future<Output = Result<Vec<Versioned>, StoreError>> + Send;

    /// The user's presence as of `now`: what reads serve. The default loads and folds; a backend
    /// holding states in memory can fold in place without handing out a reference-counted copy.
    fn view(&self, key: &UserKey, now: Timestamp) -> impl Future<Output = Result<PresenceView, StoreError>> + Send {
        async move { Ok(self.load(key).await?.state.view_at(now)) }
    }

    /// [`view`](Self::view) for many users, in the order asked.
    fn view_many(
        &self,
        keys: &[UserKey],
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<PresenceView>, StoreError>> + Send {
        async move {
            Ok(self
                .load_many(keys)
                .await?
                .iter()
                .map(|v| v.state.view_at(now))
                .collect())
        }
    }

    /// Write `commit.state` (and its event, at the log's next position) if the user's version is
    /// still `commit.expected_version`; returns the new version once both are durable.
    fn commit(&self, commit: Commit) -> impl Future<Output = Result<u64, CommitError>> + Send;

    /// Independent commits at once, each checked and applied exactly as `commit` would (one may
    /// conflict while the others land); outcomes in order. The sweeper commits a tick's
    /// transitions this way: one round trip instead of one per user.
    fn commit_many(&self, commits: Vec<Commit>) -> impl Future<Output = Vec<Result<u64, CommitError>>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(commits.len());
            for commit in commits {
                outcomes.push(self.commit(commit).await);
            }
            outcomes
        }
    }

    /// Every user holding a client session still marked connected: at start, the sessions of an
    /// earlier process are given their grace (`Command::OrphanClients`). A walk over all users.
    fn users_with_connected_clients(&self) -> impl Future<Output = Result<Vec<UserKey>, StoreError>> + Send;

    /// Whether the store can accept writes (for `/readyz`).
    fn is_ready(&self) -> bool;
}
